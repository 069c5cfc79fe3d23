"""torch.export, ONNX export and torch.compile at a fixed size match eager outputs."""

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
    compiled = torch.compile(model)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref, rtol=0, atol=1e-5)
