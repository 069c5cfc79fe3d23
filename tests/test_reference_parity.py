"""The product path equals the straightforward official-style math at sizes the fixtures do not cover.

``reference_crossformer.py`` re-implements the official blocks with explicit padding, masks and per-rule
reshapes; here both LDA rules are compared on odd, non-square, tiny and large maps, including maps where the
v1 and CrossFormer++ rules disagree.
"""

import pytest
import torch

import crossformer_vision as cf
from conftest import set_fused
from fixtures_official import redraw_parameters
from reference_crossformer import forward as reference_forward

ARCH = dict(embed_dim=32, depths=(2, 2, 4, 2), num_heads=(1, 2, 4, 8))


def _model(rule: str, acl: bool, groups, intervals, dense: bool):
    kwargs = dict(ARCH, group_size=groups, crs_interval=intervals, use_acl=acl, lda_rule=rule, drop_path_rate=0.0)
    model = cf.CrossFormerBackbone(**kwargs) if dense else cf.CrossFormer(num_classes=5, **kwargs)
    params = redraw_parameters([(k, list(v.shape)) for k, v in model.state_dict().items()], seed=7)
    model.load_state_dict(params)
    return model.eval(), params


CASES = [
    # rule, acl, G, I, H, W
    ("fixed_group", True, (7, 7, 7, 7), (8, 4, 2, 1), 192, 288),
    ("fixed_group", True, (4, 4, 14, 7), (4, 2, 1, 1), 224, 224),
    ("fixed_group", False, (7, 7, 7, 7), (8, 4, 2, 1), 97, 131),
    ("fixed_group", False, (7, 7, 7, 7), (8, 4, 2, 1), 512, 352),
    ("fixed_group", True, (4, 4, 14, 7), (4, 2, 1, 1), 32, 32),
    ("fixed_interval", False, (7, 7, 7, 7), (8, 4, 2, 1), 192, 288),
    ("fixed_interval", False, (7, 7, 7, 7), (8, 4, 2, 1), 448, 448),
    ("fixed_interval", False, (14, 14, 7, 7), (16, 8, 2, 1), 512, 352),
    ("fixed_interval", False, (7, 7, 7, 7), (8, 4, 2, 1), 100, 164),
    ("fixed_interval", False, (7, 7, 7, 7), (8, 4, 2, 1), 32, 64),
]


@pytest.mark.parametrize("rule,acl,groups,intervals,h,w", CASES)
def test_dense_maps_equal_reference(rule, acl, groups, intervals, h, w):
    model, params = _model(rule, acl, groups, intervals, dense=True)
    x = torch.randn(1, 3, h, w)
    ref_rule = "pp" if rule == "fixed_group" else "v1"
    with torch.no_grad():
        expected = reference_forward(
            params, x, ARCH["depths"], ARCH["num_heads"], groups, intervals, ref_rule, dense=True
        )
        for fused in (True, False):
            set_fused(model, fused)
            maps = model(x)
            for ours, ref in zip(maps, expected):
                assert ours.shape == ref.shape
                assert (ours - ref).abs().max().item() < 1e-4


def test_rules_agree_at_224_and_disagree_elsewhere():
    """At 224 the two official rules give the same groups; at 192x288 they do not (fixtures_index.json)."""
    a, _ = _model("fixed_group", False, (7, 7, 7, 7), (8, 4, 2, 1), dense=True)
    b, _ = _model("fixed_interval", False, (7, 7, 7, 7), (8, 4, 2, 1), dense=True)
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        assert all(torch.allclose(p, q, atol=1e-5) for p, q in zip(a(x), b(x)))
        x = torch.randn(1, 3, 192, 288)
        assert max((p - q).abs().max().item() for p, q in zip(a(x), b(x))) > 0.1


def test_classification_equals_reference_non_square():
    groups, intervals = (4, 4, 14, 7), (4, 2, 1, 1)
    model, params = _model("fixed_group", True, groups, intervals, dense=False)
    x = torch.randn(2, 3, 160, 96)
    with torch.no_grad():
        ref = reference_forward(params, x, ARCH["depths"], ARCH["num_heads"], groups, intervals, "pp")
        assert (model(x) - ref).abs().max().item() < 1e-4
