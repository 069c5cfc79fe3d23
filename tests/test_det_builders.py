"""Detector builders, backbone adapters and the paper's recipe (tiny configurations, CPU)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from crossformer_vision.tasks.detection import (
    BACKBONE_NAMES,
    DETECTOR_TYPES,
    RECIPES,
    DetectionRecipe,
    MMAnchorGenerator,
    MMMultiScaleRoIAlign,
    build_detection_backbone,
    build_detector,
    get_recipe,
    list_detectors,
)

K = 3
TINY = {
    "crossformer_s": dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0),
    "crossformerpp_s": dict(embed_dim=32, depths=(1, 1, 3, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0),
    "swin_t": dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0),
    "resnet50": dict(layers=(1, 1, 1, 1)),
}
LOSS_KEYS = {
    "retinanet": {"classification", "bbox_regression"},
    "fasterrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
    "maskrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"},
}
SIZES = [(128, 160), (120, 150)]


def tiny_detector(name: str, **kwargs):
    """A detector with a tiny trunk, 32-channel FPN and small R-CNN heads; every detection kept (score 0)."""
    det, backbone = name.split("_", 1)
    if det == "retinanet":
        extra = dict(score_thresh=0.0, detections_per_img=10)
    else:
        extra = dict(
            rpn_pre_nms_top_n_train=200,
            rpn_post_nms_top_n_train=100,
            rpn_pre_nms_top_n_test=100,
            rpn_post_nms_top_n_test=50,
            box_batch_size_per_image=64,
            box_score_thresh=0.0,
            box_detections_per_img=10,
            box_head=TwoMLPHead(32 * 7 * 7, 64),
            box_predictor=FastRCNNPredictor(64, K + 1),
        )
        if det == "maskrcnn":
            extra.update(mask_head=MaskRCNNHeads(32, (32, 32), 1), mask_predictor=MaskRCNNPredictor(32, 32, K + 1))
    options = dict(num_classes=K, min_size=128, max_size=160, fpn_channels=32, backbone_kwargs=TINY[backbone])
    return build_detector(name, **{**options, **extra, **kwargs})


def batch(masks: bool):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, h, w, generator=g) for h, w in SIZES]
    boxes = torch.tensor([[10.0, 20.0, 60.0, 80.0], [30.0, 30.0, 110.0, 100.0]])
    targets = [
        {"boxes": boxes, "labels": torch.tensor([1, 3])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # an image without objects
    ]
    if masks:
        m = torch.zeros(2, *SIZES[0], dtype=torch.uint8)
        m[0, 20:80, 10:60] = 1
        m[1, 30:100, 30:110] = 1
        targets[0]["masks"] = m
        targets[1]["masks"] = torch.zeros(0, *SIZES[1], dtype=torch.uint8)
    return images, targets


@pytest.mark.parametrize(
    "name", ["retinanet_crossformer_s", "fasterrcnn_crossformerpp_s", "maskrcnn_crossformer_s", "maskrcnn_swin_t"]
)
def test_train_and_eval_forward(name):
    det = name.split("_")[0]
    model = tiny_detector(name)
    images, targets = batch(masks=det == "maskrcnn")
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSS_KEYS[det]
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()
    trunk_grads = [p.grad for p in model.backbone.body.parameters() if p.requires_grad]
    assert trunk_grads and all(g is not None and torch.isfinite(g).all() for g in trunk_grads)
    assert model.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == 2
    for out, (h, w) in zip(outputs, SIZES):
        assert set(out) == {"boxes", "scores", "labels"} | ({"masks"} if det == "maskrcnn" else set())
        assert 0 < len(out["boxes"]) <= 10
        assert out["labels"].min() >= 1 and out["labels"].max() <= K  # labels 1..K in every detector
        assert (out["boxes"][:, 0::2] <= w).all() and (out["boxes"][:, 1::2] <= h).all()
        if det == "maskrcnn":
            assert out["masks"].shape == (len(out["boxes"]), 1, h, w)


def test_retinanet_labels_are_one_based_in_training():
    """Label K is the head's last logit: a target with label K trains, K + 1 and 0 are refused by name."""
    model = tiny_detector("retinanet_crossformer_s").train()
    images, targets = batch(masks=False)
    assert model.head.classification_head.num_classes == K
    model(images, targets)  # labels 1 and 3 = K
    for bad in (0, K + 1):
        bad_targets = [{**targets[0], "labels": torch.tensor([1, bad])}, targets[1]]
        with pytest.raises(ValueError, match=rf"target 0: labels must be in \[1, {K}\]"):
            model(images, bad_targets)


