"""Multi-label run configuration: the defaults are the CSRA paper's VOC2007 recipe (official ``main.py``: SGD, lr 0.01
with the head at 10x, momentum 0.9, weight decay 1e-4, 2 warm-up epochs, step decay x0.1, batch 16, 448 px, random
resized crop (0.7-1.0 of the area) and flip, inputs in [0, 1]); presets in ``configs/multilabel/``."""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULTS", "PATH_KEYS", "RESUME_MUST_MATCH"]

#: Config entries that name files or folders: never taken from a model file's stored configuration.
PATH_KEYS = ("model.pretrained", "data.root", "train.output_dir")

DEFAULTS: dict[str, Any] = {
    "model": {
        "name": "resnet101",  # any timm backbone with a final feature map: crossformer_*, resnet*, swin_*, vit_*, ...
        "head": "csra",  # "csra" (class-specific residual attention) or "avg" (average pooling + linear)
        "num_heads": 1,  # CSRA heads: 1, 2, 4, 6 or 8 (temperatures 1 | 1, inf | 1, 2, 4, inf | ...)
        "lam": 0.1,  # CSRA lambda: the weight of the attention logit
        "head_drop": 0.0,
        "drop_path_rate": None,  # None: the backbone's default
        "pretrained": None,  # backbone weights: a classifier run / .safetensors / official .pth (its head dropped)
        "grad_checkpointing": False,
        "compile": False,
        "kwargs": {},  # extra backbone arguments (embed_dim, depths, img_size, ...)
    },
    "data": {
        "dataset": "voc2007",  # "voc2007", "coco", "csv" or "demo" (embedded Fashion-MNIST scenes)
        "root": None,  # voc2007: VOCdevkit/VOC2007; coco: the folder of annotations/ and the image folders; csv
        "train_split": "trainval",  # voc2007: trainval; coco: train2014; csv: train (<root>/train.csv)
        "val_split": "test",  # voc2007: test; coco: val2014; csv: val
        "difficult_train": "negative",  # VOC classes with difficult objects only: the paper's training treats them
        "difficult_eval": "ignore",  # as negatives and its evaluation ignores them
        "img_size": 448,
        "crop_pct": 1.0,
        "crop_mode": "squash",  # evaluation: resize the whole image to img_size x img_size, as the paper does
        "interpolation": "bilinear",
        "mean": [0.0, 0.0, 0.0],  # the paper feeds [0, 1] images (WIDER / ViT: 0.5, 0.5)
        "std": [1.0, 1.0, 1.0],
        "train_limit": None,  # first-N images
        "val_limit": None,
        "workers": 8,
        "on_error": "skip",  # unreadable images: "skip" (warn and count) or "raise"
        # demo: scenes of 2-5 Fashion-MNIST items (data/multilabel.py), built at first use and cached
        "demo_train": 1600,
        "demo_val": 400,
        "demo_size": 96,
        "demo_side": [16, 40],
        "demo_objects": [2, 5],
        "demo_seed": 0,
        "batch_transforms": True,  # demo only: crops, flips and resizing on whole batches (data/tensor_pipeline.py)
    },
    "aug": {
        "scale": [0.7, 1.0],  # RandomResizedCrop, as the paper
        "ratio": [0.75, 1.3333333333333333],
        "hflip": 0.5,
        "auto_augment": None,
        "color_jitter": 0.0,
        "reprob": 0.0,
        "remode": "pixel",
    },
    "loss": {
        "name": "bce",  # "bce" (the paper) or "asl" (asymmetric loss, timm's AsymmetricLossMultiLabel)
        "gamma_neg": 4.0,  # asl only
        "gamma_pos": 1.0,
        "clip": 0.05,
    },
    "optim": {
        "name": "sgd",
        "lr": 0.01,  # per base_batch images of the global batch, linearly scaled
        "base_batch": 16,
        "head_lr_scale": 10.0,  # the classifier's learning rate is lr x this (the paper: 10)
        "weight_decay": 1.0e-4,
        "momentum": 0.9,
        "betas": [0.9, 0.999],  # adam / adamw
        "eps": 1.0e-8,
        "clip_grad": None,
        "fused": False,
    },
    "sched": {
        "name": "step",  # "step" (the paper) or "cosine"
        "epochs": 30,
        "decay_epochs": 4,  # step: x decay_rate every decay_epochs (the paper: 4 for VOC, 5 for COCO / WIDER)
        "decay_rate": 0.1,
        "warmup_epochs": 2.0,
        "warmup_lr": 0.0,  # linear warm-up from this to each group's learning rate; per base_batch, scaled like lr
        "min_lr": 0.0,  # per base_batch, scaled like lr
    },
    "train": {
        "batch_size": 16,
        "accum_steps": 1,
        "amp": None,
        "seed": 0,
        "deterministic": False,
        "device": None,
        "threads": None,
        "eval_every": 1,
        "ckpt_every": 0,
        "keep_last": 3,
        "log_every": 50,
        "max_steps": None,
        "output_dir": "runs/multilabel",
        "progress": True,
    },
    "eval": {
        "threshold": 0.5,  # CP / CR / OP / OR: a label is predicted at probability >= threshold
        "topk": 3,
    },
}

#: Config entries a resumed run must share with its checkpoint.
RESUME_MUST_MATCH = (
    "model.",
    "data.dataset",
    "data.img_size",
    "data.train_split",
    "data.train_limit",
    "data.demo_",
    "data.batch_transforms",
    "data.difficult_train",
    "train.batch_size",
    "train.accum_steps",
    "train.seed",
    "aug.",
    "loss.",
    "optim.",
)
