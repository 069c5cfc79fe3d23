"""``crossformer eval``: top-1 / top-5 / loss / per-class accuracy of a run or an official checkpoint."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from .options import add_checkpoint, add_json


def add_args(p: argparse.ArgumentParser) -> None:
    add_checkpoint(p, "run directory, checkpoints/step-* folder, .safetensors, or an official .pth")
    p.add_argument("--model", default=None, help="model name (only for official files of non-CrossFormer models)")
    p.add_argument("--batch-size", type=int, default=128)
    add_json(p)
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="overrides, e.g. data.dataset=folder data.root=/imagenet, or train.amp=bf16 (default: the run's own)",
    )


def run(args: argparse.Namespace) -> int:
    from ..engine.json_safe import strict_json_dumps
    from ..tasks.classification.evaluate import evaluate_checkpoint

    out = evaluate_checkpoint(args.checkpoint, args.overrides, args.model, args.batch_size, args.trust_checkpoint)
    if not out.pop("is_main"):
        return 0
    if args.json:
        print(strict_json_dumps(out, indent=1))
        return 0
    m = out["metrics"]
    console = Console(width=None if Console().is_terminal else 120)
    console.print(
        f"[bold]top-1 {m['top1']:.2f}%   top-5 {m['top5']:.2f}%   loss {m['loss']:.4f}[/]   "
        f"({m['num_images']} images, {m['skipped']} skipped)"
    )
    table = Table(title="per-class accuracy")
    for col in ("class", "images", "accuracy %"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for row in out["per_class"]:
        table.add_row(row["class"], str(row["images"]), f"{row['accuracy']:.2f}")
    console.print(table)
    return 0
