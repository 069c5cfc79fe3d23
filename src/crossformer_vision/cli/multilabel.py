"""``crossformer multilabel``: multi-label recognition with a CSRA or plain head on any backbone: train, eval,
predict, demo.

Wiring only; the work is in :mod:`crossformer_vision.tasks.multilabel` (heavy imports happen inside the handlers).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .options import add_output_dir, add_task_commands, require_some_readable, run_task_command, train_overrides
from .options import console as make_console

_CHECKPOINT = "run directory, checkpoints/step-* folder or .safetensors of a multilabel run"
#: ``multilabel demo --quick``: a smoke run of a few seconds.
QUICK = ["sched.epochs=1", "sched.warmup_epochs=0.2", "data.demo_train=512", "data.demo_val=200"]
_METRICS = ("mAP", "CF1", "OF1", "CF1_top3", "OF1_top3")


def add_args(p: argparse.ArgumentParser) -> None:
    handlers = (_train, _eval, _predict, _demo)
    example = "data.root=/data/VOCdevkit/VOC2007 (presets: voc2007_csra_resnet101, coco_csra_resnet101, demo, ...)"
    parsers = add_task_commands(p, "multilabel_command", handlers, checkpoint=_CHECKPOINT, train_example=example)
    parsers["eval"].add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. data.root=... eval.topk=3")
    pred = parsers["predict"]
    add_output_dir(pred, "multilabel_predictions", "where the attention-map PNGs go")
    pred.add_argument("--threshold", type=float, default=None, help="label probability threshold (default: the run's)")
    pred.add_argument("--topk", type=int, default=5, help="also list this many most probable labels")
    pred.add_argument("--maps", action="store_true", help="draw each predicted label's class map over the image")
    demo = parsers["demo"]
    add_output_dir(demo, "runs/multilabel_demo", "where the runs and pictures go (must not hold runs)")
    demo.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (1 epoch on 512 scenes)")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides of the demo preset")


run = run_task_command


def _config(name: str | None, overrides: list[str]) -> dict:
    from ..configs import resolve_config
    from ..engine import load_config
    from ..tasks.multilabel.config import DEFAULTS

    return load_config(DEFAULTS, resolve_config(name, task="multilabel"), overrides)


def _line(m: dict) -> str:
    return "  ".join(f"{k} {m[k]:.2f}" for k in _METRICS if k in m)


def _train(args: argparse.Namespace) -> int:
    """train a multi-label model (CSRA or plain head; also under torchrun)"""
    from ..tasks.multilabel.train import train

    result = train(_config(args.config, train_overrides(args)), resume=args.resume, force_resume=args.force_resume)
    if result["is_main"]:
        m = result["metrics"]
        print(f"{_line(m)}  ({m['num_images']} images, {result['steps']} steps, {result['train_seconds']:.0f} s)"
              f"  -> {result['run_dir']}")  # fmt: skip
    return 0


def _eval(args: argparse.Namespace) -> int:
    """mAP, CP / CR / CF1, OP / OR / OF1 (also top 3) and per-class AP of a run"""
    from ..tasks.multilabel.evaluate import evaluate_checkpoint

    out = evaluate_checkpoint(args.checkpoint, args.overrides, trusted=args.trust_checkpoint)
    if not out.pop("is_main"):
        return 0
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    from rich.table import Table

    table = Table(title=f"{out['model']} ({out['head'].get('name', '?')} head): per-class AP")
    for col in ("class", "positives", "AP"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for row in out["per_class"]:
        table.add_row(row["class"], str(row["positives"]), "-" if row["AP"] is None else f"{row['AP']:.2f}")
    make_console().print(table)
    m = out["metrics"]
    print(f"{_line(m)}  CP {m['CP']:.2f}  CR {m['CR']:.2f}  OP {m['OP']:.2f}  OR {m['OR']:.2f}  "
          f"on {m['num_images']} images")  # fmt: skip
    return 0


def _predict(args: argparse.Namespace) -> int:
    """labels with probabilities for images, optionally with the head's class maps (PNG)"""
    from ..tasks.multilabel.predict import predict_images

    results = predict_images(
        args.checkpoint, args.inputs, args.output_dir, threshold=args.threshold, topk=args.topk, maps=args.maps,
        trusted=args.trust_checkpoint, device=args.device,
    )  # fmt: skip
    require_some_readable(results)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    from rich.table import Table

    table = Table(title="multi-label predictions")
    for col in ("image", "labels (probability)", "maps"):
        table.add_column(col)
    for r in results:
        if "error" in r:
            table.add_row(r["image"], f"[red]unreadable: {r['error']}[/]", "-")
            continue
        labels = ", ".join(f"{x['label']} {x['probability']:.2f}" for x in r["labels"]) or "(none above threshold)"
        table.add_row(r["image"], labels, Path(r["maps"]).name if "maps" in r else "-")
    make_console().print(table)
    return 0


def _demo(args: argparse.Namespace) -> int:
    """CSRA vs the plain head vs label frequency on embedded multi-label scenes (CPU, a few minutes)"""
    from ..tasks.multilabel.demo import run_demo

    start = time.perf_counter()
    summary = run_demo(Path(args.output_dir), [*(QUICK if args.quick else []), *args.overrides], make_console())
    print(f"demo done in {time.perf_counter() - start:.0f} s -> {summary['output_dir']}")
    return 0
