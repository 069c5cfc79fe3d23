"""Detectors by name: ``{retinanet,fasterrcnn,maskrcnn,cascade}_{backbone}``.

``build_detector("maskrcnn_crossformer_s", num_classes=80)`` gives a torchvision ``MaskRCNN`` on a CrossFormer-S
trunk + FPN with the settings of the official mmdetection configs:

* images resized to shorter side 800, longer side at most 1333, padded to a multiple of 32, normalised with the
  ImageNet mean / std (mmdet's ``img_norm_cfg``);
* with ``mm_compat=True`` (default) mmdet's computation where torchvision's differs: :class:`MMAnchorGenerator`
  anchors, :class:`MMMultiScaleRoIAlign` pooling (``aligned=True``, adaptive sampling), and RetinaNet's P6 / P7 from
  C5 without a ReLU (always; see ``docs/detection_weights.md``);
* ``cascade``: Cascade Mask R-CNN with the settings of the official 3x result (Swin's
  ``cascade_mask_rcnn_*_giou_4conv1f`` configs; :mod:`.cascade`), 2000 RPN proposals per image in training;
* mmdet's test settings: RetinaNet ``topk_candidates=1000, score_thresh=0.05, nms_thresh=0.5``; R-CNN RPN
  ``1000`` pre / post NMS boxes at test time, ``2000`` / ``1000`` in training, NMS ``0.7``; R-CNN
  ``box_score_thresh=0.05, box_nms_thresh=0.5``; 100 detections per image.

Any torchvision detector argument can be overridden through ``**detector_kwargs``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .backbones import (
    BACKBONE_NAMES,
    FAMILY_BACKBONES,
    LISTED_FAMILY_BACKBONES,
    DetectionBackbone,
    build_detection_backbone,
)
from .cascade import CascadeMaskRCNNDetector
from .detectors import FasterRCNNDetector, MaskRCNNDetector, RetinaNetDetector
from .mm_convert import MMAnchorGenerator, MMMultiScaleRoIAlign

__all__ = [
    "DETECTOR_TYPES",
    "MASK_DETECTORS",
    "build_detector",
    "list_detectors",
    "load_foreign",
    "model_from_metadata",
    "parse_detector_name",
    "predicts_masks",
    "save_detector",
    "validate_model_args",
]

DETECTOR_TYPES: tuple[str, ...] = ("retinanet", "fasterrcnn", "maskrcnn", "cascade")
#: The detector types with a mask head (trained on instance masks, evaluated with ``segm``).
MASK_DETECTORS: tuple[str, ...] = ("maskrcnn", "cascade")

# mmdet's test_cfg / train_cfg values that have a torchvision argument (docs/detection_weights.md).
_RETINANET_SETTINGS = dict(
    topk_candidates=1000,
    score_thresh=0.05,
    nms_thresh=0.5,
    detections_per_img=100,
    fg_iou_thresh=0.5,
    bg_iou_thresh=0.4,
)
_RCNN_SETTINGS = dict(
    rpn_pre_nms_top_n_train=2000,
    rpn_post_nms_top_n_train=1000,
    rpn_pre_nms_top_n_test=1000,
    rpn_post_nms_top_n_test=1000,
    rpn_nms_thresh=0.7,
    box_score_thresh=0.05,
    box_nms_thresh=0.5,
    box_detections_per_img=100,
)


def list_detectors(all_variants: bool = False) -> list[str]:
    """The detector names: every detector type x every CrossFormer variant and comparison backbone, and x one
    variant per companion family (``soft_small``, ``cmt_s``, ``hrformer_s``; :data:`LISTED_FAMILY_BACKBONES`).

    :func:`parse_detector_name` / :func:`build_detector` accept every SOFT, CMT and HRFormer variant
    (``maskrcnn_soft_tiny``, ``retinanet_cmt_b``, ``cascade_hrformer_t``, ...; :data:`FAMILY_BACKBONES`), but only one
    per family is listed: a family's variants differ only in widths and depths, which the model-contract tests
    (``tests/test_task_models.py``, one forward + training step per listed name) replace by the same tiny widths, so
    listing all twelve would add 36 names (4 detector types x 9 variants) that test nothing new.

    Args:
        all_variants: list every accepted name instead (every companion variant too).
    """
    families = FAMILY_BACKBONES if all_variants else LISTED_FAMILY_BACKBONES
    backbones = [b for b in BACKBONE_NAMES if b not in FAMILY_BACKBONES] + list(families)
    return [f"{det}_{backbone}" for det in DETECTOR_TYPES for backbone in backbones]


def parse_detector_name(name: str) -> tuple[str, str]:
    """``"maskrcnn_crossformer_s"`` -> ``("maskrcnn", "crossformer_s")``; ``"retinanet_cmt_b"`` ->
    ``("retinanet", "cmt_b")`` (every companion variant, listed by :func:`list_detectors` or not).

    Raises:
        ValueError: unknown name; the message lists the known names (and the closest ones).
    """
    det, _, backbone = name.partition("_") if isinstance(name, str) else ("", "", "")
    if det not in DETECTOR_TYPES or backbone not in BACKBONE_NAMES:
        close = difflib.get_close_matches(str(name), list_detectors(all_variants=True), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown detector {name!r}.{hint} Names are <detector>_<backbone> with detector in {DETECTOR_TYPES} "
            f"and backbone in {BACKBONE_NAMES}; known names: {', '.join(list_detectors(all_variants=True))}"
        )
    return det, backbone


def predicts_masks(name: str) -> bool:
    """Whether the detector ``name`` (``<detector>_<backbone>``) has a mask head."""
    return parse_detector_name(name)[0] in MASK_DETECTORS


def build_detector(
    name: str,
    *,
    num_classes: int,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    mm_compat: bool = True,
    fpn_channels: int = 256,
    backbone_weights: str | os.PathLike | Mapping | None = None,
    frozen_stages: int | None = None,
    norm_eval: bool | None = None,
    lda_rule: str | None = None,
    backbone_kwargs: Mapping[str, Any] | None = None,
    **detector_kwargs: Any,
) -> nn.Module:
    """Build a detector by name.

    Args:
        name: ``<detector>_<backbone>``; see :func:`list_detectors` (backbones also ``soft_*``, ``cmt_*``,
            ``hrformer_*``: every variant of the companion families).
        num_classes: ``K`` foreground classes (80 for COCO). Labels are ``1..K`` in every detector.
        min_size: shorter image side; a sequence picks one at random per training image (mmdet's multi-scale
            ``multiscale_mode='value'``) and uses the last one at test time.
        max_size: cap of the longer side.
        mm_compat: mmdet's anchors and RoIAlign (needed to run official weights faithfully); ``False`` uses
            torchvision's ``AnchorGenerator`` and ``MultiScaleRoIAlign``.
        fpn_channels: FPN width.
        backbone_weights: pretrained trunk weights (see :func:`build_trunk`): a path / checkpoint object of any
            official CrossFormer layout, for timm backbones a file or ``"timm"``, for SOFT / CMT / HRFormer an
            official ImageNet file.
        frozen_stages: freeze the stem and the first ``k`` stages (default: 1 for ResNets, -1 otherwise).
        norm_eval: BatchNorm in eval mode during training (default: True for ResNets, SOFT, CMT and HRFormer).
        lda_rule: CrossFormer LDA rule (default: that of the official weights: v1 ``"fixed_interval"``,
            CrossFormer++ ``"fixed_group"``).
        backbone_kwargs: trunk arguments, e.g. ``drop_path_rate``, ``group_size``, or a tiny architecture
            (``embed_dim``, ``depths``, ``num_heads``) for tests.
        **detector_kwargs: torchvision ``RetinaNet`` / ``FasterRCNN`` / ``MaskRCNN`` arguments (override the mmdet
            settings above).

    Returns:
        A :class:`RetinaNetDetector`, :class:`FasterRCNNDetector`, :class:`MaskRCNNDetector` or
        :class:`CascadeMaskRCNNDetector`: in train mode
        ``model(images, targets)`` returns a loss dict, in eval mode ``model(images)`` a list of detections.

    Raises:
        ValueError: unknown name (listing the known ones) or bad arguments.
    """
    det, backbone_name = parse_detector_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int (foreground classes, 80 for COCO), got {num_classes!r}")
    sizes = (min_size,) if isinstance(min_size, int) else tuple(min_size)
    if not sizes or any(not isinstance(s, int) or s < 32 for s in sizes):
        raise ValueError(f"min_size must be an int >= 32 or a sequence of them, got {min_size!r}")
    if not isinstance(max_size, int) or max_size < max(sizes):
        raise ValueError(f"max_size must be an int >= min_size ({max(sizes)}), got {max_size!r}")

    backbone: DetectionBackbone = build_detection_backbone(
        backbone_name,
        "retinanet" if det == "retinanet" else "rcnn",
        fpn_channels=fpn_channels,
        frozen_stages=frozen_stages,
        norm_eval=norm_eval,
        lda_rule=lda_rule,
        weights=backbone_weights,
        **dict(backbone_kwargs or {}),
    )
    common = dict(min_size=sizes, max_size=max_size)
    if det == "retinanet":
        kwargs = {**common, **_RETINANET_SETTINGS}
        if mm_compat:
            kwargs["anchor_generator"] = MMAnchorGenerator.retinanet(backbone.strides)
        model: nn.Module = RetinaNetDetector(backbone, num_classes, **{**kwargs, **detector_kwargs})
    else:
        kwargs = {**common, **_RCNN_SETTINGS}
        names, strides = backbone.featmap_names, backbone.strides[: len(backbone.featmap_names)]
        if mm_compat:
            kwargs["rpn_anchor_generator"] = MMAnchorGenerator.rpn(backbone.strides)
            kwargs["box_roi_pool"] = MMMultiScaleRoIAlign(names, 7, strides)
            if det in MASK_DETECTORS:
                kwargs["mask_roi_pool"] = MMMultiScaleRoIAlign(names, 14, strides)
        if det == "cascade":
            kwargs["rpn_post_nms_top_n_train"] = 2000  # the cascade configs' rpn_proposal max_per_img
        cls = {"maskrcnn": MaskRCNNDetector, "cascade": CascadeMaskRCNNDetector}.get(det, FasterRCNNDetector)
        model = cls(backbone, num_classes, **{**kwargs, **detector_kwargs})
    model.detector_name = name
    return model


# ---------------------------------------------------------------------------------------------------------------------
# Model files (engine.loading)
# ---------------------------------------------------------------------------------------------------------------------


def save_detector(
    model: nn.Module,
    path: str | os.PathLike,
    model_cfg: Mapping[str, Any],
    class_names: Sequence[str],
    config: Mapping[str, Any] | None = None,
    source: str = "",
) -> Any:
    """Weights plus what rebuilds the detector (the architecture of the ``model`` section, the classes)."""
    from ...engine.loading import model_metadata, save_model
    from .config import architecture

    meta = model_metadata("detection", model_cfg["name"], architecture(model_cfg), class_names, config, source=source)
    return save_model(model, path, meta)


def _model_cfg(stored: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The stored architecture with the command line's ``model.*`` test-time overrides (``model.min_size=...``)."""
    from ...engine.config import apply_overrides
    from .config import DEFAULTS, architecture

    base = {**architecture(DEFAULTS["model"]), **stored, "backbone_weights": None, "init": None}
    return apply_overrides({"model": base}, [o for o in overrides if o.startswith("model.")])["model"]


