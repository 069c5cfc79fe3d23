"""``crossformer explain``: class relevance maps of a classifier (overlays, .npy maps, top classes), and
``crossformer explain eval``: the papers' faithfulness tests of every method on the embedded data (docs/explain.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .options import add_checkpoint, add_json, add_output_dir, console, positive_int, require_some_readable

#: Column names of the eval table.
SHORT = {
    "positive_auc": "pos. pert. AUC",
    "negative_auc": "neg. pert. AUC",
    "deletion_auc": "deletion AUC",
    "insertion_auc": "insertion AUC",
    "pointing": "pointing",
    "pointing_top1": "pointing (top-1)",
    "pointing_topk": "pointing (top-k)",
    "energy": "energy",
}

#: Methods drawn by ``crossformer explain IMAGES`` unless ``--method`` says otherwise.
DEFAULT_IMAGE_METHODS = ("relevance", "rollout", "attention", "gradcam")


def _methods(text: str) -> tuple[str, ...]:
    """argparse type: comma-separated method names."""
    from ..explain import METHODS

    names = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METHODS]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"unknown method(s) {', '.join(bad) or text!r}; choose from {METHODS}")
    return names


def add_args(p: argparse.ArgumentParser) -> None:
    p.description = (
        "crossformer explain --checkpoint RUN IMAGES... --output-dir DIR: overlays (image | one map per method), "
        "the maps as .npy and the top classes as JSON.  crossformer explain eval --checkpoint RUN: positive / negative "
        "perturbation, deletion / insertion and localisation (pointing game, energy in boxes) of every method on the "
        "embedded Fashion-MNIST test set and det_demo scenes (multi-label runs: on the demo scenes' validation "
        "split they were trained on), as a table and a PNG."
    )
    p.add_argument("inputs", nargs="+", metavar="IMAGES", help="image files and/or folders, or the word eval")
    add_checkpoint(p, "classifier run directory, checkpoints/step-* folder or .safetensors")
    p.add_argument(
        "--method",
        type=_methods,
        default=None,
        help="comma-separated methods: relevance, relevance_head, rollout, attention, gradcam, random "
        f"(default: {','.join(DEFAULT_IMAGE_METHODS)} for images, all for eval)",
    )
    p.add_argument("--target", default=None, help="class to explain (name or index; default: the predicted class)")
    p.add_argument("--topk", type=positive_int, default=5, help="top classes in the JSON")
    add_output_dir(p, None, "folder for the PNGs, .npy maps and JSON (eval: default runs/explain-eval)")
    add_json(p)
    p.add_argument(
        "--limit",
        type=positive_int,
        default=500,
        help="eval: Fashion-MNIST test images (class-balanced); multi-label runs: validation scenes",
    )
    p.add_argument(
        "--scenes",
        type=positive_int,
        default=None,
        help="eval: det_demo val scenes (default: all 100); multi-label runs: validation scenes (default: --limit)",
    )
    p.add_argument(
        "--fill", choices=("black", "mean"), default="black", help="eval: value of removed pixels (default black)"
    )
    p.add_argument("--batch-size", type=positive_int, default=50, help="images per explanation batch")


def run(args: argparse.Namespace) -> int:
    if args.inputs == ["eval"]:
        return _eval(args)
    if args.output_dir is None:
        raise ValueError("--output-dir is required (where the overlays, maps and JSON go)")
    return _images(args)


def _load(args: argparse.Namespace) -> Any:
    """A classification model, else a multi-label one (``loaded.task`` says which)."""
    from ..engine.loading import load_model

    try:
        return load_model(args.checkpoint, "classification", trusted=args.trust_checkpoint)
    except ValueError as err:
        try:
            return load_model(args.checkpoint, "multilabel", trusted=args.trust_checkpoint)
        except (ValueError, ModuleNotFoundError):
            raise err from None


def _target_index(target: str | None, classes: list[str] | None, num_classes: int) -> int | None:
    if target is None:
        return None
    if classes and target in classes:
        return classes.index(target)
    try:
        index = int(target)
    except ValueError:
        raise ValueError(f"--target {target!r} is neither a class name nor an index; classes: {classes}") from None
    if not 0 <= index < num_classes:
        raise ValueError(f"--target {index} outside [0, {num_classes})")
    return index


def _images(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..data.images import image_paths, read_rgb
    from ..explain import explain
    from ..explain.overlay import save_overlay
    from ..tasks.classification.data import eval_transform
    from ..tasks.classification.model import data_config_of

    loaded = _load(args)
    model, classes = loaded.model.eval(), loaded.classes
    dcfg = data_config_of(loaded)
    transform = eval_transform(dcfg)
    methods = args.method or DEFAULT_IMAGE_METHODS
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    for i, path in enumerate(image_paths(args.inputs)):
        try:
            x = transform(read_rgb(path))[None]
        except (OSError, ValueError) as err:
            results.append({"image": str(path), "error": str(err)})
            continue
        with torch.no_grad():  # multi-label: each label's own sigmoid probability
            logits = model(x).float()[0]
            probs = logits.sigmoid() if loaded.task == "multilabel" else logits.softmax(-1)
        target = _target_index(args.target, classes, probs.numel())
        target = int(probs.argmax()) if target is None else target
        maps = {m: explain(model, x, target, m)[0].numpy() for m in methods}
        stem = f"{i:03d}_{path.stem}"
        files = {m: f"{stem}.{m}.npy" for m in methods}
        for m, name in files.items():
            np.save(out / name, maps[m].astype(np.float32))
        image = (x[0] * torch.tensor(dcfg["std"]).view(3, 1, 1) + torch.tensor(dcfg["mean"]).view(3, 1, 1)).clamp(0, 1)
        label = classes[target] if classes else str(target)
        save_overlay(image.permute(1, 2, 0).numpy(), maps, out / f"{stem}.png", f"{path.name}: {label}")
        top = probs.topk(min(args.topk, probs.numel()))
        results.append(
            {
                "image": str(path),
                "target": {"index": target, "label": label, "probability": round(float(probs[target]), 6)},
                "top": [
                    {"label": classes[j] if classes else str(j), "index": int(j), "probability": round(float(v), 6)}
                    for v, j in zip(top.values.tolist(), top.indices.tolist())
                ],
                "png": f"{stem}.png",
                "maps": files,
            }
        )
    require_some_readable(results)
    listing = {"checkpoint": str(args.checkpoint), "task": loaded.task, "methods": list(methods), "images": results}
    text = json.dumps(listing, indent=1)
    (out / "explain.json").write_text(text + "\n")
    if args.json:
        print(text)
        return 0
    for r in results:
        if "error" in r:
            print(f"{r['image']}: unreadable ({r['error']})")
        else:
            t = r["target"]
            print(f"{r['image']}: {t['label']} ({t['probability']:.3f}) -> {out / r['png']}")
    return 0


def _multilabel_inputs(loaded: Any) -> tuple[dict[str, Any], Any]:
    """A multi-label run's preprocessing and the validation scenes it was trained on (its config's demo settings)."""
    from ..tasks.multilabel.config import DEFAULTS, PATH_KEYS
    from ..tasks.multilabel.data import data_config, demo_split

    cfg = loaded.run_config(DEFAULTS, PATH_KEYS)
    if cfg["data"]["dataset"] != "demo":
        raise ValueError(
            f"explain eval tests multi-label models on the demo scenes' boxes; this run was trained on "
            f"data.dataset={cfg['data']['dataset']} (explain its images with crossformer explain IMAGES)"
        )
    scenes = demo_split(cfg, "val")
    if loaded.classes is not None and list(loaded.classes) != list(scenes.classes):
        raise ValueError(f"the model's labels {loaded.classes[:4]}... are not the demo scenes' {scenes.classes[:4]}...")
    return data_config(cfg), scenes


def _eval(args: argparse.Namespace) -> int:
    from rich.table import Table

    from ..explain import METHODS
    from ..explain.evaluate import evaluate_explanations, metrics_of, plot_evaluation
    from ..tasks.classification.model import data_config_of

    loaded = _load(args)
    methods = args.method or METHODS
    if loaded.task == "multilabel":  # the scenes it was trained on: every test on their (scene, class) pairs
        dcfg, scenes = _multilabel_inputs(loaded)
        limit = args.scenes or args.limit
    else:
        dcfg, scenes, limit = data_config_of(loaded), None, args.limit
    result = evaluate_explanations(
        loaded.model.eval(),
        dcfg,
        methods,
        limit=limit,
        scene_limit=args.scenes,
        batch_size=args.batch_size,
        fill=args.fill,
        task=loaded.task,
        scenes=scenes,
    )
    out = Path(args.output_dir or "runs/explain-eval")
    out.mkdir(parents=True, exist_ok=True)
    png = plot_evaluation(result, out / "explain_eval.png", f"{loaded.name} ({args.checkpoint})")
    result.pop("examples")
    result.update(checkpoint=str(args.checkpoint), model=loaded.name, png=str(png))
    text = json.dumps(result, indent=1)
    (out / "explain_eval.json").write_text(text + "\n")
    if args.json:
        print(text)
        return 0
    metrics = metrics_of(result["task"])
    if result["task"] == "multilabel":
        title = (
            f"{loaded.name}: faithfulness on {result['pairs']} (scene, present class) pairs of {result['scenes']} "
            f"multi-label val scenes (mAP {result['mAP']:.1f} %; {result['pairs_topk']} pairs in the model's top-k)"
        )
    else:
        title = (
            f"{loaded.name}: faithfulness on {result['images']} Fashion-MNIST test images (top-1 "
            f"{100 * result['top1']:.1f} %) and {result['pairs']} classes in {result['scenes']} det_demo scenes"
        )
    table = Table(title=title)
    table.add_column("method")
    for metric, higher in metrics.items():
        table.add_column(f"{SHORT[metric]} {'↑' if higher else '↓'}", justify="right")
    table.add_column("s / image", justify="right")
    best = {}
    for k, up in metrics.items():
        values = [result["methods"][n][k] for n in methods if result["methods"][n][k] is not None]
        best[k] = (max if up else min)(values) if values else None
    for m in methods:
        row = result["methods"][m]
        cells = ["-" if row[k] is None else f"{row[k]:.3f}" for k in metrics]
        cells = [f"[bold]{c}[/]" if row[k] is not None and row[k] == best[k] else c for c, k in zip(cells, best)]
        table.add_row(m, *cells, f"{result['seconds_per_image'][m]:.4f}")
    console().print(table)
    console().print(f"picture: {png}   JSON: {out / 'explain_eval.json'}")
    return 0
