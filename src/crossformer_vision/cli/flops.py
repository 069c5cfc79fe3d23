"""``crossformer flops NAME``: parameters and GFLOPs of a classifier, segmentor or detector, next to the published row.

The default count follows the official ``get_flops.py`` rule (mmcv's module counter plus the attention matmuls the
backbone's ``flops()`` adds back; see :mod:`crossformer_vision.models.complexity`); ``full`` counts the attention
this package executes at the given input. Default shapes: 224 x 224 classifiers, 1280 x 800 detectors,
512 x 2048 UPerNet, 1024 x 1024 Semantic FPN.
"""

from __future__ import annotations

import argparse
import json

from ..models.complexity import model_complexity


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="e.g. crossformer_s, upernet_crossformer_s, cascade_crossformer_s")
    p.add_argument("--shape", type=int, nargs=2, default=None, metavar=("H", "W"), help="input size")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    if args.shape is not None and min(args.shape) < 32:
        raise ValueError(f"--shape takes H W, each at least 32, got {args.shape}")
    row = model_complexity(args.name, tuple(args.shape) if args.shape else None)
    if args.json:
        print(json.dumps(row, indent=1))
        return 0
    h, w = row["shape"]
    pub_p, pub_g = row["published_params_M"], row["published_gflops"]
    print(f"{row['name']} ({row['family']}) at {h}x{w}")
    print(f"  params   {row['params']:,} ({row['params_M']} M); published {pub_p if pub_p is not None else '-'} M")
    print(f"  GFLOPs   {row['gflops']} (official rule), {row['gflops_full']} (attention as executed); "
          f"published {pub_g if pub_g is not None else '-'}")  # fmt: skip
    if row["note"]:
        print(f"  note: {row['note']}")
    return 0
