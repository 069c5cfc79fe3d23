"""Top-1 / top-5 / loss / per-class accuracy over a whole dataset, sharded over processes and reduced."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ...engine.distributed import DistInfo, all_reduce_sum
from ...engine.sampling import EvalShardSampler
from ...engine.trainer import autocast_context
from .data import collate_for

__all__ = ["evaluate_classifier", "per_class_accuracy"]


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
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EvalShardSampler(len(dataset), dist.rank, dist.world_size),  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=collate_for(dataset),
        generator=torch.Generator(),
    )
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