def test_bad_targets_raise_clear_errors():
    model = tiny_detector("maskrcnn_crossformer_s").train()
    images, targets = batch(masks=True)
    with pytest.raises(ValueError, match="target 1: Mask R-CNN needs 'masks'"):
        model(images, [targets[0], {k: v for k, v in targets[1].items() if k != "masks"}])
    with pytest.raises(ValueError, match="'boxes' must be a float tensor"):
        model(images, [{**targets[0], "boxes": targets[0]["boxes"].long()}, targets[1]])
    with pytest.raises(ValueError, match="NaN"):
        model(images, [{**targets[0], "boxes": torch.full((2, 4), float("nan"))}, targets[1]])
    with pytest.raises(ValueError, match="targets are required"):
        model(images)
    degenerate = torch.tensor([[10.0, 20.0, 10.0, 80.0], [30.0, 30.0, 110.0, 100.0]])
    with pytest.raises(ValueError, match=r"target 0: box 0 \[10.0, 20.0, 10.0, 80.0\] has no positive height"):
        model(images, [{**targets[0], "boxes": degenerate}, targets[1]])


def test_names_and_arguments():
    names = list_detectors()  # one listed variant per companion family (SOFT, CMT, HRFormer): 13 + 3 backbones
    assert len(names) == len(DETECTOR_TYPES) * (len(BACKBONE_NAMES) - 12 + 3) == 64
    assert "maskrcnn_crossformerpp_h" in names and "retinanet_swin_t" in names and "fasterrcnn_resnet50" in names
    with pytest.raises(ValueError, match=r"unknown detector 'maskrcnn_crossformer_x'.*maskrcnn_crossformer_s"):
        build_detector("maskrcnn_crossformer_x", num_classes=80)
    with pytest.raises(ValueError, match="known names: retinanet_crossformer_t"):
        build_detector("yolo_crossformer_s", num_classes=80)
    with pytest.raises(ValueError, match="num_classes must be a positive int"):
        build_detector("retinanet_crossformer_s", num_classes=0)
    with pytest.raises(ValueError, match="max_size"):
        build_detector("retinanet_crossformer_s", num_classes=1, min_size=800, max_size=600)
    with pytest.raises(TypeError):
        build_detector("retinanet_crossformer_s", 80)  # keyword-only


def test_official_settings_at_full_size():
    """Full-size models on the meta device: published parameter totals and mmdet's settings."""
    with torch.device("meta"):
        retina = build_detector("retinanet_crossformer_s", num_classes=80)
        mask = build_detector("maskrcnn_crossformer_s", num_classes=80)
        plain = build_detector("fasterrcnn_crossformerpp_s", num_classes=80, mm_compat=False)
    # backbone 29,886,858 + mmdet neck/head 10,938,100 (RetinaNet) / 20,273,904 + 4,357 zero background slots
    assert sum(p.numel() for p in retina.parameters()) == 40_824_958  # paper: 40.8 M
    assert sum(p.numel() for p in mask.parameters()) == 50_165_119  # paper: 50.2 M
    assert retina.transform.min_size == (800,) and retina.transform.max_size == 1333
    assert retina.transform.size_divisible == 32
    assert isinstance(retina.anchor_generator, MMAnchorGenerator) and retina.anchor_generator.strides[-1] == 128
    assert (retina.score_thresh, retina.nms_thresh, retina.detections_per_img, retina.topk_candidates) == (
        0.05,
        0.5,
        100,
        1000,
    )
    assert isinstance(mask.rpn.anchor_generator, MMAnchorGenerator) and mask.rpn.anchor_generator.strides == (
        4,
        8,
        16,
        32,
        64,
    )
    assert isinstance(mask.roi_heads.box_roi_pool, MMMultiScaleRoIAlign)
    assert isinstance(mask.roi_heads.mask_roi_pool, MMMultiScaleRoIAlign)
    assert mask.roi_heads.mask_roi_pool.output_size == (14, 14)
    assert mask.rpn._post_nms_top_n == {"training": 1000, "testing": 1000}
    assert (mask.roi_heads.score_thresh, mask.roi_heads.nms_thresh, mask.roi_heads.detections_per_img) == (
        0.05,
        0.5,
        100,
    )
    assert mask.roi_heads.box_predictor.cls_score.out_features == 81  # background + 80
    assert type(plain.rpn.anchor_generator) is AnchorGenerator and not plain.roi_heads.has_mask()
    # the official detection group size / interval for every variant, the weights' LDA rule by family
    for model, rule in ((retina, "fixed_interval"), (plain, "fixed_group")):
        body = model.backbone.body
        assert body.lda_rule == rule
        assert all(b.group_size == 7 for s in body.layers for b in s.blocks)
        assert [s.blocks[0].interval for s in body.layers] == [8, 4, 2, 1]


