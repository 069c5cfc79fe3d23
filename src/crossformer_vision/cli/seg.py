"""``crossformer seg``: semantic segmentation (UPerNet / Semantic FPN): train, eval, predict, convert, demo.

Wiring only; the work is in :mod:`crossformer_vision.tasks.segmentation` (heavy imports happen inside ``run``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .options import (
    add_output_dir,
    add_task_commands,
    require_some_readable,
    run_task_command,
    train_overrides,
)
from .options import console as make_console

LDA_RULES = ("fixed_group", "fixed_interval")
#: ``seg demo --quick``: a one-minute smoke run.
QUICK = ["sched.iters=20", "sched.warmup_iters=5", "eval.every=0", "train.log_every=5"]


_CHECKPOINT = "run directory, checkpoints/step-* folder, .safetensors (run or converted), an mmseg or HRFormer OCR .pth"


def _test_time(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["whole", "slide"], default=None, help="whole image or sliding 512 windows")
    p.add_argument("--ms", action="store_true", help="multi-scale test: ratios 0.5-1.75 of the test scale")
    p.add_argument("--flip", action="store_true", help="also average horizontally flipped inputs")
    p.add_argument(
        "--lda-rule",
        choices=LDA_RULES,
        default=None,
        help="mmseg checkpoints: override the LDA rule (default: v1 weights fixed_interval, ++ weights fixed_group)",
    )


def add_args(p: argparse.ArgumentParser) -> None:
    handlers = (_train, _eval, _predict, _convert, _demo)
    example = "data.root=/data/ADEChallengeData2016 (presets: ade20k_upernet_crossformer_s, seg_demo, ...)"
    parsers = add_task_commands(p, "seg_command", handlers, checkpoint=_CHECKPOINT, train_example=example)
    _test_time(parsers["eval"])
    parsers["eval"].add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"e.g. {example.split()[0]}")
    _test_time(parsers["predict"])
    add_output_dir(parsers["predict"], "seg_predictions", "where the PNGs go")
    parsers["predict"].add_argument(
        "--max-pixels",
        type=int,
        default=2048 * 2048,
        help="larger images are segmented scaled down to this many pixels and their labels scaled up (0: no bound)",
    )
    parsers["convert"].add_argument("--lda-rule", choices=LDA_RULES, default=None, help="default: the weights' family")
    demo = parsers["demo"]
    add_output_dir(demo, "runs/seg_demo", "run directory (must not hold a run)")
    demo.add_argument("--quick", action="store_true", help="a one-minute smoke run (20 iterations)")
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides of the seg_demo preset")


run = run_task_command


# ---------------------------------------------------------------------- subcommands
def _config(name: str | None, overrides: list[str]) -> dict:
    from ..configs import resolve_config
    from ..engine import load_config
    from ..tasks.segmentation.config import DEFAULTS

    return load_config(DEFAULTS, resolve_config(name, task="segmentation"), overrides)


def _train(args: argparse.Namespace) -> int:
    """train UPerNet / Semantic FPN (also under torchrun)"""
    from ..tasks.segmentation.train import train

    result = train(_config(args.config, train_overrides(args)), resume=args.resume, force_resume=args.force_resume)
    if not result["is_main"]:
        return 0
    m = result["metrics"]
    print(
        f"mIoU {m['mIoU']:.2f}  mAcc {m['mAcc']:.2f}  aAcc {m['aAcc']:.2f}  ({m['num_images']} images, "
        f"{result['steps']} iterations, {result['train_seconds']:.0f} s)  -> {result['run_dir']}"
    )
    return 0


def _test_time_options(args: argparse.Namespace) -> dict:
    """The options of ``_test_time`` and ``--trust-checkpoint`` as keyword arguments of eval / predict."""
    return dict(
        mode=args.mode, multi_scale=args.ms, flip=args.flip, lda_rule=args.lda_rule, trusted=args.trust_checkpoint
    )


def _eval(args: argparse.Namespace) -> int:
    """mIoU / mAcc / aAcc and per-class IoU of a run or an official mmseg checkpoint"""
    from ..tasks.segmentation.evaluate import evaluate_checkpoint

    out = evaluate_checkpoint(args.checkpoint, args.overrides, **_test_time_options(args))
    if not out.pop("is_main"):
        return 0
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    m, st = out["metrics"], out["settings"]
    tests = f"ratios {st['ratios']}" + (" + flip" if st["flip"] else "")
    print(out["table"])
    print(
        f"{out['model']} ({out['kind']}{', LDA ' + out['lda_rule'] if out['lda_rule'] else ''}): "
        f"mIoU {m['mIoU']:.2f}  mAcc {m['mAcc']:.2f}  aAcc {m['aAcc']:.2f}  on {m['num_images']} images "
        f"({st['mode']}, scale {st['scale']}, {tests})"
    )
    return 0


def _predict(args: argparse.Namespace) -> int:
    """segment images: label PNGs (palette) and overlay PNGs"""
    from rich.table import Table

    from ..tasks.segmentation.predict import predict_images

    options = _test_time_options(args)
    results = predict_images(
        args.checkpoint, args.inputs, args.output_dir, device=args.device, max_pixels=args.max_pixels, **options
    )
    require_some_readable(results)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    table = Table(title=f"predictions in {args.output_dir}")
    for col in ("image", "labels / overlay PNG", "largest classes (pixel share)"):
        table.add_column(col)
    for r in results:
        if "error" in r:
            table.add_row(r["image"], "-", f"[red]unreadable: {r['error']}[/]")
            continue
        top = ", ".join(f"{name} {share:.0%}" for name, share in list(r["classes"].items())[:4])
        table.add_row(r["image"], f"{Path(r['labels']).name} / {Path(r['overlay']).name}", top)
    make_console().print(table)
    return 0


def _convert(args: argparse.Namespace) -> int:
    """official mmseg UPerNet / Semantic FPN or HRFormer OCR checkpoint -> safetensors (checked by building it)"""
    from ..tasks.segmentation.convert import convert_mmseg

    meta = convert_mmseg(args.src, args.dst, lda_rule=args.lda_rule, trusted=args.trust_checkpoint)
    detail = f"LDA rule {meta['lda_rule']}" if "lda_rule" in meta else f"window {meta.get('window_size')}"
    print(f"wrote {args.dst}: {meta['model']}, {meta['num_classes']} classes, {detail}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """train UPerNet on the embedded demo set (CPU, a few minutes) and evaluate it"""
    from rich.table import Table

    from ..tasks.segmentation.config import build_datasets
    from ..tasks.segmentation.evaluate import majority_baseline
    from ..tasks.segmentation.train import train

    out = Path(args.output_dir)
    # an HRFormer segmentor by name starts from the HRFormer demo preset (its tiny widths), else the CrossFormer one
    hrformer = any(o.startswith("model.name=") and "_hrformer_" in o for o in args.overrides)
    preset = "seg_demo_hrformer" if hrformer else "seg_demo"
    cfg = _config(preset, [*(QUICK if args.quick else []), *args.overrides, f"train.output_dir={out}"])
    console = make_console()
    train_set, val_set, classes = build_datasets(cfg)
    assert train_set is not None
    # the backbone's size arguments, whatever the family calls them (embed_dim, embed_dims, width, depths, ...)
    sizes = ", ".join(f"{k} {v}" for k, v in cfg["model"]["backbone"]["kwargs"].items()) or "the variant's sizes"
    console.rule(
        f"[bold]{cfg['model']['name']}[/] ({sizes}): "
        f"{cfg['sched']['iters']} iterations x {cfg['train']['global_batch_size']} crops of {cfg['data']['crop_size']} "
        f"on {len(train_set)} embedded images, {len(classes)} classes"
    )
    start = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - start
    baseline = majority_baseline(train_set, val_set, len(classes), classes)
    m, b = result["metrics"], baseline["metrics"]
    table = Table(title=f"seg_demo validation set ({m['num_images']} images of 128 x 128), percent")
    for col in ("predictor", "mIoU", "mAcc", "aAcc"):
        table.add_column(col, justify="left" if col == "predictor" else "right")
    head = {"upernet": "UPerNet", "semfpn": "Semantic FPN", "ocr": "OCRNet"}.get(cfg["model"]["name"].split("_")[0])
    label = f"{head or cfg['model']['name']}, {result['steps']} iterations"
    table.add_row(label, *(f"{m[k]:.2f}" for k in ("mIoU", "mAcc", "aAcc")))
    table.add_row(f"trivial: '{baseline['class']}' everywhere", *(f"{b[k]:.2f}" for k in ("mIoU", "mAcc", "aAcc")))
    console.print(result["table"])
    console.print(table)
    console.print(
        f"training + evaluation: {wall:.0f} s wall ({result['train_seconds']:.0f} s in the training loop); "
        f"pictures: {out}/overlays.png (image | ground truth | prediction), {out}/curves.png"
    )
    summary = {
        "model": {k: result[k] for k in ("metrics", "per_class", "steps")},
        "baseline": {k: baseline[k] for k in ("class", "metrics")},
        "wall_seconds": round(wall, 1),
        "train_seconds": round(result["train_seconds"], 1),
    }
    (out / "demo_results.json").write_text(json.dumps(summary, indent=1))
    return 0
