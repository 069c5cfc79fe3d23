"""COCO evaluation of detectors: every process predicts its shard (``EvalShardSampler``), :class:`CocoEvaluator`
gathers the results and scores them once (AP in percent; ``-1``: the GT has no object of that
size, the COCO convention); and ``crossformer det eval`` on any checkpoint."""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...data.coco import CocoDetection, detection_collate
from ...engine import DistInfo, all_gather_objects, apply_overrides, init_distributed, load_config
from ...engine.json_safe import strict_json_dumps
from ...engine.loading import load_model
from ...engine.sampling import eval_loader
from ...engine.trainer import autocast_context
from ...utils.paths import output_dir as make_output_dir
from .coco_eval import COCO_METRIC_NAMES, CocoEvaluator
from .config import DEFAULTS, PATH_KEYS
from .data import detection_dataset, gt_for
from .model import predicts_masks

__all__ = [
    "evaluate_checkpoint",
    "evaluate_detector",
    "format_metrics_line",
    "iou_types_for",
    "metrics_report",
    "write_coco_results",
]


def iou_types_for(model_name: str, requested: Sequence[str] | None = None) -> tuple[str, ...]:
    """``bbox`` (+ ``segm`` for (Cascade) Mask R-CNN), or the requested types (``segm`` only with a mask head)."""
    masks = predicts_masks(model_name)
    if requested:
        types = tuple(requested)
        if "segm" in types and not masks:
            raise ValueError(f"eval.iou_types: {model_name} predicts no masks, so 'segm' cannot be evaluated")
        return types
    return ("bbox", "segm") if masks else ("bbox",)


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    dataset: CocoDetection,
    dist: DistInfo | None = None,
    *,
    iou_types: Sequence[str] = ("bbox",),
    batch_size: int = 2,
    workers: int = 0,
    amp: str | None = None,
    backend: str = "pycocotools",
) -> tuple[dict[str, float], CocoEvaluator, dict[int, Any]]:
    """COCO AP of ``model`` on every image of ``dataset`` (each once over all processes).

    Returns:
        ``(metrics, evaluator, merged)``: ``{"bbox/AP": ..., "bbox/AP50": ..., ...}`` in percent (``-1``: no GT of
        that size), the evaluator (``per_class``, ``summaries``, ``stats``) and the gathered results of all
        processes by image id (write them with ``evaluator.results(iou_type, merged)``). Every process gets them.
    """
    dist = dist or DistInfo()
    gathered: dict[str, list[Any]] = {}

    def gather(obj: Any) -> list[Any]:
        gathered["parts"] = all_gather_objects(obj)
        return gathered["parts"]

    evaluator = CocoEvaluator(
        gt_for(dataset),
        iou_types=iou_types,
        label_to_cat_id=dataset.label_to_cat_id,
        class_names=dataset.class_names,
        gather_fn=gather,
        backend=backend,
    )
    loader = eval_loader(dataset, dist, batch_size, workers, detection_collate)
    was_training = model.training
    model.eval()
    try:
        for images, targets in loader:
            images = [im.to(dist.device, non_blocking=True) for im in images]
            with autocast_context(dist.device, amp):
                outputs = model(images)
            outputs = [
                {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in outputs
            ]
            evaluator.update(outputs, targets)
    finally:
        model.train(was_training)
    raw = evaluator.evaluate()
    metrics = {k: (100.0 * v if v >= 0 else -1.0) for k, v in raw.items()}
    merged: dict[int, Any] = {}
    for part in gathered.get("parts", [evaluator._results]):
        for image_id, results in part.items():
            merged.setdefault(image_id, results)
    return metrics, evaluator, merged


def write_coco_results(evaluator: CocoEvaluator, merged: Mapping[int, Any], out_dir: str | Path) -> list[Path]:
    """``results_<iou_type>.json`` (the list the official COCO tools accept) for every evaluated IoU type."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for iou_type in evaluator.iou_types:
        path = out_dir / f"results_{iou_type}.json"
        path.write_text(json.dumps(evaluator.results(iou_type, dict(merged))))
        paths.append(path)
    return paths


def metrics_report(metrics: Mapping[str, float], evaluator: CocoEvaluator) -> dict[str, Any]:
    """Metrics, the full 12 COCO numbers and per-class AP (percent) as plain JSON values."""
    per_class = {
        t: {name: (None if ap != ap else round(100 * ap, 2)) for name, ap in evaluator.per_class[t].items()}
        for t in evaluator.iou_types
    }
    return {
        "metrics": {k: round(v, 3) for k, v in metrics.items()},
        "coco_stats": {t: [round(v, 4) for v in evaluator.stats[t]] for t in evaluator.iou_types},
        "per_class_AP": per_class,
    }


def evaluate_checkpoint(
    checkpoint: str | Path,
    overrides: Sequence[str] = (),
    config: str | Path | None = None,
    output_dir: str | Path | None = None,
    trusted: bool = False,
) -> dict[str, Any]:
    """``det eval``: COCO AP of a checkpoint (also under ``torchrun``: the images are split over the processes).

    The data come from the run's config, else from ``config`` / the defaults, with ``overrides`` on top
    (``data.dataset=coco data.val_json=... data.val_images=...``).

    Returns:
        :func:`metrics_report`'s dict plus ``num_images``, ``report`` (what an mmdet checkpoint transferred),
        ``model`` and ``results_files``.
    """
    loaded = load_model(checkpoint, "detection", trusted=trusted, overrides=overrides)
    base = loaded.run_config(DEFAULTS, PATH_KEYS)
    if config is not None:
        base = load_config(DEFAULTS, config)
    cfg = apply_overrides(copy.deepcopy(base), [o for o in overrides if not o.startswith("model.")])
    t = cfg["train"]
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    dist = init_distributed(t["device"])
    model = loaded.model.to(dist.device)
    classes = loaded.classes or []
    dataset = detection_dataset(cfg, "val", masks=False)
    if len(dataset.class_names) != len(classes):
        raise ValueError(
            f"the model predicts {len(classes)} classes but {dataset.ann_file} has "
            f"{len(dataset.class_names)}; evaluate it on the data it was trained for"
        )
    _warn_renamed_classes(classes, dataset.class_names, dataset.ann_file)
    metrics, evaluator, merged = evaluate_detector(
        model,
        dataset,
        dist,
        iou_types=iou_types_for(loaded.name, cfg["eval"]["iou_types"]),
        batch_size=cfg["eval"]["batch_size"],
        workers=cfg["data"]["workers"],
        amp=t["amp"],
        backend=cfg["eval"]["backend"],
    )
    report = loaded.extras.get("report")
    out = {"task": "detection", "model": loaded.name, "checkpoint": loaded.source, "classes": classes}
    out.update(metrics_report(metrics, evaluator))
    out.update(num_images=len(merged), report=str(report) if report is not None else None, results_files=[])
    if output_dir is not None and dist.is_main:
        folder = make_output_dir(output_dir)
        out["results_files"] = [str(p) for p in write_coco_results(evaluator, merged, folder)]
        (folder / "metrics.json").write_text(strict_json_dumps(out, indent=1))
    out["summaries"] = dict(evaluator.summaries)
    out["is_main"] = dist.is_main
    return out


def _warn_renamed_classes(model_names: Sequence[str], data_names: Sequence[str], ann_file: Any) -> None:
    """Classes are matched by position (the k-th category of the file is the model's k-th class): say so when the
    names disagree, which usually means another label set in the same number of classes. Placeholder names
    (``"1"``, ``"2"``, ... of a checkpoint without class names) are not compared."""
    if all(str(n) == str(i + 1) for i, n in enumerate(model_names)):
        return
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(model_names, data_names, strict=True)) if a != b]
    if differ:
        i, a, b = differ[0]
        warnings.warn(
            f"{len(differ)} of {len(model_names)} class names of {ann_file} differ from the model's (class {i + 1}: "
            f"{b!r} in the file, {a!r} in the model); classes are matched by position, so AP is computed as if they "
            "were the same classes",
            stacklevel=3,
        )


def format_metrics_line(metrics: Mapping[str, float], iou_type: str) -> str:
    """``box AP 41.2 (AP50 62.0, AP75 44.1, APs 24.3, APm 45.0, APl 55.1)``."""
    label = {"bbox": "box", "segm": "mask"}[iou_type]

    def fmt(name: str) -> str:
        v = metrics[f"{iou_type}/{name}"]
        return "n/a" if v < 0 else f"{v:.1f}"

    rest = ", ".join(f"{n} {fmt(n)}" for n in COCO_METRIC_NAMES[1:])
    return f"{label} AP {fmt('AP')} ({rest})"
