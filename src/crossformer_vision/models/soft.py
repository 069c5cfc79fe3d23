"""SOFT: Softmax-free Transformer with Linear Complexity (NeurIPS 2021), timm-native.

Four stages at strides 4 / 8 / 16 / 32. Stages 1-3 use softmax-free attention: a Gaussian kernel
``exp(-||q - k||^2 / 2)`` with keys tied to queries (``K = Q``), approximated through m landmarks
(the queries pooled by a ``ratio x ratio`` strided conv, then LayerNorm + GELU) as

    X = (K_nm @ inv(K_mm)) @ (K_nm^T @ V) + DWConv_heads(V),

where the inverse is the official Newton-Schulz iteration (20 steps, gradient of a true inverse), so the cost
is linear in the number of tokens. These blocks are post-norm. Stage 4 is a pre-norm softmax ViT block with a
class token. Everything follows the official code (``fudan-zvg/SOFT``, ``kernel_method="torch"``), so
state-dict keys equal the official ones and official checkpoints load as they are.

Any input of at least 32 x 32 pixels works: the position embeddings (56x56 / 28x28 / 14x14 / 7x7 grids) are
resized bilinearly to the token maps, exactly as the official forward does.
"""

# No ``from __future__ import annotations``: torch.fx copies ``forward``'s annotations into the code it generates,
# and TorchScript cannot resolve them there as strings (FX-traced-then-scripted models).
import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from timm.models import generate_default_cfgs, register_model, register_notrace_function
from timm.models._features import feature_take_indices
from timm.models.pvt_v2 import Attention as SpatialReductionAttention
from torch import nn

from ._common import build_family_model, imagenet_cfg, init_weights, run_blocks

__all__ = ["SOFT", "SOFT_VARIANTS", "newton_inverse", "soft_gaussian_kernel"]

#: Smallest input side: stage 1 (stride 4) needs at least one 8 x 8 landmark window.
SOFT_MIN_INPUT_SIZE = 32


def soft_gaussian_kernel(q: torch.Tensor, k_t: torch.Tensor) -> torch.Tensor:
    """Squared distances ``||q_i - k_j||^2`` as the official torch kernel path computes them.

    Args:
        q: [B, heads, N, d].
        k_t: keys transposed, [B, heads, d, M].

    Returns:
        [B, heads, N, M]; the caller takes ``exp(-dist / 2)``.
    """
    sq_q = q.pow(2) @ q.new_ones(k_t.shape[-2:])  # [B, h, N, M]: row norms, broadcast over keys
    sq_k = q.new_ones(q.shape[-2:]) @ k_t.pow(2)  # [B, h, N, M]: key norms, broadcast over queries
    return sq_q + sq_k - 2.0 * (q @ k_t)


def _newton_iterate(mat: torch.Tensor, iters: int) -> torch.Tensor:
    eye = torch.eye(mat.shape[-1], device=mat.device, dtype=mat.dtype)
    # per (batch, head): alpha = 0.9 * 2 / (largest row sum)^2 keeps the iteration inside its convergence region
    alpha = 0.9 * 2 / mat.sum(-1).amax(-1) ** 2
    p = mat + 0.01 * eye  # the official ridge term
    v = alpha[..., None, None] * p
    for _ in range(iters):
        v = 2 * v - v @ p @ v
    return v


class _NewtonInverse(torch.autograd.Function):
    """Forward: Newton-Schulz iterations without graph; backward: the gradient of an exact inverse,
    ``-V^T g V^T`` with V the forward's output (the official ``_NewtonInverseKernel``, on any device)."""

    @staticmethod
    def forward(ctx, mat: torch.Tensor, iters: int) -> torch.Tensor:  # type: ignore[override]
        with torch.no_grad():
            out = _newton_iterate(mat, iters)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (inv,) = ctx.saved_tensors
        inv_t = inv.transpose(-1, -2)
        return -(inv_t @ grad @ inv_t), None


@register_notrace_function  # torch.fx: one call (the autograd Function keeps its exact-inverse backward)
def newton_inverse(mat: torch.Tensor, iters: int = 20) -> torch.Tensor:
    """Approximate inverse of ``mat + 0.01 I`` ([..., m, m]) by ``iters`` Newton-Schulz steps (official SOFT).

    TorchScript cannot call an autograd Function: scripted models run the same iterations without a graph (the
    same numbers; scripted models are for inference, as timm's)."""
    if torch.jit.is_scripting():
        with torch.no_grad():
            return _newton_iterate(mat, iters)
    return _NewtonInverse.apply(mat, iters)


