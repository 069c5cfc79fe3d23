"""CrossFormer (ICLR 2022) and CrossFormer++ (TPAMI 2023) in pure PyTorch, timm-native.

One model class serves classification and dense prediction:

* tokens travel as ``[B, H, W, C]`` maps, so any input of at least 32 x 32 pixels works (odd sizes,
  non-square, sizes that are not multiples of 32 or of the group size), and the forward is a pure
  function of its input;
* ``forward_intermediates`` gives the four NCHW stage maps (strides 4/8/16/32, taken before patch merging
  like the official dense code), and :class:`CrossFormerBackbone` is the same network without final norm
  and head, whose state dict equals the official dense backbones' key for key.

State-dict keys equal the official ones, so official weights load without renaming (the v1 checkpoints'
derived ``attn.biases`` / ``attn.relative_position_index`` buffers are dropped by
:func:`checkpoint_filter_fn`).
"""

# No ``from __future__ import annotations`` here: torch.fx copies ``forward``'s annotations into the code it generates,
# and TorchScript cannot resolve them there as strings (FX-traced-then-scripted models).
from collections.abc import Callable, Sequence
from typing import Any

import torch
from timm.layers import DropPath, SelectAdaptivePool2d
from timm.models import generate_default_cfgs, register_model, register_notrace_module
from timm.models._features import feature_take_indices
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..layers import (
    LDA_RULES,
    CrossScaleEmbedding,
    CrossScalePatchMerging,
    GroupAttention,
    LdaRule,
    Mlp,
    group_geometry,
    plan_group_layout,
)
from ..utils.allocator import release_freed_memory
from ._common import build_family_model, imagenet_cfg, init_weights
from ._features import StageFeatures

__all__ = [
    "GLOBAL_POOLS",
    "MIN_INPUT_SIZE",
    "CrossFormer",
    "CrossFormerBackbone",
    "CrossFormerBlock",
    "CrossFormerFeatures",
    "CrossFormerStage",
]

#: Smallest input side: four stages of /4, /2, /2, /2 must leave at least one token.
MIN_INPUT_SIZE = 32

#: Head pooling choices, timm's names (``"catavgmax"`` doubles the classifier's input width; ``""`` keeps the map).
GLOBAL_POOLS = ("avg", "max", "avgmax", "catavgmax", "")


def _check_global_pool(global_pool: str) -> str:
    if global_pool not in GLOBAL_POOLS:
        raise ValueError(f"global_pool must be one of {GLOBAL_POOLS}, got {global_pool!r}")
    return global_pool


def _float32_tail(x: torch.Tensor) -> bool:
    """Whether autocast is on for ``x``'s device (the final norm and head then run in float32); False for the proxies of
    torch.fx symbolic tracing, whose graphs keep the plain path."""
    return isinstance(x, torch.Tensor) and torch.is_autocast_enabled(x.device.type)


def _per_stage(value: Any, num_stages: int, name: str) -> tuple:
    if isinstance(value, (int, float)):
        return (value,) * num_stages
    value = tuple(value)
    if len(value) != num_stages:
        raise ValueError(f"{name} has {len(value)} entries but the model has {num_stages} stages: {value}")
    return value