def validate_model_args(name: str, args: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The architecture stored in a file: known keys only, no weights to fetch or read, the trunk's arguments through
    the allow-list of :mod:`crossformer_vision.models.arguments`, plain numbers for the detector's."""
    from ...engine.config import merge_config
    from ...models.arguments import validate_model_arguments
    from .backbones import TIMM_BACKBONES
    from .config import DEFAULTS, architecture

    try:
        section = merge_config(architecture(DEFAULTS["model"]), args, "model")
        if section["name"] != name:
            raise ValueError(f"model.name {section['name']!r} differs from the file's model {name!r}")
        _, backbone = parse_detector_name(name)
        trunk = TIMM_BACKBONES.get(backbone, backbone)
        section["kwargs"] = validate_model_arguments(trunk, section["kwargs"] or {})
        det_kwargs = section["detector"]["kwargs"] or {}
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in det_kwargs.values()):
            raise ValueError("model.detector.kwargs must hold numbers")
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None
    return section


def model_from_metadata(meta: Mapping[str, Any], *, overrides: Sequence[str] = (), **_: Any) -> nn.Module:
    """The detector a model file describes, without weights (``overrides``: test-time ``model.*`` settings)."""
    from .config import build_model

    return build_model(_model_cfg(meta["model_args"], overrides), len(meta["classes"]), backbone_weights=False)


