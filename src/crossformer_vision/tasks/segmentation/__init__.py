"""Semantic segmentation: mmseg-compatible UPerNet / Semantic FPN on CrossFormer and timm backbones, without mmcv.

* :func:`build_segmentor` (``upernet_crossformer_s``, ``semfpn_crossformerpp_b``, ``upernet_swin_t``, ...) gives a
  :class:`Segmentor` whose ``forward(images, targets)`` returns losses in train mode and logits in eval mode;
* :func:`load_mmseg_checkpoint` builds and loads one from an official mmseg checkpoint;
* :func:`inference` / `predict_labels` (:mod:`.tta`): whole / sliding-window, multi-scale and flip testing;
* :class:`SegmentationMetric`: dataset-level mIoU / mAcc / aAcc (distributed-ready);
* :func:`save_overlays`: prediction vs ground-truth pictures;
* runs (``crossformer seg train / eval / predict / convert / demo``), with the module roles of every task:
  :mod:`.config` (defaults, presets, build from config), :mod:`.model` (builders by name), :mod:`.train`,
  :mod:`.evaluate` (the evaluation loop), :mod:`.predict` (files in, PNGs out), :mod:`.convert` (mmseg files);
  imported on use. Models are opened by :func:`crossformer_vision.engine.loading.load_model`.
"""

from ...models.registry import dense_lda_rule as default_lda_rule
from .backbones import TIMM_ALIASES, TimmBackbone, build_backbone, build_crossformer_backbone
from .convert import describe_mmseg_state_dict, load_mmseg_checkpoint, segmentor_from_mmseg
from .heads import ConvModule, FCNHead, FPNHead, UPerHead, Upsample, resize_logits
from .metrics import SegmentationMetric, intersect_and_union, summarize_areas
from .model import Segmentor, build_segmentor, list_segmentors, segmentation_loss, semantic_fpn, upernet
from .necks import FPN, MultiLevelNeck
from .tta import (
    ADE20K_TEST_SCALE,
    MS_RATIOS,
    inference,
    predict_labels,
    rescale_size,
    slide_inference,
    whole_inference,
)
from .visualize import colorize, make_palette, save_overlays

__all__ = [
    "ADE20K_TEST_SCALE",
    "FPN",
    "MS_RATIOS",
    "TIMM_ALIASES",
    "ConvModule",
    "FCNHead",
    "FPNHead",
    "MultiLevelNeck",
    "SegmentationMetric",
    "Segmentor",
    "TimmBackbone",
    "UPerHead",
    "Upsample",
    "build_backbone",
    "build_crossformer_backbone",
    "build_segmentor",
    "colorize",
    "default_lda_rule",
    "describe_mmseg_state_dict",
    "inference",
    "intersect_and_union",
    "list_segmentors",
    "load_mmseg_checkpoint",
    "make_palette",
    "predict_labels",
    "rescale_size",
    "resize_logits",
    "save_overlays",
    "segmentation_loss",
    "segmentor_from_mmseg",
    "semantic_fpn",
    "slide_inference",
    "summarize_areas",
    "upernet",
    "whole_inference",
]
