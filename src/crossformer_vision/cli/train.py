"""``crossformer train``: image classification (same command under ``torchrun``)."""

from __future__ import annotations

import argparse

from ..configs import resolve_config
from ..engine import load_config
from ..tasks.classification.config import DEFAULTS
from .options import add_train, train_overrides


def add_args(p: argparse.ArgumentParser) -> None:
    add_train(p, "optim.lr=1e-3 data.root=/data (presets: imagenet_crossformer_s, fashion_mnist_demo, ...)")


def run(args: argparse.Namespace) -> int:
    from ..tasks.classification.train import train

    cfg = load_config(DEFAULTS, resolve_config(args.config), train_overrides(args))
    result = train(cfg, resume=args.resume, force_resume=args.force_resume)
    m = result["metrics"]
    if m and result["is_main"]:  # under torchrun only rank 0 reports
        print(
            f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}  ({result['train_seconds']:.0f} s)"
        )
    return 0
