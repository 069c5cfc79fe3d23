"""Relevance propagation on group attention: token placement, token mixing and the per-block rules.

Everything here works on *row vectors* of relevance over a stage's tokens, ``v [B, N]``, never on ``N x N`` matrices.
The ICCV 2021 rule accumulates ``R <- R + Ā R`` over the blocks (``R`` starts as the identity), so after the last block
``R = (I + Ā_L) ... (I + Ā_1)``; an explanation only needs one row of it (the CLS token's) or the mean of its rows (a
pooled head), i.e. ``s^T R`` for a seed vector ``s``. That product is evaluated from the last block back to the first,
``v <- v + v Ā_l``, and ``v Ā_l`` for group attention is a gather / per-group vector-matrix product / scatter-add over
the group layout's token index: memory and time linear in the tokens, whatever the number of groups.

Between stages a merged token's relevance is spread over the tokens its convolutions read (:class:`Spread`), and the
stem's spread maps stage-1 tokens to pixels the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..layers.grouping import GroupLayout

__all__ = [
    "BlockTrace",
    "Spread",
    "StageTrace",
    "apply_groups",
    "dense_from_groups",
    "layout_token_index",
    "window_token_index",
]


def layout_token_index(layout: GroupLayout, device: torch.device | str = "cpu") -> torch.Tensor:
    """Token index of every group member of a CrossFormer layout: long [num_groups, group_tokens].

    Entry ``[g, m]`` is the row-major index ``y * W + x`` of member ``m`` of group ``g`` in the ``H x W`` map, or -1
    where the member is padding. Groups and members are in the order :class:`GroupAttention` uses (groups ordered
    (region row, region col, offset row, offset col), members row-major inside the group), so ``index[g]`` labels the
    rows and columns of the recorded probabilities ``attn[:, g, head]``.
    """
    (rh, rw), (gh, gw), (ih, iw) = layout.regions, layout.group, layout.interval
    hp, wp = layout.padded
    H, W = layout.height, layout.width
    grid = torch.full((hp, wp), -1, dtype=torch.long, device=device)
    grid[:H, :W] = torch.arange(H * W, device=device).view(H, W)
    return grid.view(rh, gh, ih, rw, gw, iw).permute(0, 3, 2, 5, 1, 4).reshape(layout.num_groups, gh * gw)


def window_token_index(
    height: int, width: int, window: tuple[int, int], shift: tuple[int, int], device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Token index of the members of Swin's (shifted) windows: long [num_windows, wh * ww], -1 for padding.

    Swin rolls the map by ``-shift``, pads it at the bottom / right to a multiple of the window and cuts windows
    row-major; member ``m`` of window ``w`` is therefore the token that the roll brought there.
    """
    wh, ww = window
    grid = torch.arange(height * width, device=device).view(height, width)
    if any(shift):
        grid = torch.roll(grid, shifts=(-shift[0], -shift[1]), dims=(0, 1))
    hp, wp = -(-height // wh) * wh, -(-width // ww) * ww
    grid = F.pad(grid, (0, wp - width, 0, hp - height), value=-1)
    return grid.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)


