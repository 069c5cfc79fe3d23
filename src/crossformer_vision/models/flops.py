"""Analytic FLOP counts (one multiply-add = one FLOP, as in the paper and the official code).

Three counts, because they answer different questions:

* ``"official"``: the official ``model.flops()`` method, the basis of the published numbers. It counts every
  group as ``H*W/G^2`` groups of ``G^2`` tokens (padded tokens of padded LDA blocks are ignored), evaluates the
  position-bias MLP on ``G^2`` inputs per group, counts LayerNorms, and ignores the ACL depthwise convs.
* ``"executed"``: the same bookkeeping, but counting what the official code actually computes: padded groups
  (their qkv, attention and projection) and the ACL convs.
* ``"implementation"``: the matmul / conv multiply-adds this package executes per image: qkv and output
  projections on real tokens only, attention over padded groups, the position-bias MLP once per block on its
  ``(2Gh-1)(2Gw-1)`` offsets, no norms. This is what ``torch.utils.flop_counter`` measures (divided by 2).

Attention matmuls are counted analytically, so fused ``scaled_dot_product_attention`` is not missed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from torch import nn

from ..layers import split_channels
from .crossformer import CrossFormer

__all__ = ["PUBLISHED", "FlopCount", "count_flops", "model_facts"]

Method = Literal["official", "executed", "implementation"]


@dataclass(frozen=True)
class FlopCount:
    """Multiply-adds for one image, split by part of the network."""

    embed: float
    attention: float
    mlp: float
    merging: float
    cooling: float
    head: float

    @property
    def total(self) -> float:
        return self.embed + self.attention + self.mlp + self.merging + self.cooling + self.head

    @property
    def gflops(self) -> float:
        return self.total / 1e9


def _dpb(inputs: int, pos_dim: int, heads: int) -> float:
    return inputs * (2 * pos_dim + 2 * pos_dim * pos_dim + pos_dim * heads)


def count_flops(model: CrossFormer, img_size: int | Sequence[int] = 224, method: Method = "official") -> FlopCount:
    """FLOPs of ``model`` on one ``img_size`` image.

    Args:
        model: A :class:`CrossFormer` (or backbone; its head and final norm are counted only if present).
        img_size: Input height and width (an int for square inputs).
        method: ``"official"``, ``"executed"`` or ``"implementation"`` (see the module docstring).
    """
    if method not in ("official", "executed", "implementation"):
        raise ValueError(f"unknown method {method!r}; expected 'official', 'executed' or 'implementation'")
    h_img, w_img = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    norms = method != "implementation"
    stride = model.embed_kernel_sizes[0]
    h, w = h_img // stride, w_img // stride
    d = model.embed_dim
    embed = sum(
        h * w * c * model.in_chans * k * k
        for k, c in zip(model.embed_kernel_sizes, split_channels(d, len(model.embed_kernel_sizes)))
    )
    embed += h * w * d if norms else 0
    attention = mlp = merging = cooling = 0.0
    for s, stage in enumerate(model.layers):
        dim = d * 2**s
        heads = model.num_heads[s]
        pos_dim = dim // 16
        for block in stage.blocks:
            tokens = h * w
            if method == "official":
                g = block.group_size if min(h, w) > block.group_size else min(h, w)
                n = g * g
                per_group = n * dim * 3 * dim + 2 * n * n * dim + n * dim * dim + _dpb(n, pos_dim, heads)
                attention += tokens / n * per_group
            else:
                layout = block.layout(h, w)
                n, groups = layout.group_tokens, layout.num_groups
                gh, gw = layout.group
                if method == "executed":
                    per_group = n * dim * 3 * dim + 2 * n * n * dim + n * dim * dim + _dpb(n, pos_dim, heads)
                    attention += groups * per_group
                else:
                    attention += tokens * 4 * dim * dim + groups * 2 * n * n * dim
                    attention += _dpb((2 * gh - 1) * (2 * gw - 1), pos_dim, heads)
                if block.use_acl:
                    cooling += tokens * dim * 9 + (tokens * dim if norms else 0)
            mlp += 2 * tokens * dim * dim * model.mlp_ratio[s]
            if norms:
                attention += tokens * dim
                mlp += tokens * dim
        if stage.downsample is not None:
            kernels = model.merge_kernel_sizes[s]
            merging += h * w * dim if norms else 0
            merging += sum(
                (h // 2) * (w // 2) * k * k * c * dim for k, c in zip(kernels, split_channels(2 * dim, len(kernels)))
            )
            h, w = h // 2, w // 2
    head = 0.0
    if isinstance(model.head, nn.Linear):
        head += model.num_features * model.head.out_features
    if norms and method == "official" and model.num_classes > 0:
        # the official counter's final-norm term (it divides by 2**num_stages instead of 4**(num_stages-1))
        head += model.num_features * (h_img // stride) * (w_img // stride) // 2 ** len(model.layers)
    return FlopCount(embed, attention, mlp, merging, cooling, head)


#: Published parameters (M) and GFLOPs at 224 (README / paper tables of the official repository).
PUBLISHED: dict[str, tuple[float, float]] = {
    "crossformer_t": (27.8, 2.9),
    "crossformer_s": (30.7, 4.9),
    "crossformer_b": (52.0, 9.2),
    "crossformer_l": (92.0, 16.1),
    "crossformerpp_s": (23.3, 4.9),
    "crossformerpp_b": (52.0, 9.5),
    "crossformerpp_l": (92.0, 16.6),
    "crossformerpp_h": (96.0, 21.8),
}


def model_facts(name: str, img_size: int | Sequence[int] = 224) -> dict[str, float | str]:
    """Parameters and GFLOPs (three counts) of a registered variant, next to the published numbers."""
    import torch

    from .registry import create_model

    with torch.device("meta"):  # shapes only: instant, no memory
        model = create_model(name)
    params = sum(p.numel() for p in model.parameters())
    paper_params, paper_gflops = PUBLISHED[name]
    return {
        "variant": name,
        "params": params,
        "params_M": round(params / 1e6, 2),
        "paper_params_M": paper_params,
        "gflops_official": round(count_flops(model, img_size, "official").gflops, 4),
        "gflops_executed": round(count_flops(model, img_size, "executed").gflops, 4),
        "gflops_implementation": round(count_flops(model, img_size, "implementation").gflops, 4),
        "paper_gflops": paper_gflops,
    }
