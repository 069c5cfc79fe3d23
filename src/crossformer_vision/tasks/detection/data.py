"""The datasets of a detection run config: COCO-format files or the embedded det_demo set."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...data.coco import CocoDetection, det_demo, det_demo_dir, detection_transforms

__all__ = ["COCO_CLASSES", "class_names_from_config", "detection_dataset", "gt_for"]

#: The 80 COCO categories in id order (= mmdet's CLASSES, = labels 1..80).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


def split_files(cfg: Mapping[str, Any], split: str) -> tuple[Path, Path]:
    d = cfg["data"]
    if d["dataset"] == "det_demo":
        root = det_demo_dir()
        return root / split, root / f"instances_{split}.json"
    if d["dataset"] != "coco":
        raise ValueError(f"data.dataset must be 'coco' or 'det_demo', got {d['dataset']!r}")
    images = d["images"] if split == "train" else d["val_images"] or d["images"]
    ann = d["train_json"] if split == "train" else d["val_json"]
    if not images or not ann:
        need = "data.images, data.train_json" if split == "train" else "data.val_images (or data.images), data.val_json"
        raise ValueError(
            f"data.dataset=coco needs {need}, e.g. data.images=/data/coco/train2017 "
            "data.val_images=/data/coco/val2017 data.train_json=/data/coco/annotations/instances_train2017.json "
            "data.val_json=/data/coco/annotations/instances_val2017.json (or data.dataset=det_demo)"
        )
    return Path(images), Path(ann)


def detection_dataset(cfg: Mapping[str, Any], split: str, *, masks: bool) -> CocoDetection:
    """The ``"train"`` (flip augmentation, empty images skipped per ``data.skip_empty``) or ``"val"`` set of a run
    config, cut to ``data.{train,val}_limit`` images."""
    d = cfg["data"]
    train = split == "train"
    options: dict[str, Any] = dict(
        transforms=detection_transforms(
            train=train,
            flip_prob=cfg["aug"]["flip_prob"],
            policy=cfg["aug"]["policy"],
            max_size=cfg["model"]["max_size"],
        ),
        masks=masks,
        skip_empty=d["skip_empty"] if train else False,
    )
    if d["dataset"] == "det_demo":
        ds = det_demo(split, **options)
    else:
        images, ann = split_files(cfg, split)
        ds = CocoDetection(images, ann, **options)
    limit = d["train_limit"] if train else d["val_limit"]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"data.{split}_limit must be >= 1 or null, got {limit}")
        ds.ids = ds.ids[:limit]
    if len(ds) == 0:
        raise ValueError(f"the {split} set {ds.ann_file} has no usable image")
    return ds


def gt_for(dataset: CocoDetection) -> Any:
    """The GT of the images ``dataset`` holds: its json file, or the json cut to them when limited."""
    data = json.loads(Path(dataset.ann_file).read_text())
    if len(dataset.ids) == len(data["images"]):
        return dataset.ann_file
    keep = set(dataset.ids)
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data.get("annotations", []) if a.get("image_id") in keep]
    return data


def class_names_from_config(cfg: Mapping[str, Any]) -> list[str]:
    """The category names of a run config's validation annotations, in id order."""
    _, ann = split_files(cfg, "val")
    cats = json.loads(Path(ann).read_text()).get("categories") or []
    return [str(c.get("name", c["id"])) for c in sorted(cats, key=lambda c: c["id"])]
