"""Datasets and transforms of a classification run (timm's transforms, from the config and the model)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from timm.data import create_transform
from torch.utils.data import Dataset, Subset

from ...data.fashion_mnist import CLASS_NAMES as FASHION_CLASSES
from ...data.fashion_mnist import FashionMNIST
from ...data.folder import ImageFolderDataset, collate_skipping
from ...data.tensor_pipeline import BatchWarpCollate, TensorImageDataset

__all__ = ["build_datasets", "build_transform", "collate_for", "collate_skipping", "data_config", "eval_transform"]


def collate_for(dataset: Dataset) -> Callable:
    """The collate function of a dataset's batches (tensor-pipeline datasets carry their own)."""
    return getattr(dataset, "collate_fn", None) or collate_skipping


def _check_batch_transforms(cfg: dict[str, Any], dcfg: dict[str, Any]) -> None:
    d, a = cfg["data"], cfg["aug"]
    if d["dataset"] != "fashion_mnist":
        raise ValueError(
            f"data.batch_transforms works on the embedded in-memory data only (data.dataset=fashion_mnist), not "
            f"{d['dataset']!r}: set data.batch_transforms=false"
        )
    unsupported = [
        f"aug.{k}={a[k]!r}" for k in ("auto_augment", "color_jitter", "reprob") if a[k] not in (None, 0, 0.0, "")
    ]
    if unsupported:
        raise ValueError(
            f"data.batch_transforms does crops, flips and resizing only; {', '.join(unsupported)} need timm's "
            "per-image transforms: switch them off or set data.batch_transforms=false"
        )
    if dcfg["crop_pct"] != 1.0:
        raise ValueError(
            "data.batch_transforms evaluates on the whole image (data.crop_pct=1.0), "
            f"got data.crop_pct={dcfg['crop_pct']}"
        )
    if dcfg["interpolation"] != "bilinear":
        raise ValueError(
            f"data.batch_transforms resamples bilinearly; set data.interpolation=bilinear "
            f"(got {dcfg['interpolation']!r})"
        )


def _tensor_datasets(cfg: dict[str, Any], dcfg: dict[str, Any], train: bool) -> tuple[Dataset | None, Dataset]:
    _check_batch_transforms(cfg, dcfg)
    d, a = cfg["data"], cfg["aug"]
    collate = BatchWarpCollate(dcfg["input_size"][1:], dcfg["mean"], dcfg["std"])
    train_ds = None
    if train:
        raw = FashionMNIST(d["root"], "train", limit=d["train_limit"])
        train_ds = TensorImageDataset(
            raw.data, raw.targets, True, scale=a["scale"], ratio=a["ratio"], hflip=a["hflip"], collate_fn=collate
        )
    raw = FashionMNIST(d["root"], "test", limit=d["val_limit"])
    return train_ds, TensorImageDataset(raw.data, raw.targets, False, collate_fn=collate)


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


def eval_transform(dcfg: dict[str, Any]) -> Callable:
    """timm's evaluation transform of a data config (``input_size``, ``crop_pct``, ``interpolation``, ``mean``,
    ``std``, optionally ``crop_mode``): PIL image -> normalised ``[3, H, W]`` tensor. Lists (from JSON) become
    tuples."""
    return create_transform(**{k: tuple(v) if isinstance(v, list) else v for k, v in dcfg.items()}, is_training=False)


def build_transform(cfg: dict[str, Any], dcfg: dict[str, Any], train: bool) -> Callable:
    if not train:
        return eval_transform(dcfg)
    a = cfg["aug"]
    policy = a["auto_augment"] or None
    try:
        return create_transform(
            input_size=dcfg["input_size"],
            is_training=True,
            scale=tuple(a["scale"]),
            ratio=tuple(a["ratio"]),
            hflip=a["hflip"],
            auto_augment=policy,
            color_jitter=a["color_jitter"] or None,
            re_prob=a["reprob"],
            re_mode=a["remode"],
            interpolation=dcfg["interpolation"],
            mean=dcfg["mean"],
            std=dcfg["std"],
        )
    except (AssertionError, KeyError, IndexError) as e:
        if policy is None:
            raise
        # timm parses the policy string with bare assertions / lookups: name the setting
        raise ValueError(
            f"aug.auto_augment={policy!r} is not a timm augmentation policy ({type(e).__name__}: {e}); use e.g. "
            "'rand-m9-mstd0.5-inc1' (the paper's RandAugment), 'augmix-m5-w3', 'original', 'v0', '3a', or null"
        ) from None


def _limit(dataset: Dataset, limit: int | None) -> Dataset:
    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return Subset(dataset, range(limit))


def build_datasets(
    cfg: dict[str, Any], dcfg: dict[str, Any], train: bool = True
) -> tuple[Dataset | None, Dataset, list[str]]:
    """``(train dataset or None, evaluation dataset, class names)``."""
    d = cfg["data"]
    if d.get("batch_transforms"):
        train_ds, val_ds = _tensor_datasets(cfg, dcfg, train)
        return train_ds, val_ds, list(FASHION_CLASSES)
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