class SoftmaxFreeKernel(nn.Module):
    """Landmark Gaussian-kernel attention of one head group: Q, V [B, h, N, d] -> [B, h, N, d].

    Official names: ``Qlandmark_op`` (the ``ratio x ratio`` strided conv pooling queries into landmarks),
    ``Qnorm_act`` (LayerNorm + GELU on landmarks), ``conv`` (a depthwise conv over heads on V, kernel
    ``conv_size``, the same kernel for every channel of a head).
    """

    def __init__(self, dim: int, num_heads: int, ratio: int, conv_size: int, max_iter: int = 20):
        super().__init__()
        if ratio < 2:
            raise ValueError("softmax-free attention pools landmarks with ratio >= 2 (the official stages 1-3)")
        self.head_dim = dim // num_heads
        self.num_heads = num_heads
        self.ratio = ratio
        self.max_iter = max_iter
        self.Qlandmark_op = nn.Conv2d(self.head_dim, self.head_dim, kernel_size=ratio, stride=ratio, bias=False)
        self.Qnorm_act = nn.Sequential(nn.LayerNorm(self.head_dim), nn.GELU())
        self.conv = (
            nn.Conv2d(num_heads, num_heads, conv_size, padding=conv_size // 2, bias=False, groups=num_heads)
            if conv_size
            else None
        )

    def forward(self, q: torch.Tensor, v: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, h, _, d = q.shape
        height, width = size
        q = q / math.sqrt(math.sqrt(d))  # d^(-1/4) on both sides of the kernel: the usual 1/sqrt(d) scale
        # landmarks: [B*h, d, H, W] -> strided conv -> [B, h, m, d]
        lm = self.Qlandmark_op(q.reshape(b * h, height, width, d).permute(0, 3, 1, 2))
        lm = self.Qnorm_act(lm.flatten(2).transpose(1, 2).reshape(b, h, -1, d))
        lm_t = lm.transpose(-1, -2).contiguous()
        k_nm = torch.exp(-soft_gaussian_kernel(q, lm_t) / 2)  # [B, h, N, m]
        k_mm = torch.exp(-soft_gaussian_kernel(lm, lm_t) / 2)  # [B, h, m, m]
        x = (k_nm @ newton_inverse(k_mm, self.max_iter)) @ (k_nm.transpose(-1, -2) @ v)
        if self.conv is not None:
            vv = v.reshape(b, h, height, width, d).permute(0, 4, 1, 2, 3).reshape(b * d, h, height, width)
            x = x + self.conv(vv).reshape(b, d, h, height, width).flatten(3).permute(0, 2, 3, 1)
        return x


class SoftmaxFreeAttention(nn.Module):
    """Projections around :class:`SoftmaxFreeKernel`: tokens [B, N, C] -> [B, N, C] (``W_q``, ``W_v``, ``ff``)."""

    def __init__(self, dim: int, num_heads: int, ratio: int, conv_size: int, max_iter: int = 20):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        inner = num_heads * self.head_dim
        self.W_q = nn.Linear(dim, inner)
        self.W_v = nn.Linear(dim, inner)
        self.attn = SoftmaxFreeKernel(dim, num_heads, ratio, conv_size, max_iter)
        self.ff = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.W_q(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.W_v(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        out = self.attn(q, v, size).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.ff(out)


class SoftmaxFreeLayer(nn.Module):
    """Post-norm layer: ``x = LN(x + drop(attn(x)))``, ``x = LN(x + drop(MLP(x)))``, tanh-GELU MLP of width 4C.

    ``drop`` is element-wise dropout with the block's stochastic-depth rate, as in the official code.
    The LayerNorms use PyTorch's default eps (1e-5), also as the official code.
    """

    def __init__(self, dim: int, num_heads: int, ratio: int, conv_size: int, drop_path: float, max_iter: int):
        super().__init__()
        self.mha = SoftmaxFreeAttention(dim, num_heads, ratio, conv_size, max_iter)
        self.dropout1 = nn.Dropout(drop_path)
        self.norm1 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU(approximate="tanh")
        self.ff2 = nn.Linear(4 * dim, dim)
        self.dropout2 = nn.Dropout(drop_path)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = self.norm1(x + self.dropout1(self.mha(x, size)))
        return self.norm2(x + self.dropout2(self.ff2(self.act(self.ff1(x)))))


class SoftmaxFreeBlock(nn.Module):
    """Stage 1-3 block: tokens [B, H*W, C] with their map size -> [B, H*W, C] (official key prefix ``att``)."""

    def __init__(self, dim, num_heads, ratio, drop_path=0.0, conv_size=3, max_iter=20):
        super().__init__()
        self.att = SoftmaxFreeLayer(dim, num_heads, ratio, conv_size, drop_path, max_iter)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return self.att(x, size)


class SoftmaxBlock(nn.Module):
    """Stage 4: pre-norm softmax attention (timm's PVT-v2 attention, ``q`` / ``kv`` / ``proj``) and MLP."""

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, norm_layer):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = SpatialReductionAttention(dim, num_heads, 1, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), list(size)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def _conv_bn_relu(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU()]


class SoftPatchEmbed(nn.Module):
    """Conv stem: stage 1 three 3x3 conv-BN-ReLU (strides 2, 1, 2; 32 channels inside), later stages one stride-2
    conv-BN-ReLU. [B, C_in, H, W] -> [B, C, ceil(H/s), ceil(W/s)] (official key ``proj``)."""

    def __init__(self, in_chans: int, embed_dim: int, first: bool):
        super().__init__()
        if first:
            layers = _conv_bn_relu(in_chans, 32, 2) + _conv_bn_relu(32, 32, 1) + _conv_bn_relu(32, embed_dim, 2)
        else:
            layers = _conv_bn_relu(in_chans, embed_dim, 2)
        self.proj = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@register_notrace_function  # torch.fx: the identity test reads the map size
def resize_pos_grid(pos: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """[1, n*n, C] square position grid -> [1, H*W, C], bilinear (align_corners=False) like the official code."""
    side = int(pos.shape[1] ** 0.5)
    if (side, side) == tuple(size):  # bilinear resampling at scale 1 is the identity
        return pos
    grid = pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


class SOFT(nn.Module):
    """SOFT image model (official ``SoftmaxFreeVisionTransformer``).

    Args:
        img_size: Nominal input size (metadata: any input of at least 32 x 32 works).
        in_chans: Image channels.
        num_classes: Classes of the head (0: no head).
        global_pool: ``"token"`` (the official class-token head) or ``"avg"`` (mean of the stage-4 patch tokens).
        embed_dims: Stage widths.
        num_heads: Heads per stage.
        mlp_ratios: MLP width ratios (only stage 4's is used: the softmax-free layers have a fixed 4x MLP).
        qkv_bias: Bias in the stage-4 ``q`` / ``kv`` projections.
        drop_rate: The official ``drop_rate``: dropout after the position embeddings of stages 1-3 and in the
            stage-4 block (there is no dropout before the classifier).
        attn_drop_rate: Dropout on the stage-4 attention weights.
        drop_path_rate: Stochastic depth over all blocks (element-wise dropout in the softmax-free layers,
            DropPath in stage 4, as in the official code).
        depths: Blocks per stage.
        sr_ratios: Landmark pooling ratio per stage (stage 4's must be 1: full softmax attention).
        conv_sizes: Kernel of the depthwise V conv of stages 1-3.
        newton_max_iter: Newton-Schulz iterations of the kernel inverse.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        num_heads: Sequence[int] = (2, 4, 10, 16),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        depths: Sequence[int] = (1, 2, 3, 2),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        conv_sizes: Sequence[int] = (9, 5, 3),
        newton_max_iter: int = 20,
    ):
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if len(depths) != 4 or sr_ratios[3] != 1:
            raise ValueError("SOFT has four stages; the last one uses full attention (sr_ratios[3] == 1)")
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dims = tuple(embed_dims)
        self.depths = tuple(depths)
        self.num_features = self.head_hidden_size = self.embed_dim = embed_dims[3]
        self.num_prefix_tokens = 1
        self.grad_checkpointing = False
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()

        self.patch_embed1 = SoftPatchEmbed(in_chans, embed_dims[0], first=True)
        self.patch_embed2 = SoftPatchEmbed(embed_dims[0], embed_dims[1], first=False)
        self.patch_embed3 = SoftPatchEmbed(embed_dims[1], embed_dims[2], first=False)
        self.patch_embed4 = SoftPatchEmbed(embed_dims[2], embed_dims[3], first=False)
        # official grids: 56x56, 28x28, 14x14, 7x7 (+ the class token), whatever img_size
        self.pos_embed1 = nn.Parameter(torch.zeros(1, 3136, embed_dims[0]))
        self.pos_drop1 = nn.Dropout(drop_rate)
        self.pos_embed2 = nn.Parameter(torch.zeros(1, 784, embed_dims[1]))
        self.pos_drop2 = nn.Dropout(drop_rate)
        self.pos_embed3 = nn.Parameter(torch.zeros(1, 196, embed_dims[2]))
        self.pos_drop3 = nn.Dropout(drop_rate)
        self.pos_embed4 = nn.Parameter(torch.zeros(1, 49 + 1, embed_dims[3]))
        cur = 0
        for i in range(3):
            blocks = nn.ModuleList(
                SoftmaxFreeBlock(
                    embed_dims[i], num_heads[i], sr_ratios[i], dpr[cur + j], conv_sizes[i], newton_max_iter
                )
                for j in range(depths[i])
            )
            setattr(self, f"block{i + 1}", blocks)
            cur += depths[i]
        self.block4 = nn.ModuleList(
            SoftmaxBlock(
                embed_dims[3],
                num_heads[3],
                mlp_ratios[3],
                qkv_bias,
                drop_rate,
                attn_drop_rate,
                dpr[cur + j],
                norm_layer,
            )
            for j in range(depths[3])
        )
        self.norm = norm_layer(embed_dims[3])
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[3]))
        self.head = nn.Linear(embed_dims[3], num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=embed_dims[i], reduction=4 * 2**i, module=f"block{i + 1}") for i in range(4)]
        for p in (self.pos_embed1, self.pos_embed2, self.pos_embed3, self.pos_embed4, self.cls_token):
            trunc_normal_(p, std=0.02)
        self.apply(init_weights)

    # ------------------------------------------------------------------ timm model contract
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}  # the official set (timm's optimizer factory adds biases and norms itself)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^cls_token|^pos_embed1|^patch_embed1",
            blocks=[(r"^(?:patch_embed|pos_embed)(\d+)", (0,)), (r"^block(\d+)\.(\d+)", None), (r"^norm", (99999,))]
            if not coarse
            else [(r"^(?:patch_embed|pos_embed|block)(\d+)", None), (r"^norm", (99999,))],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute every block's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in ("token", "avg"):
                raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def check_input(self, x: torch.Tensor) -> None:
        if isinstance(x, torch.fx.Proxy):  # symbolic tracing: no sizes to check
            return
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected an image batch [B, {self.in_chans}, H, W], got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < SOFT_MIN_INPUT_SIZE:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} is too small: SOFT needs both sides >= {SOFT_MIN_INPUT_SIZE}"
            )

    def _stage(self, i: int, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Stage ``i`` (0-3) on an NCHW map; returns its tokens ([B, H*W, C], with the class token first for
        stage 3) and the map size."""
        x = getattr(self, f"patch_embed{i + 1}")(x)
        size = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if i < 3:
            x = getattr(self, f"pos_drop{i + 1}")(x + resize_pos_grid(getattr(self, f"pos_embed{i + 1}"), size))
        else:  # class token, its own position embedding; no dropout (as the official forward)
            pos = torch.cat([self.pos_embed4[:, :1], resize_pos_grid(self.pos_embed4[:, 1:], size)], dim=1)
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + pos
        blocks = getattr(self, f"block{i + 1}")
        return run_blocks(blocks, x, size, grad_checkpointing=self.grad_checkpointing), size

    @staticmethod
    def _to_map(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, _, c = tokens.shape
        return tokens[:, -size[0] * size[1] :].reshape(b, size[0], size[1], c).permute(0, 3, 1, 2).contiguous()

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage maps [B, C_i, H/2^(i+2), W/2^(i+2)] (stage 4: its patch tokens, with the final norm if ``norm``).

        Returns the maps, or ``(final tokens [B, 1 + H/32*W/32, C] normalised, maps)``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self.check_input(x)
        take, max_index = feature_take_indices(4, indices)
        out = []
        for i in range(max_index + 1 if stop_early else 4):
            tokens, size = self._stage(i, x)
            if i == 3 and norm:
                tokens = self.norm(tokens)
            x = self._to_map(tokens, size)
            if i in take:
                out.append(x if output_fmt == "NCHW" else x.permute(0, 2, 3, 1))
        if intermediates_only:
            return out
        return (tokens if i == 3 and norm else self.norm(tokens) if i == 3 else tokens), out

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep every stage (the model is small); drop the head (and norm) as timm asks."""
        take, _ = feature_take_indices(4, indices)
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0)
        return take

    def _forward_features_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward_features` for TorchScript, which cannot look submodules up by a computed name (``_stage``)
        and whose official key layout (``patch_embed1``, ``block1`` ...) leaves no per-stage container to loop over:
        the same four stages, written out."""
        x = self.patch_embed1(x)
        size = (x.shape[2], x.shape[3])
        x = self.pos_drop1(x.flatten(2).transpose(1, 2) + resize_pos_grid(self.pos_embed1, size))
        for blk in self.block1:
            x = blk(x, size)
        x = self.patch_embed2(self._to_map(x, size))
        size = (x.shape[2], x.shape[3])
        x = self.pos_drop2(x.flatten(2).transpose(1, 2) + resize_pos_grid(self.pos_embed2, size))
        for blk in self.block2:
            x = blk(x, size)
        x = self.patch_embed3(self._to_map(x, size))
        size = (x.shape[2], x.shape[3])
        x = self.pos_drop3(x.flatten(2).transpose(1, 2) + resize_pos_grid(self.pos_embed3, size))
        for blk in self.block3:
            x = blk(x, size)
        x = self.patch_embed4(self._to_map(x, size))
        size = (x.shape[2], x.shape[3])
        pos = torch.cat([self.pos_embed4[:, :1], resize_pos_grid(self.pos_embed4[:, 1:], size)], dim=1)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x.flatten(2).transpose(1, 2)], dim=1) + pos
        for blk in self.block4:
            x = blk(x, size)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> normalised stage-4 tokens [B, 1 + ceil(H/32)*ceil(W/32), C] (class token first)."""
        if torch.jit.is_scripting():
            return self._forward_features_scripted(x)
        self.check_input(x)
        for i in range(3):
            tokens, size = self._stage(i, x)
            x = self._to_map(tokens, size)
        tokens, _ = self._stage(3, x)
        return self.norm(tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """[B, 1 + N, C] tokens -> logits [B, classes] (pooled [B, C] with ``pre_logits``)."""
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens :].mean(1)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------- weights, variants, registry
def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Official SOFT checkpoints (``state_dict`` / ``model`` / ``state_dict_ema`` wrappers, ``module.`` prefixes)."""
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


_COMMON = dict(embed_dims=(64, 128, 320, 512), num_heads=(2, 4, 10, 16), mlp_ratios=(8, 8, 4, 4))
#: Architectures of the official registered models (``models/softmax_free_vision_transformer.py``).
SOFT_VARIANTS: dict[str, dict[str, Any]] = {
    "soft_tiny": dict(**_COMMON, depths=(1, 2, 3, 2)),
    "soft_small": dict(**_COMMON, depths=(1, 3, 20, 4)),
    "soft_medium": dict(
        embed_dims=(64, 128, 288, 512), num_heads=(2, 4, 9, 16), mlp_ratios=(8, 8, 4, 4), depths=(1, 3, 29, 5)
    ),
    "soft_large": dict(**_COMMON, depths=(1, 3, 40, 5)),
    "soft_huge": dict(
        embed_dims=(64, 128, 352, 512), num_heads=(2, 4, 11, 16), mlp_ratios=(8, 8, 4, 4), depths=(1, 5, 49, 5)
    ),
}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # the official evaluation: main.py resolves timm 0.3.2's ViT _cfg (bicubic, crop 0.9, ImageNet mean / std)
    return imagenet_cfg(
        pool_size=None,
        crop_pct=0.9,
        first_conv="patch_embed1.proj.0",
        classifier="head",
        license="mit",
        origin_url="https://github.com/fudan-zvg/SOFT",
        paper_ids="arXiv:2110.11945",
        **kwargs,
    )


default_cfgs = generate_default_cfgs({f"{name}.in1k": _cfg() for name in SOFT_VARIANTS})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> SOFT:
    return build_family_model(SOFT, variant, pretrained, checkpoint_filter_fn, **{**SOFT_VARIANTS[variant], **kwargs})


@register_model
def soft_tiny(pretrained: bool = False, **kwargs: Any) -> SOFT:
    """SOFT-Tiny: 13.07 M params (paper 13 M)."""
    return _create("soft_tiny", pretrained, **kwargs)


@register_model
def soft_small(pretrained: bool = False, **kwargs: Any) -> SOFT:
    """SOFT-Small as the official code defines it: 38.86 M params (the paper's table says 24 M)."""
    return _create("soft_small", pretrained, **kwargs)


@register_model
def soft_medium(pretrained: bool = False, **kwargs: Any) -> SOFT:
    """SOFT-Medium: 45.81 M params (paper 45 M)."""
    return _create("soft_medium", pretrained, **kwargs)


@register_model
def soft_large(pretrained: bool = False, **kwargs: Any) -> SOFT:
    """SOFT-Large: 64.70 M params (paper 64 M)."""
    return _create("soft_large", pretrained, **kwargs)


@register_model
def soft_huge(pretrained: bool = False, **kwargs: Any) -> SOFT:
    """SOFT-Huge: 87.11 M params (paper 87 M)."""
    return _create("soft_huge", pretrained, **kwargs)
