"""Necks between a backbone and a decode head, with mmseg's key names (a Segmentor holding one as ``neck`` has
mmseg's ``neck.*`` layout):

* :class:`FPN`: the Feature Pyramid Network of Semantic FPN (and of mmdet's detectors);
* :class:`MultiLevelNeck` (MLN): turns a plain ViT's same-stride features into a 4-level pyramid.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .heads import ConvModule, check_positive, select_inputs

__all__ = ["FPN", "MultiLevelNeck"]

_EXTRA_CONV_SOURCES = ("on_input", "on_lateral", "on_output")


class MultiLevelNeck(nn.Module):
    """1x1 lateral conv per input, bilinear rescale by ``scales[i]``, then a 3x3 conv (mmseg ``MultiLevelNeck``).

    mmseg's UPerNet ViT/DeiT configs use four inputs at stride 16 and ``scales=(4, 2, 1, 0.5)``, giving strides
    4, 8, 16 and 32. The convs have biases and no norm / activation (mmseg's default ``norm_cfg=None,
    act_cfg=None``). The rescale is ``F.interpolate(scale_factor=s, mode="bilinear", align_corners=False)``, so
    output sizes are ``floor(h * s)``.

    Args:
        in_channels: Channels of every input.
        out_channels: Channels of every output.
        scales: Rescale factor of each output; one input is broadcast to every output.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, scales: Sequence[float] = (0.5, 1, 2, 4)):
        super().__init__()
        in_channels = list(in_channels)
        if not in_channels or any(not isinstance(c, int) or c < 1 for c in in_channels):
            raise ValueError(f"MultiLevelNeck in_channels must be positive ints, got {in_channels}")
        if not isinstance(out_channels, int) or out_channels < 1:
            raise ValueError(f"MultiLevelNeck out_channels must be a positive int, got {out_channels!r}")
        scales = [float(s) for s in scales]
        if not scales or min(scales) <= 0:
            raise ValueError(f"MultiLevelNeck scales must be positive, got {scales}")
        if len(in_channels) not in (1, len(scales)):
            raise ValueError(
                f"MultiLevelNeck: {len(in_channels)} inputs for {len(scales)} scales; give one input or one per scale"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scales = scales
        self.lateral_convs = nn.ModuleList(ConvModule(c, out_channels, 1, norm=None, act=False) for c in in_channels)
        self.convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, padding=1, norm=None, act=False) for _ in scales
        )

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``len(in_channels)`` maps ``[B, C_i, h, w]`` -> ``len(scales)`` maps ``[B, out_channels, h*s, w*s]``."""
        if isinstance(inputs, torch.Tensor) or len(inputs) != len(self.in_channels):
            got = "a single tensor" if isinstance(inputs, torch.Tensor) else f"{len(inputs)} maps"
            raise ValueError(f"MultiLevelNeck expects {len(self.in_channels)} feature maps, got {got}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        if len(laterals) == 1:
            laterals = laterals * len(self.scales)
        return tuple(
            conv(F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False))
            for conv, x, scale in zip(self.convs, laterals, self.scales)
        )


class FPN(nn.Module):
    """Feature Pyramid Network neck (mmseg / mmdet ``FPN``, no norm, no activation).

    ``lateral_convs.{i}`` (1x1 + bias) on levels ``start_level...``. A top-down path adds each coarser lateral,
    resized with PyTorch's legacy ``nearest`` to the finer level's size. Then ``fpn_convs.{i}`` (3x3 + bias). When
    ``num_outs`` exceeds the used levels, extra outputs come from stride-2 max pooling (``add_extra_convs=False``,
    Semantic FPN / Mask R-CNN) or from extra 3x3 stride-2 ``fpn_convs`` applied to the raw last input
    (``"on_input"``, RetinaNet), the last lateral (``"on_lateral"``) or the last output (``"on_output"``).

    Args:
        in_channels: Channels of every input level, including levels below ``start_level``.
        out_channels: Channels of every output.
        num_outs: Number of outputs (at least ``len(in_channels) - start_level``).
        start_level: First input level used. Earlier levels are passed in but ignored.
        add_extra_convs: ``False`` or one of ``"on_input"``, ``"on_lateral"``, ``"on_output"``. ``True`` is
            rejected because mmseg reads it as ``"on_output"`` and mmdet as ``"on_input"``.
        relu_before_extra_convs: Apply ReLU before the second and later extra convs.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        num_outs: int,
        *,
        start_level: int = 0,
        add_extra_convs: bool | str = False,
        relu_before_extra_convs: bool = False,
    ):
        super().__init__()
        in_channels = list(in_channels)
        check_positive("FPN out_channels", out_channels)
        for c in in_channels:
            check_positive("FPN in_channels entries", c)
        if not 0 <= start_level < len(in_channels):
            raise ValueError(f"FPN start_level must index in_channels {in_channels}, got {start_level}")
        num_used = len(in_channels) - start_level
        if not isinstance(num_outs, int) or num_outs < num_used:
            raise ValueError(
                f"FPN num_outs must be an int >= the {num_used} used input levels "
                f"(in_channels {in_channels}, start_level {start_level}), got {num_outs!r}"
            )
        if add_extra_convs is True:
            raise ValueError(
                "FPN add_extra_convs=True is ambiguous (mmseg reads it as 'on_output', mmdet as 'on_input'); "
                f"pass one of {_EXTRA_CONV_SOURCES} or False"
            )
        if add_extra_convs is not False and add_extra_convs not in _EXTRA_CONV_SOURCES:
            raise ValueError(
                f"FPN add_extra_convs must be False or one of {_EXTRA_CONV_SOURCES}, got {add_extra_convs!r}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.num_outs = num_outs
        self.start_level = start_level
        self.add_extra_convs = add_extra_convs
        self.relu_before_extra_convs = relu_before_extra_convs

        def conv(cin: int, kernel_size: int, stride: int = 1) -> ConvModule:
            return ConvModule(
                cin, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, norm=None, act=False
            )

        self.lateral_convs = nn.ModuleList(conv(c, 1) for c in in_channels[start_level:])
        self.fpn_convs = nn.ModuleList(conv(out_channels, 3) for _ in range(num_used))
        if add_extra_convs:
            for i in range(num_outs - num_used):
                cin = in_channels[-1] if i == 0 and add_extra_convs == "on_input" else out_channels
                self.fpn_convs.append(conv(cin, 3, stride=2))

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """``len(in_channels)`` maps ``[B, in_channels[i], H_i, W_i]`` -> ``num_outs`` maps ``[B, out_channels, h, w]``.

        Outputs are ordered finest first: one per used input level at that level's size, then the extra levels, each
        of stride 2 relative to the previous one.
        """
        if isinstance(inputs, torch.Tensor) or len(inputs) != len(self.in_channels):
            got = "a single tensor" if isinstance(inputs, torch.Tensor) else f"{len(inputs)} feature maps"
            raise ValueError(
                f"FPN expects {len(self.in_channels)} feature maps (in_channels {self.in_channels}), got {got}"
            )
        inputs = select_inputs(inputs, range(len(inputs)), self.in_channels, owner="FPN")
        used = inputs[self.start_level :]
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, used)]
        for i in range(len(laterals) - 1, 0, -1):
            # Legacy 'nearest' (src = floor(dst * in / out)) is what the checkpoints were trained with.
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[2:], mode="nearest"
            )
        outs = [conv(lateral) for conv, lateral in zip(self.fpn_convs, laterals)]
        num_used = len(outs)
        if self.num_outs > num_used and not self.add_extra_convs:
            for _ in range(self.num_outs - num_used):
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        elif self.num_outs > num_used:
            source = {"on_input": inputs[-1], "on_lateral": laterals[-1], "on_output": outs[-1]}[self.add_extra_convs]
            outs.append(self.fpn_convs[num_used](source))
            for i in range(num_used + 1, self.num_outs):
                x = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                outs.append(self.fpn_convs[i](x))
        return tuple(outs)
