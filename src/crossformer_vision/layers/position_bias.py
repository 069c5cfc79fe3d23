"""Dynamic Position Bias (DPB): an MLP from relative offsets to a per-head attention bias."""

from __future__ import annotations

import functools

import torch
from torch import nn

__all__ = ["DynamicPositionBias", "offsets_index", "offsets_table", "relative_offsets", "relative_position_index"]


def offsets_table(group_h: int, group_w: int, device: torch.device) -> torch.Tensor:
    """All offsets (dy, dx) of a group_h x group_w group in row-major order: int64 [(2Gh-1)(2Gw-1), 2]."""
    dy = torch.arange(1 - group_h, group_h, device=device)
    dx = torch.arange(1 - group_w, group_w, device=device)
    return torch.stack(torch.meshgrid(dy, dx, indexing="ij"), dim=-1).reshape(-1, 2)


def offsets_index(group_h: int, group_w: int, device: torch.device) -> torch.Tensor:
    """Row of :func:`offsets_table` for every (query, key) pair of a group: int64 [N, N], N = Gh*Gw."""
    rows = torch.arange(group_h, device=device)
    cols = torch.arange(group_w, device=device)
    coords = torch.stack(torch.meshgrid(rows, cols, indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]  # [2, N, N]: offset of token i minus token j
    return (rel[0] + group_h - 1) * (2 * group_w - 1) + (rel[1] + group_w - 1)


@torch.inference_mode(False)  # cached tensors must stay usable by autograd, whatever mode first built them
def _offsets_cpu(group_h: int, group_w: int) -> torch.Tensor:
    return offsets_table(group_h, group_w, torch.device("cpu"))


@torch.inference_mode(False)
def _index_cpu(group_h: int, group_w: int) -> torch.Tensor:
    return offsets_index(group_h, group_w, torch.device("cpu"))


_offsets_cached = functools.lru_cache(maxsize=64)(_offsets_cpu)
_index_cached = functools.lru_cache(maxsize=64)(_index_cpu)


def relative_offsets(group_h: int, group_w: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """All offsets (dy, dx) of a group_h x group_w group in row-major order: [(2Gh-1)(2Gw-1), 2]."""
    fn = _offsets_cpu if torch.compiler.is_compiling() else _offsets_cached
    return fn(group_h, group_w).to(device=device, dtype=dtype)


def relative_position_index(group_h: int, group_w: int, device: torch.device) -> torch.Tensor:
    """Row of :func:`relative_offsets` for every (query, key) pair of a group: [N, N], N = Gh*Gw."""
    fn = _index_cpu if torch.compiler.is_compiling() else _index_cached
    return fn(group_h, group_w).to(device)


class DynamicPositionBias(nn.Module):
    """``Linear(2, p) -> [LN, ReLU, Linear(p, p)] x 2 -> LN, ReLU, Linear(p, heads)``.

    The bias depends only on offsets, so the same weights serve every group shape.

    Args:
        dim: Hidden width p (the attention width / 16 in every CrossFormer).
        num_heads: Attention heads (one bias per head).
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.pos_proj = nn.Linear(2, dim)
        self.pos1 = nn.Sequential(nn.LayerNorm(dim), nn.ReLU(), nn.Linear(dim, dim))
        self.pos2 = nn.Sequential(nn.LayerNorm(dim), nn.ReLU(), nn.Linear(dim, dim))
        self.pos3 = nn.Sequential(nn.LayerNorm(dim), nn.ReLU(), nn.Linear(dim, num_heads))

    def table(self, group_h: int, group_w: int) -> torch.Tensor:
        """Bias for every offset: [(2Gh-1)(2Gw-1), heads]."""
        weight = self.pos_proj.weight
        if torch.jit.is_scripting():
            offsets = offsets_table(group_h, group_w, weight.device).to(weight.dtype)
        else:
            offsets = relative_offsets(group_h, group_w, weight.dtype, weight.device)
        return self.pos3(self.pos2(self.pos1(self.pos_proj(offsets))))

    def forward(self, group_h: int, group_w: int) -> torch.Tensor:
        """Bias of every (query, key) pair in a group: [heads, N, N], N = Gh*Gw."""
        n = group_h * group_w
        device = self.pos_proj.weight.device
        if torch.jit.is_scripting():
            index = offsets_index(group_h, group_w, device)
        else:
            index = relative_position_index(group_h, group_w, device)
        # gathered from the [heads, offsets] table: a contiguous [heads, N, N] (a permuted view would make every
        # `scores + bias` follow its layout, and softmax copy the scores back)
        table = self.table(group_h, group_w).t().contiguous()
        return table.index_select(1, index.view(-1)).view(self.num_heads, n, n)
