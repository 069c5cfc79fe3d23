"""mmsegmentation-compatible decode heads and neck: UPerHead, FCNHead, FPN and FPNHead, without mmcv or mmseg.

Module names give ``state_dict()`` keys that match mmseg's key for key, shape for shape and in the same order
(mmseg 0.12, 0.29 and 1.x agree). An official UPerNet / Semantic FPN checkpoint therefore loads once its
``decode_head.`` / ``auxiliary_head.`` / ``neck.`` prefixes are stripped. The forward math follows mmseg. All bilinear
resizes use ``align_corners=False`` and an explicit output size. The FPN top-down path uses PyTorch's legacy
``nearest``, not ``nearest-exact``.

Every head takes the list of backbone feature maps ``[B, C_i, H_i, W_i]`` (strides 4, 8, 16, 32 for CrossFormer)
and returns logits at its own stride. :func:`resize_logits` does mmseg's final resize to the image size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvModule", "FCNHead", "FPNHead", "UPerHead", "Upsample", "resize_logits"]

_NORM_LAYERS: dict[str, type[nn.Module]] = {"bn": nn.BatchNorm2d, "syncbn": nn.SyncBatchNorm}


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize, ``align_corners=False``, always through ``F.interpolate`` (also when sizes already match)."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize logits to the image size, as mmseg's final ``whole``-mode resize does.

    Args:
        logits: ``[B, K, h, w]`` head output.
        size: ``(H, W)`` target size. Pass the padded input size first when the image was padded, then crop, then
            resize to the original size, as mmseg does.

    Returns:
        ``[B, K, H, W]`` logits (bilinear, ``align_corners=False``).
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B, K, h, w], got shape {tuple(logits.shape)}")
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be a positive (H, W) pair, got {size}")
    return _resize(logits, size)


def check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _norm_layer(norm: str | None) -> type[nn.Module] | None:
    if norm is None:
        return None
    layer = _NORM_LAYERS.get(str(norm).lower())
    if layer is None:
        raise ValueError(f"unknown norm {norm!r}; expected one of {sorted(_NORM_LAYERS)} or None")
    return layer


class ConvModule(nn.Module):
    """Conv2d, then an optional norm, then an optional ReLU: mmcv's ``ConvModule`` with its state-dict names.

    The conv has a bias only when there is no norm (mmcv's ``bias='auto'``). The keys are ``conv.weight``, plus
    ``conv.bias`` without a norm or ``bn.{weight,bias,running_mean,running_var,num_batches_tracked}`` with one.
    ``nn.SyncBatchNorm`` (``norm="syncbn"``, for DDP training) has the same keys as ``nn.BatchNorm2d``.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Square kernel size.
        stride: Convolution stride.
        padding: Zero padding on each side.
        dilation: Kernel dilation.
        norm: ``"bn"`` (BatchNorm2d), ``"syncbn"`` (SyncBatchNorm) or ``None``. mmcv spellings (``"BN"``,
            ``"SyncBN"``) work too.
        act: Apply an in-place ReLU after the norm.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        norm: str | None = "bn",
        act: bool = True,
    ):
        super().__init__()
        norm_layer = _norm_layer(norm)
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=norm_layer is None,
        )
        self.bn = norm_layer(out_channels) if norm_layer is not None else None
        self.activate = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C_in, H, W] -> [B, C_out, H', W']."""
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.activate is not None:
            x = self.activate(x)
        return x


class Upsample(nn.Module):
    """mmseg's parameter-free ``Upsample``: resize to ``int(dim * scale_factor)`` (bilinear, align_corners=False).

    Args:
        scale_factor: Factor applied to H and W before truncating to int.
    """

    def __init__(self, scale_factor: float = 2.0):
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, C, int(H * s), int(W * s)]."""
        return _resize(x, [int(dim * self.scale_factor) for dim in x.shape[-2:]])

    def extra_repr(self) -> str:
        return f"scale_factor={self.scale_factor}"


