"""mmseg's ``MultiLevelNeck`` (MLN): turns a plain ViT's same-stride features into a 4-level pyramid.

Key names follow mmseg (``lateral_convs.{i}.conv.*``, ``convs.{i}.conv.*``), so a Segmentor that holds it as
``neck`` has mmseg's ``neck.*`` layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .heads import ConvModule

__all__ = ["MultiLevelNeck"]


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
