"""Cascade Mask R-CNN: stage semantics (IoU thresholds, refinement, score averaging), the mmdet checkpoint layout and
the published parameter count (tiny widths on CPU; full size on the meta device only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign, box_iou

from crossformer_vision.tasks.detection import build_detector
from crossformer_vision.tasks.detection.cascade import CASCADE_TARGET_STDS, CascadeRoIHeads, cascade_box_head
from crossformer_vision.tasks.detection.mm_convert import convert_mmdet_cascade_mask_rcnn
from crossformer_vision.tasks.detection.weights import inspect_mmdet_checkpoint

MANIFESTS = json.loads((Path(__file__).parent / "data" / "mm" / "det_manifests.json").read_text())
K, C = 3, 8


def mmdet_cascade_layout(num_classes: int = 80, channels: int = 256, stages: int = 3) -> dict[str, list[int]]:
    """The ``roi_head.*`` keys of mmdet 2.x ``CascadeRoIHead`` with the Swin 3x cascade heads, written from
    mmdetection's code: ``BBoxHead.__init__`` registers ``fc_cls`` / ``fc_reg`` first (``ConvFCBBoxHead`` re-assigns
    them in place), then ``ConvFCBBoxHead._add_conv_fc_branch`` adds ``shared_convs.j`` (mmcv ``ConvModule``: ``conv``
    without bias, norm named ``bn`` for SyncBN) and ``shared_fcs.0``; ``FCNMaskHead`` has ``convs.j.conv``,
    ``upsample`` (deconv 2x2) and ``conv_logits``."""
    keys: dict[str, list[int]] = {}
    for i in range(stages):
        p = f"roi_head.bbox_head.{i}."
        keys |= {p + "fc_cls.weight": [num_classes + 1, 1024], p + "fc_cls.bias": [num_classes + 1]}
        keys |= {p + "fc_reg.weight": [4 * num_classes, 1024], p + "fc_reg.bias": [4 * num_classes]}
        for j in range(4):
            keys[f"{p}shared_convs.{j}.conv.weight"] = [channels, channels, 3, 3]
            for b in ("weight", "bias", "running_mean", "running_var"):
                keys[f"{p}shared_convs.{j}.bn.{b}"] = [channels]
            keys[f"{p}shared_convs.{j}.bn.num_batches_tracked"] = []
        keys |= {p + "shared_fcs.0.weight": [1024, channels * 49], p + "shared_fcs.0.bias": [1024]}
    for i in range(stages):
        p = f"roi_head.mask_head.{i}."
        for j in range(4):
            keys |= {f"{p}convs.{j}.conv.weight": [channels, channels, 3, 3], f"{p}convs.{j}.conv.bias": [channels]}
        keys |= {p + "upsample.weight": [channels, channels, 2, 2], p + "upsample.bias": [channels]}
        keys |= {p + "conv_logits.weight": [num_classes, channels, 1, 1], p + "conv_logits.bias": [num_classes]}
    return keys


def test_mmdet_layout_maps_onto_cascade_crossformer_s_with_88m_parameters():
    # neck + RPN: the layout the real mmdet produced for the official Mask R-CNN (same FPN and RPNHead config)
    neck_rpn = {k: v for k, v in MANIFESTS["maskrcnn_crossformer_neck_heads"]["keys"] if not k.startswith("roi_head")}
    layout = neck_rpn | mmdet_cascade_layout()
    torch.manual_seed(0)
    ckpt = {k: torch.randn(s) if s else torch.tensor(5) for k, s in layout.items()}
    ckpt["backbone.patch_embed.dummy"] = torch.zeros(1)
    with torch.device("meta"):
        model = build_detector("cascade_crossformer_s", num_classes=80)
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 1) == 88.0  # official README: 88.0 M (class-agnostic regression gives 87.0 M)
    converted = convert_mmdet_cascade_mask_rcnn(ckpt)
    own = {k: v.shape for k, v in model.state_dict().items() if not k.startswith("backbone.body.")}
    assert set(converted) == set(own)
    assert all(converted[k].shape == own[k] for k in own)
    # class order: mmdet background last -> torchvision background first; class c's deltas at rows 4(c + 1)...
    w = ckpt["roi_head.bbox_head.2.fc_cls.weight"]
    assert torch.equal(converted["roi_heads.box_predictor.2.cls_score.weight"], torch.cat([w[-1:], w[:-1]]))
    reg = converted["roi_heads.box_predictor.1.bbox_pred.weight"]
    assert reg[:4].abs().sum() == 0 and torch.equal(reg[4:], ckpt["roi_head.bbox_head.1.fc_reg.weight"])
    bn = ckpt["roi_head.bbox_head.0.shared_convs.3.bn.running_var"]
    assert torch.equal(converted["roi_heads.box_head.0.3.1.running_var"], bn)
    fc = ckpt["roi_head.bbox_head.1.shared_fcs.0.weight"]
    assert torch.equal(converted["roi_heads.box_head.1.5.weight"], fc)
    logits = ckpt["roi_head.mask_head.2.conv_logits.weight"]
    assert torch.equal(converted["roi_heads.mask_predictor.2.mask_fcn_logits.weight"][1:], logits)
    up = ckpt["roi_head.mask_head.0.upsample.weight"]
    assert torch.equal(converted["roi_heads.mask_predictor.0.conv5_mask.weight"], up)
    with pytest.raises(ValueError, match="unexpected keys"):
        convert_mmdet_cascade_mask_rcnn(ckpt | {"roi_head.bbox_head.0.extra.weight": torch.zeros(1)})


def test_inspect_recognises_a_cascade_checkpoint():
    from crossformer_vision.models import create_model

    with torch.device("meta"):
        body = create_model("crossformer_s", dense=True)
    sd = {f"backbone.{k}": torch.zeros(v.shape) for k, v in body.state_dict().items()}
    sd["roi_head.bbox_head.0.fc_cls.weight"] = torch.zeros(81, 4)
    assert inspect_mmdet_checkpoint(sd)["detector"] == "cascade"


def _heads(stages: int = 3, **kwargs) -> CascadeRoIHeads:
    torch.manual_seed(0)
    pool = MultiScaleRoIAlign(["0"], 7, 2)
    return CascadeRoIHeads(
        pool,
        [cascade_box_head(C, 16, 1) for _ in range(stages)],
        [FastRCNNPredictor(16, K + 1) for _ in range(stages)],
        MultiScaleRoIAlign(["0"], 14, 2),
        [MaskRCNNHeads(C, (C,), 1) for _ in range(stages)],
        [MaskRCNNPredictor(C, C, K + 1) for _ in range(stages)],
        **kwargs,
    )


def _box_at_iou(gt: torch.Tensor, iou: float) -> torch.Tensor:
    """A box of the same height as ``gt``, shifted right so that its IoU with ``gt`` is ``iou``."""
    w = gt[2] - gt[0]
    shift = w * (1 - iou) / (1 + iou)
    return gt + torch.stack([shift, 0 * shift, shift, 0 * shift])


def test_stage_iou_thresholds():
    heads = _heads(batch_size_per_image=64, positive_fraction=1.0)
    gt = torch.tensor([10.0, 10.0, 50.0, 40.0])
    ious = (0.45, 0.55, 0.65, 0.75)
    proposals = [torch.stack([_box_at_iou(gt, t) for t in ious])]
    assert torch.allclose(box_iou(proposals[0], gt[None])[:, 0], torch.tensor(ious), atol=1e-5)
    targets = [{"boxes": gt[None], "labels": torch.tensor([2])}]
    expected = {0: {0.55, 0.65, 0.75}, 1: {0.65, 0.75}, 2: {0.75}}
    for stage, positives in expected.items():
        rois, _, labels, is_gt = heads._sample(stage, proposals, targets)
        pos = {round(float(box_iou(r[None], gt[None])), 2) for r, lab in zip(rois[0], labels[0]) if lab}
        assert pos == positives | {1.0}  # the ground truth is added as a proposal
        assert labels[0][is_gt[0]].tolist() == [2] and set(labels[0].tolist()) == {0, 2}


def test_training_refines_sampled_rois_into_the_next_stage():
    heads = _heads().train()
    dx = 0.5  # every stage predicts dx = 0.5 (in std units) for every class
    for p in heads.box_predictor:
        nn.init.zeros_(p.bbox_pred.weight)
        with torch.no_grad():
            p.bbox_pred.bias.zero_().view(-1, 4)[:, 0] = dx
    seen = []
    sample = heads._sample

    def recording(stage, proposals, targets):
        out = sample(stage, proposals, targets)
        seen.append((proposals, out))
        return out

    heads._sample = recording
    features = {"0": torch.randn(1, C, 40, 40)}
    gt = torch.tensor([[10.0, 10.0, 50.0, 40.0]])
    targets = [{"boxes": gt, "labels": torch.tensor([1]), "masks": torch.zeros(1, 80, 80)}]
    proposals = [torch.tensor([[12.0, 10.0, 50.0, 42.0], [0.0, 0.0, 30.0, 30.0], [40.0, 40.0, 70.0, 60.0]])]
    losses = heads(features, proposals, [(80, 80)], targets)[1]
    assert set(losses) == {f"s{i}.{n}" for i in range(3) for n in ("loss_classifier", "loss_box_reg", "loss_mask")}
    for stage in (0, 1):
        rois, _, _, is_gt = seen[stage][1]
        nxt = seen[stage + 1][0][0]
        kept = rois[0][~is_gt[0]]  # the ground-truth proposals are dropped before the next stage
        std = CASCADE_TARGET_STDS[stage][0]
        shift = dx * std * (kept[:, 2] - kept[:, 0])
        moved = (kept + torch.stack([shift, 0 * shift, shift, 0 * shift], 1)).clamp(0, 80)
        assert torch.allclose(nxt[nxt[:, 0].argsort()], moved[moved[:, 0].argsort()], atol=1e-4)
    # stage loss weights: stage 2's weight is a quarter of stage 0's
    assert heads.stage_weights == (1.0, 0.5, 0.25)


def test_test_time_scores_are_averaged_over_stages():
    heads = _heads(score_thresh=0.0).eval()
    stage_logits = torch.tensor([[0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 1.5, 0.0], [0.0, 0.0, 0.0, -1.0]])
    for p, bias in zip(heads.box_predictor, stage_logits):
        nn.init.zeros_(p.cls_score.weight)
        nn.init.zeros_(p.bbox_pred.weight)
        with torch.no_grad():
            p.cls_score.bias.copy_(bias)
            p.bbox_pred.bias.zero_()
    with torch.no_grad():  # only the last stage moves the boxes: dw = log 2 in its std units
        heads.box_predictor[2].bbox_pred.bias.view(-1, 4)[:, 2] = torch.log(torch.tensor(2.0)) / 0.067
    box = torch.tensor([[20.0, 20.0, 40.0, 30.0]])
    out = heads({"0": torch.randn(1, C, 40, 40)}, [box], [(80, 80)])[0][0]
    probs = torch.softmax(stage_logits.mean(0), 0)
    assert torch.allclose(out["scores"].sort(descending=True).values, probs[1:].sort(descending=True).values)
    assert torch.allclose(out["boxes"], torch.tensor([[10.0, 20.0, 50.0, 30.0]]).expand(3, 4), atol=1e-3)
    assert out["masks"].shape == (3, 1, 28, 28)


def test_tiny_cascade_trains_and_predicts():
    torch.manual_seed(0)
    tiny = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), drop_path_rate=0.0)
    model = build_detector(
        "cascade_crossformer_t", num_classes=K, min_size=96, max_size=96, fpn_channels=16, backbone_kwargs=tiny,
        box_head_dim=32, mask_head_channels=8, mask_head_convs=1, box_batch_size_per_image=32, box_score_thresh=0.0,
    )  # fmt: skip
    images = [torch.rand(3, 96, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0]]), "labels": torch.tensor([3]),
                "masks": torch.ones(1, 96, 96, dtype=torch.uint8)}]  # fmt: skip
    losses = model.train()(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.roi_heads.box_head[2][0][0].weight.grad is not None
    out = model.eval()(images)[0]
    assert out["masks"].shape[1:] == (1, 96, 96) and out["labels"].min() >= 1
