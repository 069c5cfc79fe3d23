"""``crossformer det``: detection and instance segmentation (RetinaNet / Faster R-CNN / Mask R-CNN).

``det train`` (also under ``torchrun``), ``det eval`` (our runs and official mmdet checkpoints), ``det predict``
(JSON + PNGs), ``det convert`` (official mmdet ``.pth`` -> self-describing ``.safetensors``) and ``det demo`` (a small
Mask R-CNN on the embedded det_demo set, CPU, a few minutes). See docs/detection.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .options import (
    add_output_dir,
    add_task_commands,
    run_task_command,
    train_overrides,
)
from .options import console as make_console

DEMO_PRESETS = {"maskrcnn": "det_demo_maskrcnn", "retinanet": "det_demo_retinanet", "cascade": "det_demo_cascade"}
DEMO_QUICK = ["sched.epochs=2", "sched.lr_steps=[]", "data.train_limit=96", "sched.warmup_iters=10"]


_CHECKPOINT = "run directory, checkpoints/step-* folder, .safetensors (run or det convert), or an mmdet .pth"


def _overrides(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides, e.g. {example}")


def add_args(p: argparse.ArgumentParser) -> None:
    handlers = (_train, _eval, _predict, _convert, _demo)
    example = "model.backbone_weights=crossformer-s.pth data.images=/data/coco/train2017"
    parsers = add_task_commands(p, "det_command", handlers, checkpoint=_CHECKPOINT, train_example=example)
    e = parsers["eval"]
    e.add_argument("--config", default=None, help="YAML file or preset for the data (default: the run's config)")
    e.add_argument("--output-dir", "--out", dest="output_dir", default=None, help="write metrics.json and results here")
    _overrides(e, "data.val_json=/coco/annotations/instances_val2017.json data.val_images=/coco/val2017")
    r = parsers["predict"]
    add_output_dir(r, "det_predictions", "where predictions.json and the PNGs go")
    r.add_argument("--score-thresh", type=float, default=0.3, help="keep detections scoring at least this")
    r.add_argument(
        "--set",
        dest="overrides",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="test-time model settings, e.g. --set model.min_size=[600] model.detector.kwargs.box_nms_thresh=0.6",
    )
    demo = parsers["demo"]
    demo.add_argument("--detector", choices=sorted(DEMO_PRESETS), default="maskrcnn")
    add_output_dir(demo, "runs/det_demo", "run directory (must not hold a run)")
    demo.add_argument("--quick", action="store_true", help="a smoke run of well under a minute (AP near zero)")
    demo.add_argument("--num-predictions", type=int, default=8, help="validation images drawn with their detections")
    _overrides(demo, "sched.epochs=4")


run = run_task_command


def _config(preset: str | None, overrides: list[str]) -> dict:
    from ..configs import resolve_config
    from ..engine import load_config
    from ..tasks.detection.config import DEFAULTS

    return load_config(DEFAULTS, resolve_config(preset, task="detection"), overrides)


def _print_results(console, metrics: dict, per_class: dict, iou_types) -> None:
    from rich.table import Table

    from ..tasks.detection.evaluate import format_metrics_line

    for iou_type in iou_types:
        if f"{iou_type}/AP" in metrics:
            console.print(f"[bold]{format_metrics_line(metrics, iou_type)}[/]")
    if not per_class:
        return
    table = Table(title="per-class AP (IoU 0.50:0.95, %)")
    table.add_column("class")
    for iou_type in per_class:
        table.add_column({"bbox": "box AP", "segm": "mask AP"}[iou_type], justify="right")
    names = next(iter(per_class.values()))
    for name in names:
        cells = [per_class[t][name] for t in per_class]
        table.add_row(name, *("n/a" if v is None else f"{v:.1f}" for v in cells))
    console.print(table)


def _train(args: argparse.Namespace) -> int:
    """train a detector (same command under torchrun)"""
    from ..tasks.detection.train import train

    cfg = _config(args.config, train_overrides(args))
    result = train(cfg, resume=args.resume, force_resume=args.force_resume)
    from ..engine import is_main

    if is_main() and result["metrics"]:
        console = make_console()
        _print_results(console, result["metrics"], result["per_class_AP"], ("bbox", "segm"))
        console.print(f"{result['steps']} steps in {result['train_seconds']:.0f} s; run: {result['run_dir']}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    """COCO box (and mask) AP of a run or an official mmdet checkpoint"""
    from ..configs import resolve_config
    from ..tasks.detection.evaluate import evaluate_checkpoint

    config = resolve_config(args.config, task="detection") if args.config else None
    out = evaluate_checkpoint(args.checkpoint, args.overrides, config, args.output_dir, args.trust_checkpoint)
    if not out.pop("is_main"):
        return 0
    if args.json:
        out.pop("summaries")
        print(json.dumps(out, indent=1))
        return 0
    console = make_console()
    console.print(f"{out['model']} from {out['checkpoint']}, {out['num_images']} images")
    if out["report"]:
        console.print(f"[dim]transferred from the mmdet checkpoint:[/]\n{out['report']}")
    _print_results(console, out["metrics"], out["per_class_AP"], ("bbox", "segm"))
    if out["results_files"]:
        console.print(f"results: {', '.join(out['results_files'])}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    """detect objects in images: predictions.json and one PNG per image"""
    from ..tasks.detection.predict import predict_files

    json_path, paths, unreadable = predict_files(
        args.checkpoint,
        args.inputs,
        args.output_dir,
        overrides=args.overrides,
        score_thresh=args.score_thresh,
        device=args.device,
        trusted=args.trust_checkpoint,
    )
    found = json.loads(Path(json_path).read_text())
    if args.json:
        print(json.dumps(found, indent=1))
        return 0
    n = sum(len(v) for v in found.values())
    print(f"{n} detections (score >= {args.score_thresh}) in {len(paths)} images: {json_path} and PNGs in "
          f"{args.output_dir}")  # fmt: skip
    for image, error in unreadable.items():
        print(f"skipped {image}: unreadable ({error})")
    return 0


def _convert(args: argparse.Namespace) -> int:
    """official mmdet RetinaNet / Mask R-CNN .pth -> detector .safetensors"""
    from ..tasks.detection.convert import convert_mmdet_to_safetensors

    info = convert_mmdet_to_safetensors(args.src, args.dst, trusted=args.trust_checkpoint)
    print(f"wrote {info['path']}: {info['model']} (lda_rule {info['lda_rule']}), {len(info['classes'])} classes")
    print(info["report"])
    return 0


def _demo(args: argparse.Namespace) -> int:
    """train a small detector on the embedded det_demo set (CPU, a few minutes)"""
    import torch

    from ..tasks.detection.train import train

    console = make_console()
    out = Path(args.output_dir)
    overrides = [*(DEMO_QUICK if args.quick else []), *args.overrides, f"train.output_dir={out}"]
    cfg = _config(DEMO_PRESETS[args.detector], overrides)
    console.rule(
        f"[bold]det demo[/]: {cfg['model']['name']} (tiny trunk), {cfg['sched']['epochs']} epochs on the "
        f"embedded det_demo set at {cfg['model']['min_size']} px, {cfg['train']['threads'] or torch.get_num_threads()} "
        "CPU thread(s)"
    )
    start = time.perf_counter()
    result = train(cfg)
    train_wall = time.perf_counter() - start
    images = _demo_predictions(out, args.num_predictions)
    wall = time.perf_counter() - start
    m = result["metrics"]
    _print_results(console, m, result["per_class_AP"], ("bbox", "segm"))
    summary = {
        "detector": cfg["model"]["name"],
        "box_AP": m.get("bbox/AP"),
        "box_AP50": m.get("bbox/AP50"),
        "mask_AP": m.get("segm/AP"),
        "mask_AP50": m.get("segm/AP50"),
        "epochs": cfg["sched"]["epochs"],
        "steps": result["steps"],
        "train_loop_seconds": round(result["train_seconds"], 1),
        "train_and_eval_wall_seconds": round(train_wall, 1),
        "total_wall_seconds": round(wall, 1),
        "threads": torch.get_num_threads(),
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=1))
    console.print(
        f"wall time {wall / 60:.1f} min (training and evaluation {train_wall / 60:.1f} min); "
        f"run: {out}; pictures: {out}/curves.png, {out}/predictions/*.png ({len(images)} images)"
    )
    return 0


def _demo_predictions(out: Path, count: int) -> list[Path]:
    """The first ``count`` validation images with their detections, one PNG each plus ``predictions.png`` (a grid)."""
    if count <= 0:
        return []
    import numpy as np
    from PIL import Image

    from ..data.coco import det_demo_dir
    from ..tasks.detection.predict import predict_files

    val = det_demo_dir() / "val"
    files = sorted(val.glob("*.png"))[:count]
    pred_dir = out / "predictions"
    predict_files(out, [str(f) for f in files], pred_dir, score_thresh=0.3, device="cpu")
    drawn = [np.asarray(Image.open(pred_dir / f"{f.stem}.png").convert("RGB")) for f in files]
    cols = min(4, len(drawn))
    rows = -(-len(drawn) // cols)
    h, w, _ = drawn[0].shape
    grid = np.full((rows * (h + 4), cols * (w + 4), 3), 255, dtype=np.uint8)
    for i, im in enumerate(drawn):
        r, c = divmod(i, cols)
        grid[r * (h + 4) : r * (h + 4) + im.shape[0], c * (w + 4) : c * (w + 4) + im.shape[1]] = im
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.NEAREST).save(
        pred_dir / "predictions.png"
    )
    return files
