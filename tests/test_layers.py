"""Tests of single layers of ``crossformer_vision.layers`` and of their implementation paths.

The fused linear and the cross-scale convolutions are tested alone; the attention paths (fused / explicit, blocked CPU
attention, grouped-token SDPA) and the fused-linear switch through a tiny model, which takes every layout of them.
"""

import pytest
import torch
import torch.nn.functional as F

import crossformer_vision as cf

# the tiny widths of test_models.py
TINY = dict(embed_dim=32, num_heads=(1, 2, 4, 8), depths=(1, 1, 4, 1), drop_path_rate=0.0, num_classes=7)


def tiny(name: str, **kwargs) -> cf.CrossFormer:
    return cf.create_model(name, **{**TINY, **kwargs})


def spy_sdpa_tokens(monkeypatch) -> list:
    """Wrap the attention module's ``F.scaled_dot_product_attention``; returns the list of each call's group size."""
    import crossformer_vision.layers.attention as attention

    sizes = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, *args, **kwargs):
        sizes.append(q.shape[-2])
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(attention.F, "scaled_dot_product_attention", spy)
    return sizes


def spy_attention(monkeypatch, method: str) -> list:
    """Wrap ``GroupAttention.<method>``; returns the list of the positional arguments (after self) of each call."""
    from crossformer_vision.layers.attention import GroupAttention

    calls = []
    original = getattr(GroupAttention, method)

    def spy(self, *args):
        calls.append(args)
        return original(self, *args)

    monkeypatch.setattr(GroupAttention, method, spy)
    return calls


def test_fused_and_manual_attention_agree():
    model = tiny("crossformerpp_s").eval()
    x = torch.randn(2, 3, 100, 76)
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = True
        a = model(x)
        for m in model.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False
        b = model(x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_small_cpu_groups_take_the_explicit_path_with_the_same_output(monkeypatch):
    from crossformer_vision.layers.attention import GroupAttention

    model = tiny("crossformerpp_s").eval()  # 4x4 groups in stages 1-2, larger ones after
    x = torch.randn(2, 3, 96, 96)
    sizes = spy_sdpa_tokens(monkeypatch)
    monkeypatch.setattr(GroupAttention, "cpu_blocked_attention", False)  # this test is about SDPA's routing
    with torch.no_grad():
        monkeypatch.setattr(GroupAttention, "cpu_sdpa_min_tokens", 0)
        ref = model(x)
        assert 16 in sizes
        sizes.clear()
        monkeypatch.setattr(GroupAttention, "cpu_sdpa_min_tokens", 17)
        out = model(x)
    assert sizes and min(sizes) >= 17  # the 16-token groups went the explicit way, the others still through SDPA
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("autocast", [False, True], ids=["bf16-weights", "bf16-autocast"])
def test_bf16_cpu_groups_up_to_49_tokens_take_the_explicit_path(monkeypatch, autocast):
    from crossformer_vision.layers.attention import GroupAttention

    torch.manual_seed(0)
    model = tiny("crossformerpp_s", group_size=(4, 7, 14, 7)).eval()  # 16-, 49- and 196-token groups at 224
    with torch.no_grad():  # peaked attention, so that a wrong mask or scale would show
        for m in model.modules():
            if isinstance(m, GroupAttention):
                m.qkv.weight.normal_(0, 0.1)
    x = torch.randn(2, 3, 224, 224)
    sizes = spy_sdpa_tokens(monkeypatch)
    if not autocast:
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast)
    with torch.inference_mode(), ctx:
        out = model(x).float()
        assert set(sizes) == {196}  # 16 and 49 tokens explicitly, 196 through SDPA
        sizes.clear()
        monkeypatch.setattr(GroupAttention, "cpu_bf16_sdpa_min_tokens", 0)
        monkeypatch.setattr(GroupAttention, "cpu_sdpa_min_tokens", 0)
        ref = model(x).float()
        assert set(sizes) == {16, 49, 196}
    with torch.inference_mode():
        exact = model.float()(x.float())
    # the two bf16 paths differ by bf16 rounding only (the explicit one rounds the scores), and both stay as close
    # to float32
    scale = exact.abs().max()
    assert (out - ref).abs().max() < 0.05 * scale
    assert (out - exact).abs().mean() < 2 * (ref - exact).abs().mean()


