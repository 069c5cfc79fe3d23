"""torchvision's RetinaNet / Faster R-CNN / Mask R-CNN with one label convention and checked targets.

All three take and return labels ``1..K`` (``0`` is background and is never predicted), the convention of the R-CNN
detectors and of :class:`crossformer_vision.data.CocoDetection`. torchvision's ``RetinaNet`` is a sigmoid classifier
with ``K`` outputs for labels ``0..K-1``; :class:`RetinaNetDetector` shifts labels by one on the way in and out, so
the head keeps exactly ``K`` logits (mmdet's layout: mmdet class ``c`` is label ``c + 1`` in all three detectors).

In training mode the targets are checked before they reach the model, so a bad label raises a ``ValueError`` naming
the image instead of an index error (or a device-side assert on GPU) deep inside a loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

__all__ = ["FasterRCNNDetector", "MaskRCNNDetector", "RetinaNetDetector", "check_targets"]


def check_targets(targets: Sequence[Mapping[str, Tensor]] | None, num_classes: int, *, masks: bool = False) -> None:
    """Validate training targets: ``boxes [N, 4]`` float ``(x1, y1, x2, y2)``, ``labels [N]`` int64 in ``[1, K]``,
    and with ``masks`` ``masks [N, H, W]``.

    Degenerate boxes (``x2 <= x1`` or ``y2 <= y1``) are refused here (torchvision would raise an ``AssertionError``);
    :class:`crossformer_vision.data.CocoDetection` never produces them.

    Raises:
        ValueError / TypeError: naming the image index and the offending field.
    """
    if targets is None:
        raise ValueError("targets are required in training mode: a list of dicts with 'boxes' and 'labels'")
    for i, t in enumerate(targets):
        if not isinstance(t, Mapping) or "boxes" not in t or "labels" not in t:
            keys = sorted(t) if isinstance(t, Mapping) else type(t).__name__
            raise ValueError(f"target {i}: expected a dict with 'boxes' and 'labels', got {keys}")
        boxes, labels = t["boxes"], t["labels"]
        if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[-1] != 4 or not boxes.is_floating_point():
            shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
            raise ValueError(f"target {i}: 'boxes' must be a float tensor [N, 4] (x1, y1, x2, y2), got {shape}")
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.shape != (len(boxes),):
            desc = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"target {i}: 'labels' must be an int64 tensor [{len(boxes)}], got {desc}")
        if not torch.isfinite(boxes).all():
            raise ValueError(f"target {i}: 'boxes' contains NaN or infinite values")
        degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if degenerate.any():
            j = int(degenerate.nonzero()[0])
            raise ValueError(
                f"target {i}: box {j} {boxes[j].tolist()} has no positive height and width (x1, y1, x2, y2); "
                "drop degenerate boxes before training (CocoDetection does)"
            )
        if len(labels) and (int(labels.min()) < 1 or int(labels.max()) > num_classes):
            raise ValueError(
                f"target {i}: labels must be in [1, {num_classes}] (0 is background), got "
                f"{int(labels.min())}..{int(labels.max())}; map category ids to labels with the dataset's "
                "cat_id_to_label, or build the detector with a larger num_classes"
            )
        if masks:
            m = t.get("masks")
            if not isinstance(m, Tensor) or m.ndim != 3 or len(m) != len(boxes):
                shape = tuple(m.shape) if isinstance(m, Tensor) else m
                raise ValueError(f"target {i}: Mask R-CNN needs 'masks' [{len(boxes)}, H, W], got {shape}")


class RetinaNetDetector(RetinaNet):
    """``torchvision.models.detection.RetinaNet`` with labels ``1..K`` in and out (``K`` logits in the head).

    Args:
        backbone: returns an ``OrderedDict`` of 5 maps and has ``out_channels``.
        num_classes: ``K``, the number of foreground classes.
        **kwargs: ``RetinaNet`` arguments.
    """

    def __init__(self, backbone: torch.nn.Module, num_classes: int, **kwargs: Any):
        super().__init__(backbone, num_classes, **kwargs)
        self.num_classes = num_classes

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """Train: ``dict`` of losses (``classification``, ``bbox_regression``); eval: per image ``boxes [N, 4]``
        (input pixels, ``x1, y1, x2, y2``), ``scores [N]``, ``labels [N]`` in ``1..K``."""
        if self.training:
            check_targets(targets, self.num_classes)
            targets = [{**t, "labels": t["labels"] - 1} for t in targets]
        out = super().forward(images, targets)
        if not self.training:
            out = [{**d, "labels": d["labels"] + 1} for d in out]
        return out


class FasterRCNNDetector(FasterRCNN):
    """``torchvision.models.detection.FasterRCNN`` (``K + 1`` softmax classes, background 0) with checked targets.

    Args:
        backbone: returns an ``OrderedDict`` of maps and has ``out_channels``.
        num_classes: ``K``, the number of foreground classes (the box predictor gets ``K + 1`` outputs).
        **kwargs: ``FasterRCNN`` arguments.
    """

    def __init__(self, backbone: torch.nn.Module, num_classes: int, **kwargs: Any):
        # torchvision refuses num_classes next to a given predictor: always give one (its default, 1024 features)
        if kwargs.get("box_predictor") is None:
            kwargs["box_predictor"] = FastRCNNPredictor(1024, num_classes + 1)
        super().__init__(backbone, None, **kwargs)
        self.num_classes = num_classes

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """Train: ``dict`` of losses; eval: per image ``boxes``, ``scores``, ``labels`` (``1..K``)."""
        if self.training:
            check_targets(targets, self.num_classes)
        return super().forward(images, targets)


class MaskRCNNDetector(MaskRCNN):
    """``torchvision.models.detection.MaskRCNN`` (``K + 1`` classes, background 0) with checked targets.

    In eval mode ``masks`` are soft ``[N, 1, H, W]`` probabilities in input pixels; threshold at 0.5 (mmdet's
    ``mask_thr_binary``).
    """

    def __init__(self, backbone: torch.nn.Module, num_classes: int, **kwargs: Any):
        # torchvision refuses num_classes next to given predictors: always give both (its defaults)
        if kwargs.get("box_predictor") is None:
            kwargs["box_predictor"] = FastRCNNPredictor(1024, num_classes + 1)
        if kwargs.get("mask_predictor") is None:
            kwargs["mask_predictor"] = MaskRCNNPredictor(256, 256, num_classes + 1)
        super().__init__(backbone, None, **kwargs)
        self.num_classes = num_classes

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """Train: ``dict`` of losses (incl. ``loss_mask``); eval: per image ``boxes``, ``scores``, ``labels``,
        ``masks``."""
        if self.training:
            check_targets(targets, self.num_classes, masks=True)
        return super().forward(images, targets)
