"""The three official fixtures (weights, input, output of the unmodified official code) are reproduced."""

import pytest
import torch

import crossformer_vision as cf
from conftest import set_fused
from fixtures_official import fixture

TOL = 1e-4


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "manual"])
@pytest.mark.parametrize("name", ["v1_cls_tiny", "pp_cls_small"])
def test_classification_fixture(name, fused):
    fx = fixture(name)
    model = cf.build_from_official(fx["config"], fx["flavour"])
    cf.load_official_state_dict(model, fx["state_dict"])
    set_fused(model, fused)
    with torch.inference_mode():
        feats = model.forward_features(fx["input"])
        logits = model.forward_head(feats)
        pooled = model.forward_head(feats, pre_logits=True)
    assert logits.shape == fx["output"].shape
    assert (logits - fx["output"]).abs().max().item() <= TOL
    assert (pooled - fx["features"]).abs().max().item() <= TOL
    # the official outputs are far from zero: the tolerance is meaningful
    assert fx["output"].abs().max() > 1.0


@pytest.mark.parametrize("name", ["v1_cls_tiny", "pp_cls_small"])
def test_classification_fixture_float64(name):
    fx = fixture(name)
    model = cf.build_from_official(fx["config"], fx["flavour"]).double()
    cf.load_official_state_dict(
        model, {k: v.double() if v.is_floating_point() else v for k, v in fx["state_dict"].items()}
    )
    with torch.inference_mode():
        out = model(fx["input"].double())
    assert out.dtype == torch.float64
    assert (out - fx["output_fp64"]).abs().max().item() <= 1e-10


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "manual"])
def test_dense_backbone_fixture(fused):
    """Official CrossFormer++ dense backbone at 192x288: token maps 48x72 ... 6x9 (not multiples of 7 or G*I)."""
    fx = fixture("det_main_pp_backbone")
    model = cf.build_from_official(fx["config"], "pp-dense")
    assert isinstance(model, cf.CrossFormerBackbone)
    cf.load_official_state_dict(model, fx["state_dict"])
    set_fused(model, fused)
    with torch.inference_mode():
        maps = model(fx["input"])
    assert [tuple(m.shape) for m in maps] == [tuple(t.shape) for t in fx["output"]]
    for ours, ref in zip(maps, fx["output"]):
        assert (ours - ref).abs().max().item() <= TOL


def test_dense_backbone_state_dict_is_official():
    fx = fixture("det_main_pp_backbone")
    model = cf.build_from_official(fx["config"], "pp-dense")
    assert list(model.state_dict()) == list(fx["state_dict"])


def test_v1_state_dict_order_and_buffers():
    """Our keys are the official keys minus the v1 derived buffers, in the same order."""
    fx = fixture("v1_cls_tiny")
    model = cf.build_from_official(fx["config"], "v1-classification")
    official = [k for k in fx["state_dict"] if not k.endswith(("attn.biases", "relative_position_index"))]
    assert list(model.state_dict()) == official
    assert len(fx["state_dict"]) - len(official) == 10
