"""Datasets and transforms of a classification run (timm's transforms, from the config and the model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.data import create_transform
from torch.utils.data import Dataset, Subset

from ...data.fashion_mnist import CLASS_NAMES as FASHION_CLASSES
from ...data.fashion_mnist import FashionMNIST
from ...data.folder import ImageFolderDataset, collate_skipping

__all__ = ["build_datasets", "build_transform", "collate_skipping", "data_config"]


def data_config(cfg: dict[str, Any], model_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Input size, crop, interpolation and normalisation: the run config, falling back to the model's."""
    model_cfg = model_cfg or {}
    d = cfg["data"]
    size = d["img_size"]
    return {
        "input_size": (3, size, size) if isinstance(size, int) else (3, *size),
        "crop_pct": d["crop_pct"],
        "interpolation": d["interpolation"],
        "mean": tuple(d["mean"] or model_cfg.get("mean", (0.485, 0.456, 0.406))),
        "std": tuple(d["std"] or model_cfg.get("std", (0.229, 0.224, 0.225))),
    }


def build_transform(cfg: dict[str, Any], dcfg: dict[str, Any], train: bool) -> Callable:
    if not train:
        return create_transform(**dcfg, is_training=False)
    a = cfg["aug"]
    return create_transform(
        input_size=dcfg["input_size"],
        is_training=True,
        scale=tuple(a["scale"]),
        ratio=tuple(a["ratio"]),
        hflip=a["hflip"],
        auto_augment=a["auto_augment"] or None,
        color_jitter=a["color_jitter"] or None,
        re_prob=a["reprob"],
        re_mode=a["remode"],
        interpolation=dcfg["interpolation"],
        mean=dcfg["mean"],
        std=dcfg["std"],
    )


def _limit(dataset: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return Subset(dataset, range(limit))


def build_datasets(
    cfg: dict[str, Any], dcfg: dict[str, Any], train: bool = True
) -> tuple[Dataset | None, Dataset, list[str]]:
    """``(train dataset or None, evaluation dataset, class names)``."""
    d = cfg["data"]
    eval_tf = build_transform(cfg, dcfg, train=False)
    if d["dataset"] == "fashion_mnist":
        train_ds = (
            FashionMNIST(d["root"], "train", transform=build_transform(cfg, dcfg, True), limit=d["train_limit"])
            if train
            else None
        )
        val_ds = FashionMNIST(d["root"], "test", transform=eval_tf, limit=d["val_limit"])
        return train_ds, val_ds, list(FASHION_CLASSES)
    if d["dataset"] != "folder":
        raise ValueError(f"data.dataset must be 'folder' or 'fashion_mnist', got {d['dataset']!r}")
    if d["root"] is None:
        raise ValueError("data.root is required for folder datasets (data.root=/path/to/imagenet)")
    train_ds = None
    classes = None
    if train:
        train_ds = ImageFolderDataset(
            d["root"], d["train_split"], build_transform(cfg, dcfg, True), on_error=d["on_error"]
        )
        classes = train_ds.classes
    val_ds = ImageFolderDataset(d["root"], d["val_split"], eval_tf, classes=classes, on_error=d["on_error"])
    return (
        (_limit(train_ds, d["train_limit"]) if train_ds is not None else None),
        _limit(val_ds, d["val_limit"]),
        val_ds.classes,
    )
