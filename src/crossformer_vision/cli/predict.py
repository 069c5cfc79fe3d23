"""``crossformer predict``: images or folders -> top-k labels with probabilities (table or JSON)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from .options import add_checkpoint, add_json, positive_int, require_some_readable


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files and/or folders")
    add_checkpoint(p, "run directory, checkpoints/step-* folder, .safetensors, or an official .pth")
    p.add_argument("--model", default=None, help="model name (only for official files of non-CrossFormer models)")
    p.add_argument("--topk", type=positive_int, default=5, help="labels per image (>= 1)")
    add_json(p)


def run(args: argparse.Namespace) -> int:
    from ..tasks.classification.predict import predict_images, results_json

    results = predict_images(args.checkpoint, args.inputs, args.topk, args.model, trusted=args.trust_checkpoint)
    require_some_readable(results)
    if args.json:
        print(results_json(results))
        return 0
    table = Table()
    for col in ("image", "rank", "label", "probability"):
        table.add_column(col)
    for r in results:
        if "error" in r:
            table.add_row(r["image"], "-", f"[red]unreadable: {r['error']}[/]", "-")
            continue
        for rank, t in enumerate(r["top"], 1):
            table.add_row(r["image"] if rank == 1 else "", str(rank), t["label"], f"{t['probability']:.4f}")
    Console(width=None if Console().is_terminal else 140).print(table)
    return 0