def select_inputs(
    inputs: Sequence[torch.Tensor], in_index: Sequence[int], in_channels: Sequence[int], owner: str
) -> list[torch.Tensor]:
    """Pick ``inputs[i]`` for each ``i`` in ``in_index`` and check that it is ``[B, in_channels[k], H, W]``."""
    if isinstance(inputs, torch.Tensor):
        raise TypeError(f"{owner} takes the list of feature maps [B, C_i, H_i, W_i], not a single tensor")
    num_levels = len(inputs)
    selected = []
    for k, (index, channels) in enumerate(zip(in_index, in_channels)):
        if not -num_levels <= index < num_levels:
            raise ValueError(
                f"{owner} reads input level {index} (in_index={list(in_index)}) but got {num_levels} feature maps"
            )
        x = inputs[index]
        if x.dim() != 4:
            raise ValueError(f"{owner}: input level {index} must be [B, C, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise ValueError(
                f"{owner}: input level {index} has {x.shape[1]} channels, expected {channels} "
                f"(in_channels[{k}]); in_channels must list the backbone's channels per selected level"
            )
        selected.append(x)
    return selected


class _DecodeHead(nn.Module):
    """What every mmseg decode head shares: input selection, dropout and the 1x1 classifier ``conv_seg``.

    ``conv_seg`` is registered first, as in mmseg, so it leads the state dict.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        dropout_ratio: float,
        in_index: Sequence[int],
    ):
        super().__init__()
        name = type(self).__name__
        check_positive(f"{name} channels", channels)
        check_positive(f"{name} num_classes", num_classes)
        for c in in_channels:
            check_positive(f"{name} in_channels entries", c)
        if len(in_index) != len(in_channels):
            raise ValueError(
                f"{name}: in_index {list(in_index)} has {len(in_index)} entries but in_channels {list(in_channels)} "
                f"has {len(in_channels)}; give one input index per entry of in_channels"
            )
        if not 0 <= dropout_ratio < 1:
            raise ValueError(f"{name}: dropout_ratio must be in [0, 1), got {dropout_ratio}")
        self.channels = channels
        self.num_classes = num_classes
        self._levels = (tuple(in_index), tuple(in_channels))
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def _inputs(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return select_inputs(inputs, *self._levels, owner=type(self).__name__)

    def forward_features(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        """[B, channels, h, w] features -> [B, num_classes, h, w] logits (dropout, then ``conv_seg``)."""
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Feature maps ``[B, C_i, H_i, W_i]`` -> logits ``[B, num_classes, h, w]`` at the head's output stride."""
        return self.cls_seg(self.forward_features(inputs))


def _multi_level_index(in_channels: Sequence[int], in_index: Sequence[int] | None) -> tuple[list[int], list[int]]:
    in_channels = list(in_channels)
    if not in_channels:
        raise ValueError("in_channels must list at least one feature level")
    return in_channels, list(range(len(in_channels)) if in_index is None else in_index)


