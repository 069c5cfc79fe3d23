"""mAP and the F1 family of a multi-label model over a whole dataset (sharded over processes, gathered exactly), the
label-frequency baseline, and ``crossformer multilabel eval`` on any run."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

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
from .data import build_datasets, collate_for, data_config
from .metrics import IGNORE, multilabel_metrics, per_class_table

__all__ = ["dataset_targets", "evaluate_checkpoint", "evaluate_multilabel", "frequency_baseline", "masked_bce"]


def masked_bce(logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy of logits ``[B, K]`` against targets in {1, 0, -1}: ignored (-1) entries count nowhere;
    ``mean`` divides by the counted entries (the paper's ``binary_cross_entropy_with_logits`` mean when none is
    ignored)."""
    keep = targets != IGNORE
    loss = F.binary_cross_entropy_with_logits(logits, targets.clamp_min(0), reduction="none") * keep
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / keep.sum().clamp_min(1)


def dataset_targets(dataset: Dataset) -> torch.Tensor:
    """All targets ``[N, K]`` of a multi-label dataset (or a ``Subset`` of one), without reading any image."""
    indices = None
    while isinstance(dataset, torch.utils.data.Subset):
        indices = list(dataset.indices) if indices is None else [dataset.indices[i] for i in indices]
        dataset = dataset.dataset
    if hasattr(dataset, "images") and isinstance(getattr(dataset, "targets", None), list):  # TensorImageDataset
        full = torch.stack([t["target"] for t in dataset.targets])
    else:
        full = dataset.targets  # MultiLabelImages
    return full if indices is None else full[torch.as_tensor(indices, dtype=torch.long)]


@torch.no_grad()
def evaluate_multilabel(
    model: nn.Module,
    dataset: Dataset,
    classes: Sequence[str],
    dist: DistInfo | None = None,
    batch_size: int = 32,
    workers: int = 0,
    amp: str | None = None,
    threshold: float = 0.5,
    topk: int = 3,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score every sample of ``dataset`` exactly once (over all processes) and compute the literature's metrics.

    Returns:
        ``(metrics, per_class)``: ``metrics`` = :func:`~.metrics.multilabel_metrics` plus ``loss`` (masked BCE) and
        ``skipped`` (unreadable images, left out of every metric); ``per_class`` = ``[{"class", "positives", "AP"}]``.
    """
    dist = dist or DistInfo()
    n, k = len(dataset), len(classes)  # type: ignore[arg-type]
    loader = eval_loader(dataset, dist, batch_size, workers, collate_for(dataset))
    was_training = model.training
    model.eval()
    device = dist.device
    # each process fills its rows, a sum gathers them: exact whatever the split over processes
    probs = torch.zeros(n, k, dtype=torch.float64, device=device)
    seen = torch.zeros(n, dtype=torch.float64, device=device)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # loss, skipped
    subset_index = _local_index(dataset)
    for batch in loader:
        sums[1] += len(batch["skipped"])
        labels = batch["labels"]
        if not isinstance(labels, dict):  # every image of the batch was unreadable
            continue
        x, y = batch["images"].to(device), labels["target"].to(device)
        rows = subset_index(labels["index"]).to(device)
        with autocast_context(device, amp):
            logits = model(x)
        logits = logits.float()
        sums[0] += masked_bce(logits, y, reduction="sum").double()
        probs[rows] = torch.sigmoid(logits).double()
        seen[rows] = 1.0
    for t in (probs, seen, sums):
        all_reduce_sum(t)
    model.train(was_training)
    if sums[1] > 0 and dist.is_main:
        warnings.warn(f"{int(sums[1])} unreadable image(s) were skipped during evaluation", stacklevel=2)
    targets = dataset_targets(dataset).to(torch.long)
    kept = seen.cpu() > 0
    metrics, ap = multilabel_metrics(probs.cpu()[kept].float(), targets[kept], threshold, topk)
    counted = (targets[kept] != IGNORE).sum().clamp_min(1).item()
    metrics = {"loss": sums[0].item() / counted, **metrics, "skipped": int(sums[1].item())}
    return metrics, per_class_table(ap, targets[kept], classes)


def _local_index(dataset: Dataset):
    """Maps the dataset's own sample indices (``labels["index"]``) to positions in ``dataset`` (a ``Subset`` of the
    first N samples keeps them)."""
    if isinstance(dataset, torch.utils.data.Subset):
        lookup = {int(i): pos for pos, i in enumerate(dataset.indices)}
        return lambda idx: torch.tensor([lookup[int(i)] for i in idx], dtype=torch.long)
    return lambda idx: idx.long()


def frequency_baseline(train_targets: torch.Tensor, val_targets: torch.Tensor, threshold: float = 0.5, topk: int = 3):
    """The label-frequency baseline: every image gets each class's training frequency as its probability (no image is
    looked at). Its AP per class is the class's share of positives (the ranking is a tie). Returns the metrics of
    :func:`~.metrics.multilabel_metrics`."""
    freq = (train_targets == 1).float().mean(dim=0)
    probs = freq.expand(val_targets.shape[0], -1).clone()
    metrics, _ = multilabel_metrics(probs, val_targets.long(), threshold, topk)
    return metrics


def evaluate_checkpoint(
    checkpoint: str | Path, overrides: Sequence[str] = (), batch_size: int | None = None, trusted: bool = False
) -> dict[str, Any]:
    """mAP, the F1 family and per-class AP of a multi-label run on its validation data (or what ``overrides`` say:
    ``data.root=... data.val_split=test``), under the run's preprocessing and autocast setting."""
    loaded = load_model(checkpoint, "multilabel", trusted=trusted)
    cfg = apply_overrides(loaded.run_config(DEFAULTS, PATH_KEYS), overrides)
    dist: DistInfo = init_distributed(cfg["train"]["device"])
    model = loaded.model.to(dist.device)
    _, val_ds, classes = build_datasets(cfg, data_config(cfg), train=False)
    if loaded.classes is not None and list(classes) != list(loaded.classes):
        raise ValueError(
            f"the model predicts {len(loaded.classes)} labels ({', '.join(loaded.classes[:4])}, ...) but the data has "
            f"{len(classes)} ({', '.join(classes[:4])}, ...): evaluate it on data with the labels it was trained on"
        )
    e = cfg["eval"]
    metrics, per_class = evaluate_multilabel(
        model, val_ds, classes, dist, batch_size or cfg["train"]["batch_size"], cfg["data"]["workers"],
        amp=cfg["train"]["amp"], threshold=e["threshold"], topk=e["topk"],
    )  # fmt: skip
    return {
        "task": "multilabel",
        "model": loaded.name,
        "head": loaded.model_args.get("head", {}),
        "checkpoint": loaded.source,
        "classes": list(classes),
        "metrics": metrics,
        "per_class": per_class,
        "is_main": dist.is_main,
    }
