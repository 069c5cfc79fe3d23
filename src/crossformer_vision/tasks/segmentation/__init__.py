"""Semantic segmentation: mmseg-compatible UPerNet / Semantic FPN heads and neck, without mmcv or mmseg."""

from .heads import FPN, ConvModule, FCNHead, FPNHead, UPerHead, Upsample, resize_logits

__all__ = ["FPN", "ConvModule", "FCNHead", "FPNHead", "UPerHead", "Upsample", "resize_logits"]
