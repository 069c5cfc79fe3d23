"""Cross-scale embedding (the stem) and cross-scale patch merging (between stages)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CrossScaleEmbedding", "CrossScalePatchMerging", "cross_scale_convs", "split_channels"]


def split_channels(total: int, num_kernels: int) -> list[int]:
    """Output channels of each kernel in a cross-scale layer.

    Small kernels get the most channels: ``total/2, total/4, ...`` and the largest kernel repeats the
    previous share, so the shares add up to ``total`` (e.g. 96 over 4 kernels -> 48, 24, 12, 12).
    """
    if num_kernels < 1:
        raise ValueError(f"a cross-scale layer needs at least one kernel, got {num_kernels}")
    dims = [total // 2 ** (i + 1) for i in range(num_kernels - 1)] + [total // 2 ** (num_kernels - 1)]
    if sum(dims) != total or min(dims) < 1:
        raise ValueError(
            f"{total} channels cannot be split over {num_kernels} kernels as total/2, total/4, ...; "
            f"choose a width divisible by {2 ** (num_kernels - 1)}"
        )
    return dims


def cross_scale_convs(in_chans: int, out_chans: int, kernel_sizes: Sequence[int], stride: int) -> nn.ModuleList:
    """Convolutions with different kernels and one stride; every kernel gives floor(H / stride) outputs."""
    for k in kernel_sizes:
        if k < stride or (k - stride) % 2:
            raise ValueError(
                f"kernel {k} with stride {stride}: kernels must be >= stride and differ from it by an even number"
            )
    return nn.ModuleList(
        nn.Conv2d(in_chans, dim, kernel_size=k, stride=stride, padding=(k - stride) // 2)
        for k, dim in zip(kernel_sizes, split_channels(out_chans, len(kernel_sizes)))
    )


def _unshuffled_conv(
    x: torch.Tensor, conv: nn.Conv2d, blocks: torch.Tensor, shift: int, out_hw: tuple[int, int]
) -> torch.Tensor:
    s = conv.stride[0]
    k = conv.kernel_size[0]
    kb, left = k // s, (conv.padding[0] - shift) // s
    w = conv.weight
    # [O, C, kb*s, kb*s] -> [O, C*s*s, kb, kb] in pixel_unshuffle's channel order (c, dy, dx)
    w = w.reshape(w.shape[0], w.shape[1], kb, s, kb, s).permute(0, 1, 3, 5, 2, 4).reshape(w.shape[0], -1, kb, kb)
    y = F.conv2d(F.pad(blocks, (left, 0, left, 0)), w, conv.bias)
    return y[:, :, : out_hw[0], : out_hw[1]]


def _concat(convs: nn.ModuleList, x: torch.Tensor, unshuffle: bool = False) -> torch.Tensor:
    """[B, C_in, H, W] -> [B, H', W', C_out]: the convolutions' outputs concatenated along channels.

    ``unshuffle`` computes the same convolutions as stride-1 convolutions on ``pixel_unshuffle``-d blocks
    (a kernel k at stride s becomes a kernel k/s over s*s times the channels). The sums are the same, only
    their order differs; oneDNN's weight gradients of large strided kernels are several times faster this way.
    """
    if not unshuffle:
        # channels-last convolutions: the concatenated output is then already a contiguous [B, H', W', C] map
        x = x.contiguous(memory_format=torch.channels_last)
        return torch.cat([conv(x) for conv in convs], dim=1).permute(0, 2, 3, 1).contiguous()
    s = convs[0].stride[0]
    h, w = x.shape[-2] // s, x.shape[-1] // s
    blocks: dict[int, torch.Tensor] = {}
    outs = []
    for conv in convs:
        shift = conv.padding[0] % s
        if shift not in blocks:
            kb_max = max(
                c.kernel_size[0] // s - (c.padding[0] - shift) // s for c in convs if c.padding[0] % s == shift
            )
            # pad (or crop) so that the blocks start at the windows' first pixel and cover the last window
            hp, wp = s * (h + kb_max - 1), s * (w + kb_max - 1)
            padded = F.pad(x, (shift, wp - x.shape[-1] - shift, shift, hp - x.shape[-2] - shift))
            blocks[shift] = F.pixel_unshuffle(padded, s)
        outs.append(_unshuffled_conv(x, conv, blocks[shift], shift, (h, w)))
    # contiguous tokens: every Linear / LayerNorm of the following blocks would otherwise copy its input
    return torch.cat(outs, dim=1).permute(0, 2, 3, 1).contiguous()


def _use_unshuffle(convs: nn.ModuleList, mode: str) -> bool:
    if mode == "direct":
        return False
    if mode == "unshuffle":
        return True
    # "auto": the unshuffled form when weight gradients are computed (training) for kernels of 4+ times the stride
    # (the stem); the merges' 2x stride kernels run faster directly (benchmarks/conv_impl.py; docs/benchmarks.md)
    # (a torch.fx trace, whose weights are Proxies, records the direct form)
    stride, largest = convs[0].stride[0], max(c.kernel_size[0] for c in convs)
    weight = convs[0].weight
    return (
        largest >= 4 * stride
        and torch.is_grad_enabled()
        and not isinstance(weight, torch.fx.Proxy)
        and weight.requires_grad
        and not torch.jit.is_scripting()
    )


class CrossScaleEmbedding(nn.Module):
    """Cross-scale Embedding Layer (CEL): the image is sampled by kernels 4, 8, 16, 32 at stride 4.

    Args:
        in_chans: Image channels.
        embed_dim: Output channels D (split over the kernels by :func:`split_channels`).
        kernel_sizes: Kernel sizes, smallest first; the first one is also the stride.
        norm_layer: Norm applied to the concatenated tokens, or ``None``.
    """

    def __init__(
        self,
        in_chans: int = 3,
        embed_dim: int = 96,
        kernel_sizes: Sequence[int] = (4, 8, 16, 32),
        norm_layer: Callable[[int], nn.Module] | None = nn.LayerNorm,
    ):
        super().__init__()
        self.projs = cross_scale_convs(in_chans, embed_dim, kernel_sizes, stride=kernel_sizes[0])
        self.conv_impl = "auto"
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] image -> [B, H/4, W/4, D] tokens."""
        if torch.jit.is_scripting():  # the direct convolutions (TorchScript cannot compile _concat)
            return self.norm(torch.cat([conv(x) for conv in self.projs], dim=1).permute(0, 2, 3, 1))
        return self.norm(_concat(self.projs, x, _use_unshuffle(self.projs, self.conv_impl)))


