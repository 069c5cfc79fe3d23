"""Top-1 / top-5 / loss / per-class accuracy of a classifier over a whole dataset (sharded over processes and
reduced), and ``crossformer eval`` on any checkpoint."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ...engine.config import apply_overrides
from ...engine.distributed import DistInfo, all_reduce_sum, init_distributed
from ...engine.loading import load_model
from ...engine.sampling import eval_loader
from ...engine.trainer import autocast_context
from .config import DEFAULTS, PATH_KEYS
from .data import build_datasets, collate_for
from .model import data_config_of, num_classes_of

__all__ = ["evaluate_checkpoint", "evaluate_classifier", "per_class_accuracy"]


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    dataset: Dataset,
    num_classes: int,
    dist: DistInfo | None = None,
    batch_size: int = 128,
    workers: int = 0,
    amp: str | None = None,
) -> tuple[dict[str, float], np.ndarray]:
    """Evaluate on every sample of ``dataset`` exactly once (over all processes).

    Returns:
        ``({"loss", "top1", "top5", "num_images", "skipped"}, confusion matrix [true, predicted])``;
        accuracies in percent.
    """
    dist = dist or DistInfo()
    loader = eval_loader(dataset, dist, batch_size, workers, collate_for(dataset))
    was_training = model.training
    model.eval()
    device = dist.device
    # float64 sums: exact counts, and the same result whichever way samples are split over processes
    sums = torch.zeros(5, dtype=torch.float64, device=device)  # loss, n, top1, top5, skipped
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    k = min(5, num_classes)
    for batch in loader:
        sums[4] += len(batch["skipped"])
        if batch["labels"].numel() == 0:
            continue
        x, y = batch["images"].to(device), batch["labels"].to(device)
        with autocast_context(device, amp):
            logits = model(x)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum").double()
        sums[1] += y.numel()
        topk = logits.topk(k, dim=1).indices
        sums[2] += (topk[:, 0] == y).sum()
        sums[3] += (topk == y[:, None]).any(dim=1).sum()
        confusion.index_put_((y, topk[:, 0]), torch.ones_like(y, dtype=torch.float64), accumulate=True)
    all_reduce_sum(sums)
    all_reduce_sum(confusion)
    model.train(was_training)
    n = max(sums[1].item(), 1.0)
    if sums[4] > 0 and dist.is_main:
        warnings.warn(f"{int(sums[4])} unreadable image(s) were skipped during evaluation", stacklevel=2)
    metrics = {
        "loss": sums[0].item() / n,
        "top1": 100.0 * sums[2].item() / n,
        "top5": 100.0 * sums[3].item() / n,
        "num_images": int(sums[1].item()),
        "skipped": int(sums[4].item()),
    }
    return metrics, confusion.cpu().numpy().astype(np.int64)


def per_class_accuracy(confusion: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    totals = confusion.sum(axis=1)
    return [
        {
            "class": name,
            "images": int(totals[i]),
            "accuracy": float(100.0 * confusion[i, i] / totals[i]) if totals[i] else float("nan"),
        }
        for i, name in enumerate(classes)
    ]


def evaluate_checkpoint(
    checkpoint: str | Path,
    overrides: Sequence[str] = (),
    model_name: str | None = None,
    batch_size: int = 128,
    trusted: bool = False,
) -> dict[str, Any]:
    """Top-1 / top-5 / loss / per-class accuracy of a checkpoint on a dataset.

    The dataset is the run's validation data (for runs) unless ``overrides`` say otherwise
    (``data.dataset=folder data.root=/imagenet data.val_split=val``); preprocessing comes from the run or
    from the model's pretrained config (resize 256 bicubic, centre crop 224 for ImageNet models). A run is
    evaluated under its own autocast setting (``train.amp``), which an override can change (``train.amp=bf16``).
    """
    # model.kwargs overrides shape an official / converted file's model (a run's own file describes its model)
    model_kwargs = apply_overrides(DEFAULTS, [o for o in overrides if o.startswith("model.kwargs.")])["model"]["kwargs"]
    loaded = load_model(checkpoint, "classification", trusted=trusted, model_name=model_name, model_kwargs=model_kwargs)
    cfg = apply_overrides(loaded.run_config(DEFAULTS, PATH_KEYS), overrides)
    dist: DistInfo = init_distributed(cfg["train"]["device"])
    model = loaded.model.to(dist.device)
    _, val_ds, classes = build_datasets(cfg, data_config_of(loaded), train=False)
    # an official file carries no class names: its head says how many classes it predicts
    num_classes = len(loaded.classes) if loaded.classes is not None else num_classes_of(model)
    if len(classes) != num_classes:
        raise ValueError(
            f"the model predicts {num_classes} classes but the dataset has {len(classes)}: evaluate it on data with "
            "the classes it was trained on (data.root=...)"
        )
    # the run's autocast setting (``train.amp=null`` overrides it), so a run evaluates to the metrics it reported
    metrics, confusion = evaluate_classifier(
        model, val_ds, num_classes, dist, batch_size, cfg["data"]["workers"], amp=cfg["train"]["amp"]
    )
    names = loaded.classes or classes
    return {
        "task": "classification",
        "model": loaded.name,
        "checkpoint": loaded.source,
        "classes": list(names),
        "metrics": metrics,
        "per_class": per_class_accuracy(confusion[: len(names), : len(names)], list(names)),
        "is_main": dist.is_main,
    }
