"""The recomputing LayerNorm -> Linear and GELU -> Linear of training: same values and gradients, less kept memory."""

import pytest
import torch
from torch import nn

import crossformer_vision as cf
from crossformer_vision.layers import gelu_linear, norm_linear, plain_linear, set_fused_linear, set_recompute
from crossformer_vision.layers import recompute as rc
from crossformer_vision.layers.linear import _state as fused_state

TINY = dict(embed_dim=32, num_heads=(1, 2, 4, 8), depths=(2, 2, 2, 1), drop_path_rate=0.0, num_classes=7)


@pytest.fixture
def plain_modules():
    """Run a block with the recomputing functions switched off, and back on afterwards."""
    set_recompute(False)
    yield
    set_recompute(True)


@pytest.mark.parametrize("bias", [True, False])
def test_functions_pass_gradcheck(bias):
    torch.manual_seed(0)
    d = dict(dtype=torch.float64)
    x = torch.randn(2, 3, 5, 8, **d, requires_grad=True)
    nw, nb = torch.randn(8, **d, requires_grad=True), torch.randn(8, **d, requires_grad=True)
    w = torch.randn(6, 8, **d, requires_grad=True)
    b = torch.randn(6, **d, requires_grad=True) if bias else None

    def norm_then_linear(x, nw, nb, w, b):
        return rc._NormLinear.apply(x, nw, nb, 1e-5, w, b)

    assert torch.autograd.gradcheck(norm_then_linear, (x, nw, nb, w, b))
    assert torch.autograd.gradcheck(rc._GeluLinear.apply, (x, w, b))
    assert torch.autograd.gradcheck(rc._Linear.apply, (x, w, b))


@pytest.fixture(params=["plain-kernels", "onednn"])
def kernels(request):
    """The tolerance the functions match the plain modules to: bit for bit with ``F.linear`` / ``matmul`` inside
    them, float32 rounding with oneDNN's multiplies (the default on CPU)."""
    was = fused_state["enabled"]
    set_fused_linear(request.param == "onednn")
    if request.param == "onednn" and not fused_state["enabled"]:
        pytest.skip("this torch build has no oneDNN linear kernel")
    yield dict(rtol=0, atol=0) if request.param == "plain-kernels" else dict(rtol=1e-4, atol=1e-6)
    set_fused_linear(was)


def test_functions_equal_the_plain_modules(kernels):
    torch.manual_seed(0)
    norm, fc1, fc2, proj = nn.LayerNorm(16), nn.Linear(16, 48), nn.Linear(48, 16), nn.Linear(16, 16)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(4, 7, 9, 16)
    grads = []
    for use in (False, True):
        set_recompute(use)
        try:
            xi = x.clone().requires_grad_(True)
            for m in (norm, fc1, fc2):
                m.zero_grad()
            out = plain_linear(gelu_linear(norm_linear(xi, norm, fc1), fc2), proj)
            (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        finally:
            set_recompute(True)
        grads.append([out.detach(), xi.grad] + [p.grad for m in (norm, fc1, fc2, proj) for p in m.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, **kernels)


def test_training_multiplies_run_through_onednn_on_cpu():
    if not fused_state["enabled"]:
        pytest.skip("this torch build has no oneDNN linear kernel")
    norm, fc1, fc2 = nn.LayerNorm(16), nn.Linear(16, 48), nn.Linear(48, 16)
    x = torch.randn(4, 9, 16, requires_grad=True)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        plain_linear(gelu_linear(norm_linear(x, norm, fc1), fc2), nn.Linear(16, 8)).sum().backward()
    names = [e.name for e in prof.events()]
    # 3 forward multiplies and 3 input gradients (the weight gradients stay with mm)
    assert names.count("mkldnn::_linear_pointwise") == 6, sorted(set(names))
    assert "aten::addmm" not in names


def test_frozen_input_and_frozen_weights():
    norm, fc = nn.LayerNorm(8), nn.Linear(8, 4)
    fc.requires_grad_(False)
    x = torch.randn(3, 8, requires_grad=True)
    norm_linear(x, norm, fc).sum().backward()  # gradients for x and the norm only
    assert x.grad is not None and norm.weight.grad is not None and fc.weight.grad is None
    fc.requires_grad_(True)
    y = torch.randn(3, 8)  # an input without gradient: only the weights get one
    gelu_linear(y, fc).sum().backward()
    assert fc.weight.grad is not None


def test_used_only_where_it_applies():
    x = torch.randn(2, 8)
    assert rc.recompute_enabled(x)
    with torch.no_grad():
        assert not rc.recompute_enabled(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not rc.recompute_enabled(x)
        out = norm_linear(x, nn.LayerNorm(8), nn.Linear(8, 4))  # the plain modules under autocast
        assert out.dtype == torch.bfloat16
    # a norm that is not a plain LayerNorm is applied as it is
    rms = nn.RMSNorm(8)
    out = norm_linear(x, rms, nn.Linear(8, 4))
    assert out.grad_fn is not None and "NormLinear" not in type(out.grad_fn).__name__


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


@pytest.mark.parametrize("name", ["crossformer_s", "crossformerpp_s"])
def test_model_training_equal_gradients_and_less_kept_memory(name, kernels):
    torch.manual_seed(0)
    model = cf.create_model(name, **TINY).train()
    x = torch.randn(2, 3, 64, 96)
    results, kept = [], []
    for use in (False, True):
        set_recompute(use)
        try:
            model.zero_grad()
            out = model(x)
            out.square().sum().backward()
            kept.append(_saved_bytes(model, x))
        finally:
            set_recompute(True)
        results.append([out.detach()] + [p.grad for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, **kernels)
    # exactly the two LayerNorm outputs (C channels each) and the GELU output (4 C) of every block are no longer kept
    tokens = []
    hooks = [b.register_forward_hook(lambda m, i, o: tokens.append(o.numel())) for b in model.modules() if _is_block(b)]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert kept[0] - kept[1] == sum(6 * n * 4 for n in tokens), (kept, tokens)


def _is_block(m: nn.Module) -> bool:
    return type(m).__name__ == "CrossFormerBlock"
