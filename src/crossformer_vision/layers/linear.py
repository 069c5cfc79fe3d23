"""Linear layers that run through oneDNN's fused kernel on CPU (inference, and the multiplies of training).

``F.linear`` on CPU first copies the bias into the output and then multiplies, and GELU is another full pass
over the activations; oneDNN's ``linear_pointwise`` applies the bias (and GELU) inside the matrix multiply.
The results are the same (the tests compare them bitwise); it is used only where it can be: CPU tensors,
float32 / bfloat16, no autograd, eager mode (not while compiling or exporting, nor under a dispatch mode such as
``FlopCounterMode``). Anything else takes ``F.linear``.

The training functions of :mod:`.recompute` run their forward multiply and the input gradient's multiply
(``grad @ weight``) through the same kernel on CPU (:func:`dense_linear`, :func:`input_grad`), because MKL's
``addmm`` / ``mm`` run the narrow stage-1 shapes (96 input channels) far below the matmul peak; the weight gradient
stays with ``mm``, where oneDNN is slower (docs/benchmarks.md, "Kernel choices"). oneDNN rounds differently from
MKL: the values agree to float32 rounding, not bit for bit.

Under CPU autocast to bfloat16 (which does not know this oneDNN op) the input is cast to bfloat16 and so are the
weights, once per weight version (a cached copy per layer, dropped with the layer), as autocast would cast them for
``F.linear``: the result is autocast's, without a weight cast per call and with GELU fused.

A weight version is its storage, its version counter and :func:`weights_generation`, which every optimizer step
advances: torch's fused optimizers (``AdamW(fused=True)``) update parameters in place without bumping their version
counters, and an evaluation between training steps would otherwise see the weights cast before them. Writes
through ``.data`` (``p.data.copy_(w)``) are seen by neither; write to the parameter itself under ``torch.no_grad()``.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

try:  # a dispatch mode (FlopCounterMode, fake tensors, ...) must see the ordinary aten ops
    from torch.utils._python_dispatch import is_in_torch_dispatch_mode as _in_dispatch_mode
except ImportError:  # pragma: no cover - older torch

    def _in_dispatch_mode() -> bool:
        return True


__all__ = [
    "dense_linear",
    "eager_cpu_inference",
    "fused_linear",
    "input_grad",
    "set_fused_linear",
    "weights_generation",
]

_generation = [0]


def _optimizer_stepped(*_args) -> None:
    _generation[0] += 1


# a global hook: runs after the step of every torch.optim.Optimizer (timm's too), fused or not
register_optimizer_step_post_hook(_optimizer_stepped)


def weights_generation() -> int:
    """A counter that every optimizer step advances: part of the key of every cache derived from weights."""
    return _generation[0]


def _available() -> bool:
    return hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()


_state = {"enabled": _available()}


def set_fused_linear(enabled: bool) -> None:
    """Switch the oneDNN path (inference and the training functions' multiplies) on or off (benchmarks, tests)."""
    _state["enabled"] = enabled and _available()


_cast_weights: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # layer -> (key, weight, bias) under autocast


def eager_cpu_inference(x: torch.Tensor) -> bool:
    """Whether a CPU-only inference kernel may replace the plain ops for ``x``: a CPU tensor, no autograd, eager mode
    (not compiling, scripting, tracing or exporting, nor under a dispatch mode such as ``FlopCounterMode``)."""
    return (
        not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch.jit.is_scripting()
        and not torch.jit.is_tracing()
        and not _in_dispatch_mode()
    )


def _fused_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype the fused kernel runs in for this call, or None where it must not run."""
    if not (_state["enabled"] and eager_cpu_inference(x)):
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if dtype == torch.bfloat16 and weight.dtype in (torch.float32, torch.bfloat16) else None
    return x.dtype if x.dtype in (torch.float32, torch.bfloat16) and x.dtype == weight.dtype else None


def _weights(layer: nn.Linear, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    w, b = layer.weight, layer.bias
    if w.dtype == dtype and (b is None or b.dtype == dtype):
        return w, b
    key = (dtype, _generation[0], w.data_ptr(), w._version, None if b is None else (b.data_ptr(), b._version))
    cached = _cast_weights.get(layer)
    if cached is None or cached[0] != key:
        cached = _cast_weights[layer] = (key, w.detach().to(dtype), None if b is None else b.detach().to(dtype))
    return cached[1], cached[2]


def _onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, gelu: bool = False
) -> torch.Tensor | None:
    """``x @ weight^T + bias`` (then exact GELU) by oneDNN, or None where this torch build lacks the kernel for the
    case (the oneDNN path is then switched off for good and the callers take the plain ops)."""
    try:
        return torch.ops.mkldnn._linear_pointwise(
            x, weight, bias, *(("gelu", [], "none") if gelu else ("none", [], ""))
        )
    except RuntimeError:
        _state["enabled"] = False
        return None


def fused_linear(x: torch.Tensor, layer: nn.Linear, gelu: bool = False) -> torch.Tensor:
    """``layer(x)`` (then exact GELU when ``gelu``), fused by oneDNN for CPU inference."""
    dtype = _fused_dtype(x, layer.weight)
    if dtype is not None:
        w, b = _weights(layer, dtype)
        y = _onednn_linear(x.to(dtype), w, b, gelu)
        if y is not None:
            return y
    y = F.linear(x, layer.weight, layer.bias)
    return F.gelu(y) if gelu else y


def _onednn_operands(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN may multiply ``x`` by ``weight`` for a caller that runs with autograd off (an autograd
    function's forward or backward): CPU tensors of one dtype, float32 or bfloat16, no dispatch mode."""
    return (
        _state["enabled"]
        and x.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in (torch.float32, torch.bfloat16)
        and not _in_dispatch_mode()
    )


def dense_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` inside an autograd function: by oneDNN on CPU, the bias inside the multiply."""
    if _onednn_operands(x, weight) and (bias is None or bias.dtype == x.dtype):
        y = _onednn_linear(x, weight, bias)
        if y is not None:
            return y
    return F.linear(x, weight, bias)


def input_grad(grad: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``grad @ weight``, the input gradient of a linear layer, inside an autograd function: by oneDNN on CPU."""
    if _onednn_operands(grad, weight):
        y = _onednn_linear(grad, weight.t(), None)  # a linear layer whose weight is weight^T (oneDNN takes the view)
        if y is not None:
            return y
    return grad.matmul(weight)