class CrossScalePatchMerging(nn.Module):
    """Cross-scale patch merging: LayerNorm, then kernels 2 and 4 at stride 2, concatenated.

    Args:
        dim: Input channels C.
        out_dim: Output channels (2C in every official model).
        kernel_sizes: Kernel sizes, smallest first; the first one is also the stride.
        norm_layer: Norm applied before the convolutions.
    """

    def __init__(
        self,
        dim: int,
        out_dim: int | None = None,
        kernel_sizes: Sequence[int] = (2, 4),
        norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
    ):
        super().__init__()
        self.reductions = cross_scale_convs(dim, out_dim or 2 * dim, kernel_sizes, stride=kernel_sizes[0])
        self.conv_impl = "auto"
        self.norm = norm_layer(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, C] -> [B, H/2, W/2, 2C] (floor division for odd sizes)."""
        if torch.jit.is_scripting():  # the direct convolutions (TorchScript cannot compile _concat)
            x = self.norm(x).permute(0, 3, 1, 2)
            return torch.cat([conv(x) for conv in self.reductions], dim=1).permute(0, 2, 3, 1).contiguous()
        return _concat(
            self.reductions, self.norm(x).permute(0, 3, 1, 2), _use_unshuffle(self.reductions, self.conv_impl)
        )
