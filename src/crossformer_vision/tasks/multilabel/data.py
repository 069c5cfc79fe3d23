"""Datasets and transforms of a multi-label run: the readers of :mod:`crossformer_vision.data.multilabel` under
classification's timm transforms (random resized crop and flip for training; the whole image resized for evaluation,
``data.crop_mode=squash``), or the batched tensor pipeline for the in-memory demo scenes.

Every sample is ``(image, {"target": float [K] in {1, 0, -1}, "index": int})``; batches are the trainer's dict
``{"images" [B, 3, S, S], "labels": {"target" [B, K], "index" [B]}, "skipped"}``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ...data.multilabel import (
    MultiLabelImages,
    MultiLabelSet,
    csv_classes,
    demo_scenes,
    read_coco_labels,
    read_csv_labels,
    read_voc2007,
)
from ...data.tensor_pipeline import BatchWarpCollate, TensorImageDataset
from ..classification.data import build_transform, collate_for, collate_skipping

__all__ = ["DATASETS", "build_datasets", "collate_for", "collate_skipping", "data_config", "demo_split"]

DATASETS = ("voc2007", "coco", "csv", "demo")


def data_config(cfg: dict[str, Any], model_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Input size, crop, interpolation and normalisation (the run config's; the model's mean / std when unset)."""
    d = cfg["data"]
    model_cfg = model_cfg or {}
    size = d["img_size"]
    return {
        "input_size": (3, size, size) if isinstance(size, int) else (3, *size),
        "crop_pct": d["crop_pct"],
        "crop_mode": d["crop_mode"],
        "interpolation": d["interpolation"],
        "mean": tuple(d["mean"] or model_cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": tuple(d["std"] or model_cfg.get("std", (0.229, 0.224, 0.225))),
    }


def demo_split(cfg: dict[str, Any], split: str):
    """The demo scenes of ``split`` ("train" / "val") the config describes (cached, :func:`~...demo_scenes`)."""
    d = cfg["data"]
    count = d["demo_train"] if split == "train" else d["demo_val"]
    return demo_scenes(split, count, d["demo_size"], d["demo_side"], d["demo_objects"], d["demo_seed"])


def _read(cfg: dict[str, Any], split: str, train: bool, classes: list[str] | None) -> MultiLabelSet:
    d = cfg["data"]
    if d["root"] is None:
        raise ValueError(f"data.root is required for data.dataset={d['dataset']} (see docs/multilabel.md)")
    root = Path(d["root"])
    if d["dataset"] == "voc2007":
        return read_voc2007(root, split, d["difficult_train"] if train else d["difficult_eval"])
    if d["dataset"] == "coco":
        ann = root / "annotations" / f"instances_{split}.json"
        images = next((p for p in (root / split, root / "images" / split) if p.is_dir()), root / split)
        return read_coco_labels(images, ann)
    return read_csv_labels(root, split, classes or csv_classes(root, d["train_split"]))


def _limit(dataset: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return Subset(dataset, range(limit))


def _demo_datasets(cfg: dict[str, Any], dcfg: dict[str, Any], train: bool) -> tuple[Dataset | None, Dataset, list]:
    d, a = cfg["data"], cfg["aug"]
    if not d["batch_transforms"]:
        raise ValueError("the demo scenes are read through the batched tensor pipeline: set data.batch_transforms=true")
    collate = BatchWarpCollate(dcfg["input_size"][1:], dcfg["mean"], dcfg["std"])

    def dataset(split: str, is_train: bool) -> TensorImageDataset:
        scenes = demo_split(cfg, split)
        targets = torch.from_numpy(scenes.targets.astype("float32"))
        labels = [{"target": targets[i], "index": i} for i in range(len(targets))]
        kwargs = dict(scale=a["scale"], ratio=a["ratio"], hflip=a["hflip"]) if is_train else {}
        out = TensorImageDataset(scenes.images, labels, is_train, collate_fn=collate, **kwargs)
        out.classes = scenes.classes  # type: ignore[attr-defined]
        return out

    val = dataset("val", False)
    return (dataset("train", True) if train else None), val, list(val.classes)  # type: ignore[attr-defined]


def build_datasets(
    cfg: dict[str, Any], dcfg: dict[str, Any], train: bool = True
) -> tuple[Dataset | None, Dataset, list[str]]:
    """``(train dataset or None, evaluation dataset, class names)``; bad annotations are warned about by the reader."""
    d = cfg["data"]
    if d["dataset"] not in DATASETS:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {d['dataset']!r}")
    if d["dataset"] == "demo":
        train_ds, val_ds, classes = _demo_datasets(cfg, dcfg, train)
        train_ds = _limit(train_ds, d["train_limit"]) if train_ds is not None else None
        return train_ds, _limit(val_ds, d["val_limit"]), classes
    train_ds, classes = None, None
    if train:
        found = _read(cfg, d["train_split"], True, None)
        classes = found.classes
        train_ds = _limit(MultiLabelImages(found, build_transform(cfg, dcfg, True), d["on_error"]), d["train_limit"])
    found = _read(cfg, d["val_split"], False, classes)
    if classes is not None and found.classes != classes:
        raise ValueError(f"the classes of {d['val_split']} differ from those of {d['train_split']}")
    val_ds = MultiLabelImages(found, build_transform(cfg, dcfg, False), d["on_error"])
    return train_ds, _limit(val_ds, d["val_limit"]), found.classes
