"""Official mmdet checkpoints (CrossFormer backbone + FPN + RetinaNet / Mask R-CNN heads) in the torchvision detectors.

Key layouts: ``tests/data/det/mmdet_backbone_manifests.json`` (the official detection backbones, keys and shapes) and
``tests/data/mm/det_manifests.json`` (the official necks and heads).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from crossformer_vision.tasks.detection import (
    build_detector,
    build_detector_from_mmdet,
    inspect_mmdet_checkpoint,
    load_mmdet_checkpoint,
)

DATA = Path(__file__).parent / "data"
BACKBONES = json.loads((DATA / "det" / "mmdet_backbone_manifests.json").read_text())
HEADS = json.loads((DATA / "mm" / "det_manifests.json").read_text())
COCO_NAMES = [f"class_{i}" for i in range(80)]
TINY = dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0)


def official_checkpoint(backbone: str, heads: str, device: str = "meta") -> dict:
    """An mmcv checkpoint with the official key layout (values: empty tensors on ``device``)."""
    entries = [(f"backbone.{k}", s) for k, s in BACKBONES[backbone]["keys"]] + list(HEADS[heads]["keys"])
    state_dict = {k: torch.empty(shape, device=device) for k, shape in entries}
    return {"meta": {"CLASSES": COCO_NAMES, "epoch": 12}, "state_dict": state_dict}


@pytest.mark.parametrize(
    "backbone, heads, detector, variant, rule, num_loaded",
    [
        ("det_v1_crossformer_s", "retinanet_crossformer_neck_head", "retinanet", "crossformer_s", "fixed_interval", 36),
        ("det_v1_crossformer_s", "maskrcnn_crossformer_neck_heads", "maskrcnn", "crossformer_s", "fixed_interval", 42),
        (
            "det_main_crossformerpp_s",
            "retinanet_crossformer_pp_s_neck_head",
            "retinanet",
            "crossformerpp_s",
            "fixed_group",
            36,
        ),
        (
            "det_main_crossformerpp_s",
            "maskrcnn_crossformer_pp_s_neck_heads",
            "maskrcnn",
            "crossformerpp_s",
            "fixed_group",
            42,
        ),
    ],
)
def test_official_layout_loads_with_nothing_missing(backbone, heads, detector, variant, rule, num_loaded):
    ckpt = official_checkpoint(backbone, heads)
    info = inspect_mmdet_checkpoint(ckpt)
    assert info == dict(detector=detector, backbone=variant, lda_rule=rule, num_classes=80, class_names=COCO_NAMES)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("error")  # no LDA-rule warning: the rule is taken from the checkpoint
        model, report = build_detector_from_mmdet(ckpt)
    assert model.detector_name == f"{detector}_{variant}" and model.num_classes == 80
    assert model.backbone.body.lda_rule == rule
    assert report.complete, str(report)  # no model key left without a checkpoint value, nothing skipped
    assert report.backbone_keys == len(BACKBONES[backbone]["keys"]) and len(report.loaded) == num_loaded
    assert report.class_names == COCO_NAMES
    if detector == "maskrcnn":
        assert len(report.zero_filled) == 4
    body_params = sum(p.numel() for p in model.backbone.body.parameters())
    assert body_params == BACKBONES[backbone]["num_params"]


def test_mask_rcnn_checkpoint_in_faster_rcnn_reports_the_mask_head():
    ckpt = official_checkpoint("det_v1_crossformer_s", "maskrcnn_crossformer_neck_heads")
    with torch.device("meta"):
        model = build_detector("fasterrcnn_crossformer_s", num_classes=80)
    report = load_mmdet_checkpoint(model, ckpt)
    assert not report.missing and len(report.loaded) == 42 - 12  # the mask head: 4 convs, upsample, logits
    assert sorted(report.skipped) == sorted(k for k in ckpt["state_dict"] if k.startswith("roi_head.mask_head."))
    assert "Faster R-CNN has no mask head" in str(report)


def test_wrong_lda_rule_warns_and_wrong_variant_raises():
    ckpt = official_checkpoint("det_v1_crossformer_s", "retinanet_crossformer_neck_head")
    with torch.device("meta"):
        model = build_detector("retinanet_crossformer_s", num_classes=80, lda_rule="fixed_group")
        other = build_detector("retinanet_crossformer_t", num_classes=80)
        swin = build_detector("retinanet_swin_t", num_classes=80)
    with pytest.warns(UserWarning, match="trained with 'fixed_interval'"):
        load_mmdet_checkpoint(model, ckpt)
    with pytest.raises(ValueError, match=r"checkpoint does not fit the model.*looks like 'crossformer_s'"):
        load_mmdet_checkpoint(other, ckpt)
    with pytest.raises(TypeError, match="CrossFormer backbones only"):
        load_mmdet_checkpoint(swin, ckpt)
    with pytest.raises(ValueError, match=r"neither bbox_head\.retina_cls"):
        inspect_mmdet_checkpoint({"state_dict": {k: v for k, v in ckpt["state_dict"].items() if "head" not in k}})


# --- values: a tiny model with random mmdet-layout weights --------------------------------------------------------


def mmdet_state_dict(model: torch.nn.Module, num_classes: int) -> dict[str, torch.Tensor]:
    """Random weights in mmdet's layout for a tiny Mask R-CNN built like ``model`` (the inverse key mapping)."""
    g = torch.Generator().manual_seed(0)
    own = model.state_dict()

    def rand(shape):
        return torch.randn(shape, generator=g) * 0.05  # small, so that the random detector still gives boxes

    out = {f"backbone.{k}": rand(v.shape) for k, v in model.backbone.body.state_dict().items()}
    for i in range(4):
        for p in ("weight", "bias"):
            out[f"neck.lateral_convs.{i}.conv.{p}"] = rand(own[f"backbone.fpn.inner_blocks.{i}.0.{p}"].shape)
            out[f"neck.fpn_convs.{i}.conv.{p}"] = rand(own[f"backbone.fpn.layer_blocks.{i}.0.{p}"].shape)
    for mm, tv in (("rpn_conv", "conv.0.0"), ("rpn_cls", "cls_logits"), ("rpn_reg", "bbox_pred")):
        for p in ("weight", "bias"):
            out[f"rpn_head.{mm}.{p}"] = rand(own[f"rpn.head.{tv}.{p}"].shape)
    for i, fc in enumerate(("fc6", "fc7")):
        for p in ("weight", "bias"):
            out[f"roi_head.bbox_head.shared_fcs.{i}.{p}"] = rand(own[f"roi_heads.box_head.{fc}.{p}"].shape)
    hidden = own["roi_heads.box_head.fc7.weight"].shape[0]
    out["roi_head.bbox_head.fc_cls.weight"] = rand((num_classes + 1, hidden))
    out["roi_head.bbox_head.fc_cls.bias"] = rand((num_classes + 1,))
    out["roi_head.bbox_head.fc_reg.weight"] = rand((4 * num_classes, hidden))
    out["roi_head.bbox_head.fc_reg.bias"] = rand((4 * num_classes,))
    for i in range(4):
        for p in ("weight", "bias"):
            out[f"roi_head.mask_head.convs.{i}.conv.{p}"] = rand(own[f"roi_heads.mask_head.{i}.0.{p}"].shape)
    for p in ("weight", "bias"):
        out[f"roi_head.mask_head.upsample.{p}"] = rand(own[f"roi_heads.mask_predictor.conv5_mask.{p}"].shape)
    out["roi_head.mask_head.conv_logits.weight"] = rand((num_classes, 256, 1, 1))
    out["roi_head.mask_head.conv_logits.bias"] = rand((num_classes,))
    return out


