"""SOFT, CMT and AugViT: official parity, parameter counts, and the timm model contract.

Parity: every registered variant at full width against outputs of the official code (tests/fixtures_families.py).
Behaviour: tiny widths (the architecture logic does not depend on the width).
"""

from __future__ import annotations

import pytest
import timm
import torch

from crossformer_vision.models import augvit, cmt, soft
from family_tiny import family_tiny
from fixtures_families import FIXTURES, family_fixture, family_meta

TOL = 1e-4
VARIANTS = [*soft.SOFT_VARIANTS, *cmt.CMT_VARIANTS, *augvit.AUGVIT_VARIANTS]

TINY = {name: family_tiny(name) for name in ("soft_tiny", "cmt_ti")}


def _official_model(fx: dict) -> torch.nn.Module:
    """The fixture's architecture, built on the meta device and filled with the fixture weights (fast)."""
    kwargs = {"img_size": fx["img_size"]} if "img_size" in fx else {}
    with torch.device("meta"):
        model = timm.create_model(fx["model"], **kwargs)
    family_filter = {"soft": soft, "cmt": cmt, "augvit": augvit}[fx["model"].split("_")[0]].checkpoint_filter_fn
    model.load_state_dict(family_filter(fx["state_dict"], model), strict=True, assign=True)
    for m in model.modules():  # derived (non-persistent) buffers are rebuilt, not loaded
        if isinstance(m, augvit.CirculantLinear):
            m.index_matrix = augvit.circulant_index(m.features, m.num_cir)
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    return model.eval()


@pytest.mark.parametrize("name", list(FIXTURES))
def test_official_outputs(name):
    fx = family_fixture(name)
    model = _official_model(fx)
    official_keys = [k for k, _ in fx["state"]]
    assert list(model.state_dict()) == official_keys  # same keys, same order: official files load as they are
    assert [list(v.shape) for v in model.state_dict().values()] == [s for _, s in fx["state"]]
    assert sum(p.numel() for p in model.parameters()) == fx["num_parameters_fixture"]
    with torch.inference_mode():
        logits = model(fx["input"])
    assert logits.shape == fx["logits"].shape
    assert (logits - fx["logits"]).abs().max().item() <= TOL
    assert fx["logits"].abs().max() > 1.0  # far from zero: the tolerance means something


@pytest.mark.parametrize("name", VARIANTS)
def test_parameter_count_equals_official_code(name):
    """At the official construction size (CMT: its training size, which sizes its position biases)."""
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == family_meta(name)["num_parameters_official"]


def test_facts_table_matches_the_official_measurements():
    """The constants of ``crossformer models --family`` are the generator's measurements of the official code, and
    this package executes exactly the same multiply-adds."""
    from crossformer_vision.models.family_facts import OFFICIAL_CODE, family_facts

    for name in VARIANTS:
        meta = family_meta(name)
        assert OFFICIAL_CODE[name] == (meta["num_parameters_official"], meta["official_gmacs"])
    for name in ("soft_tiny", "cmt_ti", "augvit_small_circulant2"):
        facts = family_facts(name)
        assert (facts["params"], facts["gmacs"]) == OFFICIAL_CODE[name]


def test_circulant_derived_buffers_are_dropped():
    fx = family_fixture("augvit_small_circulant2")
    assert fx["derived"] and all(k.endswith("index_matrix") for k, _ in fx["derived"])
    model = _official_model(fx)
    assert not any(k.endswith("index_matrix") for k in model.state_dict())
    # the official index: block (I, J) of a circulant matrix, first column = that block's weights
    lin = model.blocks[0].augs_attn[0]
    w = lin.weight_list[lin.index_matrix]
    n = lin.features // lin.num_cir
    block = w[n : 2 * n, :n]  # block (1, 0)
    assert torch.equal(block[:, 0], lin.weight_list[lin.num_cir * n : lin.num_cir * n + n])
    assert torch.equal(block[1:, 1:], block[:-1, :-1])