@pytest.mark.parametrize("block_bytes", [1, 50_000, 1 << 18])  # one group per block, ragged blocks, the default
def test_blocked_cpu_attention_matches_sdpa(monkeypatch, block_bytes):
    from crossformer_vision.layers.attention import GroupAttention

    # 112 x 84: padded LDA layouts (per-group masks) next to unpadded ones; 49- and 64-token groups
    model = cf.create_model("crossformer_s", group_size=(7, 7, 8, 4), crs_interval=(4, 2, 1, 1), **TINY).eval()
    with torch.no_grad():  # peaked attention (the init's tiny q k^T is nearly uniform and would hide a wrong scale)
        for m in model.modules():
            if isinstance(m, GroupAttention):
                m.qkv.weight.normal_(0, 0.1)
    x = torch.randn(3, 3, 112, 84)
    calls = spy_attention(monkeypatch, "_attend_blocked")
    monkeypatch.setattr(GroupAttention, "cpu_block_bytes", block_bytes)
    monkeypatch.setattr(GroupAttention, "cpu_blocked_min_bytes", 0)  # tiny inputs: take the path anyway
    with torch.no_grad():
        monkeypatch.setattr(GroupAttention, "cpu_blocked_attention", False)
        ref = model(x)
        assert not calls
        monkeypatch.setattr(GroupAttention, "cpu_blocked_attention", True)
        out = model(x)
    blocks = [(q.shape[0], block) for q, _, _, _, block in calls]  # (groups, groups per block)
    assert blocks
    if block_bytes == 1:
        assert {b for _, b in blocks} == {1}
    if block_bytes == 50_000:
        assert any(n % b for n, b in blocks)  # a last block shorter than the others
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_blocked_cpu_attention_only_for_large_float32_inference(monkeypatch):
    from crossformer_vision.layers.attention import GroupAttention

    model = tiny("crossformer_s").eval()
    x = torch.randn(2, 3, 64, 64)
    taken = spy_attention(monkeypatch, "_attend_blocked")
    with torch.inference_mode():
        model(x)
    assert not taken  # scores of a few KiB per call: below cpu_blocked_min_bytes, SDPA
    monkeypatch.setattr(GroupAttention, "cpu_blocked_min_bytes", 0)
    model(x).sum().backward()  # autograd: SDPA or the explicit path, never the blocked one
    with torch.no_grad():
        model.to(torch.bfloat16)(x.to(torch.bfloat16))
    assert not taken
    with torch.inference_mode():
        model.float()(x)
    assert taken


def test_fused_linear_matches_plain_linear_and_steps_aside_for_autograd():
    from crossformer_vision.layers import fused_linear, set_fused_linear
    from crossformer_vision.layers.linear import _state

    layer = torch.nn.Linear(24, 40)
    x = torch.randn(3, 5, 7, 24)
    plain = torch.nn.functional.linear(x, layer.weight, layer.bias)
    with torch.inference_mode():
        torch.testing.assert_close(fused_linear(x, layer), plain, rtol=0, atol=1e-6)
        gelu = torch.nn.functional.gelu(plain)
        torch.testing.assert_close(fused_linear(x, layer, gelu=True), gelu, rtol=0, atol=1e-6)
    y = fused_linear(x, layer, gelu=True)  # grad enabled: must be the autograd-capable path
    y.sum().backward()
    assert layer.weight.grad is not None
    was = _state["enabled"]
    try:
        set_fused_linear(False)
        with torch.inference_mode():
            torch.testing.assert_close(fused_linear(x, layer), plain, rtol=0, atol=0)
    finally:
        set_fused_linear(was)


def test_fused_linear_under_autocast_runs_in_bfloat16_and_follows_weight_changes():
    from crossformer_vision.layers import fused_linear
    from crossformer_vision.layers.linear import _cast_weights

    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 96)
    x = torch.randn(4, 10, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        ref = torch.nn.functional.gelu(layer(x))  # autocast's own bf16 linear
        out = fused_linear(x, layer, gelu=True)
        assert out.dtype == torch.bfloat16 and layer in _cast_weights
        # same bf16 operands; only the rounding of the pre-GELU values differs
        torch.testing.assert_close(out.float(), ref.float(), atol=0.03, rtol=0.02)
    with torch.no_grad():
        layer.weight.mul_(-1)  # a weight update must not reuse the cached bf16 copy
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        flipped = fused_linear(x, layer)
        torch.testing.assert_close(flipped.float(), layer(x).float(), atol=0.03, rtol=0.02)


def test_model_outputs_agree_with_and_without_fused_linear():
    from crossformer_vision.layers import set_fused_linear

    model = tiny("crossformer_s").eval()
    x = torch.randn(2, 3, 70, 90)
    with torch.inference_mode():
        fused = model(x)
        set_fused_linear(False)
        try:
            plain = model(x)
        finally:
            set_fused_linear(True)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("hw", [(32, 32), (37, 50)])
def test_direct_and_unshuffled_cross_scale_convs_agree_in_values_and_gradients(hw):
    from crossformer_vision.layers import CrossScaleEmbedding, CrossScalePatchMerging

    torch.manual_seed(0)
    for layer, x in (
        (CrossScaleEmbedding(3, 32), torch.randn(2, 3, *hw)),
        (CrossScalePatchMerging(16, 32), torch.randn(2, hw[0] // 4, hw[1] // 4, 16)),
    ):
        results = []
        for impl in ("direct", "unshuffle"):
            layer.conv_impl = impl
            layer.zero_grad()
            xi = x.clone().requires_grad_(True)
            y = layer(xi)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
            results.append((y, xi.grad, [p.grad.clone() for p in layer.parameters()]))
        (y0, gx0, gp0), (y1, gx1, gp1) = results
        torch.testing.assert_close(y0, y1, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(gx0, gx1, atol=1e-5, rtol=1e-5)
        for a, b in zip(gp0, gp1):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("hw", [(64, 64), (64, 96), (37, 50)])
def test_grouped_token_sdpa_path_equals_the_qkv_grouping_path(hw, monkeypatch):
    from crossformer_vision.layers.attention import GroupAttention

    torch.manual_seed(0)
    model = cf.create_model("crossformer_s", group_size=(4, 4, 2, 1), crs_interval=(2, 2, 1, 1), **TINY).eval()
    x = torch.randn(2, 3, *hw)
    taken = spy_attention(monkeypatch, "_forward_grouped_tokens")
    with torch.no_grad():
        monkeypatch.setattr(GroupAttention, "_group_tokens_first", False)
        ref = model(x)
        assert not taken
        monkeypatch.setattr(GroupAttention, "_group_tokens_first", True)
        out = model(x)
    assert taken  # at least the unpadded layers took the grouped-token path
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
