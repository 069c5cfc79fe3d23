"""mIoU, mAcc and aAcc over a whole dataset, as mmseg computes them.

Per-image intersection / union / prediction / label areas are *summed* over the dataset (and over processes) before
any division: IoU_k = sum(I_k) / sum(U_k), Acc_k = sum(I_k) / sum(L_k), aAcc = sum(I) / sum(L). A class with an
empty union (absent from the ground truth and the predictions) has IoU NaN, a class absent from the ground truth
has Acc NaN; means skip NaNs (``nanmean``), as mmseg does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["SegmentationMetric", "intersect_and_union", "summarize_areas"]


def intersect_and_union(
    pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255
) -> torch.Tensor:
    """Areas of one image (or a batch, summed), mmseg's ``intersect_and_union``.

    Args:
        pred: ``[..., H, W]`` predicted labels in ``[0, num_classes)``.
        label: Ground-truth labels of the same shape; ``ignore_index`` pixels are skipped.
        num_classes: K.
        ignore_index: Label to skip.

    Returns:
        ``[4, K]`` int64: area of intersection, union, prediction and label per class.

    Raises:
        ValueError: Shapes differ, or a label / prediction outside ``[0, K)`` (other than ``ignore_index``).
    """
    if pred.shape != label.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} shapes differ")
    if pred.is_floating_point() or label.is_floating_point():
        raise TypeError("pred and label must hold integer labels (take the argmax of the logits first)")
    keep = label != ignore_index
    pred, label = pred[keep].long(), label[keep].long()
    for name, values in (("label", label), ("prediction", pred)):
        if values.numel() and (values.min() < 0 or values.max() >= num_classes):
            bad = values[(values < 0) | (values >= num_classes)][0].item()
            raise ValueError(f"{name} value {bad} outside [0, {num_classes}) (ignore_index is {ignore_index})")
    area_intersect = torch.bincount(pred[pred == label], minlength=num_classes)
    area_pred = torch.bincount(pred, minlength=num_classes)
    area_label = torch.bincount(label, minlength=num_classes)
    return torch.stack([area_intersect, area_pred + area_label - area_intersect, area_pred, area_label])


def summarize_areas(areas: torch.Tensor) -> dict[str, float | torch.Tensor]:
    """Metrics from dataset-total ``[4, K]`` areas (intersection, union, prediction, label).

    Returns:
        ``{"aAcc", "mIoU", "mAcc"}`` as floats (fractions in [0, 1]; NaN when undefined) and per-class ``"IoU"``,
        ``"Acc"`` as ``[K]`` float64 tensors (NaN for undefined classes).
    """
    areas = areas.double().cpu()
    intersect, union, _, label = areas
    with torch.no_grad():
        iou = intersect / union  # 0 / 0 -> NaN
        acc = intersect / label
    total_label = label.sum()
    a_acc = (intersect.sum() / total_label).item() if total_label > 0 else math.nan
    return {
        "aAcc": a_acc,
        "mIoU": iou.nanmean().item(),
        "mAcc": acc.nanmean().item(),
        "IoU": iou,
        "Acc": acc,
    }


class SegmentationMetric:
    """Accumulates areas over a dataset; :meth:`compute` gives aAcc / mIoU / mAcc and per-class IoU / Acc.

    Args:
        num_classes: K.
        ignore_index: Label that is not evaluated.
        class_names: Names for :meth:`table`.

    Example::

        metric = SegmentationMetric(150)
        for images, masks in loader:
            metric.update(predict_labels(model, images, out_size=masks.shape[-2:]), masks)
        result = metric.compute(reduce_fn=torch.distributed.all_reduce)   # sums the areas over processes
        print(metric.table(result))
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Sequence[str] | None = None):
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.areas = torch.zeros(4, num_classes, dtype=torch.int64)
        self.num_images = 0

    def reset(self) -> None:
        self.areas.zero_()
        self.num_images = 0

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        """Add a batch.

        Args:
            preds: ``[B, H, W]`` predicted labels, or ``[B, K, H, W]`` scores (the argmax is taken).
            labels: ``[B, H, W]`` ground truth at the same size (``ignore_index`` skipped).
        """
        if preds.dim() == labels.dim() + 1:
            preds = preds.argmax(dim=1)
        if labels.dim() == 2:
            preds, labels = preds[None], labels[None]
        areas = intersect_and_union(preds, labels, self.num_classes, self.ignore_index)
        self.areas += areas.cpu()
        self.num_images += labels.shape[0]

    def compute(
        self, reduce_fn: Callable[[torch.Tensor], torch.Tensor | None] | None = None, device: str | None = None
    ) -> dict[str, float | torch.Tensor]:
        """Metrics over everything added (and, with ``reduce_fn``, over every process).

        Args:
            reduce_fn: Sums a tensor over processes, in place (``torch.distributed.all_reduce``) or by returning
                the sum (``engine.distributed.all_reduce_sum``). The ``[4, K]`` area tensor is reduced *before*
                any division. The accumulated state is not changed.
            device: Device of the tensor handed to ``reduce_fn`` (``"cuda"`` for NCCL); default CPU.
        """
        areas = self.areas.clone()
        if reduce_fn is not None:
            areas = areas.to(device) if device is not None else areas
            reduced = reduce_fn(areas)
            areas = reduced if isinstance(reduced, torch.Tensor) else areas
        return summarize_areas(areas)

    def table(self, result: dict[str, float | torch.Tensor] | None = None, digits: int = 2) -> str:
        """Per-class IoU / Acc (percent) and the summary, as a plain-text table."""
        result = result if result is not None else self.compute()
        width = max(5, *(len(n) for n in self.class_names))

        def pct(v: float) -> str:
            return "nan" if math.isnan(v) else f"{100 * v:.{digits}f}"

        lines = [f"{'Class':<{width}}  {'IoU':>7}  {'Acc':>7}", "-" * (width + 18)]
        for name, iou, acc in zip(self.class_names, result["IoU"].tolist(), result["Acc"].tolist()):
            lines.append(f"{name:<{width}}  {pct(iou):>7}  {pct(acc):>7}")
        lines.append("-" * (width + 18))
        lines.append(f"aAcc {pct(result['aAcc'])}  mIoU {pct(result['mIoU'])}  mAcc {pct(result['mAcc'])}")
        return "\n".join(lines)
