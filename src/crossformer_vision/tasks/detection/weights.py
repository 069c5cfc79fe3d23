"""Official mmdetection CrossFormer checkpoints (RetinaNet, Mask R-CNN) in the torchvision detectors of this package.

The backbone (``backbone.*``) goes through :func:`crossformer_vision.load_official_state_dict` (every key checked),
the neck and heads through :mod:`.mm_convert`. The LDA rule must match the one the weights were trained with:
CrossFormer v1 (S/B) detection weights use ``"fixed_interval"``, CrossFormer++ ones ``"fixed_group"``;
:func:`build_detector_from_mmdet` picks it from the checkpoint (CrossFormer++ blocks have Activation Cooling Layers,
``ex_conv``), and :func:`load_mmdet_checkpoint` warns when a model was built with the other one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN, RetinaNet

from ...models import CrossFormerBackbone, detect_variant, load_official_state_dict
from ...models._keys import extract_backbone_state_dict, unwrap_state_dict
from .cascade import CascadeMaskRCNNDetector
from .mm_convert import (
    ZERO_FILLED,
    convert_mmdet_bbox_head,
    convert_mmdet_cascade_mask_rcnn,
    convert_mmdet_fpn,
    convert_mmdet_mask_rcnn,
    convert_mmdet_retinanet,
    convert_mmdet_rpn_head,
)
from .model import build_detector

__all__ = ["TransferReport", "build_detector_from_mmdet", "inspect_mmdet_checkpoint", "load_mmdet_checkpoint"]


@dataclass
class TransferReport:
    """What an mmdet checkpoint gave a detector.

    Attributes:
        backbone_keys: trunk entries loaded (all of the trunk's, or loading raised).
        loaded: neck / head entries loaded (torchvision names).
        zero_filled: loaded entries whose background slots are zeros (mmdet has no background box / mask).
        skipped: converted entries not loaded, with the reason (a class-count mismatch, or no such module, e.g. the
            mask head of a Mask R-CNN checkpoint in a Faster R-CNN).
        missing: model entries the checkpoint does not provide (they keep their initialisation).
        class_names: ``meta['CLASSES']`` of the checkpoint, when present.
    """

    backbone_keys: int = 0
    loaded: list[str] = field(default_factory=list)
    zero_filled: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    class_names: list[str] | None = None

    @property
    def complete(self) -> bool:
        """Every model entry came from the checkpoint and every checkpoint entry was used."""
        return not self.skipped and not self.missing

    def __str__(self) -> str:
        lines = [f"backbone: {self.backbone_keys} entries; neck + heads: {len(self.loaded)} entries loaded"]
        if self.zero_filled:
            lines.append(f"zero-filled background slots: {', '.join(self.zero_filled)}")
        for key, why in self.skipped.items():
            lines.append(f"not transferred: {key} ({why})")
        if self.missing:
            lines.append(f"not in the checkpoint (initialised): {', '.join(self.missing)}")
        return "\n".join(lines)


def _read(checkpoint: str | os.PathLike | Mapping) -> tuple[dict[str, Tensor], Mapping]:
    if isinstance(checkpoint, (str, os.PathLike)):
        from ...models.io import read_checkpoint

        checkpoint = read_checkpoint(checkpoint)
    state_dict = {k.removeprefix("module."): v for k, v in unwrap_state_dict(checkpoint).items()}
    return state_dict, checkpoint


def inspect_mmdet_checkpoint(checkpoint: str | os.PathLike | Mapping) -> dict[str, Any]:
    """Detector type, backbone variant, LDA rule and class count of an mmdet CrossFormer checkpoint.

    Returns:
        ``{"detector": "retinanet" | "maskrcnn" | "fasterrcnn" | "cascade", "backbone": "crossformer_s" | ...,
        "lda_rule": ..., "num_classes": K, "class_names": [...] | None}``.

    Raises:
        ValueError: not an mmdet RetinaNet / Faster / Mask R-CNN checkpoint, or a backbone of no registered variant.
    """
    state_dict, container = _read(checkpoint)
    backbone = extract_backbone_state_dict({k: v for k, v in state_dict.items() if k.startswith("backbone.")})
    if not backbone:
        raise ValueError("no backbone.* entries: not an mmdet detector checkpoint")
    variant = detect_variant(backbone)
    if variant is None:
        raise ValueError("the backbone.* entries match no registered CrossFormer variant")
    if "bbox_head.retina_cls.weight" in state_dict:
        detector = "retinanet"
        num_anchors = state_dict["bbox_head.retina_reg.weight"].shape[0] // 4
        num_classes = state_dict["bbox_head.retina_cls.weight"].shape[0] // num_anchors
    elif "roi_head.bbox_head.0.fc_cls.weight" in state_dict:
        detector = "cascade"
        num_classes = state_dict["roi_head.bbox_head.0.fc_cls.weight"].shape[0] - 1
    elif "roi_head.bbox_head.fc_cls.weight" in state_dict:
        detector = "maskrcnn" if any(k.startswith("roi_head.mask_head.") for k in state_dict) else "fasterrcnn"
        num_classes = state_dict["roi_head.bbox_head.fc_cls.weight"].shape[0] - 1
    else:
        raise ValueError(
            "neither bbox_head.retina_cls (RetinaNet) nor roi_head.bbox_head.fc_cls (Faster / Mask R-CNN) found: "
            f"top-level prefixes are {sorted({k.split('.')[0] for k in state_dict})}"
        )
    uses_acl = any(".ex_conv." in k for k in backbone)
    meta = container.get("meta") if isinstance(container, Mapping) else None
    names = meta.get("CLASSES") if isinstance(meta, Mapping) else None
    return dict(
        detector=detector,
        backbone=variant,
        lda_rule="fixed_group" if uses_acl else "fixed_interval",
        num_classes=int(num_classes),
        class_names=list(names) if names is not None else None,
    )


def _unstaged(key: str) -> str:
    """``box_predictor.2.bbox_pred.weight`` (a cascade stage) -> ``box_predictor.bbox_pred.weight``."""
    parts = key.split(".")
    return ".".join(parts[:1] + parts[2:]) if len(parts) > 2 and parts[1].isdigit() else key


def _neck_and_heads(model: nn.Module, state_dict: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Converted neck / head entries for ``model``'s type, and the converted ones it has no module for."""
    if isinstance(model, RetinaNet):
        return convert_mmdet_retinanet(state_dict), {}
    if isinstance(model, CascadeMaskRCNNDetector):
        return convert_mmdet_cascade_mask_rcnn(state_dict), {}
    if isinstance(model, MaskRCNN):
        return convert_mmdet_mask_rcnn(state_dict), {}
    if isinstance(model, FasterRCNN):
        out = convert_mmdet_fpn(state_dict) | convert_mmdet_rpn_head(state_dict) | convert_mmdet_bbox_head(state_dict)
        dropped = {k: "Faster R-CNN has no mask head" for k in state_dict if k.startswith("roi_head.mask_head.")}
        return out, dropped
    raise TypeError(f"expected a torchvision RetinaNet / FasterRCNN / MaskRCNN, got {type(model).__name__}")


def load_mmdet_checkpoint(
    model: nn.Module, checkpoint: str | os.PathLike | Mapping, *, strict: bool = True
) -> TransferReport:
    """Load an official mmdet RetinaNet / Mask R-CNN checkpoint (CrossFormer backbone) into a built detector.

    Args:
        model: from :func:`build_detector` with a CrossFormer backbone of the checkpoint's variant.
        checkpoint: path, mmcv / mmengine checkpoint dict, or bare state dict.
        strict: raise on neck / head entries whose shapes differ (another ``num_classes``); with ``False`` they are
            skipped and listed in the report (fine-tuning on another dataset). The backbone is always checked
            key by key.

    Raises:
        ValueError: backbone keys or shapes that do not fit (naming them), unknown neck / head entries, or with
            ``strict`` a shape mismatch in the heads.
    """
    state_dict, container = _read(checkpoint)
    body = getattr(getattr(model, "backbone", None), "body", None)
    if not isinstance(body, CrossFormerBackbone):
        raise TypeError(
            f"the detector's trunk is {type(body).__name__}; official mmdet checkpoints are converted for CrossFormer "
            "backbones only"
        )
    backbone = extract_backbone_state_dict({k: v for k, v in state_dict.items() if k.startswith("backbone.")})
    expected_rule = "fixed_group" if any(".ex_conv." in k for k in backbone) else "fixed_interval"
    if body.lda_rule != expected_rule:
        warnings.warn(
            f"the backbone uses lda_rule={body.lda_rule!r}, but these weights were trained with {expected_rule!r} "
            f"(CrossFormer{'++' if expected_rule == 'fixed_group' else ' v1'}); outputs will differ from the "
            f"official model at detection sizes. Build it with lda_rule={expected_rule!r}.",
            stacklevel=2,
        )
    load_official_state_dict(body, {f"backbone.{k}": v for k, v in backbone.items()})

    converted, skipped = _neck_and_heads(model, state_dict)
    own = model.state_dict()
    report = TransferReport(backbone_keys=len(backbone), skipped=skipped)
    mismatched = {
        k: f"checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in converted.items()
        if k in own and v.shape != own[k].shape
    }
    unknown = sorted(k for k in converted if k not in own)
    if unknown:
        raise ValueError(f"converted entries with no place in {type(model).__name__}: {unknown[:8]}")
    if mismatched and strict:
        raise ValueError(
            "head shapes differ from the checkpoint (another num_classes?): "
            + "; ".join(f"{k}: {why}" for k, why in mismatched.items())
            + ". Build the detector with the checkpoint's num_classes, or pass strict=False to skip these entries."
        )
    report.skipped |= {k: f"shape mismatch, {why}" for k, why in mismatched.items()}
    loadable = {k: v for k, v in converted.items() if k not in mismatched}
    model.load_state_dict(loadable, strict=False)
    report.loaded = sorted(loadable)
    report.zero_filled = sorted(k for k in loadable if _unstaged(k.removeprefix("roi_heads.")) in ZERO_FILLED)
    body_prefix = "backbone.body."
    report.missing = sorted(k for k in own if not k.startswith(body_prefix) and k not in loadable)
    meta = container.get("meta") if isinstance(container, Mapping) else None
    names = meta.get("CLASSES") if isinstance(meta, Mapping) else None
    report.class_names = list(names) if names is not None else None
    return report


def build_detector_from_mmdet(
    checkpoint: str | os.PathLike | Mapping, **build_kwargs: Any
) -> tuple[nn.Module, TransferReport]:
    """Build the detector of an official mmdet checkpoint and load it.

    The detector type, backbone variant, class count and LDA rule are read from the checkpoint
    (:func:`inspect_mmdet_checkpoint`); ``build_kwargs`` go to :func:`build_detector` (e.g. ``min_size``).

    Returns:
        ``(model, report)``; the model is in eval mode.
    """
    _, container = _read(checkpoint)
    info = inspect_mmdet_checkpoint(container)
    build_kwargs.setdefault("lda_rule", info["lda_rule"])
    build_kwargs.setdefault("num_classes", info["num_classes"])
    model = build_detector(f"{info['detector']}_{info['backbone']}", **build_kwargs)
    report = load_mmdet_checkpoint(model, container)
    return model.eval(), report
