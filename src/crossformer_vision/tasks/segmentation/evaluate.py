"""Segmentation evaluation: mIoU / mAcc / aAcc and per-class IoU over a dataset (sharded over processes, areas
summed before any division), the trivial majority baseline, and ``crossformer seg eval`` on any checkpoint."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ...data.segmentation import IGNORE_INDEX
from ...engine import DistInfo, all_reduce_sum, apply_overrides, init_distributed
from ...engine.loading import load_model
from ...engine.sampling import eval_loader
from .config import DEFAULTS, PATH_KEYS, InferenceSettings, build_datasets, inference_settings
from .metrics import SegmentationMetric
from .tta import MS_RATIOS, predict_probs

__all__ = ["evaluate_checkpoint", "evaluate_segmentor", "majority_baseline", "test_settings"]


def _single(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    image, mask = batch[0]
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def _percent(result: dict[str, Any], class_names: Sequence[str]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    metrics = {key: 100.0 * float(result[key]) for key in ("mIoU", "mAcc", "aAcc")}
    per_class = [
        {"class": name, "IoU": 100.0 * iou, "Acc": 100.0 * acc}
        for name, iou, acc in zip(class_names, result["IoU"].tolist(), result["Acc"].tolist())
    ]
    return metrics, per_class


@torch.no_grad()
def evaluate_segmentor(
    model: nn.Module,
    dataset: Dataset,
    settings: InferenceSettings,
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    dist: DistInfo | None = None,
    amp: str | None = None,
    workers: int = 0,
    ignore_index: int = IGNORE_INDEX,
    keep_examples: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU / mAcc / aAcc (percent) and per-class IoU / Acc of ``model`` on ``dataset``.

    Every process evaluates its shard (:class:`~crossformer_vision.engine.EvalShardSampler`: every image exactly once
    over all processes); the ``[4, K]`` intersection / union / prediction / label areas are summed over processes
    before any division, so the result does not depend on the number of processes.

    Args:
        model: The segmentor (restored to its previous train / eval mode afterwards).
        dataset: Yields ``(uint8 [3, H, W] image, [H, W] mask)`` at the original size (no transforms).
        settings: Test-time settings.
        num_classes: K.
        class_names: Names for the per-class results (default ``"0" ... "K-1"``).
        dist: Process placement (default: one CPU process).
        amp: Autocast dtype, or None.
        workers: Data-loader workers.
        ignore_index: Label excluded from the metrics.
        keep_examples: Also return this process's first N ``(image [H, W, 3] uint8, prediction, ground truth)``.
        progress: Show a progress bar (main process).

    Returns:
        ``{"metrics": {"mIoU", "mAcc", "aAcc", "num_images"}, "per_class": [{"class", "IoU", "Acc"}], "table": str,
        "areas": [4, K] tensor, "examples": [...]}``.
    """
    dist = dist or DistInfo()
    loader = eval_loader(dataset, dist, 1, workers, _single)
    metric = SegmentationMetric(num_classes, ignore_index, class_names)
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    was_training = model.training
    model.eval()
    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc="evaluating", unit="img", dynamic_ncols=True, leave=False)
    try:
        for image, mask in loader:
            pred = predict_probs(model, image, settings, device=dist.device, amp=amp).argmax(dim=1)[0]
            metric.update(pred, mask.to(pred.device).long())
            if len(examples) < keep_examples:
                examples.append((image.permute(1, 2, 0).numpy(), pred.cpu().numpy(), mask.numpy()))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    count = torch.tensor([metric.num_images], dtype=torch.int64, device=dist.device)
    result = metric.compute(reduce_fn=all_reduce_sum, device=dist.device)
    num_images = int(all_reduce_sum(count).item())
    metrics, per_class = _percent(result, metric.class_names)
    metrics["num_images"] = num_images
    areas = metric.areas.clone()
    return {
        "metrics": metrics,
        "per_class": per_class,
        "table": metric.table(result),
        "areas": areas,
        "examples": examples,
    }


def majority_baseline(
    train_set: Dataset, val_set: Dataset, num_classes: int, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """The trivial baseline: the class with the most training pixels, predicted everywhere on ``val_set``.

    Both sets must be :class:`~crossformer_vision.data.SegmentationDataset` s (their ``load`` gives raw masks).

    Returns:
        ``{"class": name, "index": k, "metrics": {"mIoU", "mAcc", "aAcc"} (percent), "table": str}``.
    """
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for i in range(len(train_set)):
        labels = train_set.load(i)[1].as_subclass(torch.Tensor).reshape(-1).long()
        labels = labels[labels != train_set.ignore_index]
        counts += torch.bincount(labels, minlength=num_classes)[:num_classes]
    majority = int(counts.argmax())
    metric = SegmentationMetric(num_classes, val_set.ignore_index, class_names)
    for i in range(len(val_set)):
        mask = val_set.load(i)[1].as_subclass(torch.Tensor).long()
        metric.update(torch.full_like(mask, majority), mask)
    result = metric.compute()
    metrics, _ = _percent(result, metric.class_names)
    return {"class": metric.class_names[majority], "index": majority, "metrics": metrics, "table": metric.table(result)}


def test_settings(
    cfg: dict[str, Any], mode: str | None, multi_scale: bool, flip: bool
) -> tuple[dict[str, Any], InferenceSettings]:
    """``cfg`` with the command line's test-time choices applied, and its :class:`InferenceSettings`."""
    cfg = copy.deepcopy(cfg)
    if mode is not None:
        cfg["eval"]["mode"] = mode
    if multi_scale:
        cfg["eval"]["ratios"] = list(MS_RATIOS)
    if flip:
        cfg["eval"]["flip"] = True
    return cfg, inference_settings(cfg)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    mode: str | None = None,
    multi_scale: bool = False,
    flip: bool = False,
    lda_rule: str | None = None,
    trusted: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """mIoU / mAcc / aAcc and per-class IoU of a run or an official checkpoint on a dataset.

    The dataset and test settings are the run's (its ``data.*`` / ``eval.*``), or ADE20K validation with the official
    test pipeline for mmseg checkpoints; ``overrides`` (``data.root=... eval.mode=slide``) and the keyword arguments
    change them. Runs under ``torchrun`` (images sharded, areas summed).
    """
    loaded = load_model(checkpoint, "segmentation", trusted=trusted, lda_rule=lda_rule)
    model = loaded.model
    cfg = apply_overrides(loaded.run_config(DEFAULTS, PATH_KEYS), overrides)
    cfg, settings = test_settings(cfg, mode, multi_scale, flip)
    dist = init_distributed(cfg["train"]["device"])
    model.to(dist.device)
    _, val_set, classes = build_datasets(cfg, train=False)
    if len(classes) != model.num_classes:
        raise ValueError(
            f"the model predicts {model.num_classes} classes but the dataset has {len(classes)}; "
            "evaluate it on the dataset it was trained for (data.dataset=..., data.root=...)"
        )
    result = evaluate_segmentor(
        model,
        val_set,
        settings,
        num_classes=model.num_classes,
        class_names=model.class_names or classes,
        dist=dist,
        amp=cfg["train"]["amp"],
        workers=cfg["data"]["workers"],
        progress=progress,
    )
    result.pop("examples")
    result.pop("areas")
    return {
        "task": "segmentation",
        "model": loaded.name,
        "checkpoint": loaded.source,
        "classes": list(model.class_names or classes),
        **result,
        "kind": loaded.kind,
        "lda_rule": getattr(model, "lda_rule", None),
        "settings": asdict(settings),
        "is_main": dist.is_main,
    }
