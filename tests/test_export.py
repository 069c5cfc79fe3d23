"""torch.export (fixed and dynamic height / width), ONNX export and torch.compile (one graph) match eager outputs."""

import importlib.util

import pytest
import torch

import crossformer_vision as cf


@pytest.fixture(scope="module")
def model_and_input():
    torch.manual_seed(0)
    model = cf.create_model("crossformerpp_s", embed_dim=32, num_heads=(1, 2, 4, 8), depths=(1, 1, 4, 1), num_classes=7)
    x = torch.randn(1, 3, 96, 128)  # padded LDA groups in stages 1 and 2
    model.eval()
    with torch.no_grad():
        return model, x, model(x)


@pytest.mark.slow
def test_torch_export(model_and_input):
    model, x, ref = model_and_input
    program = torch.export.export(model, (x,))
    torch.testing.assert_close(program.module()(x), ref, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None, reason="needs onnxscript")
def test_onnx_export(model_and_input, tmp_path):
    model, x, ref = model_and_input
    path = tmp_path / "crossformer.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    assert path.stat().st_size > 0
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime not installed: export checked, outputs not compared")
    import onnxruntime as ort

    session = ort.InferenceSession(str(path))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert abs(out - ref.numpy()).max() < 1e-4


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.trace:FutureWarning")  # deprecated by PyTorch, still used
def test_torch_jit_trace_under_no_grad(model_and_input):
    """The CPU inference kernels and caches step aside while tracing (they tripped the tracer's internal assert)."""
    model, x, ref = model_and_input
    with torch.no_grad(), pytest.warns(torch.jit.TracerWarning):  # shapes become constants: the traced size only
        traced = torch.jit.trace(model, x)
        out = traced(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    with torch.no_grad():
        other = torch.randn(3, *x.shape[1:])  # another batch size at the traced height and width
        torch.testing.assert_close(traced(other), model(other), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_torch_compile(model_and_input):
    model, x, ref = model_and_input
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref, rtol=0, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("dense", [False, True], ids=["classifier", "dense_fixed_interval"])
def test_torch_export_dynamic_height_width(dense):
    """One exported program for every H, W in 256..1344 (multiples of 32) matches eager at three sizes."""
    from crossformer_vision.models.export import export_dynamic

    tiny = dict(embed_dim=32, num_heads=(1, 2, 4, 8), depths=(1, 2, 2, 1))
    if dense:  # the v1 dense rule: the LDA groups' size grows with the map (symbolic group sizes)
        model = cf.create_model("crossformer_s", dense=True, lda_rule="fixed_interval", **tiny).eval()
    else:  # CrossFormer++: 4x4 and 14x14 groups, padded regions, ACL
        model = cf.create_model("crossformerpp_s", num_classes=7, **tiny).eval()
    program = export_dynamic(model, torch.randn(1, 3, 320, 384)).module()
    for size in [(256, 448), (640, 352), (1344, 1344)]:
        x = torch.randn(1, 3, *size)
        with torch.no_grad():
            ref, out = model(x), program(x)
        for r, o in zip(ref if dense else [ref], out if dense else [out]):
            torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-4)


def test_export_dynamic_refuses_224():
    from crossformer_vision.models.export import export_dynamic

    with pytest.raises(ValueError, match="256 <= min_size"):
        export_dynamic(torch.nn.Identity(), torch.randn(1, 3, 224, 224), min_size=224)


@pytest.mark.slow
def test_torch_compile_fullgraph_training_step():
    """A training step captures one graph (fullgraph=True) whose values and gradients match eager; the aot_eager
    backend traces forward and backward like inductor without its code generation (minutes on 2 cores)."""
    torch.manual_seed(0)
    model = cf.create_model(
        "crossformerpp_s", embed_dim=32, num_heads=(1, 2, 4, 8), depths=(1, 1, 3, 1), num_classes=5, drop_path_rate=0.0
    ).train()
    x = torch.randn(2, 3, 64, 96)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager", dynamic=False)
    loss = compiled(x).square().mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = model(x).square().mean()
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-3, atol=1e-5, msg=n)
