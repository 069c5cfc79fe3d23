"""CMT: Convolutional Neural Networks Meet Vision Transformers (CVPR 2022), timm-native.

A conv stem (three 3x3 conv-GELU-BN, stride 2) and four stages at strides 4 / 8 / 16 / 32, each a 2x2 strided
patch embedding (conv + LayerNorm) followed by CMT blocks:

* LPU, local perception unit: ``x = DWConv3x3(x) + x``;
* LMHSA: ``x = x + Attn(LN(x))``, multi-head attention whose keys / values come from a stride-``sr`` depthwise
  conv + BN of the map, with a learnt relative position bias ``B`` [heads, N, N / sr^2] added to the logits;
* IRFFN: ``x = x + conv1x1-GELU-BN -> DWConv3x3 + skip -> GELU-BN -> conv1x1-BN`` (on LN(x)).

The classifier is a 1x1 conv to ``fc_dim`` channels, BN, Swish, global average pooling, dropout, linear.
Keys equal the official code's (``huawei-noah/Efficient-AI-Backbones``, ``cmt_pytorch/cmt.py``).

The relative position bias is a parameter sized for the construction ``img_size`` (as in the official code, where
only that size runs). Other input sizes (any side >= 32) are accepted here: the bias is resized bilinearly over
its query grid and its key grid (:func:`resize_relative_pos`); at the construction size it is used unchanged,
so outputs equal the official ones.
"""

# No ``from __future__ import annotations``: torch.fx copies ``forward``'s annotations into the code it generates,
# and TorchScript cannot resolve them there as strings (FX-traced-then-scripted models).
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from timm.models import generate_default_cfgs, register_model, register_notrace_function
from timm.models._features import feature_take_indices
from torch import nn

from ._common import build_family_model, imagenet_cfg, init_weights, run_blocks

__all__ = ["CMT", "CMT_VARIANTS", "resize_relative_pos"]

#: Smallest input side: stage 1 (stride 4) needs one 8x8 key window.
CMT_MIN_INPUT_SIZE = 32


@register_notrace_function  # torch.fx: one call (whether to resize depends on the map size)
def resize_relative_pos(
    bias: torch.Tensor, src: tuple[int, int, int, int], dst: tuple[int, int, int, int]
) -> torch.Tensor:
    """Bilinearly resample a relative position bias [h, Hq*Wq, Hk*Wk] from grids ``src`` to ``dst``.

    ``src`` / ``dst`` are ``(Hq, Wq, Hk, Wk)`` tuples; the query and key grids are resized separately
    (``align_corners=False``). Returns ``bias`` itself when the grids are equal.
    """
    if src == dst:
        return bias
    h = bias.shape[0]
    hq, wq, hk, wk = src
    dq, dwq, dk, dwk = dst
    x = bias.reshape(h * hq * wq, 1, hk, wk)
    if (hk, wk) != (dk, dwk):
        x = F.interpolate(x, size=(dk, dwk), mode="bilinear", align_corners=False)
    x = x.reshape(h, hq, wq, dk * dwk).permute(0, 3, 1, 2).reshape(h * dk * dwk, 1, hq, wq)
    if (hq, wq) != (dq, dwq):
        x = F.interpolate(x, size=(dq, dwq), mode="bilinear", align_corners=False)
    return x.reshape(h, dk * dwk, dq * dwq).transpose(1, 2)