@register_notrace_module  # torch.fx leaf: the groups are planned from the map's size, which a Proxy does not have
class CrossFormerBlock(nn.Module):
    """``x + DropPath(Attn(LN(x)))``, ``x + DropPath(MLP(LN(x)))``, then the optional Activation Cooling Layer.

    TorchScript and ``torch.export`` run :meth:`forward_plain` (plain modules, sizes as integer arithmetic);
    torch.fx keeps the block as one leaf module.

    Args:
        dim: Channels C.
        num_heads: Attention heads.
        group_size: G of the stage.
        interval: I of the stage (used by LDA blocks).
        long_distance: LDA (True) or SDA (False).
        lda_rule: ``"fixed_group"`` or ``"fixed_interval"`` (see :mod:`crossformer_vision.layers.grouping`).
        use_acl: Apply the Activation Cooling Layer (3x3 depthwise conv then LayerNorm, no residual).
    """

    __constants__ = ["use_acl"]

    def __init__(
        self,
        dim: int,
        num_heads: int,
        group_size: int = 7,
        interval: int = 8,
        long_distance: bool = False,
        lda_rule: LdaRule = "fixed_group",
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        use_acl: bool = False,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        fused_attn: bool | None = None,
    ):
        super().__init__()
        self.group_size = group_size
        self.interval = interval
        self.long_distance = long_distance
        self.lda_rule = lda_rule
        self.use_acl = use_acl
        self.norm1 = norm_layer(dim)
        self.attn = GroupAttention(dim, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop, fused_attn)
        if use_acl:
            # official names and order: ex_conv / ex_ln ("extra conv"), so official weights load as they are
            self.ex_conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)
            self.ex_ln = norm_layer(dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def layout(self, height: int, width: int):
        return plan_group_layout(height, width, self.group_size, self.interval, self.long_distance, self.lda_rule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] -> [B, H, W, C]."""
        if torch.jit.is_scripting():
            return self.forward_plain(x)
        if torch.compiler.is_exporting():
            return self.forward_plain(x)
        layout = self.layout(x.shape[1], x.shape[2])
        x = x + self.drop_path(self.attn(x, layout, norm=self.norm1))
        x = x + self.drop_path(self.mlp(x, norm=self.norm2))
        return self._cool(x)

    def forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` in plain modules, the group layout as integer arithmetic on the (possibly symbolic) map
        size: [B, H, W, C] -> [B, H, W, C]."""
        geometry = group_geometry(
            x.shape[1], x.shape[2], self.group_size, self.interval, self.long_distance, self.lda_rule == "fixed_group"
        )
        x = x + self.drop_path(self.attn.forward_plain(self.norm1(x), geometry))
        x = x + self.drop_path(self.mlp.forward_plain(self.norm2(x)))
        return self._cool(x)

    def _cool(self, x: torch.Tensor) -> torch.Tensor:
        """The Activation Cooling Layer where the block has one: [B, H, W, C] -> [B, H, W, C]."""
        if self.use_acl:
            x = self.ex_ln(self.ex_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1))
        return x


def _release_after_backward(grad: torch.Tensor) -> None:
    """Gradient hook on a checkpointed stage's input: the stage's backward pass is done, release what it freed."""
    release_freed_memory()


class CrossFormerStage(nn.Module):
    """Blocks alternating SDA / LDA (SDA first), followed by cross-scale patch merging (except the last stage).

    ``forward_blocks`` gives the stage's feature map (before merging), ``forward`` the merged map.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        group_size: int,
        interval: int,
        lda_rule: LdaRule,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        use_acl: bool = False,
        merge_kernel_sizes: Sequence[int] | None = None,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        fused_attn: bool | None = None,
    ):
        super().__init__()
        drop_path = list(drop_path) or [0.0] * depth
        self.grad_checkpointing = False
        self.release_memory = True  # with grad checkpointing: return freed heap memory between stages
        self.blocks = nn.ModuleList(
            CrossFormerBlock(
                dim,
                num_heads,
                group_size=group_size,
                interval=interval,
                long_distance=i % 2 == 1,
                lda_rule=lda_rule,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                proj_drop=proj_drop,
                attn_drop=attn_drop,
                drop_path=drop_path[i],
                # CrossFormer++: cool activations after every third block except the last one
                use_acl=use_acl and (i + 1) % 3 == 0 and i < depth - 1,
                norm_layer=norm_layer,
                fused_attn=fused_attn,
            )
            for i in range(depth)
        )
        self.downsample = (
            CrossScalePatchMerging(dim, 2 * dim, merge_kernel_sizes, norm_layer)
            if merge_kernel_sizes is not None
            else None
        )

    def forward_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] -> [B, H, W, C] (the stage's feature map)."""
        if torch.jit.is_scripting():
            for block in self.blocks:
                x = block(x)
            return x
        ckpt = self.grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
        if ckpt and self.release_memory and x.device.type == "cpu" and not torch.compiler.is_compiling():
            # the point of checkpointing is memory: return the heap pages the previous stage freed to the kernel,
            # here and, in the backward pass, once this stage's gradients are done (utils/allocator.py); activations
            # on an accelerator leave glibc's heap alone, so there the call would only cost time
            release_freed_memory()
            if x.requires_grad:
                x.register_hook(_release_after_backward)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if ckpt else block(x)
        return x

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        """The cross-scale patch merging, if the stage has one: [B, H, W, C] -> [B, H/2, W/2, 2C]."""
        return self.downsample(x) if self.downsample is not None else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(self.forward_blocks(x))


