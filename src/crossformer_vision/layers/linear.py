"""Linear layers that run through oneDNN's fused kernel for CPU inference.

``F.linear`` on CPU first copies the bias into the output and then multiplies, and GELU is another full pass
over the activations; oneDNN's ``linear_pointwise`` applies the bias (and GELU) inside the matrix multiply.
The results are the same (the tests compare them bitwise); it is used only where it can be: CPU tensors,
float32 / bfloat16, no autograd, eager mode (not while compiling or exporting, nor under a dispatch mode such as
``FlopCounterMode``). Anything else takes
``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

try:  # a dispatch mode (FlopCounterMode, fake tensors, ...) must see the ordinary aten ops
    from torch.utils._python_dispatch import is_in_torch_dispatch_mode as _in_dispatch_mode
except ImportError:  # pragma: no cover - older torch

    def _in_dispatch_mode() -> bool:
        return True


__all__ = ["fused_linear", "set_fused_linear"]


def _available() -> bool:
    return hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()


_state = {"enabled": _available()}


def set_fused_linear(enabled: bool) -> None:
    """Switch the oneDNN inference path on or off (for benchmarks and tests)."""
    _state["enabled"] = enabled and _available()


def _fusable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        _state["enabled"]
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and x.dtype == weight.dtype
        and not torch.compiler.is_compiling()
        and not torch.jit.is_scripting()
        and not _in_dispatch_mode()
    )


def fused_linear(x: torch.Tensor, layer: nn.Linear, gelu: bool = False) -> torch.Tensor:
    """``layer(x)`` (then exact GELU when ``gelu``), fused by oneDNN for CPU inference."""
    if _fusable(x, layer.weight):
        try:
            if gelu:
                return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "gelu", [], "none")
            return torch.ops.mkldnn._linear_pointwise(x, layer.weight, layer.bias, "none", [], "")
        except RuntimeError:  # a build without the kernel for this case: use the plain path from now on
            _state["enabled"] = False
    y = F.linear(x, layer.weight, layer.bias)
    return F.gelu(y) if gelu else y
