"""Detection on CrossFormer backbones with torchvision's RetinaNet / Mask R-CNN, and mmdetection weight conversion."""

from .mm_convert import (
    ZERO_FILLED,
    MMAnchorGenerator,
    MMLastLevelP6P7,
    MMMultiScaleRoIAlign,
    convert_mmdet_bbox_head,
    convert_mmdet_fpn,
    convert_mmdet_mask_head,
    convert_mmdet_mask_rcnn,
    convert_mmdet_retina_head,
    convert_mmdet_retinanet,
    convert_mmdet_rpn_head,
    mmdet_map_roi_levels,
)

__all__ = [
    "ZERO_FILLED",
    "MMAnchorGenerator",
    "MMLastLevelP6P7",
    "MMMultiScaleRoIAlign",
    "convert_mmdet_bbox_head",
    "convert_mmdet_fpn",
    "convert_mmdet_mask_head",
    "convert_mmdet_mask_rcnn",
    "convert_mmdet_retina_head",
    "convert_mmdet_retinanet",
    "convert_mmdet_rpn_head",
    "mmdet_map_roi_levels",
]