class UPerHead(_DecodeHead):
    """UPerNet decode head (mmseg ``UPerHead``): PSP pooling on the last level, an FPN, and a fused classifier.

    Steps: pyramid pooling module (adaptive average pooling to each of ``pool_scales``, 1x1 conv, bilinear resize back)
    on the last level, concatenated with that level, then ``bottleneck`` (3x3). 1x1 laterals on the other levels; a
    bilinear top-down path; 3x3 ``fpn_convs`` (none on the PSP level); every level resized to the first level's size,
    concatenated, fused by ``fpn_bottleneck`` (3x3), then dropout and ``conv_seg``.

    Args:
        in_channels: Channels of each selected level, highest resolution first (CrossFormer-S/B:
            ``[96, 192, 384, 768]``).
        channels: Width of the head (512 in the CrossFormer configs).
        num_classes: Number of classes (150 for ADE20K).
        pool_scales: Output sizes of the pyramid pooling module.
        dropout_ratio: ``Dropout2d`` probability before ``conv_seg`` (no dropout module when 0).
        in_index: Which entries of the input list to use, one per ``in_channels`` entry; default all, in order.
        norm: ``"bn"``, ``"syncbn"`` (the official configs' ``SyncBN``; same keys) or ``None``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        *,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout_ratio: float = 0.1,
        in_index: Sequence[int] | None = None,
        norm: str | None = "bn",
    ):
        in_channels, in_index = _multi_level_index(in_channels, in_index)
        super().__init__(in_channels, channels, num_classes, dropout_ratio, in_index)
        if not pool_scales:
            raise ValueError("UPerHead: pool_scales must not be empty (the official value is (1, 2, 3, 6))")
        for scale in pool_scales:
            check_positive("UPerHead pool_scales entries", scale)
        self.pool_scales = tuple(pool_scales)
        top = in_channels[-1]
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvModule(top, channels, 1, norm=norm)) for scale in pool_scales
        )
        self.bottleneck = ConvModule(top + len(pool_scales) * channels, channels, 3, padding=1, norm=norm)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1, norm=norm) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(
            ConvModule(channels, channels, 3, padding=1, norm=norm) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3, padding=1, norm=norm)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_channels[-1], h, w] last level -> [B, channels, h, w] (pyramid pooling, then ``bottleneck``)."""
        pooled = [_resize(module(x), x.shape[2:]) for module in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward_features(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Feature maps ``[B, C_i, H_i, W_i]`` -> fused features ``[B, channels, H_0, W_0]`` (before dropout)."""
        feats = self._inputs(inputs)
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, feats[:-1])]
        laterals.append(self.psp_forward(feats[-1]))
        # Top-down: each level receives the already-updated coarser level.
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[2:])
        outs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals[:-1])]
        outs.append(laterals[-1])
        size = outs[0].shape[2:]
        outs = [outs[0]] + [_resize(out, size) for out in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))


class FCNHead(_DecodeHead):
    """FCN head (mmseg ``FCNHead``), the auxiliary head of the UPerNet configs.

    Takes ``inputs[in_index]``, applies ``num_convs`` conv-norm-ReLU blocks (``convs.{i}``), optionally concatenates
    the input and fuses with ``conv_cat``, then dropout and ``conv_seg``. The defaults are mmseg's. The CrossFormer
    auxiliary head uses ``in_index=2, num_convs=1, concat_input=False``, with ``in_channels`` equal to stage 3's width
    (384 for CrossFormer-S/B, 256 for CrossFormer++-S).

    Args:
        in_channels: Channels of the selected level.
        channels: Width of the head (256 in the CrossFormer configs).
        num_classes: Number of classes.
        num_convs: Number of conv blocks. With 0, ``convs`` is an identity and ``in_channels`` must equal
            ``channels``.
        kernel_size: Kernel of the conv blocks and of ``conv_cat``.
        concat_input: Concatenate the input with the conv output and fuse with ``conv_cat``.
        dilation: Dilation of the conv blocks.
        dropout_ratio: ``Dropout2d`` probability before ``conv_seg``.
        in_index: Which entry of the input list to use.
        norm: ``"bn"``, ``"syncbn"`` or ``None``.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        num_classes: int,
        *,
        num_convs: int = 2,
        kernel_size: int = 3,
        concat_input: bool = True,
        dilation: int = 1,
        dropout_ratio: float = 0.1,
        in_index: int = -1,
        norm: str | None = "bn",
    ):
        if not isinstance(in_channels, int):
            raise ValueError(f"FCNHead reads one level: in_channels must be an int, got {in_channels!r}")
        if not isinstance(in_index, int):
            raise ValueError(f"FCNHead reads one level: in_index must be an int, got {in_index!r}")
        super().__init__([in_channels], channels, num_classes, dropout_ratio, [in_index])
        if num_convs < 0:
            raise ValueError(f"FCNHead: num_convs must be >= 0, got {num_convs}")
        check_positive("FCNHead kernel_size", kernel_size)
        check_positive("FCNHead dilation", dilation)
        self.in_index = in_index
        if num_convs == 0:
            if in_channels != channels:
                raise ValueError(
                    f"FCNHead with num_convs=0 passes its input through, so in_channels ({in_channels}) "
                    f"must equal channels ({channels})"
                )
            self.convs = nn.Identity()
        else:
            padding = (kernel_size // 2) * dilation
            self.convs = nn.Sequential(
                *(
                    ConvModule(
                        in_channels if i == 0 else channels,
                        channels,
                        kernel_size,
                        padding=padding,
                        dilation=dilation,
                        norm=norm,
                    )
                    for i in range(num_convs)
                )
            )
        self.conv_cat = (
            ConvModule(in_channels + channels, channels, kernel_size, padding=kernel_size // 2, norm=norm)
            if concat_input
            else None
        )

    def forward_features(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Feature maps (``inputs[in_index]`` is ``[B, in_channels, h, w]``) -> ``[B, channels, h, w]``."""
        (x,) = self._inputs(inputs)
        feats = self.convs(x)
        if self.conv_cat is not None:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return feats


class FPNHead(_DecodeHead):
    """Semantic FPN decode head (mmseg ``FPNHead``): per-level conv towers upsampled to stride 4 and summed.

    Level ``i`` gets ``max(1, int(log2(stride_i) - log2(stride_0)))`` conv-norm-ReLU blocks (1, 1, 2, 3 for strides
    4..32). Each block is followed by a parameter-free 2x :class:`Upsample` on every level coarser than the first, so
    the convs sit at ``scale_heads.{i}.{0,2,4}``. The tower outputs are bilinearly resized to the first level's size,
    summed in level order, then go through dropout and ``conv_seg``.

    Args:
        in_channels: Channels of each selected level (the FPN neck's ``out_channels``, repeated).
        channels: Width of the head (128 in the CrossFormer configs).
        num_classes: Number of classes.
        feature_strides: Stride of each selected level; the first must be the smallest.
        dropout_ratio: ``Dropout2d`` probability before ``conv_seg``.
        in_index: Which entries of the input list to use; default all, in order.
        norm: ``"bn"``, ``"syncbn"`` or ``None``.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        num_classes: int,
        *,
        feature_strides: Sequence[int] = (4, 8, 16, 32),
        dropout_ratio: float = 0.1,
        in_index: Sequence[int] | None = None,
        norm: str | None = "bn",
    ):
        in_channels, in_index = _multi_level_index(in_channels, in_index)
        super().__init__(in_channels, channels, num_classes, dropout_ratio, in_index)
        feature_strides = list(feature_strides)
        if len(feature_strides) != len(in_channels):
            raise ValueError(
                f"FPNHead: feature_strides {feature_strides} must have one entry per in_channels entry "
                f"({len(in_channels)})"
            )
        for stride in feature_strides:
            check_positive("FPNHead feature_strides entries", stride)
        if min(feature_strides) != feature_strides[0]:
            raise ValueError(f"FPNHead: the first feature stride must be the smallest, got {feature_strides}")
        self.feature_strides = feature_strides
        self.scale_heads = nn.ModuleList()
        for cin, stride in zip(in_channels, feature_strides):
            num_convs = max(1, int(math.log2(stride) - math.log2(feature_strides[0])))
            layers: list[nn.Module] = []
            for k in range(num_convs):
                layers.append(ConvModule(cin if k == 0 else channels, channels, 3, padding=1, norm=norm))
                if stride != feature_strides[0]:
                    layers.append(Upsample(scale_factor=2))
            self.scale_heads.append(nn.Sequential(*layers))

    def forward_features(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """Feature maps ``[B, C_i, H_i, W_i]`` -> summed features ``[B, channels, H_0, W_0]`` (before dropout)."""
        feats = self._inputs(inputs)
        out = self.scale_heads[0](feats[0])
        for head, x in zip(self.scale_heads[1:], feats[1:]):
            out = out + _resize(head(x), out.shape[2:])
        return out
