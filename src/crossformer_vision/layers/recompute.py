"""Training-time autograd functions of the blocks' linear layers: ``LayerNorm -> Linear`` and ``GELU -> Linear``
that keep only their inputs, and a plain ``Linear``; on CPU their multiplies run through oneDNN.

Autograd keeps, per transformer block, the LayerNorm output next to its input (twice: attention and MLP) and the
GELU output next to its input. These two functions keep only the inputs and recompute the LayerNorm / GELU output
in the backward pass (one cheap elementwise pass each), which removes 6 of the ~18 activation copies of C channels a
CrossFormer block keeps for its backward pass. Values and gradients are those of the plain modules (the tests
compare them).

On CPU the forward multiply and the input gradient's run through oneDNN (:func:`.linear.dense_linear`,
:func:`.linear.input_grad`; ``set_fused_linear(False)`` switches back to ``F.linear`` / ``matmul``, and then the
values and gradients equal the plain modules' bit for bit).

They are used while autograd records (training, or any forward with gradients) in eager mode without autocast; a
double backward through them is not supported, so ``set_recompute(False)`` switches back to the plain modules (as
does compiling: the compiler makes its own recomputation choices). Forward hooks on the fused ``norm1`` / ``norm2`` /
``act`` modules do not fire while this path is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .linear import dense_linear, fused_linear, input_grad

__all__ = ["gelu_linear", "norm_linear", "plain_linear", "recompute_enabled", "set_recompute"]

_state = {"enabled": True}


def set_recompute(enabled: bool) -> None:
    """Use (True, the default) or not the recomputing ``LayerNorm -> Linear`` / ``GELU -> Linear`` in training."""
    _state["enabled"] = bool(enabled)


def recompute_enabled(x: torch.Tensor) -> bool:
    """Whether the recomputing functions apply to this forward (autograd recording, eager, no autocast)."""
    return (
        _state["enabled"]
        and torch.is_grad_enabled()
        and not torch.is_autocast_enabled(x.device.type)
        and not torch.compiler.is_compiling()
        and not torch.jit.is_scripting()
    )


def _linear_grads(ctx, grad: torch.Tensor, inp: torch.Tensor, weight: torch.Tensor, first: int):
    """Gradients of ``F.linear(inp, weight, bias)`` for the inputs ``first`` (weight) and ``first + 1`` (bias)."""
    g2 = grad.reshape(-1, grad.shape[-1])
    grad_w = g2.t().mm(inp.reshape(-1, inp.shape[-1])) if ctx.needs_input_grad[first] else None
    grad_b = g2.sum(0) if ctx.has_bias and ctx.needs_input_grad[first + 1] else None
    return grad_w, grad_b


class _NormLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, eps, weight, bias):
        shape = (x.shape[-1],)
        y, mean, rstd = torch.native_layer_norm(x, shape, norm_weight, norm_bias, eps)
        ctx.save_for_backward(x, mean, rstd, norm_weight, norm_bias, weight)
        ctx.eps, ctx.has_bias = eps, bias is not None
        return dense_linear(y, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, mean, rstd, norm_weight, norm_bias, weight = ctx.saved_tensors
        shape = (x.shape[-1],)
        y = torch.native_layer_norm(x, shape, norm_weight, norm_bias, ctx.eps)[0]  # the forward's y, bit for bit
        grad_w, grad_b = _linear_grads(ctx, grad, y, weight, 4)
        del y
        grad_x = grad_nw = grad_nb = None
        if any(ctx.needs_input_grad[:3]):
            grad_y = input_grad(grad, weight)
            mask = [ctx.needs_input_grad[0], norm_weight is not None and ctx.needs_input_grad[1]]
            mask.append(norm_bias is not None and ctx.needs_input_grad[2])
            grad_x, grad_nw, grad_nb = torch.ops.aten.native_layer_norm_backward(
                grad_y, x, shape, mean, rstd, norm_weight, norm_bias, mask
            )
        return grad_x, grad_nw, grad_nb, None, grad_w, grad_b


class _GeluLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, bias):
        ctx.save_for_backward(h, weight)
        ctx.has_bias = bias is not None
        return dense_linear(F.gelu(h), weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        h, weight = ctx.saved_tensors
        grad_w, grad_b = _linear_grads(ctx, grad, F.gelu(h), weight, 1)  # the recomputed GELU output is freed here
        grad_h = None
        if ctx.needs_input_grad[0]:
            grad_h = input_grad(grad, weight)
            torch.ops.aten.gelu_backward.grad_input(grad_h, h, grad_input=grad_h)  # in place: one 4C buffer, not two
        return grad_h, grad_w, grad_b


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x = x.contiguous()  # a view (the unpadded part of a padded map) is kept as a compact copy, as F.linear does
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return dense_linear(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_w, grad_b = _linear_grads(ctx, grad, x, weight, 1)
        return input_grad(grad, weight) if ctx.needs_input_grad[0] else None, grad_w, grad_b


def plain_linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)``: in training (:func:`recompute_enabled`) an autograd function whose multiplies run through oneDNN
    on CPU; otherwise :func:`.linear.fused_linear` (oneDNN for CPU inference, ``F.linear`` elsewhere)."""
    if recompute_enabled(x):
        return _Linear.apply(x, layer.weight, layer.bias)
    return fused_linear(x, layer)


def norm_linear(x: torch.Tensor, norm: nn.Module, linear: nn.Linear) -> torch.Tensor:
    """``linear(norm(x))``; keeps only ``x`` for the backward pass when :func:`recompute_enabled` and ``norm`` is a
    plain ``nn.LayerNorm`` over the last dimension."""
    if (
        type(norm) is nn.LayerNorm
        and len(norm.normalized_shape) == 1
        and norm.normalized_shape[0] == x.shape[-1]
        and recompute_enabled(x)
    ):
        return _NormLinear.apply(x, norm.weight, norm.bias, norm.eps, linear.weight, linear.bias)
    return fused_linear(norm(x), linear)


def gelu_linear(h: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``linear(gelu(h))`` (exact GELU); keeps only ``h`` for the backward pass when :func:`recompute_enabled`."""
    if recompute_enabled(h):
        return _GeluLinear.apply(h, linear.weight, linear.bias)
    return linear(F.gelu(h))