@pytest.mark.parametrize(  # S / ++S: test_official_settings
    ("backbone", "channels"),
    [
        ("crossformer_t", [64, 128, 256, 512]),
        ("swin_t", [96, 192, 384, 768]),
        ("swin_s", [96, 192, 384, 768]),
        ("swin_b", [128, 256, 512, 1024]),
        ("resnet50", [256, 512, 1024, 2048]),
        ("resnet101", [256, 512, 1024, 2048]),
    ],
)
def test_full_size_backbones_build(backbone, channels):
    with torch.device("meta"):
        bb = build_detection_backbone(backbone, "rcnn")
    assert list(bb.body.out_channels) == channels and bb.out_channels == 256
    assert [bb.fpn.inner_blocks[i][0].in_channels for i in range(4)] == list(bb.body.out_channels)
    # mmdet's ResNet configs freeze the stem + stage 1 and the BatchNorm statistics; the transformers freeze nothing
    resnet = backbone.startswith("resnet")
    assert (bb.frozen_stages, bb.norm_eval) == ((1, True) if resnet else (-1, False))
    if backbone == "resnet101":
        assert len(bb.body.model.layer3) == 23
    if backbone.startswith("swin"):
        assert bb.body.model.layers_2.blocks[0].attn.num_heads == {"swin_b": 16}.get(backbone, 12)