def apply_groups(v: torch.Tensor, index: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
    """``v @ A`` for a block-sparse ``A`` given by its groups: [B, N] -> [B, N].

    Args:
        v: Row vectors over the N tokens [B, N].
        index: Token of each group member, -1 for padding [G, n] (:func:`layout_token_index`).
        mats: The group matrices [B, G, n, n]; ``A[index[g, i], index[g, j]] = mats[:, g, i, j]`` (rows: queries,
            columns: keys). Padded members are dropped on both sides.
    """
    valid = (index >= 0).to(v.dtype)
    idx = index.clamp(min=0)
    vq = v[:, idx] * valid  # [B, G, n]
    out = torch.einsum("bgi,bgij->bgj", vq, mats.to(v.dtype)) * valid
    return v.new_zeros(v.shape).index_add_(1, idx.flatten(), out.flatten(1))


def dense_from_groups(index: torch.Tensor, mats: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The dense token-by-token matrix of a group layout: [B, G, n, n] -> [B, N, N] (for tests and small maps)."""
    B = mats.shape[0]
    dense = mats.new_zeros(B, num_tokens + 1, num_tokens + 1)
    idx = torch.where(index >= 0, index, num_tokens)  # padding goes to a spare row / column, then dropped
    rows = idx[:, :, None].expand(-1, -1, idx.shape[1])
    cols = idx[:, None, :].expand(-1, idx.shape[1], -1)
    dense[:, rows, cols] = mats
    return dense[:, :num_tokens, :num_tokens]


@dataclass
class Spread:
    """How a layer's output tokens read its input tokens: convolutions of one stride, each with its share.

    The relevance of an output token is split over the real input tokens each convolution reads, equally, in
    proportion to the convolution's share of the output channels (CrossFormer's cross-scale layers give half the
    channels to the smallest kernel, a quarter to the next, ...). Relevance is conserved (nothing goes to padding).

    Args:
        kernels: ``(kernel, padding, share)`` per convolution.
        stride: The common stride.
    """

    kernels: Sequence[tuple[int, int, float]]
    stride: int

    def __call__(self, v: torch.Tensor, in_size: tuple[int, int]) -> torch.Tensor:
        """[B, h, w] relevance of the output tokens -> [B, H, W] relevance of the input tokens (``in_size``)."""
        B, h, w = v.shape
        H, W = in_size
        out = v.new_zeros(B, 1, H, W)
        for k, pad, share in self.kernels:
            kernel = v.new_ones(1, 1, k, k)
            natural = [(n - 1) * self.stride - 2 * pad + k for n in (h, w)]  # the input the outputs span
            full = [max(a, b) for a, b in zip(in_size, natural)]  # beyond in_size: padding the layer added
            valid = v.new_zeros(1, 1, *full)
            valid[..., :H, :W] = 1
            count = F.conv2d(valid, kernel, stride=self.stride, padding=pad)[..., :h, :w]  # real inputs read
            opad = [f - n for f, n in zip(full, natural)]
            part = F.conv_transpose2d(
                v[:, None] / count.clamp(min=1), kernel, stride=self.stride, padding=pad, output_padding=opad
            )
            out += share * part[..., :H, :W]
        return out[:, 0]


@dataclass
class BlockTrace:
    """One attention block as recorded in a forward pass.

    Args:
        index: Token of each group member in the stage's token list (prefix tokens first), -1 for padding [G, n].
        attn: Attention probabilities [B, G, heads, n, n] (still in the autograd graph while explaining).
        grad: Their gradient with respect to the explained score, same shape (None until taken).
        mix_after: A token mixing without residual that follows the block (CrossFormer++'s Activation Cooling Layer:
            a 3x3 depthwise convolution), as a :class:`Spread`, or None.
        source: The tensor the model computed, when ``attn`` is a reshaped view of it (timm's [B * windows, heads,
            n, n]): gradients must be taken with respect to it.
    """

    index: torch.Tensor
    attn: torch.Tensor
    grad: torch.Tensor | None = None
    mix_after: Spread | None = None
    source: torch.Tensor | None = None

    @property
    def trivial(self) -> bool:
        """Every group holds one token (the attention is the identity)."""
        return self.index.shape[1] == 1


@dataclass
class StageTrace:
    """The blocks of one stage and how the stage's tokens read the previous stage's (or the image's pixels).

    Args:
        size: Token map (H, W) of the stage.
        prefix: Tokens before the map in the token list (ViT's CLS / distillation tokens), 0 for CrossFormer / Swin.
        blocks: The stage's attention blocks in forward order.
        reads: How the stage's first tokens read the previous map (patch merging), or the stem's spread for the first
            stage (the previous map is then the image).
    """

    size: tuple[int, int]
    prefix: int = 0
    blocks: list[BlockTrace] = field(default_factory=list)
    reads: Spread | None = None

    @property
    def num_tokens(self) -> int:
        return self.prefix + self.size[0] * self.size[1]