class IRFFN(nn.Module):
    """Inverted residual feed-forward network on tokens [B, H*W, C] with their map size (official ``Mlp``)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.BatchNorm2d(hidden))
        self.proj = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.proj_act = nn.GELU()
        self.proj_bn = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Sequential(nn.Conv2d(hidden, dim, 1), nn.BatchNorm2d(dim))
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        b, _, c = x.shape
        x = self.drop(self.conv1(x.transpose(1, 2).reshape(b, c, size[0], size[1])))
        x = self.proj_bn(self.proj_act(self.proj(x) + x))
        return self.drop(self.conv2(x).flatten(2).transpose(1, 2))


class LightweightAttention(nn.Module):
    """LMHSA: queries from all tokens, keys / values from the ``sr``-strided depthwise conv + BN of the map, plus a
    relative position bias. Tokens [B, N, C] -> [B, N, C] (official keys ``q``, ``k``, ``v``, ``proj``, ``sr``)."""

    def __init__(self, dim, num_heads, qkv_bias=True, attn_drop=0.0, proj_drop=0.0, qk_ratio=1, sr_ratio=1):
        super().__init__()
        self.num_heads = num_heads
        self.qk_dim = dim // qk_ratio
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, self.qk_dim, bias=qkv_bias)
        self.k = nn.Linear(dim, self.qk_dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr_ratio = sr_ratio
        self.sr = (
            nn.Sequential(nn.Conv2d(dim, dim, sr_ratio, sr_ratio, groups=dim), nn.BatchNorm2d(dim))
            if sr_ratio > 1
            else None
        )

    def forward(self, x: torch.Tensor, size: tuple[int, int], bias: torch.Tensor) -> torch.Tensor:
        """``bias``: [heads, N, M] with M the key tokens (``(H // sr) * (W // sr)``)."""
        b, n, c = x.shape
        h = self.num_heads
        q = self.q(x).reshape(b, n, h, -1).transpose(1, 2)
        if self.sr is not None:
            x = self.sr(x.transpose(1, 2).reshape(b, c, size[0], size[1])).flatten(2).transpose(1, 2)
        k = self.k(x).reshape(b, -1, h, self.qk_dim // h).transpose(1, 2)
        v = self.v(x).reshape(b, -1, h, c // h).transpose(1, 2)
        attn = ((q @ k.transpose(-2, -1)) * self.scale + bias).softmax(dim=-1)
        x = (self.attn_drop(attn) @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class CMTBlock(nn.Module):
    """LPU, LMHSA and IRFFN on tokens [B, H*W, C] with their map size and the stage's position bias."""

    def __init__(self, dim, num_heads, mlp_ratio, qkv_bias, drop, attn_drop, drop_path, qk_ratio, sr_ratio):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm_layer(dim)
        self.attn = LightweightAttention(dim, num_heads, qkv_bias, attn_drop, drop, qk_ratio, sr_ratio)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = IRFFN(dim, int(dim * mlp_ratio), drop)
        self.proj = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)  # the LPU

    def forward(self, x: torch.Tensor, size: tuple[int, int], bias: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        fmap = x.transpose(1, 2).reshape(b, c, size[0], size[1])
        x = (self.proj(fmap) + fmap).flatten(2).transpose(1, 2)
        x = x + self.drop_path(self.attn(self.norm1(x), size, bias))
        return x + self.drop_path(self.mlp(self.norm2(x), size))


class CMTPatchEmbed(nn.Module):
    """2x2 stride-2 conv then LayerNorm: [B, C_in, H, W] -> tokens [B, (H//2)*(W//2), C] and the map size."""

    def __init__(self, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, 2, 2)
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        return self.norm(x.flatten(2).transpose(1, 2)), (x.shape[2], x.shape[3])


_STAGES = "abcd"


def _check_pool(global_pool: str) -> str:
    if global_pool not in ("avg", ""):
        raise ValueError(f"CMT's conv head pools by average (or not at all: ''); got global_pool={global_pool!r}")
    return global_pool


class CMT(nn.Module):
    """CMT image model (official ``CMT``).

    Args:
        img_size: Construction size (int or (H, W), multiples of 32): sizes the relative position biases, as in
            the official code. Other input sizes work through a resized bias.
        in_chans: Image channels.
        num_classes: Classes of the head (0: none).
        embed_dims: Stage widths.
        stem_channel: Width of the conv stem.
        fc_dim: Width of the 1x1 conv before pooling.
        num_heads: Heads per stage.
        mlp_ratios: IRFFN width ratios.
        qkv_bias: Biases in q / k / v.
        drop_rate: The official ``drop_rate``: dropout after the attention projection and in the IRFFN.
        attn_drop_rate: Dropout on attention weights.
        drop_path_rate: Stochastic depth over all blocks.
        depths: Blocks per stage.
        qk_ratio: q / k width reduction.
        sr_ratios: Key / value spatial reduction per stage.
        head_drop_rate: Dropout before the classifier (the official ``dp``).
        global_pool: ``"avg"`` (the official head) or ``""`` (timm's unpooled head: the conv head's
            [B, fc_dim, h, w] map, for ``num_classes=0``).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (46, 92, 184, 368),
        stem_channel: int = 16,
        fc_dim: int = 1280,
        num_heads: Sequence[int] = (1, 2, 4, 8),
        mlp_ratios: Sequence[float] = (3.6, 3.6, 3.6, 3.6),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        depths: Sequence[int] = (2, 2, 10, 2),
        qk_ratio: int = 1,
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        head_drop_rate: float = 0.1,
        global_pool: str = "avg",
    ):
        super().__init__()
        _check_pool(global_pool)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if any(s % 32 for s in self.img_size):
            raise ValueError(f"CMT's img_size must be a multiple of 32 (it sizes the position biases), got {img_size}")
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.embed_dims = tuple(embed_dims)
        self.sr_ratios = list(sr_ratios)  # a list: TorchScript indexes it with a variable
        self.num_features = self.embed_dim = embed_dims[-1]
        self.head_hidden_size = fc_dim
        self.grad_checkpointing = False

        self.stem_conv1 = nn.Conv2d(in_chans, stem_channel, 3, 2, 1)
        self.stem_relu1 = nn.GELU()
        self.stem_norm1 = nn.BatchNorm2d(stem_channel)
        self.stem_conv2 = nn.Conv2d(stem_channel, stem_channel, 3, 1, 1)
        self.stem_relu2 = nn.GELU()
        self.stem_norm2 = nn.BatchNorm2d(stem_channel)
        self.stem_conv3 = nn.Conv2d(stem_channel, stem_channel, 3, 1, 1)
        self.stem_relu3 = nn.GELU()
        self.stem_norm3 = nn.BatchNorm2d(stem_channel)
        chans = [stem_channel, *embed_dims]
        self.grids = []  # (Hq, Wq, Hk, Wk) of each stage's bias at the construction size
        for i, s in enumerate(_STAGES):
            setattr(self, f"patch_embed_{s}", CMTPatchEmbed(chans[i], embed_dims[i]))
            hq, wq = self.img_size[0] // 2 ** (i + 2), self.img_size[1] // 2 ** (i + 2)
            self.grids.append((hq, wq, hq // sr_ratios[i], wq // sr_ratios[i]))
        for i, s in enumerate(_STAGES):
            hq, wq, hk, wk = self.grids[i]
            setattr(self, f"relative_pos_{s}", nn.Parameter(torch.randn(num_heads[i], hq * wq, hk * wk)))
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        cur = 0
        for i, s in enumerate(_STAGES):
            blocks = nn.ModuleList(
                CMTBlock(
                    embed_dims[i],
                    num_heads[i],
                    mlp_ratios[i],
                    qkv_bias,
                    drop_rate,
                    attn_drop_rate,
                    dpr[cur + j],
                    qk_ratio,
                    sr_ratios[i],
                )
                for j in range(depths[i])
            )
            setattr(self, f"blocks_{s}", blocks)
            cur += depths[i]
        self._fc = nn.Conv2d(embed_dims[-1], fc_dim, 1)
        self._bn = nn.BatchNorm2d(fc_dim)
        self._swish = nn.SiLU()  # x * sigmoid(x): the official MemoryEfficientSwish
        self._drop = nn.Dropout(head_drop_rate)
        self.head = nn.Linear(fc_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [
            dict(num_chs=embed_dims[i], reduction=4 * 2**i, module=f"blocks_{s}") for i, s in enumerate(_STAGES)
        ]
        self.apply(partial(init_weights, convs=True))  # kaiming_normal_'s default gain is ReLU's

    # ------------------------------------------------------------------ timm model contract
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return set()  # the official set names parameters CMT does not have (pos_embed, cls_token)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^stem_",
            blocks=[
                (r"^(?:patch_embed|relative_pos)_(\w)", None),
                (r"^blocks_(\w)\.(\d+)", None),
                (r"^_fc|^_bn", (99999,)),
            ],
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
            self.global_pool = _check_pool(global_pool)
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def check_input(self, x: torch.Tensor) -> None:
        if isinstance(x, torch.fx.Proxy):  # symbolic tracing: no sizes to check
            return
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"expected an image batch [B, {self.in_chans}, H, W], got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < CMT_MIN_INPUT_SIZE:
            raise ValueError(
                f"input {x.shape[-2]}x{x.shape[-1]} is too small: CMT needs both sides >= {CMT_MIN_INPUT_SIZE}"
            )

    def _grid(self, i: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """Stage ``i``'s (query, key) grids ``(H, W, H // sr, W // sr)`` for a ``size`` token map."""
        sr = self.sr_ratios[i]
        return (size[0], size[1], size[0] // sr, size[1] // sr)

    def relative_pos(self, i: int, size: tuple[int, int]) -> torch.Tensor:
        """Stage ``i``'s position bias for a ``size`` token map: [heads, H*W, (H//sr)*(W//sr)]."""
        return resize_relative_pos(getattr(self, f"relative_pos_{_STAGES[i]}"), self.grids[i], self._grid(i, size))

    def stem(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_norm1(self.stem_relu1(self.stem_conv1(x)))
        x = self.stem_norm2(self.stem_relu2(self.stem_conv2(x)))
        return self.stem_norm3(self.stem_relu3(self.stem_conv3(x)))

    def _stage(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Stage ``i`` (0-3): NCHW map in, NCHW map out (half the size)."""
        s = _STAGES[i]
        x, size = getattr(self, f"patch_embed_{s}")(x)
        bias = self.relative_pos(i, size)
        x = run_blocks(getattr(self, f"blocks_{s}"), x, size, bias, grad_checkpointing=self.grad_checkpointing)
        return x.transpose(1, 2).reshape(x.shape[0], -1, size[0], size[1])

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage maps [B, C_i, H_i, W_i] at strides 4 / 8 / 16 / 32 (``norm`` is ignored: CMT has no final norm).

        Returns the maps, or ``(last stage map [B, C, H/32, W/32], maps)``.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self.check_input(x)
        take, max_index = feature_take_indices(4, indices)
        out = []
        x = self.stem(x)
        for i in range(max_index + 1 if stop_early else 4):
            x = self._stage(i, x)
            if i in take:
                out.append(x if output_fmt == "NCHW" else x.permute(0, 2, 3, 1))
        return out if intermediates_only else (x, out)

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Keep every stage; drop the classifier (conv head included) when ``prune_head``."""
        take, _ = feature_take_indices(4, indices)
        if prune_head:
            self._fc = self._bn = self._swish = nn.Identity()
            self.head_hidden_size = self.num_features
            self.reset_classifier(0)
        return take

    def _forward_features_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward_features` for TorchScript, which cannot look submodules up by a computed name (``_stage``)
        and whose official key layout (``patch_embed_a``, ``blocks_a`` ...) leaves no per-stage container to loop
        over: the same four stages, written out."""
        x = self.stem(x)
        x, size = self.patch_embed_a(x)
        bias = resize_relative_pos(self.relative_pos_a, self.grids[0], self._grid(0, size))
        for blk in self.blocks_a:
            x = blk(x, size, bias)
        x, size = self.patch_embed_b(x.transpose(1, 2).reshape(x.shape[0], -1, size[0], size[1]))
        bias = resize_relative_pos(self.relative_pos_b, self.grids[1], self._grid(1, size))
        for blk in self.blocks_b:
            x = blk(x, size, bias)
        x, size = self.patch_embed_c(x.transpose(1, 2).reshape(x.shape[0], -1, size[0], size[1]))
        bias = resize_relative_pos(self.relative_pos_c, self.grids[2], self._grid(2, size))
        for blk in self.blocks_c:
            x = blk(x, size, bias)
        x, size = self.patch_embed_d(x.transpose(1, 2).reshape(x.shape[0], -1, size[0], size[1]))
        bias = resize_relative_pos(self.relative_pos_d, self.grids[3], self._grid(3, size))
        for blk in self.blocks_d:
            x = blk(x, size, bias)
        return x.transpose(1, 2).reshape(x.shape[0], -1, size[0], size[1])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> last stage map [B, C4, H/32, W/32] (sizes floor through the stride-2 convs)."""
        if torch.jit.is_scripting():
            return self._forward_features_scripted(x)
        self.check_input(x)
        x = self.stem(x)
        for i in range(4):
            x = self._stage(i, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """[B, C4, h, w] map -> logits [B, classes] (or the pooled [B, fc_dim] with ``pre_logits``; global pool
        ``""``: the unpooled [B, fc_dim, h, w])."""
        x = self._swish(self._bn(self._fc(x)))
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self._drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------- weights, variants, registry
def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: CMT) -> dict[str, torch.Tensor]:
    """Official CMT checkpoints (``model`` / ``state_dict`` wrappers, ``module.`` prefixes); position biases of
    another construction size are resized to ``model``'s."""
    for key in ("model_ema", "state_dict_ema", "model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    out = {}
    for k, v in state_dict.items():
        k = k.removeprefix("module.")
        if k.startswith("relative_pos_") and k in dict(model.named_parameters()):
            i = _STAGES.index(k[-1])
            hq_wq, hk_wk = v.shape[1], v.shape[2]
            sq, sk = round(hq_wq**0.5), round(hk_wk**0.5)
            v = resize_relative_pos(v, (sq, sq, sk, sk), model.grids[i])
        out[k] = v
    return out


#: Architectures of the official registered models (``cmt_pytorch/cmt.py``); ``img_size`` is the size each was
#: trained at (the official README's commands), which sizes the position biases of the released checkpoints.
CMT_VARIANTS: dict[str, dict[str, Any]] = {
    "cmt_ti": dict(img_size=160),
    "cmt_xs": dict(
        img_size=192, embed_dims=(52, 104, 208, 416), stem_channel=16, depths=(3, 3, 12, 3), mlp_ratios=(3.77,) * 4
    ),
    "cmt_s": dict(
        img_size=224, embed_dims=(64, 128, 256, 512), stem_channel=32, depths=(3, 3, 16, 3), mlp_ratios=(4,) * 4
    ),
    "cmt_b": dict(
        img_size=256,
        embed_dims=(76, 152, 304, 608),
        stem_channel=38,
        depths=(4, 4, 20, 4),
        mlp_ratios=(4,) * 4,
        head_drop_rate=0.3,
    ),
}


def _cfg(size: int, **kwargs: Any) -> dict[str, Any]:
    # the official evaluation (datasets.py): resize to int(256 / 224 * size) bicubic, centre crop: crop_pct 0.875
    return imagenet_cfg(
        input_size=(3, size, size),
        pool_size=(size // 32, size // 32),
        first_conv="stem_conv1",
        classifier="head",
        license="apache-2.0",
        origin_url="https://github.com/huawei-noah/Efficient-AI-Backbones/tree/master/cmt_pytorch",
        paper_ids="arXiv:2107.06263",
        **kwargs,
    )


default_cfgs = generate_default_cfgs({f"{n}.in1k": _cfg(a["img_size"]) for n, a in CMT_VARIANTS.items()})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> CMT:
    return build_family_model(CMT, variant, pretrained, checkpoint_filter_fn, **{**CMT_VARIANTS[variant], **kwargs})


@register_model
def cmt_ti(pretrained: bool = False, **kwargs: Any) -> CMT:
    """CMT-Ti at 160: 9.49 M params (paper 9.5 M)."""
    return _create("cmt_ti", pretrained, **kwargs)


@register_model
def cmt_xs(pretrained: bool = False, **kwargs: Any) -> CMT:
    """CMT-XS at 192: 15.25 M params (paper 15.2 M)."""
    return _create("cmt_xs", pretrained, **kwargs)


@register_model
def cmt_s(pretrained: bool = False, **kwargs: Any) -> CMT:
    """CMT-S at 224: 26.26 M params (the paper says 25.1 M)."""
    return _create("cmt_s", pretrained, **kwargs)


@register_model
def cmt_b(pretrained: bool = False, **kwargs: Any) -> CMT:
    """CMT-B at 256: 45.72 M params (paper 45.7 M)."""
    return _create("cmt_b", pretrained, **kwargs)
