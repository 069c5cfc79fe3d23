"""``crossformer train``: image classification (same command under ``torchrun``)."""

from __future__ import annotations

import argparse

from ..configs import resolve_config
from ..engine import load_config
from ..tasks.classification.config import DEFAULTS


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="YAML file or bundled preset name (e.g. imagenet_crossformer_s)")
    p.add_argument("--resume", default=None, help="checkpoint directory, or a run directory (its latest checkpoint)")
    p.add_argument(
        "--force-resume", action="store_true", help="resume even if the config differs from the checkpoint's"
    )
    p.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. optim.lr=1e-3 data.root=/data"
    )


def run(args: argparse.Namespace) -> int:
    from ..tasks.classification.train import train

    cfg = load_config(DEFAULTS, resolve_config(args.config), args.overrides)
    result = train(cfg, resume=args.resume, force_resume=args.force_resume)
    m = result["metrics"]
    if m and result["is_main"]:  # under torchrun only rank 0 reports
        print(
            f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}  ({result['train_seconds']:.0f} s)"
        )
    return 0