@pytest.mark.parametrize("backbone, pyramid", [("crossformer_s", "retinanet"), ("swin_t", "rcnn")])
def test_pyramid_levels_and_strides(backbone, pyramid):
    bb = build_detection_backbone(backbone, pyramid, fpn_channels=16, **TINY[backbone]).eval()
    h, w = 96, 160  # the detectors pad their input to a multiple of 32
    x = torch.rand(1, 3, h, w)
    with torch.no_grad():
        feats = bb(x)
        trunk = bb.body(x)
    expected = ["0", "1", "2", "p6", "p7"] if pyramid == "retinanet" else ["0", "1", "2", "3", "pool"]
    assert list(feats) == expected
    for f, stride in zip(feats.values(), bb.strides):
        assert f.shape == (1, 16, math.ceil(h / stride), math.ceil(w / stride))
    assert [t.shape[1:] for t in trunk] == [(c, h // s, w // s) for c, s in zip(bb.body.out_channels, (4, 8, 16, 32))]
    if pyramid == "retinanet":  # mmdet add_extra_convs='on_input': P6 from the raw C5, no ReLU before P7
        with torch.no_grad():
            p6 = bb.fpn.extra_blocks.p6(trunk[-1])
            torch.testing.assert_close(feats["p6"], p6)
            torch.testing.assert_close(feats["p7"], bb.fpn.extra_blocks.p7(p6))
    else:  # timm's NHWC Swin maps come out NCHW; any input size works (padded to the patch size like mmdet's Swin)
        with torch.no_grad():
            odd = bb.body(torch.rand(1, 3, 100, 130))
        assert [tuple(t.shape[-2:]) for t in odd] == [(math.ceil(100 / s), math.ceil(130 / s)) for s in (4, 8, 16, 32)]


def test_frozen_stages_and_norm_eval_resnet():
    bb = build_detection_backbone("resnet50", "retinanet", fpn_channels=16, **TINY["resnet50"])
    trunk = bb.body.model
    assert (bb.frozen_stages, bb.norm_eval) == (1, True)  # the defaults of mmdet's R-50 configs
    frozen = [trunk.conv1, trunk.bn1, trunk.layer1]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in trunk.layer2.parameters())
    bb.train()
    bns = [m for m in trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)  # norm_eval: running statistics frozen
    assert trunk.layer2.training and bb.fpn.training
    before = trunk.layer2[0].bn1.running_mean.clone()
    sum(f.sum() for f in bb(torch.rand(2, 3, 64, 96)).values()).backward()
    torch.testing.assert_close(trunk.layer2[0].bn1.running_mean, before)
    assert trunk.layer1[0].conv1.weight.grad is None and trunk.layer2[0].conv1.weight.grad is not None
    assert trunk.layer2[0].bn1.weight.grad is not None  # affine parameters still train


def test_frozen_stages_crossformer():
    bb = build_detection_backbone("crossformer_s", "rcnn", frozen_stages=2, fpn_channels=16, **TINY["crossformer_s"])
    body = bb.body
    bb.train()
    for module in (body.patch_embed, body.layers[0], body.layers[1]):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    assert body.layers[2].training and all(p.requires_grad for p in body.layers[2].parameters())
    with pytest.raises(ValueError, match="frozen_stages must be in"):
        build_detection_backbone("crossformer_s", "rcnn", frozen_stages=5, **TINY["crossformer_s"])


def test_multi_scale_min_size():
    model = tiny_detector("retinanet_crossformer_s", min_size=(96, 112, 128))
    assert model.transform.min_size == (96, 112, 128)  # one per image in training, the last at test time


# --- recipe -----------------------------------------------------------------------------------------------------------


def test_recipe_matches_official_config():
    r = get_recipe("1x")
    assert (r.lr, r.weight_decay, r.epochs, r.lr_steps, r.lr_gamma, r.batch_size) == (1e-4, 1e-4, 12, (8, 11), 0.1, 16)
    assert (r.warmup_iters, r.warmup_ratio, r.min_size, r.max_size, r.grad_clip) == (500, 0.001, (800,), 1333, None)
    assert get_recipe("1x_wd0.05").weight_decay == 0.05
    assert get_recipe("1x_ms").min_size == tuple(range(480, 801, 32))
    assert set(RECIPES) == {"1x", "1x_wd0.05", "1x_ms", "3x"}
    assert get_recipe("3x").lr_steps == (27, 33) and get_recipe("3x").epochs == 36
    with pytest.raises(ValueError, match="presets: 1x"):
        get_recipe("2x")
    with pytest.raises(ValueError, match="unknown detection recipe keys"):
        get_recipe("1x", learning_rate=1.0)


def test_recipe_lr_schedule_is_mmcv_step_with_linear_warmup():
    r = get_recipe("1x")
    n = 1000  # iterations per epoch
    assert math.isclose(r.lr_factor(0, n), 0.001)
    assert math.isclose(r.lr_factor(250, n), 1 - 0.5 * 0.999)  # halfway through warm-up
    assert r.lr_factor(500, n) == 1.0 and r.lr_factor(8 * n - 1, n) == 1.0
    assert math.isclose(r.lr_factor(8 * n, n), 0.1) and math.isclose(r.lr_factor(11 * n, n), 0.01)
    model = torch.nn.Linear(2, 2)
    model.bias.requires_grad_(False)
    opt = r.build_optimizer(model)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups[0]["params"]) == 1
    sched = torch.optim.lr_scheduler.LambdaLR(opt, r.lr_lambda(n))
    assert math.isclose(opt.param_groups[0]["lr"], 1e-7)
    opt.step()
    sched.step()
    assert math.isclose(opt.param_groups[0]["lr"], 1e-4 * (1 - (1 - 1 / 500) * 0.999))


def test_recipe_yaml_round_trip():
    r = get_recipe("1x_ms", epochs=1)
    text = yaml.safe_dump(r.to_dict())
    assert DetectionRecipe.from_dict(yaml.safe_load(text)) == r
