"""Datasets: the Fashion-MNIST data embedded in the repository."""

from .fashion_mnist import (
    CLASS_NAMES,
    DATA_DIR_ENV,
    REBUILD_COMMAND,
    FashionMNIST,
    balanced_first,
    fashion_mnist_dir,
    read_idx,
    write_idx,
)

__all__ = [
    "CLASS_NAMES",
    "DATA_DIR_ENV",
    "REBUILD_COMMAND",
    "FashionMNIST",
    "balanced_first",
    "fashion_mnist_dir",
    "read_idx",
    "write_idx",
]

from .segmentation import (
    ADE20K,
    ADE20K_CLASSES,
    IGNORE_INDEX,
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    SEG_DEMO_SIZES,
    FolderSegmentation,
    SegmentationDataset,
    check_pairs,
    collate,
    eval_transforms,
    read_class_file,
    seg_demo,
    train_transforms,
)

__all__ += [
    "ADE20K",
    "ADE20K_CLASSES",
    "IGNORE_INDEX",
    "IMAGENET_MEAN_255",
    "IMAGENET_STD_255",
    "SEG_DEMO_SIZES",
    "FolderSegmentation",
    "SegmentationDataset",
    "check_pairs",
    "collate",
    "eval_transforms",
    "read_class_file",
    "seg_demo",
    "train_transforms",
]

# COCO-format detection / instance segmentation data (pycocotools needed for masks).
from .coco import (  # noqa: E402
    DET_DEMO_REBUILD_COMMAND,
    CocoDetection,
    det_demo,
    det_demo_dir,
    detection_collate,
    detection_transforms,
)

__all__ += [
    "DET_DEMO_REBUILD_COMMAND",
    "CocoDetection",
    "det_demo",
    "det_demo_dir",
    "detection_collate",
    "detection_transforms",
]
