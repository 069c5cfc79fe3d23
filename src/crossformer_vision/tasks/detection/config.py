"""Detection run configuration and the detector it describes.

The defaults are the paper's COCO 1x recipe (docs/detection.md, "Recipe"; the official mmdetection configs): AdamW
lr 1e-4 at 16 images per step, weight decay 1e-4 on every parameter, no gradient clipping, 12 epochs, lr x0.1 after
epochs 8 and 11, 500 linear warm-up iterations from 0.001 x lr, images resized to shorter side 800 / longer side <=
1333, random horizontal flip, images without objects left out of training. ``16 = train.batch_size x processes x
train.accum_steps``; the learning rate is scaled linearly when that product differs from ``optim.base_batch``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from ...engine.config import model_arguments_from
from ...models.crossformer import VARIANT_ARGS
from .recipes import DetectionRecipe

__all__ = [
    "DEFAULTS",
    "DETECTION_DROP_PATH",
    "PATH_KEYS",
    "RESUME_MUST_MATCH",
    "architecture",
    "build_model",
    "recipe_from_config",
    "resolved_lr",
]

#: Stochastic depth of the trunks in the official detection configs (CrossFormer: the ImageNet values, e.g. 0.2 for
#: S and 0.3 for B in ``detection/crossformer_factory.py``; Swin-T / S: 0.2 in Swin's own detection configs, Swin-B:
#: 0.3 as in the Swin-B (Cascade) Mask R-CNN configs of Swin's detection repo and mmdetection). ResNets have none.
DETECTION_DROP_PATH: dict[str, float] = {
    **{name: args["drop_path_rate"] for name, args in VARIANT_ARGS.items()},
    "swin_t": 0.2,
    "swin_s": 0.2,
    "swin_b": 0.3,
}

DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "maskrcnn_crossformer_s",  # <retinanet|fasterrcnn|maskrcnn|cascade>_<backbone>; see list_detectors()
        "backbone_weights": None,  # ImageNet trunk: official .pth, converted .safetensors, a run dir; timm: "timm"
        "init": None,  # whole-detector weights to start from: an official mmdet .pth or a `det train` run
        "lda_rule": None,  # CrossFormer LDA rule (null: the official weights' rule, v1 fixed_interval, ++ fixed_group)
        "drop_path_rate": None,  # null: the official value of the backbone (DETECTION_DROP_PATH)
        "frozen_stages": None,  # null: 1 for resnet50 / resnet101, -1 (nothing frozen) otherwise
        "norm_eval": None,  # null: true for BatchNorm trunks (ResNet, SOFT, CMT, HRFormer: statistics frozen)
        "mm_compat": True,  # mmdet's anchors and RoIAlign (needed to run official weights faithfully)
        "fpn_channels": 256,
        "min_size": [800],  # shorter image side; several values = multi-scale training (the last one at test time)
        "max_size": 1333,
        "box_head_dim": 1024,  # R-CNN: width of the two shared fully connected layers (cascade: of its one fc)
        "mask_head_channels": 256,  # Mask R-CNN / cascade: width of the mask convolutions
        "mask_head_convs": 4,  # Mask R-CNN / cascade: number of 3x3 mask convolutions
        "kwargs": {},  # trunk arguments (embed_dim, depths, num_heads, group_size, crs_interval, ...)
        "detector": {"kwargs": {}},  # torchvision detector arguments (rpn_*, box_*, score_thresh, ...)
    },
    "data": {
        "dataset": "coco",  # "coco" (data.images + json files) or "det_demo" (the embedded demo set)
        "images": None,  # folder of the training images (e.g. /data/coco/train2017)
        "val_images": None,  # folder of the validation images (null: data.images)
        "train_json": None,  # e.g. /data/coco/annotations/instances_train2017.json
        "val_json": None,  # e.g. /data/coco/annotations/instances_val2017.json
        "masks": None,  # load instance masks (null: for Mask R-CNN only)
        "skip_empty": True,  # leave training images without objects out (mmdet filter_empty_gt)
        "train_limit": None,  # the first N training / validation images only (quick runs)
        "val_limit": None,
        "workers": 4,
    },
    "aug": {
        "flip_prob": 0.5,
        "policy": None,  # null: flip only; "3x": Swin's 3x resize / random-crop policy (data.coco.crop_policy)
    },
    "optim": {
        "lr": 1.0e-4,  # at optim.base_batch images per step; scaled linearly with the actual global batch
        "base_batch": 16,
        "weight_decay": 1.0e-4,  # on every parameter, as the official configs
        "no_decay_keys": None,  # names containing one of these get no weight decay (3x: norm, position tables)
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "clip_grad": None,
        "fused": True,  # torch's fused AdamW kernel (also on CPU)
    },
    "sched": {
        "epochs": 12,
        "lr_steps": [8, 11],  # epochs after which the lr is multiplied by lr_gamma (mmcv "step" policy)
        "lr_gamma": 0.1,
        "warmup_iters": 500,  # linear warm-up over optimizer steps, from warmup_ratio x lr
        "warmup_ratio": 0.001,
    },
    "eval": {
        "batch_size": 2,  # images per process
        "backend": "pycocotools",  # or "faster_coco_eval" (same numbers, faster)
        "iou_types": None,  # null: bbox, plus segm for Mask R-CNN
    },
    "train": {
        "batch_size": 2,  # images per process and micro-step (the official 16 = 8 GPUs x 2)
        "accum_steps": 1,
        "amp": None,  # "bf16", "fp16" or null
        "seed": 0,
        "deterministic": False,
        "device": None,  # "cpu", "cuda" or null (CUDA when available)
        "threads": None,  # torch CPU threads per process (null: torch's default)
        "eval_every": 1,  # epochs between COCO evaluations (the last epoch is always evaluated)
        "ckpt_every": 0,  # optimizer steps between checkpoints (0: every epoch)
        "keep_last": 3,
        "log_every": 50,
        "max_steps": None,
        "output_dir": "runs/detection",
        "progress": True,
    },
}

#: Config entries a resumed run must share with its checkpoint (anything else, e.g. sched.epochs, may change).
RESUME_MUST_MATCH = (
    "model.",
    "data.dataset",
    "data.images",
    "data.train_json",
    "data.masks",
    "data.skip_empty",
    "data.train_limit",
    "aug.",
    "optim.",
    "sched.lr_steps",
    "sched.lr_gamma",
    "sched.warmup_",
    "train.batch_size",
    "train.accum_steps",
    "train.seed",
)

#: Config entries that name files or folders: never taken from a model file's stored configuration.
PATH_KEYS = (
    "model.backbone_weights",
    "model.init",
    "data.images",
    "data.val_images",
    "data.train_json",
    "data.val_json",
    "train.output_dir",
)

# model entries that describe the trained network (stored with its weights); the rest says how to initialise it
_ARCHITECTURE_KEYS = (
    "name",
    "lda_rule",
    "drop_path_rate",
    "frozen_stages",
    "norm_eval",
    "mm_compat",
    "fpn_channels",
    "min_size",
    "max_size",
    "box_head_dim",
    "mask_head_channels",
    "mask_head_convs",
    "kwargs",
    "detector",
)


def resolved_lr(cfg: Mapping[str, Any], world_size: int) -> float:
    """``optim.lr`` scaled linearly from ``optim.base_batch`` to the global batch (batch x processes x accumulation)."""
    t = cfg["train"]
    global_batch = t["batch_size"] * world_size * t["accum_steps"]
    return cfg["optim"]["lr"] * global_batch / cfg["optim"]["base_batch"]


def recipe_from_config(cfg: Mapping[str, Any]) -> DetectionRecipe:
    """The schedule of ``cfg`` as a :class:`DetectionRecipe` (its ``lr_factor`` is mmcv's step + linear warm-up)."""
    s, o, m = cfg["sched"], cfg["optim"], cfg["model"]
    return DetectionRecipe(
        name="config",
        epochs=s["epochs"],
        lr=o["lr"],
        betas=tuple(o["betas"]),
        weight_decay=o["weight_decay"],
        lr_steps=tuple(s["lr_steps"]),
        lr_gamma=s["lr_gamma"],
        warmup_iters=s["warmup_iters"],
        warmup_ratio=s["warmup_ratio"],
        grad_clip=o["clip_grad"],
        min_size=tuple(_sizes(m["min_size"])),
        max_size=m["max_size"],
        flip_prob=cfg["aug"]["flip_prob"],
        skip_empty=cfg["data"]["skip_empty"],
    )


def _sizes(min_size: Any) -> list[int]:
    sizes = [min_size] if isinstance(min_size, int) else list(min_size or [])
    if not sizes or any(isinstance(s, bool) or not isinstance(s, int) for s in sizes):
        raise ValueError(f"model.min_size must be an int or a list of ints (e.g. [800]), got {min_size!r}")
    return sizes


def architecture(model_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The architecture part of a ``model`` config section (what rebuilds the network without its weights)."""
    return {k: copy.deepcopy(model_cfg[k]) for k in _ARCHITECTURE_KEYS if k in model_cfg}


def _resolve_weights(path: Any) -> Any:
    """A run directory means its ``final.safetensors``; anything else is passed on as it is."""
    if isinstance(path, (str, os.PathLike)) and path != "timm":
        p = Path(path)
        if p.is_dir() and (p / "final.safetensors").is_file():
            return p / "final.safetensors"
        if not p.exists():
            raise FileNotFoundError(f"model.backbone_weights: {p} does not exist")
    return path


def build_model(model_cfg: Mapping[str, Any], num_classes: int, *, backbone_weights: bool = True) -> nn.Module:
    """The detector a ``model`` config section describes, for ``num_classes`` foreground classes.

    Args:
        model_cfg: the ``model`` section (see :data:`DEFAULTS`).
        num_classes: ``K`` (labels ``1..K``).
        backbone_weights: load ``model.backbone_weights`` (False when the weights come from elsewhere: a resumed run,
            a trained model).
    """
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

    from .model import build_detector, parse_detector_name

    det, backbone = parse_detector_name(model_cfg["name"])
    trunk_kwargs = dict(model_cfg["kwargs"] or {})
    drop_path = model_cfg["drop_path_rate"]
    if drop_path is None:
        drop_path = DETECTION_DROP_PATH.get(backbone)
    if drop_path is not None:
        trunk_kwargs["drop_path_rate"] = drop_path
    channels = model_cfg["fpn_channels"]
    detector_kwargs: dict[str, Any] = {}
    width, convs = model_cfg["mask_head_channels"], model_cfg["mask_head_convs"]
    if det == "cascade":  # per-stage heads built by CascadeMaskRCNNDetector (its conv width is the FPN width)
        detector_kwargs.update(box_head_dim=model_cfg["box_head_dim"], mask_head_channels=width, mask_head_convs=convs)
    elif det != "retinanet" and model_cfg["box_head_dim"] != 1024:
        dim = model_cfg["box_head_dim"]
        detector_kwargs["box_head"] = TwoMLPHead(channels * 7 * 7, dim)
        detector_kwargs["box_predictor"] = FastRCNNPredictor(dim, num_classes + 1)
    if det == "maskrcnn" and (width != 256 or convs != 4 or channels != 256):
        detector_kwargs["mask_head"] = MaskRCNNHeads(channels, (width,) * convs, 1)
        detector_kwargs["mask_predictor"] = MaskRCNNPredictor(width, width, num_classes + 1)
    detector_kwargs.update(model_cfg["detector"]["kwargs"] or {})
    sizes = _sizes(model_cfg["min_size"])
    sources = {"model.kwargs": model_cfg["kwargs"], "model.detector.kwargs": model_cfg["detector"]["kwargs"]}
    with model_arguments_from(model_cfg["name"], sources):
        return build_detector(
            model_cfg["name"],
            num_classes=num_classes,
            min_size=sizes[0] if len(sizes) == 1 else tuple(sizes),
            max_size=model_cfg["max_size"],
            mm_compat=model_cfg["mm_compat"],
            fpn_channels=channels,
            backbone_weights=_resolve_weights(model_cfg["backbone_weights"]) if backbone_weights else None,
            frozen_stages=model_cfg["frozen_stages"],
            norm_eval=model_cfg["norm_eval"],
            lda_rule=model_cfg["lda_rule"],
            backbone_kwargs=trunk_kwargs,
            **detector_kwargs,
        )
