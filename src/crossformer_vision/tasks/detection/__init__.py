"""Detection and instance segmentation on CrossFormer backbones with torchvision's RetinaNet / Faster R-CNN /
Mask R-CNN: backbone adapters, builders by name, the paper's recipes, mmdetection weight conversion, COCO evaluation,
visualisation, and runs with the module roles of every task: ``config``, ``data``, ``model`` (builders by name),
``train``, ``evaluate`` (the COCO loop), ``predict``, ``convert`` (mmdet files)."""

from .backbones import (
    BACKBONE_NAMES,
    TIMM_BACKBONES,
    DetectionBackbone,
    TimmTrunk,
    build_detection_backbone,
    build_trunk,
)
from .coco_eval import COCO_METRIC_NAMES, CocoEvaluator, masks_to_rle, predictions_to_coco
from .config import DEFAULTS as DETECTION_DEFAULTS
from .config import build_model as build_detector_from_config
from .data import COCO_CLASSES, detection_dataset
from .detectors import FasterRCNNDetector, MaskRCNNDetector, RetinaNetDetector, check_targets
from .evaluate import evaluate_checkpoint, evaluate_detector
from .mm_convert import MMAnchorGenerator, MMLastLevelP6P7, MMMultiScaleRoIAlign
from .model import DETECTOR_TYPES, build_detector, list_detectors, parse_detector_name
from .recipes import MULTI_SCALE_MIN_SIZES, RECIPES, DetectionRecipe, get_recipe
from .train import train as train_detector
from .visualize import detect, detection_to_json, draw_detections, load_image, predict_and_save
from .weights import TransferReport, build_detector_from_mmdet, inspect_mmdet_checkpoint, load_mmdet_checkpoint

__all__ = [
    "BACKBONE_NAMES",
    "COCO_CLASSES",
    "COCO_METRIC_NAMES",
    "DETECTION_DEFAULTS",
    "DETECTOR_TYPES",
    "MULTI_SCALE_MIN_SIZES",
    "RECIPES",
    "TIMM_BACKBONES",
    "CocoEvaluator",
    "DetectionBackbone",
    "DetectionRecipe",
    "FasterRCNNDetector",
    "MMAnchorGenerator",
    "MMLastLevelP6P7",
    "MMMultiScaleRoIAlign",
    "MaskRCNNDetector",
    "RetinaNetDetector",
    "TimmTrunk",
    "TransferReport",
    "build_detection_backbone",
    "build_detector",
    "build_detector_from_config",
    "build_detector_from_mmdet",
    "build_trunk",
    "check_targets",
    "detect",
    "detection_dataset",
    "detection_to_json",
    "draw_detections",
    "evaluate_checkpoint",
    "evaluate_detector",
    "get_recipe",
    "inspect_mmdet_checkpoint",
    "list_detectors",
    "load_image",
    "load_mmdet_checkpoint",
    "masks_to_rle",
    "parse_detector_name",
    "predict_and_save",
    "predictions_to_coco",
    "train_detector",
]