class CrossFormer(nn.Module):
    """CrossFormer / CrossFormer++ image model.

    Args:
        img_size: Nominal input size (metadata only: every input of at least 32 x 32 works).
        in_chans: Image channels.
        num_classes: Classes of the head (0 for no head).
        global_pool: ``"avg"`` (the official head), ``"max"``, ``"avgmax"``, ``"catavgmax"`` or ``""`` (no pooling;
            ``forward_head`` then returns the token map).
        embed_dim: Width D of stage 1; stage widths are D, 2D, 4D, 8D.
        depths: Blocks per stage.
        num_heads: Attention heads per stage.
        group_size: G per stage (an int applies to all stages).
        crs_interval: LDA interval I per stage.
        mlp_ratio: MLP hidden width / C, per stage or one value.
        qkv_bias: Bias in the qkv projections.
        qk_scale: Override of the attention scale.
        drop_rate: Dropout before the classifier.
        proj_drop_rate: Dropout after the stem, in the MLPs and after attention projections (the official
            ``drop_rate``).
        attn_drop_rate: Dropout on attention weights.
        drop_path_rate: Stochastic depth, increased linearly over all blocks up to this value.
        embed_kernel_sizes: Kernels of the cross-scale embedding (the first is the stride).
        merge_kernel_sizes: Kernels of each cross-scale patch merging (the first is the stride).
        use_acl: CrossFormer++ Activation Cooling Layers.
        lda_rule: ``"fixed_group"`` (CrossFormer++ rule, the default) or ``"fixed_interval"`` (the v1 dense
            rule, used by the released CrossFormer v1 detection / segmentation weights).
        patch_norm: LayerNorm after the stem.
        fused_attn: Use ``F.scaled_dot_product_attention`` (default: timm's global setting).

    ``forward_features`` returns ``[B, H, W, C]`` maps (``output_fmt = "NHWC"``, as timm's Swin declares); the stage
    maps of ``forward_intermediates`` and ``features_only`` are NCHW unless asked otherwise.
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        group_size: int | Sequence[int] = 7,
        crs_interval: int | Sequence[int] = (8, 4, 2, 1),
        mlp_ratio: float | Sequence[float] = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        embed_kernel_sizes: Sequence[int] = (4, 8, 16, 32),
        merge_kernel_sizes: Sequence[Sequence[int]] = ((2, 4), (2, 4), (2, 4)),
        use_acl: bool = False,
        lda_rule: LdaRule = "fixed_group",
        patch_norm: bool = True,
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
        fused_attn: bool | None = None,
    ):
        super().__init__()
        _check_global_pool(global_pool)
        if lda_rule not in LDA_RULES:
            raise ValueError(f"unknown lda_rule {lda_rule!r}; expected one of {LDA_RULES}")
        num_stages = len(depths)
        group_size = _per_stage(group_size, num_stages, "group_size")
        crs_interval = _per_stage(crs_interval, num_stages, "crs_interval")
        mlp_ratio = _per_stage(mlp_ratio, num_stages, "mlp_ratio")
        num_heads = _per_stage(num_heads, num_stages, "num_heads")
        merge_kernel_sizes = _per_stage(tuple(map(tuple, merge_kernel_sizes)), num_stages - 1, "merge_kernel_sizes")

        self.in_chans = in_chans
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_heads = num_heads
        self.group_size = group_size
        self.crs_interval = crs_interval
        self.mlp_ratio = mlp_ratio
        self.use_acl = use_acl
        self.lda_rule = lda_rule
        self.embed_kernel_sizes = tuple(embed_kernel_sizes)
        self.merge_kernel_sizes = merge_kernel_sizes
        self.num_features = self.head_hidden_size = embed_dim * 2 ** (num_stages - 1)
        self.output_fmt = "NHWC"  # of forward_features: timm's generic code reads the axes from it

        self.patch_embed = CrossScaleEmbedding(
            in_chans, embed_dim, embed_kernel_sizes, norm_layer=norm_layer if patch_norm else None
        )
        self.pos_drop = nn.Dropout(proj_drop_rate)
        self.grad_checkpointing = False
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        self.feature_info = []
        for i in range(num_stages):
            dim = embed_dim * 2**i
            self.layers.append(
                CrossFormerStage(
                    dim,
                    depths[i],
                    num_heads[i],
                    group_size[i],
                    crs_interval[i],
                    lda_rule,
                    mlp_ratio=mlp_ratio[i],
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    use_acl=use_acl,
                    merge_kernel_sizes=merge_kernel_sizes[i] if i < num_stages - 1 else None,
                    norm_layer=norm_layer,
                    fused_attn=fused_attn,
                )
            )
            # the stage's map is its last block's output (the stage module's own output is merged to the next width)
            self.feature_info.append(
                dict(num_chs=dim, reduction=embed_kernel_sizes[0] * 2**i, module=f"layers.{i}.blocks.{depths[i] - 1}")
            )
        self.norm = norm_layer(self.num_features)
        self.head_drop = nn.Dropout(drop_rate)
        self._make_head(num_classes, global_pool)
        self.apply(init_weights)

    def _make_head(self, num_classes: int, global_pool: str) -> None:
        # the pool has no parameters: the head's keys stay the official ``head.weight`` / ``head.bias``
        self.global_pool = global_pool
        self.pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True, input_fmt="NHWC")
        width = self.num_features * self.pool.feat_mult()
        self.num_classes = num_classes
        self.head = nn.Linear(width, num_classes) if num_classes > 0 else nn.Identity()

    # ------------------------------------------------------------------ timm model contract
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Names of the parameters the official recipe does not decay: every norm weight and every bias."""
        return {name for name, p in self.named_parameters() if p.ndim <= 1 or name.endswith(".bias")}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)"
            if coarse
            else [
                (r"^layers\.(\d+)\.downsample", (0,)),
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(
        self, enable: bool = True, release_memory: bool = True, last_stage: bool = False
    ) -> None:
        """Recompute the activations of the embedding and of each block in the backward pass instead of keeping them.

        The last stage's blocks keep theirs unless ``last_stage``: their maps have 1/64 of the first stage's tokens
        (at 8x the channels) and are freed before the backward pass reaches the first stages, where the peak is, so
        recomputing them would cost time without lowering the peak.
        With ``release_memory`` the free pages of glibc's heap go back to the kernel between stages (forward and
        backward), which is where most of the saving in peak RSS comes from on CPU (see ``utils/allocator.py``).
        Measurements: docs/benchmarks.md, "Gradient checkpointing".
        """
        self.grad_checkpointing = enable
        last = len(self.layers) - 1
        for i, stage in enumerate(self.layers):
            stage.grad_checkpointing = enable and (i < last or last_stage)
            stage.release_memory = release_memory

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """The cross-scale embedding, checkpointed with the blocks: its padded and unshuffled copies of the image and
        its convolutions' outputs would otherwise stay alive for the whole step, under the stage-1 blocks' forward,
        where the peak is; recomputing it is cheap (docs/benchmarks.md, "Gradient checkpointing")."""
        if torch.jit.is_scripting():
            return self.pos_drop(self.patch_embed(x))
        if self.grad_checkpointing and torch.is_grad_enabled():
            return self.pos_drop(checkpoint(self.patch_embed, x, use_reentrant=False))
        return self.pos_drop(self.patch_embed(x))

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self._make_head(num_classes, self.global_pool if global_pool is None else _check_global_pool(global_pool))

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear error for inputs the model cannot take (called by every public forward)."""
        if isinstance(x, torch.fx.Proxy):  # symbolic tracing: no sizes to check
            return
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected an image tensor [B, {self.in_chans}, H, W], got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"expected a floating-point image tensor, got dtype {x.dtype}; convert with x.float()")
        if x.ndim != 4:
            raise ValueError(f"expected an image batch [B, {self.in_chans}, H, W], got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        if c != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channels, got {c} (shape {tuple(x.shape)}); "
                f"convert the images or create the model with in_chans={c}"
            )
        if b == 0:
            raise ValueError(f"empty batch: got shape {tuple(x.shape)}, need at least one image")
        if min(h, w) < MIN_INPUT_SIZE:
            raise ValueError(
                f"input {h}x{w} is too small: both sides must be at least {MIN_INPUT_SIZE} pixels "
                "(four stages downsample by 32); resize or pad the image"
            )

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage feature maps (after each stage's blocks, before its patch merging), timm semantics.

        Args:
            x: Image batch [B, C, H, W].
            indices: Last n stages if int, all if None, else the stage indices to return.
            norm: Apply the final norm to the last stage's map when it is returned.
            stop_early: Stop after the last requested stage.
            output_fmt: ``"NCHW"`` or ``"NHWC"``.
            intermediates_only: Return only the intermediates.

        Returns:
            The maps [B, C_i, H/2^(i+2), W/2^(i+2)], or ``(final features [B, H/32, W/32, 8D], maps)``; with
            ``stop_early`` before the last stage, the final features are the last stage run's map (NHWC, no norm).
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self.check_input(x)
        take_indices, max_index = feature_take_indices(len(self.layers), indices)
        last_stage = max_index if stop_early else len(self.layers) - 1
        x, intermediates = self._forward_stages(x, take_indices, last_stage, norm, output_fmt == "NCHW")
        if intermediates_only:
            return intermediates
        if last_stage < len(self.layers) - 1:  # stopped early: the final norm belongs to the last stage's width
            return x, intermediates
        return self.norm(x), intermediates

    def _forward_stages(
        self, x: torch.Tensor, take_indices: list[int], last_stage: int, norm: bool, nchw: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Embedding and stages ``0..last_stage`` (TorchScript compiles it for the feature extractors).

        Returns:
            The last stage's output [B, h, w, C] (merged to the next width unless it is the last stage or
            ``last_stage`` stops early) and the maps of the stages in ``take_indices`` (NCHW when ``nchw``); with
            ``norm`` the final norm is applied to the last stage's map.
        """
        intermediates: list[torch.Tensor] = []
        x = self._embed(x)
        last = len(self.layers) - 1
        for i, stage in enumerate(self.layers):
            if i <= last_stage:
                feat = stage.forward_blocks(x)
                if i in take_indices:
                    out = self.norm(feat) if norm and i == last else feat
                    intermediates.append(out.permute(0, 3, 1, 2) if nchw else out)
                x = stage.merge(feat) if i < last_stage else feat
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages after the last index in ``indices`` (and the norm / head).

        When stages are cut off, the final norm (made for the last stage's width) becomes ``nn.Identity`` and
        ``num_features`` is the new last stage's width; a head that is kept is rebuilt for that width (new weights).
        """
        num_stages = len(self.layers)
        take_indices, max_index = feature_take_indices(num_stages, indices)
        self.layers = self.layers[: max_index + 1]
        if self.layers[-1].downsample is not None:
            self.layers[-1].downsample = None
        cut = max_index < num_stages - 1
        if cut:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_norm or cut:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        elif cut:
            self.reset_classifier(self.num_classes)
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] image -> [B, H/32, W/32, 8D] normalised final token map."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        x = self._embed(x)
        for stage in self.layers:
            x = stage(x)
        if torch.jit.is_scripting():
            return self.norm(x)
        if _float32_tail(x):
            # under autocast the final norm, pooling and classifier run in float32 (a few MFLOPs per image): the logits
            # decide top-1, and 16-bit rounding there can flip near-tied decisions
            with torch.autocast(x.device.type, enabled=False):
                return self.norm(x.float())
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """[B, H, W, C] map -> logits [B, classes] (or pooled features [B, C] with ``pre_logits``)."""
        if torch.jit.is_scripting():
            return self._head(x, pre_logits)
        if _float32_tail(x) and x.dtype == torch.float32:
            with torch.autocast(x.device.type, enabled=False):
                return self._head(x, pre_logits)
        return self._head(x, pre_logits)

    def _head(self, x: torch.Tensor, pre_logits: bool) -> torch.Tensor:
        if self.global_pool != "":  # "avg" is x.mean((1, 2)), the official head's pooling; "" keeps the map
            x = self.pool(x)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class CrossFormerBackbone(CrossFormer):
    """The dense-prediction trunk: ``forward`` returns the stage maps as NCHW tensors.

    No final norm and no head, exactly like the official detection / segmentation backbones, so their
    state dicts load key for key.

    Args:
        out_indices: Stages to return (default: all four).
        **kwargs: :class:`CrossFormer` arguments.
    """

    def __init__(self, out_indices: Sequence[int] = (0, 1, 2, 3), **kwargs: Any):
        kwargs.update(num_classes=0, global_pool="")
        super().__init__(**kwargs)
        self.out_indices = self.prune_intermediate_layers(list(out_indices), prune_norm=True, prune_head=True)
        self.out_channels = [self.feature_info[i]["num_chs"] for i in self.out_indices]
        self.out_strides = [self.feature_info[i]["reduction"] for i in self.out_indices]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # type: ignore[override]
        """[B, C, H, W] image -> list of [B, C_i, H_i, W_i] maps, one per ``out_indices`` entry."""
        if not torch.jit.is_scripting():
            self.check_input(x)
        return self._forward_stages(x, self.out_indices, self.out_indices[-1], False, True)[1]


# ---------------------------------------------------------------------- weights, variants, registry
def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: CrossFormer) -> dict[str, torch.Tensor]:
    """Adapt any official checkpoint layout to ``model`` (used by timm's pretrained loading)."""
    from ._keys import HEAD_KEYS, extract_backbone_state_dict, unwrap_state_dict

    state_dict = extract_backbone_state_dict(unwrap_state_dict(state_dict))
    own = model.state_dict()
    return {k: v for k, v in state_dict.items() if k in own or k not in HEAD_KEYS}


class CrossFormerFeatures(StageFeatures):
    """timm's ``features_only=True`` wrapper (stage maps from ``forward_intermediates``, grad checkpointing forwarded
    to the model) that TorchScript can compile too."""

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, C, H, W] image -> the ``out_indices`` stage maps (NCHW unless ``output_fmt`` says NHWC)."""
        if not torch.jit.is_scripting():
            return super().forward(x)
        nchw = self.output_fmt == "NCHW"
        return self.model._forward_stages(x, self.out_indices, self.out_indices[-1], self.norm, nchw)[1]


def _create_crossformer(variant: str, pretrained: bool = False, **kwargs: Any) -> CrossFormer:
    return build_family_model(
        CrossFormer, variant, pretrained, checkpoint_filter_fn, feature_wrapper=CrossFormerFeatures, **kwargs
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return imagenet_cfg(
        first_conv=[f"patch_embed.projs.{i}" for i in range(4)],  # every stem conv reads the image
        classifier="head",
        license="mit",
        origin_url="https://github.com/cheerss/CrossFormer",
        **kwargs,
    )


_V1_PAPER = "arXiv:2108.00154"
_PP_PAPER = "arXiv:2303.06908"

default_cfgs = generate_default_cfgs(
    {
        "crossformer_t.in1k": _cfg(paper_ids=_V1_PAPER),
        "crossformer_s.in1k": _cfg(paper_ids=_V1_PAPER),
        "crossformer_b.in1k": _cfg(paper_ids=_V1_PAPER),
        "crossformer_l.in1k": _cfg(paper_ids=_V1_PAPER),
        "crossformerpp_s.in1k": _cfg(paper_ids=_PP_PAPER),
        "crossformerpp_b.in1k": _cfg(paper_ids=_PP_PAPER),
        "crossformerpp_l.in1k": _cfg(paper_ids=_PP_PAPER),
        "crossformerpp_h.in1k": _cfg(paper_ids=_PP_PAPER),
    }
)

#: Architecture of every variant (the official configs; drop path is the ImageNet recipe's).
VARIANT_ARGS: dict[str, dict[str, Any]] = {
    "crossformer_t": dict(embed_dim=64, depths=(1, 1, 8, 6), num_heads=(2, 4, 8, 16), drop_path_rate=0.1),
    "crossformer_s": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.2),
    "crossformer_b": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    "crossformer_l": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
}
_PP = dict(group_size=(4, 4, 14, 7), crs_interval=(4, 2, 1, 1), use_acl=True)
VARIANT_ARGS.update(
    {
        "crossformerpp_s": dict(embed_dim=64, depths=(2, 2, 18, 2), num_heads=(2, 4, 8, 16), drop_path_rate=0.2, **_PP),
        "crossformerpp_b": dict(
            embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24), drop_path_rate=0.3, **_PP
        ),
        "crossformerpp_l": dict(
            embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5, **_PP
        ),
        "crossformerpp_h": dict(
            embed_dim=128, depths=(6, 6, 18, 2), num_heads=(4, 8, 16, 32), drop_path_rate=0.5, **_PP
        ),
    }
)


def _variant(name: str, pretrained: bool, kwargs: dict[str, Any]) -> CrossFormer:
    return _create_crossformer(name, pretrained=pretrained, **{**VARIANT_ARGS[name], **kwargs})


@register_model
def crossformer_t(pretrained: bool = False, **kwargs: Any) -> CrossFormer:
    """CrossFormer-T: 27.8 M params, 2.9 GFLOPs."""
    return _variant("crossformer_t", pretrained, kwargs)


@register_model
def crossformer_s(pretrained: bool = False, **kwargs: Any) -> CrossFormer:
    """CrossFormer-S: 30.7 M params, 4.9 GFLOPs."""
    return _variant("crossformer_s", pretrained, kwargs)


@register_model
def crossformer_b(pretrained: bool = False, **kwargs: Any) -> CrossFormer:
    """CrossFormer-B: 52.0 M params, 9.2 GFLOPs."""
    return _variant("crossformer_b", pretrained, kwargs)


@register_model
def crossformer_l(pretrained: bool = False, **kwargs: Any) -> CrossFormer:
    """CrossFormer-L: 92.0 M params, 16.1 GFLOPs."""
    return _variant("crossformer_l", pretrained, kwargs)


@register_model
def crossformerpp_s(pretrained: bool = False, **kwargs: Any) -> CrossFormer:
    """CrossFormer++-S: 23.3 M params, 4.39 GFLOPs by the official counter (4.9 published)."""
    return _variant("crossformerpp_s", pretrained, kwargs)


@register_model
def crossformerpp_b(pretrained: bool = False, **kwargs: Any) -> CrossFormer:
    """CrossFormer++-B: 52.0 M params, 9.5 GFLOPs."""
    return _variant("crossformerpp_b", pretrained, kwargs)


@register_model
def crossformerpp_l(pretrained: bool = False, **kwargs: Any) -> CrossFormer:
    """CrossFormer++-L: 92.0 M params, 16.6 GFLOPs."""
    return _variant("crossformerpp_l", pretrained, kwargs)


@register_model
def crossformerpp_h(pretrained: bool = False, **kwargs: Any) -> CrossFormer:
    """CrossFormer++-H: 96.0 M params, 21.8 GFLOPs."""
    return _variant("crossformerpp_h", pretrained, kwargs)