# ----------------------------------------------------------------------------------------------- timm contract
@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("size", [(64, 64), (75, 90)])
def test_forward_backward_features(name, size):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7, **TINY[name])
    x = torch.randn(2, 3, *size)
    logits = model(x)
    assert logits.shape == (2, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        final, maps = model.forward_intermediates(x)
        assert torch.allclose(final, feats)
        assert [m.shape[1] for m in maps] == [16, 32, 48, 64]
        pooled = model.forward_head(feats, pre_logits=True)
        assert pooled.shape == (2, model.head_hidden_size)
        assert torch.allclose(model.forward_head(feats), model(x), atol=1e-6)
        only = model.forward_intermediates(x, indices=[1, 2], stop_early=True, intermediates_only=True)
        assert [tuple(m.shape) for m in only] == [tuple(m.shape) for m in maps[1:3]]
        fo = timm.create_model(name, features_only=True, **TINY[name]).eval()
        missing, _ = fo.model.load_state_dict(model.state_dict(), strict=False)
        assert not missing
        assert fo.feature_info.reduction() == [4, 8, 16, 32]
        assert fo.feature_info.channels() == [16, 32, 48, 64]
        outs = fo(x)
    for i, (m, o) in enumerate(zip(maps, outs)):
        assert m.shape == o.shape
        assert m.shape[-2] <= -(-size[0] // 2 ** (i + 2))  # at most ceil(H / stride) rows
        assert torch.allclose(m, o, atol=1e-6)  # the same weights: the same maps


@pytest.mark.parametrize("name", list(TINY))
def test_grad_checkpointing_gives_the_same_gradients(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3, **TINY[name]).eval()  # eval: BN statistics fixed
    x = torch.randn(1, 3, 64, 96)
    model(x).sum().backward()
    ref = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for k, p in model.named_parameters():
        assert torch.allclose(p.grad, ref[k], atol=1e-5, rtol=1e-4), k


def test_too_small_inputs_are_refused_clearly():
    for name in TINY:
        model = timm.create_model(name, **TINY[name])
        with pytest.raises(ValueError, match="too small"):
            model(torch.randn(1, 3, 31, 64))


def test_reset_classifier_and_avg_pool():
    model = timm.create_model("soft_tiny", **TINY["soft_tiny"])
    model.reset_classifier(5, "avg")
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    model = timm.create_model("cmt_ti", **TINY["cmt_ti"])
    model.reset_classifier(0)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 32)


# ------------------------------------------------------------------------------------------------ SOFT details
def test_newton_inverse_backward_is_the_exact_inverse_gradient():
    """The official autograd wrapper: forward = 20 Newton-Schulz steps, backward = -V^T g V^T."""
    torch.manual_seed(0)
    a = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    mat = torch.exp(-(torch.cdist(a, a) ** 2) / 2).requires_grad_(True)  # a Gaussian kernel matrix, as in SOFT
    inv = soft.newton_inverse(mat, 20)
    ridge = mat.detach() + 0.01 * torch.eye(6, dtype=torch.float64)
    assert torch.allclose(inv @ ridge, torch.eye(6, dtype=torch.float64).expand(2, 3, 6, 6), atol=0.05)
    g = torch.randn_like(inv)
    (inv * g).sum().backward()
    v = inv.detach().transpose(-1, -2)
    assert torch.allclose(mat.grad, -(v @ g @ v))


# ------------------------------------------------------------------------------------------------- CMT details
def test_cmt_position_bias_resizing():
    torch.manual_seed(0)
    model = timm.create_model("cmt_ti", **TINY["cmt_ti"])
    # construction size: the parameter itself (the official computation)
    assert model.relative_pos(0, (16, 16)) is model.relative_pos_a
    bias = model.relative_pos(0, (20, 24))
    assert bias.shape == (1, 20 * 24, 2 * 3)
    # a constant bias stays constant through resizing
    const = torch.full((2, 16 * 16, 4), 0.7)
    assert torch.allclose(cmt.resize_relative_pos(const, (16, 16, 2, 2), (9, 12, 3, 1)), torch.full((2, 108, 3), 0.7))
    # a checkpoint of another construction size loads through the filter (biases resized)
    other = timm.create_model("cmt_ti", **{**TINY["cmt_ti"], "img_size": 96})
    sd = cmt.checkpoint_filter_fn(other.state_dict(), model)
    model.load_state_dict(sd)


# ------------------------------------------------------------------------------------------- segmentation heads
@pytest.mark.parametrize(
    "name, head",
    [("upernet_soft_tiny", dict(channels=16, aux_channels=8)), ("semfpn_cmt_ti", dict(channels=16, neck_channels=16))],
)
def test_segmentors_train_and_predict(name, head):
    from crossformer_vision.tasks.segmentation.model import build_segmentor

    backbone = TINY[name.split("_", 1)[1]]
    torch.manual_seed(0)
    model = build_segmentor(name, num_classes=4, backbone_kwargs=backbone, **head)
    x, y = torch.randn(2, 3, 70, 90), torch.randint(0, 4, (2, 70, 90))
    model.train()(x, y)["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.backbone.out_strides == [4, 8, 16, 32]
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 4, 70, 90)
