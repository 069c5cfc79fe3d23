"""Classification run configuration: the defaults are the paper's ImageNet recipe (docs/classification.md, "Recipe")."""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "PATH_KEYS", "RESUME_MUST_MATCH", "resolved_lr"]

#: Config entries that name files or folders: never taken from a model file's stored configuration.
PATH_KEYS = ("model.pretrained", "data.root", "train.output_dir")

DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "crossformer_s",  # any timm model name: crossformer_*, swin_*, deit_*, vit_*, resnet*
        "drop_path_rate": None,  # None: the model's default (a CrossFormer variant's official value)
        "pretrained": None,  # official .pth, converted .safetensors, or a run directory
        "grad_checkpointing": False,
        "compile": False,
        "kwargs": {},  # extra model arguments (embed_dim, depths, group_size, lda_rule, img_size, ...)
    },
    "data": {
        "dataset": "folder",  # "folder" (ImageNet layout) or "fashion_mnist" (embedded)
        "root": None,  # folder datasets: <root>/<train_split>/<class>/*
        "train_split": "train",
        "val_split": "val",
        "img_size": 224,
        "crop_pct": 0.875,  # eval: resize to img_size / crop_pct, centre crop img_size
        "interpolation": "bicubic",
        "mean": None,  # None: the model's pretrained config (ImageNet mean/std)
        "std": None,
        "train_limit": None,  # class-balanced subset sizes (embedded data) / first-N (folders)
        "val_limit": None,
        "workers": 8,
        "on_error": "skip",  # unreadable images: "skip" (warn and count) or "raise"
        # embedded data only: crop, flip, resize and normalise whole batches as tensors instead of timm's per-image
        # PIL transforms (same crop/flip distribution; no RandAugment, colour jitter or random erasing)
        "batch_transforms": False,
    },
    "aug": {
        "scale": [0.08, 1.0],  # RandomResizedCrop
        "ratio": [0.75, 1.3333333333333333],
        "hflip": 0.5,
        "auto_augment": "rand-m9-mstd0.5-inc1",
        "color_jitter": 0.4,
        "reprob": 0.25,
        "remode": "pixel",
        "mixup": 0.8,
        "cutmix": 1.0,
        "mixup_prob": 1.0,
        "mixup_switch_prob": 0.5,
        "mixup_mode": "batch",
        "label_smoothing": 0.1,
    },
    "optim": {
        "name": "adamw",
        "lr": 5.0e-4,  # per base_batch images: linearly scaled with the global batch (1e-3 at 1024)
        "base_batch": 512,
        "weight_decay": 0.05,  # not applied to norms, biases and other 1-D parameters
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        "clip_grad": 5.0,
        "fused": True,  # torch's fused AdamW / Adam kernels (several times faster steps, also on CPU)
    },
    "sched": {
        "name": "cosine",
        "epochs": 300,
        "warmup_epochs": 20.0,  # a float: fractions of an epoch are allowed
        "warmup_lr": 5.0e-7,  # per base_batch, scaled like lr
        "min_lr": 5.0e-6,  # per base_batch, scaled like lr
    },
    "train": {
        "batch_size": 128,  # per process and micro-step
        "accum_steps": 1,
        "amp": None,  # "bf16", "fp16" or null
        "ema": False,
        "ema_decay": 0.9998,
        "seed": 0,
        "deterministic": False,
        "device": None,  # "cpu", "cuda" or null (CUDA when available)
        "threads": None,  # torch CPU threads per process (null: torch's default)
        "eval_every": 1,
        "ckpt_every": 0,  # optimizer steps between checkpoints (0: every epoch)
        "keep_last": 3,
        "log_every": 20,
        "max_steps": None,
        "output_dir": "runs/classification",
        "progress": True,
    },
}


#: Config entries a resumed run must share with its checkpoint (anything else, e.g. sched.epochs, may change).
RESUME_MUST_MATCH = (
    "model.",
    "data.dataset",
    "data.img_size",
    "data.batch_transforms",
    "data.train_limit",
    "train.batch_size",
    "train.accum_steps",
    "train.seed",
    "aug.",
    "optim.",
)


def resolved_lr(value: float, cfg: dict[str, Any], world_size: int) -> float:
    """Linear scaling: ``value`` is per ``optim.base_batch`` images of the global (accumulated) batch."""
    global_batch = cfg["train"]["batch_size"] * world_size * cfg["train"]["accum_steps"]
    return value * global_batch / cfg["optim"]["base_batch"]
