"""The transformer MLP: ``Linear -> GELU -> Dropout -> Linear -> Dropout`` (keys ``fc1`` / ``fc2``)."""

from __future__ import annotations

import torch
from torch import nn

from .linear import fused_linear
from .recompute import gelu_linear, norm_linear, plain_linear, recompute_enabled

__all__ = ["Mlp"]


class Mlp(nn.Module):
    """Two-layer GELU MLP; on CPU inference ``fc1`` and GELU run as one fused oneDNN kernel.

    In training the GELU output is not kept for the backward pass but recomputed (:mod:`.recompute`), and so is the
    output of a LayerNorm passed as ``norm``.

    Args:
        dim: Input and output channels.
        hidden_dim: Hidden channels.
        drop: Dropout after the activation and after ``fc2``.
    """

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward_plain(self, x: torch.Tensor) -> torch.Tensor:
        """[..., C] -> [..., C] in plain modules (TorchScript, ``torch.export``)."""
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))

    @torch.jit.unused  # TorchScript takes forward_plain
    def forward(self, x: torch.Tensor, norm: nn.Module | None = None) -> torch.Tensor:
        """[..., C] -> [..., C]; with ``norm``, ``x`` is normalised by it first."""
        if recompute_enabled(x) and not (self.training and self.drop1.p > 0):
            h = plain_linear(x, self.fc1) if norm is None else norm_linear(x, norm, self.fc1)
            return self.drop2(gelu_linear(h, self.fc2))
        if norm is not None:
            x = norm(x)
        x = self.drop1(fused_linear(x, self.fc1, gelu=True))
        return self.drop2(fused_linear(x, self.fc2))