def tiny_mask_rcnn(num_classes: int) -> torch.nn.Module:
    return build_detector(
        "maskrcnn_crossformer_s",
        num_classes=num_classes,
        min_size=128,
        max_size=160,
        fpn_channels=16,
        backbone_kwargs=TINY,
        box_score_thresh=0.0,
        rpn_post_nms_top_n_test=20,
        box_detections_per_img=5,
    )


def test_values_land_in_place_and_the_model_runs():
    model = tiny_mask_rcnn(3)
    sd = mmdet_state_dict(model, 3)
    report = load_mmdet_checkpoint(model, {"state_dict": sd})  # tiny: lda_rule default fixed_interval = v1
    assert report.complete
    own = model.state_dict()
    torch.testing.assert_close(
        own["backbone.body.patch_embed.projs.0.weight"], sd["backbone.patch_embed.projs.0.weight"]
    )
    torch.testing.assert_close(own["backbone.fpn.inner_blocks.2.0.weight"], sd["neck.lateral_convs.2.conv.weight"])
    cls = sd["roi_head.bbox_head.fc_cls.weight"]  # mmdet: background last -> torchvision: background first
    torch.testing.assert_close(own["roi_heads.box_predictor.cls_score.weight"], torch.cat([cls[-1:], cls[:-1]]))
    torch.testing.assert_close(
        own["roi_heads.box_predictor.bbox_pred.weight"][4:], sd["roi_head.bbox_head.fc_reg.weight"]
    )
    assert not own["roi_heads.box_predictor.bbox_pred.weight"][:4].any()
    model.eval()
    with torch.no_grad():
        (out,) = model([torch.rand(3, 128, 160)])
    assert len(out["boxes"]) > 0 and out["labels"].min() >= 1 and out["labels"].max() <= 3


def test_other_num_classes_strict_and_fine_tuning():
    sd = mmdet_state_dict(tiny_mask_rcnn(3), 3)
    model = tiny_mask_rcnn(5)
    with pytest.raises(ValueError, match=r"another num_classes.*cls_score\.weight"):
        load_mmdet_checkpoint(model, {"state_dict": sd})
    report = load_mmdet_checkpoint(model, {"state_dict": sd}, strict=False)
    class_specific = {
        "roi_heads.box_predictor.cls_score.weight",
        "roi_heads.box_predictor.cls_score.bias",
        "roi_heads.box_predictor.bbox_pred.weight",
        "roi_heads.box_predictor.bbox_pred.bias",
        "roi_heads.mask_predictor.mask_fcn_logits.weight",
        "roi_heads.mask_predictor.mask_fcn_logits.bias",
    }
    assert set(report.skipped) == class_specific and set(report.missing) == class_specific
    assert "shape mismatch" in str(report)
