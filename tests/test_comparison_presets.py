"""The paper's comparison rows as presets: Swin / ResNet-101 UPerNet, mmseg's ViT-B / DeiT-S / DeiT-B UPerNet rows
(no neck, + MLN, + LN + MLN) and ResNet-101 RetinaNet / Mask R-CNN, with their parameter counts on the meta device."""

from __future__ import annotations

import pytest
import torch

from crossformer_vision.configs import resolve_config
from crossformer_vision.engine.config import load_config
from crossformer_vision.tasks.detection import build_detector
from crossformer_vision.tasks.detection.config import DEFAULTS as DET_DEFAULTS
from crossformer_vision.tasks.segmentation.config import DEFAULTS as SEG_DEFAULTS
from crossformer_vision.tasks.segmentation.config import build_model


def _seg(name: str):
    cfg = load_config(SEG_DEFAULTS, resolve_config(name, task="segmentation"))
    with torch.device("meta"):
        return build_model(cfg, 150)


def _millions(model, digits: int, trainable: bool = False) -> float:
    return round(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable) / 1e6, digits)


@pytest.mark.parametrize(
    ("preset", "published"), [("swin_t", 60), ("swin_s", 81), ("swin_b", 121)]
)  # Swin paper, Table 3 (whole millions)
def test_swin_upernet_counts(preset, published):
    assert _millions(_seg(f"ade20k_upernet_{preset}"), 0) == published


def test_resnet101_upernet_count():
    # published 86.0 M (Swin paper, Table 3); timm's / torchvision's ResNet-101 + mmseg's UPerNet give 85.49 M (a deep
    # ResNetV1c stem adds 0.02 M); the 0.5 M difference is not in the architecture the configs describe
    assert _millions(_seg("ade20k_upernet_resnet101"), 2) == 85.49


@pytest.mark.parametrize(
    ("backbone", "plain", "mln", "ln_mln"),
    [("vit_b16", 119.94, 143.54, 143.54), ("deit_s16", 51.78, 57.68, 57.68), ("deit_b16", 119.94, 143.54, 143.54)],
)  # mmseg publishes no counts for these rows: ours, as regression values
def test_vit_upernet_rows(backbone, plain, mln, ln_mln):
    models = {s: _seg(f"ade20k_upernet_{backbone}{s}") for s in ("", "_mln", "_ln_mln")}
    assert models[""].neck is None and models[""].auxiliary_head.in_index == 3
    assert type(models["_mln"].neck).__name__ == "MultiLevelNeck" and models["_mln"].backbone.final_norm is None
    assert models["_ln_mln"].backbone.final_norm is not None
    assert [_millions(models[s], 2) for s in ("", "_mln", "_ln_mln")] == [plain, mln, ln_mln]


@pytest.mark.parametrize(("detector", "published"), [("retinanet", 56.7), ("maskrcnn", 63.2)])
def test_resnet101_detector_counts(detector, published):
    # published counts are mmcv's, which counts trainable parameters only: the frozen stem + stage 1 are left out
    cfg = load_config(DET_DEFAULTS, resolve_config(f"coco_{detector}_resnet101", task="detection"))
    assert cfg["model"]["name"] == f"{detector}_resnet101"
    with torch.device("meta"):
        model = build_detector(cfg["model"]["name"], num_classes=80)
    assert _millions(model, 1, trainable=True) == published
