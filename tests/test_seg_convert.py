"""Official mmseg checkpoints -> Segmentor: an mmseg-layout checkpoint of a directly built model converts back to a
model with identical logits; variant / head / LDA-rule detection; the auxiliary-head width discrepancy."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torch import nn

from crossformer_vision.tasks.segmentation import (
    FCNHead,
    build_segmentor,
    describe_mmseg_state_dict,
    load_mmseg_checkpoint,
    segmentor_from_mmseg,
)

MANIFESTS = json.loads((Path(__file__).parent / "data" / "mm" / "seg_manifests.json").read_text())
CLASSES = ("sky", "tree", "road", "grass", "car")
PALETTE = [[0, 0, 255], [0, 255, 0], [128, 128, 128], [0, 128, 0], [255, 0, 0]]
# Tiny widths, official key layout: every stage has an SDA and an LDA block; ++ stage 3 has an ACL (depth 4).
V1_TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))
PP_TINY = dict(embed_dim=16, depths=(2, 2, 4, 2), num_heads=(1, 2, 2, 4))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def redraw_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter and BN statistic random (nothing 0 or 1), so a wrongly loaded tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                t.fill_(7)
            elif name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif t.is_floating_point():
                fan_in = t[0].numel() if t.dim() > 1 else 10
                t.copy_(torch.randn(t.shape, generator=g) / math.sqrt(fan_in))
    return model.eval()


def mmseg_checkpoint(model: nn.Module, module_prefix: bool = True) -> dict:
    """What mmcv's save_checkpoint writes for an EncoderDecoder (optionally with a DDP ``module.`` prefix), plus the
    v1 derived buffers the released CrossFormer v1 checkpoints carry."""
    state = OrderedDict()
    prefix = "module." if module_prefix else ""
    for key, value in model.state_dict().items():
        state[prefix + key] = value.clone()
    state[f"{prefix}backbone.layers.0.blocks.0.attn.biases"] = torch.zeros(169, 2)
    state[f"{prefix}backbone.layers.0.blocks.0.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    meta = {"mmcv_version": "1.6.2", "CLASSES": CLASSES, "PALETTE": PALETTE, "config": "model = dict(...)", "iter": 1}
    return {"meta": meta, "state_dict": state}


def head_key_names(model: nn.Module) -> list[str]:
    return [k for k in model.state_dict() if not k.startswith("backbone.")]


@pytest.fixture(scope="module")
def upernet_v1():
    torch.manual_seed(0)
    model = build_segmentor(
        "upernet_crossformer_s", num_classes=5, channels=16, aux_channels=8, backbone_kwargs=V1_TINY
    )
    return redraw_(model)


@pytest.fixture(scope="module")
def semfpn_pp():
    torch.manual_seed(0)
    model = build_segmentor(
        "semfpn_crossformerpp_s", num_classes=5, channels=8, neck_channels=16, backbone_kwargs=PP_TINY
    )
    return redraw_(model, seed=1)


def test_upernet_checkpoint_file_converts_to_identical_logits(upernet_v1, tmp_path):
    assert head_key_names(upernet_v1) == [k for k, _ in MANIFESTS["upernet_crossformer_heads"]["keys"]]
    path = tmp_path / "upernet.pth"
    torch.save(mmseg_checkpoint(upernet_v1), path)
    converted = load_mmseg_checkpoint(path)  # restricted unpickling: tensors + plain meta only
    assert not converted.training
    assert converted.backbone.lda_rule == "fixed_interval"  # v1 weights: the v1 dense rule
    assert converted.class_names == list(CLASSES) and converted.palette[0] == (0, 0, 255)
    assert converted.auxiliary_head is not None and converted.auxiliary_head.in_index == 2
    for size in ((64, 64), (50, 70)):
        x = torch.randn(2, 3, *size)
        with torch.no_grad():
            assert torch.equal(converted(x), upernet_v1(x))
            assert torch.equal(converted.auxiliary_head(converted.extract_feat(x)), upernet_v1.auxiliary_head(
                upernet_v1.extract_feat(x)))  # fmt: skip


def test_semantic_fpn_checkpoint_converts_to_identical_logits(semfpn_pp):
    assert head_key_names(semfpn_pp) == [k for k, _ in MANIFESTS["semfpn_crossformer_neck_head"]["keys"]]
    ckpt = mmseg_checkpoint(semfpn_pp, module_prefix=False)
    info = describe_mmseg_state_dict(ckpt)
    assert info["head"] == "semfpn" and info["variant"] is None and info["architecture"]["use_acl"]
    assert info["decode_head"]["stride_ratios"] == [1, 2, 4, 8] and info["neck"]["num_outs"] == 4
    converted = segmentor_from_mmseg(ckpt)
    assert converted.backbone.lda_rule == "fixed_group"  # CrossFormer++ weights: the main-branch rule
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        assert torch.equal(converted(x), semfpn_pp(x))


def test_lda_rule_can_be_overridden(semfpn_pp):
    converted = segmentor_from_mmseg(mmseg_checkpoint(semfpn_pp), lda_rule="fixed_interval")
    assert converted.backbone.lda_rule == "fixed_interval"


def test_full_size_variant_is_detected_on_meta_weights():
    with torch.device("meta"):
        model = build_segmentor("upernet_crossformer_s", num_classes=150)
    info = describe_mmseg_state_dict({"state_dict": model.state_dict()})
    assert info["variant"] == "crossformer_s" and info["head"] == "upernet"
    assert info["decode_head"]["in_channels"] == [96, 192, 384, 768] and info["decode_head"]["channels"] == 512
    assert info["auxiliary_head"]["in_channels"] == 384 and info["num_classes"] == 150


def _with_aux_in(model: nn.Module, in_channels: int) -> dict:
    """A checkpoint whose aux head takes ``in_channels`` (the upernet_crossformer_s config's 256 discrepancy)."""
    ckpt = mmseg_checkpoint(model, module_prefix=False)
    state = {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("auxiliary_head.")}
    aux = FCNHead(in_channels, 8, 5, num_convs=1, concat_input=False, in_index=2)
    state.update({f"auxiliary_head.{k}": v for k, v in aux.state_dict().items()})
    return {"meta": ckpt["meta"], "state_dict": state}


def test_aux_head_that_does_not_fit_stage_3(upernet_v1):
    ckpt = _with_aux_in(upernet_v1, 8)  # stage 3 of the tiny backbone has 64 channels
    assert [k for k in ckpt["state_dict"] if k.startswith("auxiliary_head.")] == [
        k for k, _ in MANIFESTS["upernet_aux_in256_variant"]["keys"]
    ]
    with pytest.warns(UserWarning, match="takes 8 input channels but the backbone's stage 3"):
        converted = segmentor_from_mmseg(ckpt)
    assert converted.auxiliary_head is None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(converted(x), upernet_v1(x))
    with pytest.raises(ValueError, match=r"stage 3 .* has 64"):
        segmentor_from_mmseg(ckpt, aux="strict")
    assert segmentor_from_mmseg(mmseg_checkpoint(upernet_v1), aux="drop").auxiliary_head is None
    with pytest.raises(ValueError, match="aux must be one of"):
        segmentor_from_mmseg(ckpt, aux="maybe")


def test_bad_checkpoints_raise_clear_errors(upernet_v1, tmp_path):
    state = mmseg_checkpoint(upernet_v1, module_prefix=False)["state_dict"]
    with pytest.raises(ValueError, match="keys outside"):
        segmentor_from_mmseg({"state_dict": {**state, "head.weight": torch.zeros(1)}})
    no_decode = {k: v for k, v in state.items() if not k.startswith("decode_head.")}
    with pytest.raises(ValueError, match="decode_head"):
        segmentor_from_mmseg({"state_dict": no_decode})
    wrong = dict(state)
    wrong["decode_head.lateral_convs.0.conv.weight"] = torch.zeros(16, 24, 1, 1)
    with pytest.raises(ValueError, match="do not fit the backbone"):
        segmentor_from_mmseg({"state_dict": wrong})
    with pytest.raises(ValueError, match="pool_scales"):
        segmentor_from_mmseg({"state_dict": state}, pool_scales=(1, 2))
    with pytest.raises(FileNotFoundError):
        load_mmseg_checkpoint(tmp_path / "missing.pth")
