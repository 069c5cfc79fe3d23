"""Model-contract tests over every registered segmentor and detector, timm style, with tiny widths.

For each name of ``list_segmentors()`` / ``list_detectors()``: an eval-mode forward (output shapes, finite values) and
one training step (finite losses, backward) after which every trainable parameter has a non-zero gradient and every
frozen one has none. Backbones are shrunk through their own arguments (CrossFormer / Swin widths and depths, ResNet
blocks per stage, ViT width and depth); the heads through the builders' width options.
"""

from __future__ import annotations

import re

import pytest
import torch

from crossformer_vision.tasks.detection import build_detector, list_detectors
from crossformer_vision.tasks.detection.model import predicts_masks
from crossformer_vision.tasks.segmentation import build_segmentor, list_segmentors

SEGMENTORS = list_segmentors()
DETECTORS = list_detectors()

# Backbone widths. CrossFormer's embed_dim must be at least 32: the position-bias MLP is dim // 16 wide, and at width 1
# its LayerNorms output constants, so stage 1's bias would get no gradient whatever the model did.
TINY_BACKBONES = {
    "crossformer": dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0),
    "swin": dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), drop_path_rate=0.0),
    # timm zero-initialises each block's last BatchNorm, which cuts the gradient of the block's other layers at init
    "resnet": dict(layers=(1, 1, 1, 1), zero_init_last=False),
    "vit": dict(embed_dim=32, depth=4, num_heads=2, drop_path_rate=0.0),
    "deit": dict(embed_dim=32, depth=4, num_heads=2, drop_path_rate=0.0),
    "hrformer": dict(width=4, num_heads=(1, 1, 2, 2), num_modules=(1, 1, 1), window_size=3),
    "soft": dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1)),
    "cmt": dict(embed_dims=(16, 32, 48, 64), stem_channel=8, depths=(1, 1, 1, 1), fc_dim=32, img_size=64),
}
SEG_HEADS = {
    "upernet": dict(channels=16, aux_channels=8),
    "semfpn": dict(channels=8, neck_channels=16),
    "ocr": dict(channels=16, ocr_channels=8, aux_channels=8),
}
SEG_LOSSES = {
    "upernet": {"loss", "loss_decode", "loss_aux"},
    "semfpn": {"loss", "loss_decode"},
    "ocr": {"loss", "loss_decode", "loss_aux"},
}

