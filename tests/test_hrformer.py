"""HRFormer: official-code parity (tests/data/make_hrformer_fixtures.py), the timm model contract, OCRNet."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from crossformer_vision.models.hrformer import checkpoint_filter_fn, create_hrformer_backbone
from crossformer_vision.tasks.segmentation.model import build_segmentor
from crossformer_vision.tasks.segmentation.ocr import convert_official_ocr, ohem_cross_entropy
from family_tiny import family_tiny
from fixtures_hrformer import FIXTURES, load_fixture

TINY = family_tiny("hrformer_t")


def _close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """fp32 parity: max error <= 1e-4 of the output's scale (random weights give outputs of ~30-250)."""
    assert ours.shape == ref.shape
    err = (ours - ref).abs().max().item()
    assert err <= 1e-4 * max(1.0, ref.abs().max().item()), (err, ref.abs().max().item())


@pytest.mark.parametrize("name", [n for n, s in FIXTURES.items() if s["kind"] != "ocr"])
def test_official_parity(name: str) -> None:
    spec, fx = FIXTURES[name], load_fixture(name)
    extra = {"window_size": spec["window_size"]} if "window_size" in spec else {}
    if spec["kind"] == "cls":
        model = timm.create_model(spec["ours"], **extra)
    else:
        model = create_hrformer_backbone(spec["ours"], **extra)
    model.eval()
    own = [(k, list(v.shape)) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert own == fx["entries"]  # official keys, shapes and order
    assert sum(p.numel() for p in model.parameters()) == fx["official_params"]
    official = {**fx["state_dict"], "stage2.0.branches.0.0.attn.attn.relative_position_index": torch.zeros(1)}
    model.load_state_dict(checkpoint_filter_fn({"model": official}, model), strict=False)
    with torch.no_grad():
        out = model(fx["input"])
    for o, r in zip(out if isinstance(out, list) else [out], fx["outputs"], strict=True):
        _close(o, r)


def test_ocr_parity_and_conversion() -> None:
    fx = load_fixture("ocr_s")
    model = build_segmentor("ocr_hrformer_s", num_classes=FIXTURES["ocr_s"]["num_classes"]).eval()
    missing, unexpected = model.load_state_dict(convert_official_ocr(fx["state_dict"]), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    # the official convs in front of BatchNorms carry biases (3,328 of them), folded into the running means here
    assert fx["official_params"] - sum(p.numel() for p in model.parameters()) == 3328
    with torch.no_grad():
        coarse, fine = model.forward_both(fx["input"])
    _close(coarse, fx["outputs"][0])
    _close(fine, fx["outputs"][1])


def test_parameter_counts_on_meta() -> None:
    counts = {}
    for name in ("hrformer_t", "hrformer_s", "hrformer_b"):
        with torch.device("meta"):
            counts[name] = sum(p.numel() for p in timm.create_model(name).parameters())
    assert counts == {"hrformer_t": 8_035_820, "hrformer_s": 13_544_882, "hrformer_b": 50_320_098}


def test_timm_contract_tiny() -> None:
    torch.manual_seed(0)
    model = timm.create_model("hrformer_t", num_classes=7, **TINY)
    x = torch.randn(2, 3, 45, 61)  # odd sizes: windows padded, fuse layers resize
    feats = model.forward_features(x)
    assert feats.shape == (2, 2048, 2, 2)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 2048)
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    final, maps = model.forward_intermediates(x)
    assert final.shape == feats.shape
    assert [tuple(m.shape) for m in maps] == [(2, 4, 12, 16), (2, 8, 6, 8), (2, 16, 3, 4), (2, 32, 2, 2)]
    assert [m.shape[-1] for m in model.forward_intermediates(x, [1], output_fmt="NHWC", intermediates_only=True)] == [8]
    feat_model = timm.create_model("hrformer_t", features_only=True, out_indices=(1, 3), **TINY)
    assert feat_model.feature_info.channels() == [8, 32] and feat_model.feature_info.reduction() == [8, 32]
    assert [tuple(o.shape) for o in feat_model(x)] == [(2, 8, 6, 8), (2, 32, 2, 2)]
    model.reset_classifier(0)
    assert model(x).shape == (2, 2048)
    with pytest.raises(TypeError):
        timm.create_model("hrformer_t", embed_dim=8)


def test_ohem_keeps_hard_pixels() -> None:
    logits = torch.zeros(1, 2, 1, 4)
    logits[0, 0, 0] = torch.tensor([4.0, 2.0, -5.0, 0.0])  # p(class 0) ~ 0.982, 0.881, 0.001; the last is ignored
    target = torch.tensor([[[0, 0, 0, 255]]])
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none")[0, 0]
    # thresh 0.9, min_kept 1: threshold max(0.9, 2nd smallest p = 0.881) -> pixels with p < 0.9
    assert math.isclose(
        ohem_cross_entropy(logits, target, thresh=0.9, min_kept=1).item(), ce[1:3].mean().item(), rel_tol=1e-6
    )
    # thresh 0.1, min_kept 1: threshold 0.881 (strict <) -> only the worst pixel
    assert math.isclose(ohem_cross_entropy(logits, target, thresh=0.1, min_kept=1).item(), ce[2].item(), rel_tol=1e-6)
    # min_kept 2: threshold = the 3rd smallest p (0.982) -> the two hardest pixels
    assert math.isclose(
        ohem_cross_entropy(logits, target, thresh=0.1, min_kept=2).item(), ce[1:3].mean().item(), rel_tol=1e-6
    )
    assert ohem_cross_entropy(logits, torch.full_like(target, 255)).item() == 0.0


@pytest.mark.parametrize("name", ["ocr_hrformer_t", "upernet_hrformer_t"])
def test_segmentors_train_step(name: str) -> None:
    torch.manual_seed(0)
    kwargs = dict(channels=16, aux_channels=8) if not name.startswith("semfpn") else dict(channels=16, neck_channels=8)
    model = build_segmentor(name, num_classes=3, backbone_kwargs=TINY, **kwargs)
    images, targets = torch.randn(2, 3, 40, 56), torch.randint(0, 3, (2, 40, 56))
    losses = model.train()(images, targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    assert next(k for k in model.state_dict() if k.startswith("backbone.")) == "backbone.conv1.weight"
    assert model.eval()(images).shape == (2, 3, 40, 56)
