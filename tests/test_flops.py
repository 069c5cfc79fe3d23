"""FLOP counts: the official counter's numbers at 224, and the implementation count against torch's counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import crossformer_vision as cf
from crossformer_vision.models.flops import count_flops, model_facts

# official model.flops() of the official code (the official README's table, 2 decimals), and the same counter
# with the padded LDA tokens and ACL convs the official code executes
OFFICIAL = {
    "crossformer_t": 2.86,
    "crossformer_s": 4.91,
    "crossformer_b": 9.17,
    "crossformer_l": 16.12,
    "crossformerpp_s": 4.39,
    "crossformerpp_b": 9.50,
    "crossformerpp_l": 16.57,
    "crossformerpp_h": 21.59,
}
EXECUTED_PP = {"crossformerpp_s": 4.43, "crossformerpp_b": 9.58, "crossformerpp_l": 16.70, "crossformerpp_h": 21.99}


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_official_counter_at_224(name):
    facts = model_facts(name)
    assert abs(facts["gflops_official"] - OFFICIAL[name]) <= 0.02
    if name in EXECUTED_PP:
        assert abs(facts["gflops_executed"] - EXECUTED_PP[name]) <= 0.02


def test_crossformerpp_s_published_number_is_not_reproduced():
    facts = model_facts("crossformerpp_s")
    assert facts["paper_gflops"] == 4.9 and facts["gflops_official"] < 4.5


@pytest.mark.parametrize(
    "name,size", [("crossformerpp_s", (224, 224)), ("crossformer_s", (97, 131)), ("crossformer_t", (160, 320))]
)
@pytest.mark.parametrize("rule", ["fixed_group", "fixed_interval"])
def test_implementation_count_equals_torch_flop_counter(name, size, rule):
    model = cf.create_model(
        name, embed_dim=32, num_heads=(1, 2, 4, 8), depths=(2, 2, 4, 2), lda_rule=rule, fused_attn=False
    )
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(1, 3, *size))
    assert counter.get_total_flops() / 2 == count_flops(model, size, "implementation").total


def test_flops_grow_linearly_with_tokens():
    with torch.device("meta"):
        model = cf.create_model("crossformer_s")
    small = count_flops(model, 448, "implementation").total
    large = count_flops(model, 896, "implementation").total
    assert 3.9 < large / small < 4.3
