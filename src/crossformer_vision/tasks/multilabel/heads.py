"""Multi-label heads on a final feature map: class-specific residual attention (CSRA) and plain average pooling.

CSRA (Zhu & Wu, "Residual Attention: A Simple but Effective Method for Multi-Label Recognition", ICCV 2021), as the
official code computes it (``pipeline/csra.py`` of Kevinz-code/CSRA): for a feature map ``x [B, C, H, W]`` and class
``i`` with 1x1 classifier weight ``m_i`` (no bias),

* ``s_ij = m_i . x_j / ||m_i||``: the class score of position ``j`` (the weight's norm divides it, as the official
  code does; the paper's figure omits it);
* ``base_i = mean_j s_ij`` (average pooling) and ``att_i = sum_j softmax_j(T s_ij) s_ij`` (class-specific attention
  pooling at temperature ``T``; ``T = inf`` gives ``max_j s_ij``);
* ``logit_i = base_i + lambda * att_i``.

With several heads, each has its own classifier and temperature and their logits are summed. The temperatures are
the official ones per number of heads (:data:`TEMPERATURES`, ``inf`` where the official code writes 99). The plain
head (:class:`AvgPoolHead`) is global average pooling and a linear layer with bias, the usual classifier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["TEMPERATURES", "AvgPoolHead", "CSRAHead", "csra_logits", "to_nchw"]

#: Softmax temperatures per number of heads (the official ``MHA.temp_settings``; 99 there means max pooling).
TEMPERATURES: dict[int, tuple[float, ...]] = {
    1: (1.0,),
    2: (1.0, math.inf),
    4: (1.0, 2.0, 4.0, math.inf),
    6: (1.0, 2.0, 3.0, 4.0, 5.0, math.inf),
    8: (1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, math.inf),
}


def csra_logits(scores: torch.Tensor, temperature: float, lam: float) -> torch.Tensor:
    """Scores ``s [B, K, N]`` -> ``mean_j s + lam * sum_j softmax_j(T s) s`` ``[B, K]`` (``max_j s`` for T = inf)."""
    base = scores.mean(dim=2)
    if math.isinf(temperature):
        att = scores.amax(dim=2)
    else:
        att = (scores * torch.softmax(scores * temperature, dim=2)).sum(dim=2)
    return base + lam * att


def to_nchw(features: torch.Tensor, layout: str, prefix_tokens: int = 0, grid: Sequence[int] | None = None):
    """A backbone's final features as a ``[B, C, H, W]`` map.

    Args:
        features: ``[B, C, H, W]`` (``layout="NCHW"``: ResNet), ``[B, H, W, C]`` (``"NHWC"``: CrossFormer, Swin) or
            ``[B, prefix + H*W, C]`` tokens (``"NLC"``: ViT / DeiT).
        prefix_tokens: Class / distillation / register tokens in front of the patch tokens (dropped).
        grid: ``(H, W)`` of the patch tokens; None: a square grid.
    """
    if layout == "NCHW":
        return features
    if layout == "NHWC":
        return features.permute(0, 3, 1, 2)
    if layout != "NLC":
        raise ValueError(f"unknown feature layout {layout!r}")
    tokens = features[:, prefix_tokens:]
    b, n, c = tokens.shape
    if grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patch tokens do not form a square grid; pass the grid")
        grid = (side, side)
    h, w = grid
    if h * w != n:
        raise ValueError(f"{n} patch tokens do not fill a {h} x {w} grid")
    return tokens.transpose(1, 2).reshape(b, c, h, w)


class CSRAHead(nn.Module):
    """Class-specific residual attention with ``num_heads`` temperatures (:data:`TEMPERATURES`), logits summed.

    Args:
        in_features: Channels ``C`` of the feature map.
        num_classes: Classes ``K``.
        num_heads: 1, 2, 4, 6 or 8 (the official temperature sets).
        lam: ``lambda``, the weight of the attention logit (paper: 0.1 for VOC, 0.5 for COCO with 4 heads, 0.3 for
            WIDER with ViT).
        drop_rate: Dropout on the feature map before the classifiers (0: none, as in the paper).
    """

    def __init__(self, in_features: int, num_classes: int, num_heads: int = 1, lam: float = 0.1, drop_rate=0.0):
        super().__init__()
        if num_heads not in TEMPERATURES:
            raise ValueError(f"CSRA takes {sorted(TEMPERATURES)} heads (the paper's temperature sets), got {num_heads}")
        self.in_features, self.num_classes, self.num_heads, self.lam = in_features, num_classes, num_heads, float(lam)
        self.temperatures = TEMPERATURES[num_heads]
        self.drop = nn.Dropout(drop_rate) if drop_rate else nn.Identity()
        self.classifiers = nn.ModuleList(
            nn.Conv2d(in_features, num_classes, 1, bias=False) for _ in range(num_heads)
        )  # one 1x1 classifier per head

    def class_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position class scores ``s [heads, B, K, H, W]`` of a ``[B, C, H, W]`` map (weight-norm divided)."""
        x = self.drop(x)
        out = []
        for conv in self.classifiers:
            norm = conv.weight.flatten(1).norm(dim=1).clamp_min(1e-12)  # [K]
            out.append(conv(x) / norm[None, :, None, None])
        return torch.stack(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W]`` -> logits ``[B, K]``."""
        scores = self.class_scores(x).flatten(3)  # [heads, B, K, H*W]
        return sum(csra_logits(s, t, self.lam) for s, t in zip(scores, self.temperatures))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Class maps ``[B, K, H, W]`` for pictures: the first head's per-position scores (the map its attention
        pooling weights; the official ``utils/visualize.py`` draws this score map)."""
        return self.class_scores(x)[0]

    def token_logit_shares(self, x: torch.Tensor) -> torch.Tensor:
        """Each position's share of every class logit, ``[B, C, H, W]`` -> ``[B, K, H, W]``; summed over the
        positions it is the logits exactly (CSRA has no bias).

        Per head, ``logit_i = sum_j s_ij (1/N + lambda a_ij)`` with ``a_ij = softmax_j(T s_ij)`` (one-hot at the
        argmax for T = inf), so position ``j``'s share is ``sum_heads s_ij (1/N + lambda a_ij)``: the attention
        weights ``a_ij`` are read as pooling weights, as the average pool's ``1/N`` is. ``explain``'s
        ``relevance_head`` seeds its propagation with it.
        """
        scores = self.class_scores(x)  # [heads, B, K, H, W]
        flat = scores.flatten(3)  # [heads, B, K, N]
        n = flat.shape[-1]
        shares = torch.zeros_like(flat[0])
        for s, t in zip(flat, self.temperatures):
            if math.isinf(t):
                att = torch.nn.functional.one_hot(s.argmax(dim=2), n).to(s.dtype)
            else:
                att = torch.softmax(s * t, dim=2)
            shares = shares + s * (1.0 / n + self.lam * att)
        return shares.view(scores.shape[1:])


class AvgPoolHead(nn.Module):
    """Global average pooling and a linear classifier with bias: ``[B, C, H, W]`` -> ``[B, K]``."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.in_features, self.num_classes = in_features, num_classes
        self.drop = nn.Dropout(drop_rate) if drop_rate else nn.Identity()
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(x.mean(dim=(2, 3))))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``[B, K, H, W]`` (the linear layer applied at every position, CAM)."""
        return torch.einsum("bchw,kc->bkhw", x, self.fc.weight) + self.fc.bias[None, :, None, None]

    def token_logit_shares(self, x: torch.Tensor) -> torch.Tensor:
        """Each position's share of every class logit, ``[B, C, H, W]`` -> ``[B, K, H, W]``: ``w_k . x_j / N``
        (``N = H W``); summed over the positions it is the logits minus the bias (dropout off, as in eval).
        ``explain``'s ``relevance_head`` seeds its propagation with it."""
        x = self.drop(x)
        return torch.einsum("bchw,kc->bkhw", x, self.fc.weight) / (x.shape[2] * x.shape[3])
