"""Tiny runs and model files for the tests (runs in subprocesses: deterministic mode and threads stay isolated)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

TINY_RUN = [
    "model.name=crossformer_t",
    "model.kwargs.embed_dim=16",
    "model.kwargs.depths=[1,1,1,1]",
    "model.kwargs.num_heads=[1,1,2,4]",
    "model.kwargs.group_size=[4,4,2,1]",
    "model.kwargs.crs_interval=[2,1,1,1]",
    "data.dataset=fashion_mnist",
    "data.img_size=32",
    "data.crop_pct=1.0",
    "data.train_limit=320",
    "data.val_limit=100",
    "data.workers=0",
    "aug.auto_augment=null",
    "aug.reprob=0.0",
    "aug.color_jitter=0.0",
    "aug.scale=[0.6,1.0]",
    "optim.lr=2e-3",
    "optim.base_batch=32",
    "sched.epochs=2",
    "sched.warmup_epochs=1",
    "train.batch_size=32",
    "train.threads=1",
    "train.progress=false",
    "train.log_every=2",
]


def run_cli(args: list[str], check: bool = True, timeout: int = 300, **popen) -> subprocess.CompletedProcess:
    env = dict(popen.pop("env", os.environ), PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "crossformer_vision.cli.main", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, **popen)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "final.safetensors"))


#: A CrossFormer-T small enough for model-file tests.
TINY_ARGS = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}


def tiny_classifier_file(path: Path, classes=("a", "b", "c"), config=None) -> torch.nn.Module:
    """A classification model file (``final.safetensors`` schema) of a tiny CrossFormer-T; returns the model."""
    import timm

    from crossformer_vision.engine.loading import model_metadata, save_model

    torch.manual_seed(0)
    model = timm.create_model("crossformer_t", num_classes=len(classes), **TINY_ARGS).eval()
    meta = model_metadata("classification", "crossformer_t", TINY_ARGS, list(classes), config or {}, steps=3)
    save_model(model, path, meta)
    return model