K = 3  # classes
DET_SIZES = [(64, 80), (60, 72)]  # (H, W) of the two images; the detectors resize to min_size 64 / max_size 96
DET_KEEP = 5  # detections kept per image
DET_SETTINGS = {
    "retinanet": dict(score_thresh=0.0, detections_per_img=DET_KEEP),
    "fasterrcnn": dict(
        # every anchor sampled (a 64 x 96 input has about 1,500): the smallest pyramid levels hold a few dozen
        # anchors, which a sample of mmdet's 256 can miss, leaving their FPN output conv without a gradient
        rpn_batch_size_per_image=4096,
        rpn_pre_nms_top_n_train=100,
        rpn_post_nms_top_n_train=50,
        rpn_pre_nms_top_n_test=100,
        rpn_post_nms_top_n_test=50,
        box_batch_size_per_image=16,  # few RoIs for the builders' full-width box and mask heads
        box_score_thresh=0.0,
        box_detections_per_img=DET_KEEP,
    ),
}
DET_SETTINGS["maskrcnn"] = DET_SETTINGS["cascade"] = DET_SETTINGS["fasterrcnn"]
DET_LOSSES = {
    "retinanet": {"classification", "bbox_regression"},
    "fasterrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"},
    "maskrcnn": {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask"},
    "cascade": {"loss_objectness", "loss_rpn_box_reg"}
    | {f"s{i}.{loss}" for i in range(3) for loss in ("loss_classifier", "loss_box_reg", "loss_mask")},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_backbone(backbone: str) -> dict:
    family = re.match(r"[a-z]*", backbone).group().removesuffix("pp")  # crossformerpp_s, resnet101, vit_b16
    if family not in TINY_BACKBONES:
        pytest.fail(f"no tiny setting for backbone {backbone!r}: add its family to TINY_BACKBONES")
    return dict(TINY_BACKBONES[family])


def tiny_head(head: str) -> tuple[dict, set[str]]:
    """Tiny widths of a segmentation head type and the loss keys of its segmentor."""
    if head not in SEG_HEADS:
        pytest.fail(f"no tiny setting for segmentation head {head!r}: add it to SEG_HEADS and SEG_LOSSES")
    return dict(SEG_HEADS[head]), SEG_LOSSES[head]


def check_gradients(model: torch.nn.Module, name: str) -> None:
    """Every trainable parameter has a finite, non-zero gradient; frozen ones have none."""
    # The bias of the position-bias MLP's last layer adds one constant per head to every score of that head; softmax
    # is invariant to such a shift, so its true gradient is exactly zero (what survives is rounding noise). It must
    # still be reached by autograd.
    params = dict(model.named_parameters())
    shift_invariant = [n for n in params if n.endswith("attn.pos.pos3.2.bias")]
    missing = {
        n
        for n, p in params.items()
        if p.requires_grad and (p.grad is None or (n not in shift_invariant and not p.grad.abs().sum() > 0))
    }
    assert all(torch.isfinite(p.grad).all() for p in params.values() if p.grad is not None)
    assert all(params[n].grad.abs().max() < 1e-3 for n in shift_invariant if n not in missing)
    assert not [n for n, p in params.items() if not p.requires_grad and p.grad is not None]
    assert not missing, sorted(missing)


# ---------------------------------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SEGMENTORS)
def test_segmentor_forward_and_train_step(name):
    head, _, backbone = name.partition("_")
    head_kwargs, loss_keys = tiny_head(head)
    model = build_segmentor(name, num_classes=K, backbone_kwargs=tiny_backbone(backbone), **head_kwargs)

    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 56, 72))  # not a multiple of 32 nor of a ViT's patch size
    assert logits.shape == (2, K, 56, 72)
    assert torch.isfinite(logits).all()

    model.train()
    images = torch.randn(2, 3, 64, 64)
    targets = torch.randint(0, K, (2, 64, 64))
    targets[0, :8] = 255  # ignored pixels
    losses = model(images, targets)
    assert set(losses) == loss_keys
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    check_gradients(model, name)


# ---------------------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------------------


def detection_batch(masks: bool) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two images of different sizes with one and two boxes (and their masks for Mask R-CNN)."""
    images = [torch.rand(3, h, w) for h, w in DET_SIZES]
    targets = [
        {"boxes": torch.tensor([[5.0, 8.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.tensor([[10.0, 4.0, 30.0, 40.0], [2.0, 20.0, 70.0, 58.0]]), "labels": torch.tensor([3, 2])},
    ]
    if masks:
        for target, (h, w) in zip(targets, DET_SIZES):
            m = torch.zeros(len(target["boxes"]), h, w, dtype=torch.uint8)
            for i, (x1, y1, x2, y2) in enumerate(target["boxes"].int().tolist()):
                m[i, y1:y2, x1:x2] = 1
            target["masks"] = m
    return images, targets


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_forward_and_train_step(name):
    det, _, backbone = name.partition("_")
    model = build_detector(
        name,
        num_classes=K,
        min_size=64,
        max_size=96,
        fpn_channels=16,
        backbone_kwargs=tiny_backbone(backbone),
        **DET_SETTINGS[det],
    )
    images, targets = detection_batch(masks=predicts_masks(name))

    model.eval()
    with torch.no_grad():
        outputs = model(images)
    assert len(outputs) == len(images)
    for out, (h, w) in zip(outputs, DET_SIZES):
        assert set(out) == {"boxes", "scores", "labels"} | ({"masks"} if predicts_masks(name) else set())
        n = len(out["boxes"])
        assert 0 < n <= DET_KEEP and out["boxes"].shape == (n, 4) and out["scores"].shape == out["labels"].shape == (n,)
        assert torch.isfinite(out["boxes"]).all() and ((out["scores"] >= 0) & (out["scores"] <= 1)).all()
        assert (out["boxes"][:, 0::2] <= w).all() and (out["boxes"][:, 1::2] <= h).all()  # in input pixels
        assert out["labels"].min() >= 1 and out["labels"].max() <= K
        if predicts_masks(name):
            assert out["masks"].shape == (n, 1, h, w)

    model.train()
    losses = model(images, targets)
    assert set(losses) == DET_LOSSES[det]
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    check_gradients(model, name)
