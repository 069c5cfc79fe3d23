"""Segmentation run configuration: the defaults are the official ADE20K UPerNet recipe (docs/segmentation.md, "Recipe").

The bundled presets (``crossformer seg train --config NAME``) only state what differs from these defaults:
``ade20k_upernet_<variant>`` (160k iterations), ``ade20k_semfpn_<variant>`` (Semantic FPN, 80k iterations) and
``seg_demo`` (a tiny UPerNet on the embedded demo set, CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...data.segmentation import (
    ADE20K,
    IMAGENET_MEAN_255,
    IMAGENET_STD_255,
    FolderSegmentation,
    SegmentationDataset,
    seg_demo,
    train_transforms,
)
from ...engine.config import model_arguments_from
from .backbones import is_crossformer
from .model import Segmentor, build_segmentor

__all__ = [
    "DATASETS",
    "DEFAULTS",
    "NORMS",
    "PATH_KEYS",
    "RESUME_MUST_MATCH",
    "InferenceSettings",
    "build_dataset",
    "build_datasets",
    "build_model",
    "inference_settings",
]

DATASETS = ("ade20k", "folder", "seg_demo")
NORMS = ("bn", "syncbn")

#: Config entries a resumed run must share with its checkpoint (``sched.iters``, ``eval.*`` ... may change).
RESUME_MUST_MATCH = (
    "model.",
    "data.dataset",
    "data.root",
    "data.train_split",
    "data.train_limit",
    "data.scale",
    "data.ratio_range",
    "data.crop_size",
    "data.cat_max_ratio",
    "data.flip_prob",
    "data.photometric",
    "optim.",
    "sched.warmup_iters",
    "sched.warmup_ratio",
    "sched.power",
    "sched.min_lr",
    "train.global_batch_size",
    "train.accum_steps",
    "train.seed",
)

#: Config entries that name files or folders (or fetch weights): never taken from a model file's stored configuration.
PATH_KEYS = (
    "model.backbone.weights",
    "model.backbone.pretrained",
    "data.root",
    "data.classes",
    "train.output_dir",
)

DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "upernet_crossformer_s",  # <upernet|semfpn>_<CrossFormer variant | swin_t | resnet101 | timm name>
        "norm": "syncbn",  # heads' BatchNorm: SyncBatchNorm when distributed on GPUs, BatchNorm otherwise
        "aux_weight": 0.4,  # weight of the auxiliary FCN head's loss (UPerNet)
        "grad_checkpointing": False,
        "compile": False,
        "backbone": {
            "weights": None,  # ImageNet initialisation: official classification .pth or converted .safetensors
            "pretrained": False,  # timm backbones: timm's pretrained weights (must be cached locally)
            "drop_path_rate": None,  # None: the variant's official value (S 0.2, B 0.3, L 0.5, ++-S 0.2)
            "lda_rule": None,  # None: the family's official rule (v1: fixed_interval, ++: fixed_group)
            "kwargs": {},  # further backbone arguments (embed_dim, depths, num_heads, ... for tiny models)
        },
        "kwargs": {},  # head arguments: channels, aux_channels, pool_scales, dropout_ratio, neck_channels, ...
    },
    "data": {
        "dataset": "ade20k",  # "ade20k", "folder" (root/classes.txt, root/{images,masks}/<split>) or "seg_demo"
        "root": None,  # ade20k: the ADEChallengeData2016 folder; folder: the layout root; seg_demo: optional
        "train_split": "training",
        "val_split": "validation",
        "classes": None,  # folder: class-list file (default root/classes.txt)
        "reduce_zero_label": None,  # None: the dataset's convention (ADE20K: label 0 -> ignored, others - 1)
        "mask_suffix": "",  # folder: mask stem = image stem + suffix
        "scale": [2048, 512],  # train: random keep-ratio resize to ratio * scale
        "ratio_range": [0.5, 2.0],
        "crop_size": [512, 512],
        "cat_max_ratio": 0.75,
        "flip_prob": 0.5,
        "photometric": True,  # mmseg's PhotoMetricDistortion
        "mean": list(IMAGENET_MEAN_255),  # 0-255 scale
        "std": list(IMAGENET_STD_255),
        "train_limit": None,  # first N images (quick experiments)
        "val_limit": None,
        "workers": 4,
    },
    "eval": {
        "every": 16000,  # iterations between evaluations (0: only at the end, which is always evaluated)
        "mode": "whole",  # "whole" or "slide"
        "scale": [2048, 512],  # keep-ratio test scale (None: original size)
        "size_divisor": 32,  # the official AlignResize: resize (not pad) the test image to a multiple of this
        "ratios": [1.0],  # [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] with flip: the "MS IoU" test
        "flip": False,
        "crop_size": [512, 512],  # slide mode window
        "stride": [341, 341],  # slide mode step
        "overlays": 8,  # validation images drawn with predictions at the end (0: none)
    },
    "optim": {
        "lr": 6.0e-5,  # not scaled with the batch (mmseg)
        "weight_decay": 0.01,
        "norm_decay_mult": 0.0,  # mmseg paramwise_cfg custom_keys={'norm': decay_mult}: see Segmentor.no_weight_decay
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "clip_grad": None,
        "fused": True,  # torch's fused AdamW kernel
    },
    "sched": {
        "iters": 160000,
        "power": 1.0,  # poly: lr = (lr0 - min_lr) * (1 - iter / iters) ** power + min_lr
        "min_lr": 0.0,
        "warmup_iters": 1500,  # linear warm-up multiplying the poly lr, from warmup_ratio (mmcv)
        "warmup_ratio": 1.0e-6,
    },
    "train": {
        "global_batch_size": 16,  # images per iteration over all processes and accumulation steps (8 GPUs x 2)
        "accum_steps": 1,
        "amp": None,  # "bf16", "fp16" or null
        "seed": 0,
        "deterministic": False,
        "device": None,  # "cpu", "cuda" or null (CUDA when available)
        "threads": None,  # torch CPU threads per process
        "ckpt_every": 16000,  # iterations between checkpoints (also one at the end)
        "keep_last": 3,
        "log_every": 50,
        "output_dir": "runs/segmentation",
        "progress": True,
    },
}


# ---------------------------------------------------------------------- config -> objects
@dataclass(frozen=True)
class InferenceSettings:
    """How a segmentor is run at test time (mmseg's test pipeline and ``test_cfg``).

    Each image is resized, for every ratio ``r``, keeping its aspect ratio to fit ``r * scale`` (mmcv
    ``imrescale``; ``scale=None``: ``r`` times its own size), then resized to the next multiple of ``size_divisor``
    (the official configs' ``AlignResize``), normalised, and run whole or by sliding windows, optionally flipped too.
    The softmax probabilities, resized to the original image, are averaged over all of them.

    Attributes:
        mode: ``"whole"`` or ``"slide"``.
        scale: ``(long, short)`` bound, e.g. ``(2048, 512)`` for ADE20K; None keeps the image size.
        size_divisor: Resize to a multiple of this after the keep-ratio resize (None: no alignment).
        ratios: Test-scale ratios: ``(1.0,)``, or :data:`~.inference.MS_RATIOS` for the "MS" results.
        flip: Also average horizontally flipped inputs.
        crop_size: Slide-mode window ``(h, w)``.
        stride: Slide-mode step ``(h, w)``.
        mean: Normalisation mean (0-255 scale).
        std: Normalisation std (0-255 scale).
    """

    mode: str = "whole"
    scale: tuple[int, int] | None = (2048, 512)
    size_divisor: int | None = 32
    ratios: tuple[float, ...] = (1.0,)
    flip: bool = False
    crop_size: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    mean: tuple[float, ...] = IMAGENET_MEAN_255
    std: tuple[float, ...] = IMAGENET_STD_255


def _pair(value: Any, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a [h, w] / [long, short] pair, got {value!r}")
    return pair  # type: ignore[return-value]


def _limit(dataset: SegmentationDataset, limit: int | None) -> SegmentationDataset:
    if limit is not None:
        if limit < 1:
            raise ValueError(f"data limits must be >= 1 (or null), got {limit}")
        dataset.samples = dataset.samples[:limit]
    return dataset


def build_dataset(cfg: dict[str, Any], split: str, transforms: Any = None) -> SegmentationDataset:
    """The ``split`` of ``cfg["data"]``'s dataset with ``transforms`` (None: raw uint8 image and mask)."""
    d = cfg["data"]
    kind = d["dataset"]
    kwargs: dict[str, Any] = {"transforms": transforms}
    if d["reduce_zero_label"] is not None:
        kwargs["reduce_zero_label"] = bool(d["reduce_zero_label"])
    if kind == "seg_demo":
        return seg_demo(split, root=d["root"], **kwargs)
    if kind not in DATASETS:
        raise ValueError(f"data.dataset must be one of {DATASETS}, got {kind!r}")
    if d["root"] is None:
        hint = "the ADEChallengeData2016 folder" if kind == "ade20k" else "the folder with classes.txt, images/, masks/"
        raise ValueError(f"data.root is required for data.dataset={kind}: pass data.root=<{hint}>")
    root = Path(d["root"])
    if kind == "ade20k":
        return ADE20K(root, split, **kwargs)
    classes = d["classes"] or root / "classes.txt"
    return FolderSegmentation(
        root / "images" / split, root / "masks" / split, classes, mask_suffix=d["mask_suffix"], **kwargs
    )


def build_datasets(
    cfg: dict[str, Any], *, train: bool = True
) -> tuple[SegmentationDataset | None, SegmentationDataset, list[str]]:
    """``(train set with the training pipeline or None, raw validation set, class names)``.

    The validation set returns uint8 images at their original size: :func:`.evaluate.evaluate_segmentor` resizes
    them per test scale, as mmseg's test pipeline does.
    """
    d = cfg["data"]
    val = _limit(build_dataset(cfg, d["val_split"]), d["val_limit"])
    train_ds = None
    if train:
        pipeline = train_transforms(
            crop_size=_pair(d["crop_size"], "data.crop_size"),
            scale=_pair(d["scale"], "data.scale"),
            ratio_range=tuple(d["ratio_range"]) if d["ratio_range"] is not None else None,
            cat_max_ratio=d["cat_max_ratio"],
            flip_prob=d["flip_prob"],
            photometric=d["photometric"],
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
        )
        train_ds = _limit(build_dataset(cfg, d["train_split"], pipeline), d["train_limit"])
        if train_ds.classes != val.classes:
            raise ValueError(f"the training and validation class lists differ: {train_ds.classes} vs {val.classes}")
    return train_ds, val, list(val.classes)


def build_model(
    cfg: dict[str, Any],
    num_classes: int,
    *,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    load_backbone_weights: bool = True,
) -> Segmentor:
    """The segmentor of ``cfg["model"]``, with BatchNorm (``train`` converts it to SyncBatchNorm under DDP).

    Args:
        cfg: Run config.
        num_classes: Classes of the dataset.
        class_names: Stored on the model (tables, overlays).
        palette: ``[K, 3]`` colours stored on the model.
        load_backbone_weights: Initialise the backbone from ``model.backbone.weights`` / ``pretrained`` (False
            when the whole model's weights are loaded next).
    """
    m = cfg["model"]
    b = m["backbone"]
    if m["norm"] not in NORMS:
        raise ValueError(f"model.norm must be one of {NORMS}, got {m['norm']!r}")
    backbone_name = m["name"].partition("_")[2]
    backbone_kwargs = dict(b["kwargs"])
    if b["drop_path_rate"] is not None:
        backbone_kwargs["drop_path_rate"] = b["drop_path_rate"]
    if b["lda_rule"] is not None:
        if not is_crossformer(backbone_name):
            raise ValueError(f"model.backbone.lda_rule is for CrossFormer backbones, not {backbone_name!r}")
        backbone_kwargs["lda_rule"] = b["lda_rule"]
    head_kwargs = dict(m["kwargs"])
    if not m["aux_weight"] and m["name"].startswith("upernet_"):
        head_kwargs.setdefault("aux", False)  # a head without a loss would leave DDP waiting for its gradients
    with model_arguments_from(m["name"], {"model.kwargs": m["kwargs"], "model.backbone.kwargs": b["kwargs"]}):
        model = build_segmentor(
            m["name"],
            num_classes=num_classes,
            norm="bn",
            pretrained=bool(b["pretrained"]) and load_backbone_weights,
            backbone_weights=b["weights"] if load_backbone_weights else None,
            backbone_kwargs=backbone_kwargs,
            aux_weight=m["aux_weight"],
            class_names=class_names,
            palette=palette,
            **head_kwargs,
        )
    if m["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    return model


def inference_settings(cfg: dict[str, Any]) -> InferenceSettings:
    """Test-time settings of ``cfg["eval"]``."""
    e = cfg["eval"]
    if e["mode"] not in ("whole", "slide"):
        raise ValueError(f"eval.mode must be 'whole' or 'slide', got {e['mode']!r}")
    ratios = tuple(float(r) for r in e["ratios"])
    if not ratios or min(ratios) <= 0:
        raise ValueError(f"eval.ratios must be positive numbers, got {e['ratios']!r}")
    return InferenceSettings(
        mode=e["mode"],
        scale=_pair(e["scale"], "eval.scale"),
        size_divisor=e["size_divisor"] or None,
        ratios=ratios,
        flip=bool(e["flip"]),
        crop_size=_pair(e["crop_size"], "eval.crop_size"),
        stride=_pair(e["stride"], "eval.stride"),
        mean=tuple(cfg["data"]["mean"]),
        std=tuple(cfg["data"]["std"]),
    )
