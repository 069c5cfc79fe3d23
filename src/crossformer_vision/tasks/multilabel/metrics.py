"""Multi-label metrics as the literature reports them (ML-GCN, CSRA): mAP, CP / CR / CF1, OP / OR / OF1, also for the
top 3 labels.

* **AP** of a class: non-interpolated average precision over the images ranked by that class's score (torchmetrics'
  ``MultilabelAveragePrecision``, exact, no thresholds), **mAP** its macro mean over the classes that have at least
  one positive image (AP is undefined without one; such classes are listed in ``classes_without_positives``).
* **CP / CR**: per-class precision / recall of the predictions ``probability >= 0.5``, averaged over classes (a class
  never predicted has precision 0, as in the official code); **CF1** ``= 2 CP CR / (CP + CR)`` (the F1 of the
  averages, not the average F1). **OP / OR / OF1**: the same over all (image, class) pairs pooled (micro).
* **top 3**: only an image's three highest-scoring labels can be predicted (and still need ``>= 0.5``), as ML-GCN's
  ``overall_topk`` and CSRA's ``json_metric_top3`` do.
* Targets are 1 (positive), 0 (negative) or -1 (ignored: VOC ``difficult``-only classes of a test image, WIDER's
  unspecified attributes); ignored entries count in no metric.

All values are percentages.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics.functional.classification import (
    multilabel_average_precision,
    multilabel_precision,
    multilabel_recall,
)

__all__ = ["IGNORE", "multilabel_metrics", "per_class_table", "topk_only"]

#: Target value of an ignored (image, class) pair.
IGNORE = -1


def topk_only(probs: torch.Tensor, k: int) -> torch.Tensor:
    """``probs [N, K]`` with every entry outside each row's ``k`` highest set to 0 (so it is never predicted)."""
    k = min(k, probs.shape[1])
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, probs.topk(k, dim=1).indices, True)
    return torch.where(keep, probs, torch.zeros_like(probs))


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _pr_family(probs: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, threshold: float) -> dict[str, float]:
    """CP / CR / CF1 over the classes ``valid``, OP / OR / OF1 pooled (percent)."""
    k = probs.shape[1]
    kw = dict(num_labels=k, threshold=threshold, ignore_index=IGNORE, zero_division=0)
    cp = multilabel_precision(probs, targets, average="none", **kw)[valid].mean().item()
    cr = multilabel_recall(probs, targets, average="none", **kw)[valid].mean().item()
    op = multilabel_precision(probs, targets, average="micro", **kw).item()
    orec = multilabel_recall(probs, targets, average="micro", **kw).item()
    return {
        "CP": 100 * cp, "CR": 100 * cr, "CF1": 100 * _f1(cp, cr),
        "OP": 100 * op, "OR": 100 * orec, "OF1": 100 * _f1(op, orec),
    }  # fmt: skip


def multilabel_metrics(
    probs: torch.Tensor, targets: torch.Tensor, threshold: float = 0.5, topk: int = 3
) -> tuple[dict[str, float], list[float]]:
    """The literature's metrics of probabilities ``[N, K]`` against targets ``[N, K]`` in {1, 0, -1 (ignored)}.

    Returns:
        ``(metrics, per-class AP)``: ``metrics`` holds ``mAP``, ``CP``, ``CR``, ``CF1``, ``OP``, ``OR``, ``OF1``, the
        same with a ``_top3`` suffix (for ``topk=3``), ``num_images`` and ``classes_without_positives``; the per-class
        AP list has NaN for classes without positives. Percentages.
    """
    if probs.shape != targets.shape or probs.ndim != 2:
        raise ValueError(f"probabilities {tuple(probs.shape)} and targets {tuple(targets.shape)} must both be [N, K]")
    probs, targets = probs.float().cpu(), targets.long().cpu()
    positives = (targets == 1).sum(dim=0)
    valid = positives > 0
    if not bool(valid.any()):
        raise ValueError("no class has a positive image: mAP is undefined")
    with warnings.catch_warnings():  # classes without positives: torchmetrics warns and returns a value we drop
        warnings.filterwarnings("ignore", message=".*[Nn]o positive samples.*")
        ap = multilabel_average_precision(probs, targets, num_labels=probs.shape[1], average="none",
                                          thresholds=None, ignore_index=IGNORE)  # fmt: skip
    ap = torch.where(valid, ap.float(), torch.full_like(ap.float(), math.nan))
    metrics: dict[str, Any] = {"mAP": 100 * ap[valid].mean().item()}
    metrics.update(_pr_family(probs, targets, valid, threshold))
    if topk:
        top = _pr_family(topk_only(probs, topk), targets, valid, threshold)
        metrics.update({f"{k}_top{topk}": v for k, v in top.items()})
    metrics["num_images"] = int(probs.shape[0])
    metrics["classes_without_positives"] = int((~valid).sum())
    return metrics, [100 * v for v in ap.tolist()]


def per_class_table(ap: Sequence[float], targets: torch.Tensor, classes: Sequence[str]) -> list[dict[str, Any]]:
    """``[{"class", "positives", "AP"}]`` per class (AP None where the class has no positive image)."""
    positives = (targets == 1).sum(dim=0).tolist()
    return [
        {"class": name, "positives": int(n), "AP": None if math.isnan(v) else round(float(v), 4)}
        for name, n, v in zip(classes, positives, ap)
    ]
