"""Load mmdetection neck / head weights into torchvision's detection modules.

The official CrossFormer detectors are mmdetection ``RetinaNet`` (``FPN`` + ``RetinaHead``) and ``MaskRCNN``
(``FPN`` + ``RPNHead`` + ``Shared2FCBBoxHead`` + ``FCNMaskHead``); the 3x Cascade Mask R-CNN has three
``ConvFCBBoxHead`` s and three ``FCNMaskHead`` s (:func:`convert_mmdet_cascade_mask_rcnn`). Their layers have the
same computation as torchvision's ``FeaturePyramidNetwork``, ``RetinaNetHead``, ``RPNHead``, ``TwoMLPHead`` /
``FastRCNNConvFCHead`` / ``FastRCNNPredictor`` and ``MaskRCNNHeads`` / ``MaskRCNNPredictor``, except for the
points below, which this module handles:

* **Keys**: mmcv's ``ConvModule`` stores ``<m>.conv.weight``; torchvision's ``Conv2dNormActivation`` stores
  ``<m>.0.weight``. Pure renames.
* **Class order** (two-stage heads only): mmdet's softmax classifier puts background **last** (index ``K``);
  torchvision puts it **first** (label 0), so foreground class ``c`` of mmdet is torchvision label ``c + 1``.
  ``fc_cls`` rows are rotated; ``fc_reg`` (``4 * K`` rows, class-major ``c * 4 + (dx, dy, dw, dh)``) and
  ``conv_logits`` (``K`` channels) gain a zero-filled background slot in front, because torchvision predicts boxes and
  masks for ``K + 1`` classes and discards the background ones (see :data:`ZERO_FILLED`).
* **RetinaNet / RPN** need no tensor re-ordering: both libraries lay channels out as ``a * C + c`` and ``a * 4 + k``
  with anchors ordered ``a = ratio_index * num_scales + scale_index``, rows ``(y, x, a)``; the sigmoid classifiers
  have no background channel (torchvision ``RetinaNet(num_classes=K)``; labels are mmdet's indices ``0..K-1``).
* **P6 / P7**: mmdet's RetinaNet FPN (``add_extra_convs='on_input'``, ``relu_before_extra_convs=False``) computes
  ``P6 = conv(C5)``, ``P7 = conv(P6)``; torchvision's ``LastLevelP6P7`` applies a ReLU before ``p7``
  (and reads ``P5`` when ``in_channels == out_channels``). Use :class:`MMLastLevelP6P7`; its keys are the same.
* **Anchors**: torchvision's ``AnchorGenerator`` rounds the base anchors to integers and infers each level's stride as
  ``image_size // feature_size``; mmdet keeps float anchors and uses the configured strides. Use
  :class:`MMAnchorGenerator` to get mmdet's anchors bit for bit.
* **RoI pooling**: torchvision's ``MultiScaleRoIAlign`` calls ``roi_align(aligned=False)`` with a fixed
  ``sampling_ratio`` (2 in ``MaskRCNN``); mmdet uses ``aligned=True`` with adaptive sampling (``sampling_ratio=0``)
  and its own level rule. Use :class:`MMMultiScaleRoIAlign`.

Numbers for every difference are in ``docs/detection_weights.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from ...models._keys import unwrap_state_dict

__all__ = [
    "ZERO_FILLED",
    "MMAnchorGenerator",
    "MMLastLevelP6P7",
    "MMMultiScaleRoIAlign",
    "convert_mmdet_bbox_head",
    "convert_mmdet_cascade_mask_rcnn",
    "convert_mmdet_convfc_bbox_head",
    "convert_mmdet_fpn",
    "convert_mmdet_mask_head",
    "convert_mmdet_mask_rcnn",
    "convert_mmdet_retina_head",
    "convert_mmdet_retinanet",
    "convert_mmdet_rpn_head",
    "mmdet_map_roi_levels",
]

#: torchvision tensors (relative to ``roi_heads.``) with slots that have no mmdet counterpart. They belong to the
#: background class, which torchvision never trains or reads for boxes and masks, so they are filled with zeros.
ZERO_FILLED = {
    "box_predictor.bbox_pred.weight": "rows 0:4 (background box deltas)",
    "box_predictor.bbox_pred.bias": "entries 0:4 (background box deltas)",
    "mask_predictor.mask_fcn_logits.weight": "output channel 0 (background mask)",
    "mask_predictor.mask_fcn_logits.bias": "entry 0 (background mask)",
}


# ---------------------------------------------------------------------------------------------------------------------
# State-dict conversion
# ---------------------------------------------------------------------------------------------------------------------


def _take(state_dict: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _check_consumed(entries: Mapping[str, Tensor], used: set[str], what: str, prefix: str) -> None:
    leftover = sorted(set(entries) - used)
    if leftover:
        raise ValueError(
            f"{what}: unexpected keys under {prefix!r}: {[prefix + k for k in leftover]}; only the official "
            "configs are supported (no norm layers in the neck or heads)"
        )


def _renamed(
    entries: Mapping[str, Tensor], names: Mapping[str, str], dst_prefix: str
) -> tuple[dict[str, Tensor], set[str]]:
    """``{dst_prefix + names[m] + .weight / .bias: entries[m + .weight / .bias]}`` and the source keys it used."""
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for src, dst in names.items():
        for param in ("weight", "bias"):
            out[f"{dst_prefix}{dst}.{param}"] = entries[f"{src}.{param}"]
            used.add(f"{src}.{param}")
    return out, used


def _renamed_all(
    entries: Mapping[str, Tensor], names: Mapping[str, str], dst_prefix: str, what: str, src_prefix: str
) -> dict[str, Tensor]:
    """:func:`_renamed`, refusing entries that ``names`` does not cover."""
    out, used = _renamed(entries, names, dst_prefix)
    _check_consumed(entries, used, what, src_prefix)
    return out


def _num_indexed(entries: Mapping[str, Tensor], group: str) -> int:
    indices = {int(k.split(".")[1]) for k in entries if k.startswith(group + ".")}
    if indices != set(range(len(indices))):
        raise ValueError(f"{group}: expected contiguous indices 0..n-1, got {sorted(indices)}")
    return len(indices)


def _with_background_first(t: Tensor, rows_per_class: int) -> Tensor:
    """Prepend a zero block of ``rows_per_class`` rows (the background slot) along dim 0."""
    return torch.cat([t.new_zeros((rows_per_class, *t.shape[1:])), t], dim=0)


def _background_last_to_first(t: Tensor) -> Tensor:
    """Rows ``[0..K-1, K]`` (mmdet: background last) -> ``[K, 0..K-1]`` (torchvision: background first)."""
    return torch.cat([t[-1:], t[:-1]], dim=0)


def _box_predictor(entries: Mapping[str, Tensor], dst_prefix: str, src_prefix: str) -> dict[str, Tensor]:
    """mmdet ``fc_cls`` / ``fc_reg`` (class-specific) -> ``FastRCNNPredictor`` ``cls_score`` / ``bbox_pred``: background
    row moved first, four zero background rows prepended to the deltas."""
    fc_cls_w, fc_cls_b = entries["fc_cls.weight"], entries["fc_cls.bias"]
    fc_reg_w, fc_reg_b = entries["fc_reg.weight"], entries["fc_reg.bias"]
    num_classes = fc_cls_w.shape[0] - 1
    if fc_reg_w.shape[0] != 4 * num_classes:
        raise ValueError(
            f"{src_prefix}fc_reg has {fc_reg_w.shape[0]} outputs for {num_classes} classes; only class-specific "
            f"regression (reg_class_agnostic=False, 4 * {num_classes} outputs) maps onto FastRCNNPredictor"
        )
    return {
        f"{dst_prefix}cls_score.weight": _background_last_to_first(fc_cls_w),
        f"{dst_prefix}cls_score.bias": _background_last_to_first(fc_cls_b),
        f"{dst_prefix}bbox_pred.weight": _with_background_first(fc_reg_w, 4),
        f"{dst_prefix}bbox_pred.bias": _with_background_first(fc_reg_b, 4),
    }


def convert_mmdet_fpn(
    state_dict: Mapping[str, Tensor], *, src_prefix: str = "neck.", dst_prefix: str = "backbone.fpn."
) -> dict[str, Tensor]:
    """mmdet ``FPN`` (no norm, no activation) -> torchvision ``FeaturePyramidNetwork``.

    ``lateral_convs.i.conv`` -> ``inner_blocks.i.0`` and ``fpn_convs.i.conv`` -> ``layer_blocks.i.0`` for the ``n``
    lateral levels. Extra convolutions (``fpn_convs.n`` and ``fpn_convs.n+1``, RetinaNet's ``add_extra_convs``) go to
    ``extra_blocks.p6`` / ``extra_blocks.p7`` of :class:`MMLastLevelP6P7`. Mask R-CNN's P6 is a parameter-free
    ``max_pool2d(P5, 1, stride=2)``, identical to torchvision's ``LastLevelMaxPool``.

    mmdet's lateral ``i`` reads backbone level ``i + start_level`` (RetinaNet: ``start_level=1``, so C2 is ignored);
    the torchvision FPN must be given exactly those levels, in the same order.

    Args:
        state_dict: mmdet-layout entries (other prefixes are ignored).
        src_prefix: prefix of the mmdet neck.
        dst_prefix: prefix of the torchvision FPN (``backbone.fpn.`` inside ``BackboneWithFPN``).

    Returns:
        torchvision-layout entries under ``dst_prefix``.
    """
    entries = _take(state_dict, src_prefix)
    num_laterals = _num_indexed(entries, "lateral_convs")
    num_convs = _num_indexed(entries, "fpn_convs")
    if num_laterals == 0 or num_convs - num_laterals not in (0, 2):
        raise ValueError(
            f"{src_prefix}: expected n lateral convs and n (max-pool P6) or n + 2 (conv P6/P7) fpn convs, "
            f"got {num_laterals} and {num_convs}"
        )
    names = {f"lateral_convs.{i}.conv": f"inner_blocks.{i}.0" for i in range(num_laterals)}
    names |= {f"fpn_convs.{i}.conv": f"layer_blocks.{i}.0" for i in range(num_laterals)}
    if num_convs > num_laterals:
        names |= {
            f"fpn_convs.{num_laterals}.conv": "extra_blocks.p6",
            f"fpn_convs.{num_laterals + 1}.conv": "extra_blocks.p7",
        }
    return _renamed_all(entries, names, dst_prefix, "FPN", src_prefix)


def convert_mmdet_retina_head(
    state_dict: Mapping[str, Tensor], *, src_prefix: str = "bbox_head.", dst_prefix: str = "head."
) -> dict[str, Tensor]:
    """mmdet ``RetinaHead`` -> torchvision ``RetinaNetHead`` (renames only).

    ``cls_convs.i.conv`` -> ``classification_head.conv.i.0``, ``retina_cls`` -> ``classification_head.cls_logits``,
    ``reg_convs.i.conv`` -> ``regression_head.conv.i.0``, ``retina_reg`` -> ``regression_head.bbox_reg``.
    The output channels need no re-ordering: both lay them out as ``a * K + c`` / ``a * 4 + (dx, dy, dw, dh)``, and
    torchvision's ``view(N, A, K, H, W).permute(0, 3, 4, 1, 2)`` gives rows ``(y, x, a)``, the order of mmdet's (and
    :class:`MMAnchorGenerator`'s) anchors. Build ``RetinaNetHead(C, A, K)`` with ``K`` = mmdet ``num_classes``.
    """
    entries = _take(state_dict, src_prefix)
    names = {"retina_cls": "classification_head.cls_logits", "retina_reg": "regression_head.bbox_reg"}
    for branch, dst in (("cls_convs", "classification_head"), ("reg_convs", "regression_head")):
        n = _num_indexed(entries, branch)
        if n != 4:  # torchvision's RetinaNet heads hard-code four convolutions
            raise ValueError(f"{src_prefix}{branch}: torchvision's RetinaNetHead has 4 stacked convs, got {n}")
        names |= {f"{branch}.{i}.conv": f"{dst}.conv.{i}.0" for i in range(n)}
    return _renamed_all(entries, names, dst_prefix, "RetinaHead", src_prefix)


def convert_mmdet_rpn_head(
    state_dict: Mapping[str, Tensor], *, src_prefix: str = "rpn_head.", dst_prefix: str = "rpn.head."
) -> dict[str, Tensor]:
    """mmdet ``RPNHead`` -> torchvision ``RPNHead(C, A, conv_depth=1)`` (renames only).

    ``rpn_conv`` -> ``conv.0.0``, ``rpn_cls`` -> ``cls_logits`` (``A`` sigmoid logits: mmdet's RPN uses
    ``use_sigmoid=True`` and ``num_classes=1``, so there is no background channel to drop), ``rpn_reg`` -> ``bbox_pred``
    (``a * 4 + k`` in both).
    """
    entries = _take(state_dict, src_prefix)
    names = {"rpn_conv": "conv.0.0", "rpn_cls": "cls_logits", "rpn_reg": "bbox_pred"}
    out, used = _renamed(entries, names, dst_prefix)
    if entries["rpn_reg.weight"].shape[0] != 4 * entries["rpn_cls.weight"].shape[0]:
        raise ValueError(
            f"{src_prefix}rpn_cls has {entries['rpn_cls.weight'].shape[0]} outputs; torchvision's RPN needs one "
            "sigmoid logit per anchor (mmdet use_sigmoid=True), i.e. rpn_reg outputs == 4 * rpn_cls outputs"
        )
    _check_consumed(entries, used, "RPNHead", src_prefix)
    return out


def convert_mmdet_bbox_head(
    state_dict: Mapping[str, Tensor], *, src_prefix: str = "roi_head.bbox_head.", dst_prefix: str = "roi_heads."
) -> dict[str, Tensor]:
    """mmdet ``Shared2FCBBoxHead`` -> torchvision ``TwoMLPHead`` + ``FastRCNNPredictor``, with class re-ordering.

    * ``shared_fcs.0`` / ``shared_fcs.1`` -> ``box_head.fc6`` / ``box_head.fc7``; both flatten the ``[N, C, 7, 7]``
      RoI features in ``C, H, W`` order.
    * ``fc_cls`` (``K + 1`` rows, background last) -> ``box_predictor.cls_score`` with rows ``[K, 0, 1, ..., K-1]``
      (background first). Softmax is permutation-equivariant, so the probabilities are the same, re-indexed.
    * ``fc_reg`` (``4 * K`` rows, ``reg_class_agnostic=False``, class-major ``c * 4 + (dx, dy, dw, dh)``) ->
      ``box_predictor.bbox_pred`` (``4 * (K + 1)`` rows, same layout) with four zero rows in front for background.
      The deltas are normalised by ``target_stds=(0.1, 0.1, 0.2, 0.2)`` in mmdet, which is torchvision's default
      ``BoxCoder`` weights ``(10, 10, 5, 5)``.
    """
    entries = _take(state_dict, src_prefix)
    out = {
        f"{dst_prefix}box_head.fc6.weight": entries["shared_fcs.0.weight"],
        f"{dst_prefix}box_head.fc6.bias": entries["shared_fcs.0.bias"],
        f"{dst_prefix}box_head.fc7.weight": entries["shared_fcs.1.weight"],
        f"{dst_prefix}box_head.fc7.bias": entries["shared_fcs.1.bias"],
    } | _box_predictor(entries, f"{dst_prefix}box_predictor.", src_prefix)
    used = {f"{m}.{p}" for m in ("shared_fcs.0", "shared_fcs.1", "fc_cls", "fc_reg") for p in ("weight", "bias")}
    _check_consumed(entries, used, "Shared2FCBBoxHead", src_prefix)
    return out


def convert_mmdet_mask_head(
    state_dict: Mapping[str, Tensor], *, src_prefix: str = "roi_head.mask_head.", dst_prefix: str = "roi_heads."
) -> dict[str, Tensor]:
    """mmdet ``FCNMaskHead`` -> torchvision ``MaskRCNNHeads`` + ``MaskRCNNPredictor``.

    ``convs.i.conv`` -> ``mask_head.i.0``, ``upsample`` (``ConvTranspose2d`` k2 s2, then ReLU in both) ->
    ``mask_predictor.conv5_mask``, ``conv_logits`` (``K`` channels) -> ``mask_predictor.mask_fcn_logits``
    (``K + 1`` channels, a zero background channel in front: mmdet class ``c`` is torchvision channel ``c + 1``).
    """
    entries = _take(state_dict, src_prefix)
    n = _num_indexed(entries, "convs")
    names = {f"convs.{i}.conv": f"mask_head.{i}.0" for i in range(n)} | {"upsample": "mask_predictor.conv5_mask"}
    out, used = _renamed(entries, names, dst_prefix)
    for param in ("weight", "bias"):
        out[f"{dst_prefix}mask_predictor.mask_fcn_logits.{param}"] = _with_background_first(
            entries[f"conv_logits.{param}"], 1
        )
        used.add(f"conv_logits.{param}")
    _check_consumed(entries, used, "FCNMaskHead", src_prefix)
    return out


def _mm_state_dict(checkpoint: Mapping, parts: tuple[str, ...], what: str) -> dict[str, Tensor]:
    state_dict = unwrap_state_dict(checkpoint)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    unknown = sorted(k for k in state_dict if not k.startswith(("backbone.", *parts)))
    if unknown:
        raise ValueError(f"{what}: keys that are neither backbone.* nor {parts}: {unknown[:8]}")
    missing = [p for p in parts if not any(k.startswith(p) for k in state_dict)]
    if missing:
        raise ValueError(f"{what}: the checkpoint has no {missing} entries; is it an mmdet {what} checkpoint?")
    return state_dict


def convert_mmdet_retinanet(checkpoint: Mapping, *, fpn_prefix: str = "backbone.fpn.") -> dict[str, Tensor]:
    """Neck and head of an mmdet RetinaNet checkpoint, as torchvision ``RetinaNet`` keys.

    ``backbone.*`` is left to the backbone converter and is not returned. Every ``neck.*`` / ``bbox_head.*`` entry is
    consumed; anything else raises ``ValueError``.

    Args:
        checkpoint: an mmcv / mmengine checkpoint (``{'state_dict': ...}``) or a bare state dict.
        fpn_prefix: where the FPN lives in the torchvision model (``backbone.fpn.`` for ``BackboneWithFPN``).

    Returns:
        ``{fpn_prefix}*`` and ``head.*`` entries.
    """
    state_dict = _mm_state_dict(checkpoint, ("neck.", "bbox_head."), "RetinaNet")
    return convert_mmdet_fpn(state_dict, dst_prefix=fpn_prefix) | convert_mmdet_retina_head(state_dict)


def convert_mmdet_mask_rcnn(checkpoint: Mapping, *, fpn_prefix: str = "backbone.fpn.") -> dict[str, Tensor]:
    """Neck and heads of an mmdet Mask R-CNN checkpoint, as torchvision ``MaskRCNN`` keys.

    Returns ``{fpn_prefix}*``, ``rpn.head.*`` and ``roi_heads.{box_head,box_predictor,mask_head,mask_predictor}.*``;
    the tensors listed in :data:`ZERO_FILLED` get zero background slots. ``backbone.*`` is not returned.
    """
    state_dict = _mm_state_dict(checkpoint, ("neck.", "rpn_head.", "roi_head."), "Mask R-CNN")
    roi = _take(state_dict, "roi_head.")
    stray = sorted(k for k in roi if not k.startswith(("bbox_head.", "mask_head.")))
    if stray:
        raise ValueError(f"Mask R-CNN: unexpected roi_head entries {['roi_head.' + k for k in stray]}")
    return (
        convert_mmdet_fpn(state_dict, dst_prefix=fpn_prefix)
        | convert_mmdet_rpn_head(state_dict)
        | convert_mmdet_bbox_head(state_dict)
        | convert_mmdet_mask_head(state_dict)
    )


def convert_mmdet_convfc_bbox_head(
    state_dict: Mapping[str, Tensor], *, src_prefix: str, box_head_prefix: str, predictor_prefix: str
) -> dict[str, Tensor]:
    """mmdet ``ConvFCBBoxHead`` (``n`` shared convs with a norm, one shared fc; the cascade heads) -> torchvision
    ``FastRCNNConvFCHead`` + ``FastRCNNPredictor``.

    ``shared_convs.j.conv`` -> ``{j}.0`` (no bias: mmcv's ``ConvModule`` drops it before a norm),
    ``shared_convs.j.{bn,gn}`` -> ``{j}.1`` (weight, bias and, for BatchNorm, the running statistics),
    ``shared_fcs.0`` -> ``{n + 1}`` (after the ``Flatten`` at index ``n``); ``fc_cls`` / ``fc_reg`` as in
    :func:`convert_mmdet_bbox_head` (class-specific regression only).
    """
    entries = _take(state_dict, src_prefix)
    n = _num_indexed(entries, "shared_convs")
    out: dict[str, Tensor] = {}
    used: set[str] = set()
    for j in range(n):
        for key, value in entries.items():
            head, _, param = key.rpartition(".")
            if head == f"shared_convs.{j}.conv" and param == "weight":
                out[f"{box_head_prefix}{j}.0.weight"] = value
            elif head in (f"shared_convs.{j}.bn", f"shared_convs.{j}.gn"):
                out[f"{box_head_prefix}{j}.1.{param}"] = value
            else:
                continue
            used.add(key)
    for param in ("weight", "bias"):
        out[f"{box_head_prefix}{n + 1}.{param}"] = entries[f"shared_fcs.0.{param}"]
        used |= {f"shared_fcs.0.{param}", f"fc_cls.{param}", f"fc_reg.{param}"}
    out |= _box_predictor(entries, predictor_prefix, src_prefix)
    _check_consumed(entries, used, "ConvFCBBoxHead", src_prefix)
    return out


def convert_mmdet_cascade_mask_rcnn(checkpoint: Mapping, *, fpn_prefix: str = "backbone.fpn.") -> dict[str, Tensor]:
    """Neck and heads of an mmdet Cascade Mask R-CNN checkpoint (``CascadeRoIHead``), as
    :class:`~.cascade.CascadeMaskRCNNDetector` keys.

    ``roi_head.bbox_head.{i}.*`` -> ``roi_heads.box_head.{i}.*`` + ``roi_heads.box_predictor.{i}.*``
    (:func:`convert_mmdet_convfc_bbox_head`), ``roi_head.mask_head.{i}.*`` -> ``roi_heads.mask_head.{i}.*`` +
    ``roi_heads.mask_predictor.{i}.*`` (:func:`convert_mmdet_mask_head`); the neck and RPN as for Mask R-CNN.
    """
    state_dict = _mm_state_dict(checkpoint, ("neck.", "rpn_head.", "roi_head."), "Cascade Mask R-CNN")
    roi = _take(state_dict, "roi_head.")
    stray = sorted(k for k in roi if not k.startswith(("bbox_head.", "mask_head.")))
    if stray:
        raise ValueError(f"Cascade Mask R-CNN: unexpected roi_head entries {['roi_head.' + k for k in stray]}")
    stages = _num_indexed(roi, "bbox_head")
    if _num_indexed(roi, "mask_head") != stages:
        raise ValueError(f"Cascade Mask R-CNN: {stages} box heads but {_num_indexed(roi, 'mask_head')} mask heads")
    out = convert_mmdet_fpn(state_dict, dst_prefix=fpn_prefix) | convert_mmdet_rpn_head(state_dict)
    for i in range(stages):
        out |= convert_mmdet_convfc_bbox_head(
            state_dict,
            src_prefix=f"roi_head.bbox_head.{i}.",
            box_head_prefix=f"roi_heads.box_head.{i}.",
            predictor_prefix=f"roi_heads.box_predictor.{i}.",
        )
        mask = convert_mmdet_mask_head(state_dict, src_prefix=f"roi_head.mask_head.{i}.", dst_prefix="")
        out |= {f"roi_heads.{k.replace('.', f'.{i}.', 1)}": v for k, v in mask.items()}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# torchvision modules with mmdet's computation
# ---------------------------------------------------------------------------------------------------------------------


class MMLastLevelP6P7(LastLevelP6P7):
    """RetinaNet's P6 / P7 as mmdet computes them; same parameters and keys (``p6``, ``p7``) as ``LastLevelP6P7``.

    mmdet ``add_extra_convs='on_input'`` reads the raw last backbone level (``C5``); ``'on_output'`` reads ``P5``.
    With ``relu_before_extra_convs=False`` (the official config) there is no ReLU before ``p7``. torchvision's own
    block always applies that ReLU and picks its input from ``in_channels == out_channels``.

    Args:
        in_channels: channels of the input of ``p6`` (``C5``'s channels when ``on_input``).
        out_channels: FPN channels.
        on_input: ``P6 = p6(C5)`` if True, ``P6 = p6(P5)`` otherwise.
        relu_before_extra_convs: apply ReLU to the inputs of ``p6`` and ``p7`` (mmdet's flag of that name).
    """

    def __init__(
        self, in_channels: int, out_channels: int, *, on_input: bool = True, relu_before_extra_convs: bool = False
    ):
        super().__init__(in_channels, out_channels)
        self.use_P5 = not on_input
        self.relu_before_extra_convs = relu_before_extra_convs

    def forward(self, p: list[Tensor], c: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        x = p[-1] if self.use_P5 else c[-1]
        p6 = self.p6(F.relu(x) if self.relu_before_extra_convs else x)
        p7 = self.p7(F.relu(p6) if self.relu_before_extra_convs else p6)
        p.extend([p6, p7])
        names.extend(["p6", "p7"])
        return p, names


class MMAnchorGenerator(AnchorGenerator):
    """mmdet's ``AnchorGenerator`` (``center_offset=0``, ``scale_major=True``) behind torchvision's interface.

    Differences from torchvision's ``AnchorGenerator`` that this removes:

    * base anchors are **not rounded** to integers (mmdet keeps ``+-0.5 * stride * scale * sqrt(ratio)`` in fp32);
    * each level uses its **configured stride**, not ``image_size // feature_size`` (which is wrong whenever the
      padded image is not a multiple of the level's stride, e.g. P6 / P7 of an 800-pixel side).

    Anchors are centred at ``(x * stride, y * stride)`` in both libraries (no half-pixel offset) and ordered
    ``(y, x, a)`` with ``a = ratio_index * num_scales + scale_index``; the arithmetic follows mmdet's order, so the
    result is bit-identical to ``prior_generator.grid_priors``.

    Args:
        strides: one stride per feature level, e.g. ``(8, 16, 32, 64, 128)``.
        ratios: height / width ratios.
        scales: anchor sizes in units of the stride (RPN: ``(8,)``); or give the next two.
        octave_base_scale: RetinaNet's base scale (4).
        scales_per_octave: RetinaNet's scales per octave (3): ``scales = base * 2 ** (i / n)``.
    """

    def __init__(
        self,
        strides: Sequence[int],
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        *,
        scales: Sequence[float] | None = None,
        octave_base_scale: float | None = None,
        scales_per_octave: int | None = None,
    ):
        octave = octave_base_scale is not None and scales_per_octave is not None
        if (scales is None) == (not octave):
            raise ValueError(
                f"give either scales (got {scales}) or octave_base_scale and scales_per_octave "
                f"(got {octave_base_scale}, {scales_per_octave}), not both or neither"
            )
        if scales is None:
            scales = [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
        self.strides = tuple(int(s) for s in strides)
        # anchors are constants, not parameters: keep them on the CPU even under a meta / cuda default device
        self.scales = torch.tensor([float(s) for s in scales], dtype=torch.float32, device="cpu")
        self.ratios = torch.tensor([float(r) for r in ratios], dtype=torch.float32, device="cpu")
        sizes = tuple(tuple(stride * s for s in self.scales.tolist()) for stride in self.strides)
        super().__init__(sizes, (tuple(self.ratios.tolist()),) * len(self.strides))
        self.cell_anchors = [self._base_anchors(stride) for stride in self.strides]

    @classmethod
    def retinanet(cls, strides: Sequence[int] = (8, 16, 32, 64, 128)) -> MMAnchorGenerator:
        """The official RetinaNet anchors: 9 per location (3 octave scales x 3 ratios), size 32..813."""
        return cls(strides, (0.5, 1.0, 2.0), octave_base_scale=4, scales_per_octave=3)

    @classmethod
    def rpn(cls, strides: Sequence[int] = (4, 8, 16, 32, 64)) -> MMAnchorGenerator:
        """The official Mask R-CNN RPN anchors: 3 per location (scale 8 x 3 ratios), size 32..512."""
        return cls(strides, (0.5, 1.0, 2.0), scales=(8,))

    def _base_anchors(self, stride: int) -> Tensor:
        h_ratios = torch.sqrt(self.ratios)
        w_ratios = 1 / h_ratios
        ws = (stride * w_ratios[:, None] * self.scales[None, :]).reshape(-1)
        hs = (stride * h_ratios[:, None] * self.scales[None, :]).reshape(-1)
        return torch.stack([-0.5 * ws, -0.5 * hs, 0.5 * ws, 0.5 * hs], dim=-1)

    def grid_priors(
        self,
        grid_sizes: Sequence[Sequence[int]],
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> list[Tensor]:
        """Anchors per level, ``[H_l * W_l * A, 4]`` ``(x1, y1, x2, y2)`` in input pixels (mmdet's ``grid_priors``)."""
        if len(grid_sizes) != len(self.strides):
            raise ValueError(f"got {len(grid_sizes)} feature levels for {len(self.strides)} strides {self.strides}")
        device = torch.device("cpu") if device is None else device
        self.set_cell_anchors(dtype, device)
        strides = [[torch.tensor(s, dtype=torch.int64, device=device)] * 2 for s in self.strides]
        return self.grid_anchors([list(g) for g in grid_sizes], strides)

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """``[sum_l H_l * W_l * A, 4]`` anchors per image, as torchvision's detectors expect."""
        grid_sizes = [fm.shape[-2:] for fm in feature_maps]
        anchors = torch.cat(self.grid_priors(grid_sizes, feature_maps[0].dtype, feature_maps[0].device))
        return [anchors for _ in image_list.image_sizes]


def mmdet_map_roi_levels(boxes: Tensor, num_levels: int, finest_scale: float = 56.0) -> Tensor:
    """mmdet ``SingleRoIExtractor.map_roi_levels``: ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))``, clamped.

    torchvision's ``LevelMapper`` computes ``floor(4 + log2(sqrt(w * h) / 224) + 1e-6) - 2``: the same rule
    (``224 / 2 ** 2 = 56``) except that its ``1e-6`` is added after the ``log2``; near a boundary scale
    ``56 * 2 ** k`` the two can pick neighbouring levels (see ``docs/detection_weights.md``).

    Args:
        boxes: ``[K, 4]`` ``(x1, y1, x2, y2)`` in input pixels.
        num_levels: number of pooled levels (4 for P2..P5).
        finest_scale: scale that maps to level 0.

    Returns:
        ``[K]`` int64 level indices in ``[0, num_levels - 1]``.
    """
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


class MMMultiScaleRoIAlign(MultiScaleRoIAlign):
    """mmdet's ``SingleRoIExtractor`` with mmcv ``RoIAlign`` behind torchvision's ``MultiScaleRoIAlign`` interface.

    Differences from torchvision's pooler that this removes: ``aligned=True`` (sample at ``box / stride - 0.5``:
    pixel centres) instead of ``False``; ``sampling_ratio=0`` (``ceil(bin_size)`` points per bin) instead of a fixed
    count; the level rule of :func:`mmdet_map_roi_levels`; and fixed ``1 / stride`` scales instead of scales inferred
    from feature and image sizes. torchvision's ``roi_align`` kernel with these arguments is the algorithm of mmcv's
    (both descend from Detectron2's ``ROIAlignV2``).

    Args:
        featmap_names: the pooled levels (``['0', '1', '2', '3']`` = P2..P5 in ``BackboneWithFPN``).
        output_size: 7 for boxes, 14 for masks.
        featmap_strides: stride of each pooled level.
        sampling_ratio: 0 = adaptive (mmdet's config).
        aligned: mmcv's ``aligned`` (True in mmdet).
        finest_scale: mmdet's ``finest_scale``.
    """

    def __init__(
        self,
        featmap_names: list[str],
        output_size: int | tuple[int, int],
        featmap_strides: Sequence[int] = (4, 8, 16, 32),
        *,
        sampling_ratio: int = 0,
        aligned: bool = True,
        finest_scale: float = 56.0,
    ):
        super().__init__(featmap_names, output_size, sampling_ratio)
        if len(featmap_strides) != len(featmap_names):
            raise ValueError(f"got {len(featmap_strides)} strides {featmap_strides} for levels {featmap_names}")
        self.featmap_strides = tuple(int(s) for s in featmap_strides)
        self.aligned = aligned
        self.finest_scale = finest_scale

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        """Pool ``[sum_i K_i, C, *output_size]`` features for ``boxes`` (per image ``[K_i, 4]``, input pixels)."""
        features = [x[name] for name in self.featmap_names]
        rois = torch.cat([torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)])
        levels = mmdet_map_roi_levels(rois[:, 1:], len(features), self.finest_scale)
        out = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, stride) in enumerate(zip(features, self.featmap_strides)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(feature, rois[index], self.output_size, 1.0 / stride, self.sampling_ratio, self.aligned)
            out[index] = pooled.to(out.dtype)
        return out