def load_foreign(path: Any, *, trusted: bool = False, overrides: Sequence[str] = (), **_: Any) -> Any:
    """An official mmdetection checkpoint (``.pth``); ``extras["report"]`` says what transferred."""
    import warnings
    from pathlib import Path

    from ...engine.loading import LoadedModel
    from ...models.io import read_checkpoint
    from .data import COCO_CLASSES
    from .weights import build_detector_from_mmdet, inspect_mmdet_checkpoint

    path = Path(path)
    if path.suffix == ".safetensors":
        raise ValueError(
            f"{path} holds no detector metadata; use a file written by `crossformer det train` / `det convert`, or "
            "an official mmdet .pth"
        )
    container = read_checkpoint(path, trusted)
    found = inspect_mmdet_checkpoint(container)
    model_cfg = _model_cfg({"name": f"{found['detector']}_{found['backbone']}", "lda_rule": found["lda_rule"]},
                           overrides)  # fmt: skip
    sizes = model_cfg["min_size"]
    kwargs = dict(
        min_size=sizes if isinstance(sizes, int) else (sizes[0] if len(sizes) == 1 else tuple(sizes)),
        max_size=model_cfg["max_size"],
        mm_compat=model_cfg["mm_compat"],
        lda_rule=model_cfg["lda_rule"],
        **(model_cfg["detector"]["kwargs"] or {}),
    )
    if model_cfg["lda_rule"] != found["lda_rule"]:
        warnings.warn(
            f"model.lda_rule={model_cfg['lda_rule']!r} overrides the rule these weights were trained with "
            f"({found['lda_rule']!r}); results will differ from the official model",
            stacklevel=2,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the lda_rule warning of load_mmdet_checkpoint: given above
        model, report = build_detector_from_mmdet(container, **kwargs)
    names = report.class_names or (list(COCO_CLASSES) if found["num_classes"] == 80 else None)
    if names is None or len(names) != found["num_classes"]:
        names = [str(i) for i in range(1, found["num_classes"] + 1)]
    return LoadedModel(
        model=model.eval(),
        task="detection",
        name=model_cfg["name"],
        classes=list(names),
        config=None,
        source=str(path),
        kind="official",
        extras={"report": report},
        model_args=model_cfg,
    )
