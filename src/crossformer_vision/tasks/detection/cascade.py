"""Cascade Mask R-CNN on torchvision's detection parts, with mmdetection 2.x's ``CascadeRoIHead`` semantics.

The configuration is that of the official CrossFormer-S 3x result (88.0 M parameters, box / mask AP 52.2 / 45.2),
which follows Swin's ``cascade_mask_rcnn_swin_*_mstrain_480-800_giou_4conv1f_adamw_3x_coco.py``:

* three stages; stage ``i`` assigns its RoIs at IoU ``0.5 / 0.6 / 0.7`` (positive and negative threshold equal,
  no low-quality matches), samples 512 RoIs per image with 25 % positives (ground-truth boxes added as proposals),
  and weighs its losses by ``1 / 0.5 / 0.25``;
* box heads ``ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1)``: four 3x3 convolutions with a norm layer (the
  config says ``SyncBN``; :class:`~torch.nn.BatchNorm2d` here, ``SyncBatchNorm`` under DDP when converted) and one
  1024-wide fully connected layer (torchvision's ``FastRCNNConvFCHead``), then ``FastRCNNPredictor``;
* **class-specific** regression (``reg_class_agnostic=False``), stage target stds ``(0.1, 0.1, 0.2, 0.2)``,
  ``(0.05, 0.05, 0.1, 0.1)``, ``(0.033, 0.033, 0.067, 0.067)`` (``BoxCoder`` weights ``1 / std``), and a GIoU loss
  (weight 10) on the decoded boxes (``reg_decoded_bbox=True``), averaged over all sampled RoIs as mmdet does;
* one ``FCNMaskHead`` per stage, trained on that stage's positives;
* training: the sampled RoIs of stage ``i`` (ground-truth proposals removed) are refined by stage ``i``'s deltas of
  their assigned class (background RoIs: the arg-max foreground class), clipped to the image, and become stage
  ``i + 1``'s proposals (mmdet ``refine_bboxes``), without gradient;
* testing: all proposals run through the three stages, each refining the boxes for the next with its arg-max class;
  the class **logits** of the three stages are averaged, softmaxed, and the last stage's deltas give the boxes
  (mmdet ``simple_test``); masks are the average of the three mask heads' sigmoid probabilities for the final boxes.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.ops import boxes as box_ops
from torchvision.ops import generalized_box_iou_loss

from .detectors import check_targets

__all__ = [
    "CASCADE_IOU_THRESHOLDS",
    "CASCADE_STAGE_WEIGHTS",
    "CASCADE_TARGET_STDS",
    "CascadeMaskRCNNDetector",
    "CascadeRoIHeads",
    "cascade_box_head",
]

CASCADE_IOU_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7)
CASCADE_STAGE_WEIGHTS: tuple[float, ...] = (1.0, 0.5, 0.25)
#: mmdet ``target_stds`` per stage; torchvision's ``BoxCoder`` weights are their reciprocals.
CASCADE_TARGET_STDS: tuple[tuple[float, ...], ...] = (
    (0.1, 0.1, 0.2, 0.2),
    (0.05, 0.05, 0.1, 0.1),
    (0.033, 0.033, 0.067, 0.067),
)


def cascade_box_head(channels: int = 256, fc_dim: int = 1024, num_convs: int = 4, norm: str = "bn") -> nn.Module:
    """mmdet ``ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1)``: ``[R, C, 7, 7]`` -> ``[R, fc_dim]``.

    ``norm``: ``"bn"`` (the config's SyncBN), ``"gn"`` (GroupNorm with 32 groups) or ``"none"`` (then the
    convolutions get a bias, as mmcv's ``ConvModule`` does without a norm).
    """
    norms = {"bn": nn.BatchNorm2d, "gn": functools.partial(nn.GroupNorm, 32), "none": None}
    if norm not in norms:
        raise ValueError(f"box head norm must be one of {sorted(norms)}, got {norm!r}")
    return FastRCNNConvFCHead((channels, 7, 7), [channels] * num_convs, [fc_dim], norm_layer=norms[norm])


class CascadeRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` with ``n`` box stages and ``n`` mask heads (mmdet ``CascadeRoIHead``).

    ``box_head`` / ``box_predictor`` / ``mask_head`` / ``mask_predictor`` are ``nn.ModuleList`` s, one entry per stage
    (mmdet keys ``roi_head.bbox_head.{i}`` / ``roi_head.mask_head.{i}``). Labels are ``1..K``, background 0.

    Args:
        box_roi_pool / mask_roi_pool: shared RoI poolers (7x7 / 14x14).
        box_heads / box_predictors / mask_heads / mask_predictors: per-stage modules.
        iou_thresholds: stage ``i``'s positive (= negative) IoU threshold.
        stage_weights: stage loss weights.
        target_stds: stage box-delta stds (``BoxCoder`` weights ``1 / std``).
        giou_weight: weight of the GIoU loss on decoded boxes (mmdet ``GIoULoss(loss_weight=10)``).
        batch_size_per_image / positive_fraction / score_thresh / nms_thresh / detections_per_img: as ``RoIHeads``.
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_heads: Sequence[nn.Module],
        box_predictors: Sequence[nn.Module],
        mask_roi_pool: nn.Module | None,
        mask_heads: Sequence[nn.Module] | None,
        mask_predictors: Sequence[nn.Module] | None,
        *,
        iou_thresholds: Sequence[float] = CASCADE_IOU_THRESHOLDS,
        stage_weights: Sequence[float] = CASCADE_STAGE_WEIGHTS,
        target_stds: Sequence[Sequence[float]] = CASCADE_TARGET_STDS,
        giou_weight: float = 10.0,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
    ):
        n = len(box_heads)
        sizes = {len(box_predictors), len(iou_thresholds), len(stage_weights), len(target_stds)}
        if mask_heads is not None:
            sizes |= {len(mask_heads), len(mask_predictors or ())}
        if sizes != {n} or n < 1:
            raise ValueError(f"every per-stage argument needs one entry per stage ({n}), got lengths {sorted(sizes)}")
        weights = [tuple(1.0 / s for s in stds) for stds in target_stds]
        super().__init__(
            box_roi_pool,
            nn.ModuleList(box_heads),
            nn.ModuleList(box_predictors),
            iou_thresholds[0],
            iou_thresholds[0],
            batch_size_per_image,
            positive_fraction,
            weights[-1],  # self.box_coder: the last stage's, used by postprocess_detections
            score_thresh,
            nms_thresh,
            detections_per_img,
            mask_roi_pool=mask_roi_pool,
            mask_head=nn.ModuleList(mask_heads) if mask_heads is not None else None,
            mask_predictor=nn.ModuleList(mask_predictors) if mask_predictors is not None else None,
        )
        self.num_stages = n
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self.stage_weights = tuple(float(w) for w in stage_weights)
        self.matchers = [det_utils.Matcher(t, t, allow_low_quality_matches=False) for t in self.iou_thresholds]
        self.box_coders = [det_utils.BoxCoder(w) for w in weights]
        self.giou_weight = giou_weight

    # --- training ---------------------------------------------------------------------------------------------------

    def _sample(
        self, stage: int, proposals: list[Tensor], targets: list[dict[str, Tensor]]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Add the ground truth, match at the stage's IoU, sample. Per image: ``rois [S, 4]``, ``matched [S]``
        (index of the matched ground-truth box), ``labels [S]`` (0 = background), ``is_gt [S]`` (bool)."""
        out: tuple[list[Tensor], ...] = ([], [], [], [])
        all_labels, all_matched = [], []
        with_gt = []
        for props, t in zip(proposals, targets):
            gt = t["boxes"].to(props.dtype)
            rois = torch.cat([props, gt])
            if len(gt):
                matched = self.matchers[stage](box_ops.box_iou(gt, rois))
                labels = t["labels"][matched.clamp(min=0)].clone()
                labels[matched == det_utils.Matcher.BELOW_LOW_THRESHOLD] = 0
                labels[matched == det_utils.Matcher.BETWEEN_THRESHOLDS] = -1
                matched = matched.clamp(min=0)
            else:
                matched = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
                labels = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
            with_gt.append((rois, len(props)))
            all_labels.append(labels)
            all_matched.append(matched)
        pos, neg = self.fg_bg_sampler(all_labels)
        for (rois, num_props), labels, matched, p, q in zip(with_gt, all_labels, all_matched, pos, neg):
            keep = torch.where(p | q)[0]
            out[0].append(rois[keep])
            out[1].append(matched[keep])
            out[2].append(labels[keep])
            out[3].append(keep >= num_props)
        return out  # type: ignore[return-value]

    def _stage_losses(
        self,
        stage: int,
        logits: Tensor,
        deltas: Tensor,
        rois: Tensor,
        labels: Tensor,
        gt_boxes: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Cross-entropy over the sampled RoIs and ``giou_weight * sum(1 - GIoU) / #sampled`` over the positives
        (boxes decoded from their class's deltas: mmdet ``reg_decoded_bbox=True`` with ``avg_factor`` = #sampled)."""
        loss_cls = F.cross_entropy(logits, labels)
        pos = torch.where(labels > 0)[0]
        if len(pos) == 0:
            return loss_cls, deltas.sum() * 0
        pos_deltas = deltas.reshape(len(deltas), -1, 4)[pos, labels[pos]]
        boxes = self.box_coders[stage].decode_single(pos_deltas, rois[pos])
        loss_box = generalized_box_iou_loss(boxes, gt_boxes[pos], reduction="sum") * self.giou_weight
        return loss_cls, loss_box / labels.numel()

    @torch.no_grad()
    def _refine(self, stage: int, rois: Tensor, labels: Tensor, deltas: Tensor, image_shape: tuple[int, int]) -> Tensor:
        """``rois [R, 4]`` moved by the deltas of class ``labels [R]`` (``1..K``), clipped to the image."""
        picked = deltas.reshape(len(deltas), -1, 4)[torch.arange(len(deltas), device=deltas.device), labels]
        return box_ops.clip_boxes_to_image(self.box_coders[stage].decode_single(picked, rois), image_shape)

    def _forward_train(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        for i in range(self.num_stages):
            rois, matched, labels, is_gt = self._sample(i, [p.detach() for p in proposals], targets)
            feats = self.box_head[i](self.box_roi_pool(features, rois, image_shapes))
            logits, deltas = self.box_predictor[i](feats)
            gt_boxes = torch.cat([t["boxes"][m] if len(t["boxes"]) else r for t, m, r in zip(targets, matched, rois)])
            flat_labels = torch.cat(labels)
            loss_cls, loss_box = self._stage_losses(i, logits, deltas, torch.cat(rois), flat_labels, gt_boxes)
            w = self.stage_weights[i]
            losses[f"s{i}.loss_classifier"] = loss_cls * w
            losses[f"s{i}.loss_box_reg"] = loss_box * w
            if self.has_mask():
                pos = [torch.where(lab > 0)[0] for lab in labels]
                pos_rois = [r[p] for r, p in zip(rois, pos)]
                mask_feats = self.mask_head[i](self.mask_roi_pool(features, pos_rois, image_shapes))
                mask_logits = self.mask_predictor[i](mask_feats)
                if sum(len(p) for p in pos) == 0:
                    losses[f"s{i}.loss_mask"] = mask_logits.sum() * 0
                else:
                    gt_masks = [t["masks"] for t in targets]
                    loss = maskrcnn_loss(
                        mask_logits, pos_rois, gt_masks, [lab[p] for lab, p in zip(labels, pos)],
                        [m[p] for m, p in zip(matched, pos)],
                    )  # fmt: skip
                    losses[f"s{i}.loss_mask"] = loss * w
            if i < self.num_stages - 1:
                with torch.no_grad():
                    fg = logits[:, 1:].argmax(dim=1) + 1
                    refine_labels = torch.where(flat_labels > 0, flat_labels, fg)
                    per_image = zip(
                        rois,
                        refine_labels.split([len(r) for r in rois]),
                        deltas.split([len(r) for r in rois]),
                        image_shapes,
                        is_gt,
                    )  # fmt: skip
                    proposals = [self._refine(i, r, lab, d, s)[~g] for r, lab, d, s, g in per_image]
        return losses

    # --- inference --------------------------------------------------------------------------------------------------

    def _forward_test(
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        counts = [len(p) for p in proposals]
        rois = proposals
        logit_sum: Tensor | None = None
        for i in range(self.num_stages):
            logits, deltas = self.box_predictor[i](self.box_head[i](self.box_roi_pool(features, rois, image_shapes)))
            logit_sum = logits if logit_sum is None else logit_sum + logits
            if i < self.num_stages - 1:
                labels = (logits[:, 1:].argmax(dim=1) + 1).split(counts)
                per_image = zip(rois, labels, deltas.split(counts), image_shapes)
                rois = [self._refine(i, r, lab, d, s) for r, lab, d, s in per_image]
        # postprocess_detections decodes with self.box_coder (the last stage's) and softmaxes the averaged logits
        boxes, scores, labels = self.postprocess_detections(logit_sum / self.num_stages, deltas, rois, image_shapes)
        result = [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in zip(boxes, scores, labels)]
        if self.has_mask():
            mask_feats = self.mask_roi_pool(features, boxes, image_shapes)
            probs: list[Tensor] | None = None
            for i in range(self.num_stages):
                stage = maskrcnn_inference(self.mask_predictor[i](self.mask_head[i](mask_feats)), labels)
                probs = stage if probs is None else [a + b for a, b in zip(probs, stage)]
            for r, p in zip(result, probs or []):
                r["masks"] = p / self.num_stages
        return result

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Train: ``([], losses)`` with ``s{i}.loss_classifier``, ``s{i}.loss_box_reg``, ``s{i}.loss_mask``
        (already stage-weighted); eval: (per image ``boxes [N, 4]``, ``scores [N]``, ``labels [N]``,
        ``masks [N, 1, 28, 28]`` probabilities, ``{}``)."""
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return [], self._forward_train(features, proposals, image_shapes, targets)
        return self._forward_test(features, proposals, image_shapes), {}


class CascadeMaskRCNNDetector(MaskRCNN):
    """Cascade Mask R-CNN: torchvision ``MaskRCNN`` (backbone, RPN, transform) with :class:`CascadeRoIHeads`.

    Args:
        backbone: returns an ``OrderedDict`` of maps and has ``out_channels``.
        num_classes: ``K`` foreground classes (labels ``1..K``; predictors have ``K + 1`` outputs).
        box_head_dim: width of each box head's fully connected layer (1024).
        box_head_convs: 3x3 convolutions per box head (4).
        box_head_norm: ``"bn"`` (the config's SyncBN), ``"gn"`` or ``"none"``.
        mask_head_channels / mask_head_convs: ``FCNMaskHead`` width (256) and depth (4).
        iou_thresholds / stage_weights / target_stds / giou_weight: see :class:`CascadeRoIHeads`.
        **kwargs: ``MaskRCNN`` arguments (transform, RPN, ``box_roi_pool``, ``mask_roi_pool``,
            ``box_batch_size_per_image``, ``box_score_thresh``, ...). ``box_head`` / ``box_predictor`` /
            ``mask_head`` / ``mask_predictor`` are built here.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        box_head_dim: int = 1024,
        box_head_convs: int = 4,
        box_head_norm: str = "bn",
        mask_head_channels: int = 256,
        mask_head_convs: int = 4,
        iou_thresholds: Sequence[float] = CASCADE_IOU_THRESHOLDS,
        stage_weights: Sequence[float] = CASCADE_STAGE_WEIGHTS,
        target_stds: Sequence[Sequence[float]] = CASCADE_TARGET_STDS,
        giou_weight: float = 10.0,
        **kwargs: Any,
    ):
        for key in ("box_head", "box_predictor", "mask_head", "mask_predictor"):
            if kwargs.get(key) is not None:
                raise ValueError(f"{key}: Cascade Mask R-CNN builds its per-stage heads itself")
        c, n = backbone.out_channels, len(iou_thresholds)
        box_heads = [cascade_box_head(c, box_head_dim, box_head_convs, box_head_norm) for _ in range(n)]
        box_predictors = [FastRCNNPredictor(box_head_dim, num_classes + 1) for _ in range(n)]
        width = (mask_head_channels,) * mask_head_convs
        mask_heads = [MaskRCNNHeads(c, width, 1) for _ in range(n)]
        mask_predictors = [MaskRCNNPredictor(width[-1], mask_head_channels, num_classes + 1) for _ in range(n)]
        super().__init__(
            backbone, None, box_head=box_heads[0], box_predictor=box_predictors[0], mask_head=mask_heads[0],
            mask_predictor=mask_predictors[0], **kwargs,
        )  # fmt: skip
        base = self.roi_heads
        self.roi_heads = CascadeRoIHeads(
            base.box_roi_pool,
            box_heads,
            box_predictors,
            base.mask_roi_pool,
            mask_heads,
            mask_predictors,
            iou_thresholds=iou_thresholds,
            stage_weights=stage_weights,
            target_stds=target_stds,
            giou_weight=giou_weight,
            batch_size_per_image=base.fg_bg_sampler.batch_size_per_image,
            positive_fraction=base.fg_bg_sampler.positive_fraction,
            score_thresh=base.score_thresh,
            nms_thresh=base.nms_thresh,
            detections_per_img=base.detections_per_img,
        )
        self.num_classes = num_classes

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        """Train: ``dict`` of losses (RPN + per-stage ``s{i}.*``); eval: per image ``boxes``, ``scores``, ``labels``
        (``1..K``), ``masks [N, 1, H, W]`` (soft; threshold 0.5)."""
        if self.training:
            check_targets(targets, self.num_classes, masks=True)
        return super().forward(images, targets)
