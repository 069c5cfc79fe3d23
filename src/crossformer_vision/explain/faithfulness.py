"""The papers' faithfulness tests of relevance maps, on the embedded data.

* **Positive / negative perturbation** (Chefer et al., CVPR 2021 / ICCV 2021): remove the most (positive) or least
  (negative) relevant pixels in 10 % steps and follow the top-1 accuracy; the area under the accuracy curve should be
  low for positive and high for negative perturbation. Removed pixels take the dataset mean (0 after normalisation);
  the explained class is the predicted one, accuracy is against the true label (the papers' "predicted class"
  setting). Removed pixels take a blank value: the papers use the dataset mean (0 after normalisation), which on
  Fashion-MNIST's black background is a bright grey patch; ``crossformer explain eval`` uses black (the background of
  the embedded data) by default and the mean with ``--fill mean`` (docs/explain.md has both tables).
* **Deletion / insertion** (Petsiuk et al., RISE, 2018): the explained class's softmax probability instead of
  accuracy. Deletion removes the most relevant pixels first (low AUC is good); insertion starts from the blank
  image and inserts the most relevant pixels first (high AUC is good). With the same blank value these are the
  probability curves of the positive and the (reversed) negative perturbation, so they come from the same forward
  passes.
* **Localisation** on scenes with exact boxes (``det_demo`` val): for every class present in a scene, its map;
  *pointing game* (Zhang et al., 2016; no tolerance margin): is the map's maximum inside a box of that class;
  *energy* (Wang et al., Score-CAM, 2020): the share of the map's mass above its minimum that falls inside those
  boxes. ``pointing_top1`` repeats the pointing game on the pairs whose class is the classifier's top-1 on the
  scene: a classifier trained on single items may not rank a scene's classes at all, and a class-specific map of a
  class the model does not see cannot point at it.

**Multi-label models** (:func:`perturbation_curves` with ``topk``): every test runs per (scene, present class) pair
of the multi-label demo scenes, explaining that class. The probability is the class's sigmoid (deletion: most
relevant pixels removed first; insertion: the reversed least-relevant-first curve), and the 0 / 1 "accuracy" of the
positive / negative perturbation is whether the class is still among the scene's ``k`` highest logits, ``k`` the
number of classes present (the multi-label reading of top-1: with one class present it is top-1 against the true
label). ``pointing_topk`` is the pointing game on the pairs whose class is among them on the intact scene.

Ties in a map (flat regions, a constant map) are broken at random (seeded), so a map without information scores like
``random``. AUCs are trapezoids over the removed fraction 0..1, i.e. the mean height of the curve.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["FRACTIONS", "auc", "localisation_scores", "perturbation_curves", "ranking_keys"]

#: Removed fractions of the perturbation tests: 0 %, 10 %, ..., 100 %.
FRACTIONS: tuple[float, ...] = tuple(i / 10 for i in range(11))


def auc(curve: Sequence[float], fractions: Sequence[float] = FRACTIONS) -> float:
    """Trapezoid area under ``curve`` over ``fractions`` (0..1): the curve's mean height."""
    y, x = np.asarray(curve, dtype=np.float64), np.asarray(fractions, dtype=np.float64)
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def ranking_keys(maps: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Sort keys for the pixels of [B, H, W] maps: [B, H*W] float64, the normalised map plus a tie-breaking jitter
    smaller than any gap between distinct float32 values of the map."""
    flat = maps.flatten(1).double()
    lo, hi = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    norm = (flat - lo) / (hi - lo).clamp(min=1e-30)
    return norm + torch.rand(flat.shape, generator=generator, dtype=torch.float64) * 1e-9


@torch.no_grad()
def perturbation_curves(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    targets: torch.Tensor,
    maps: torch.Tensor,
    generator: torch.Generator,
    fractions: Sequence[float] = FRACTIONS,
    fill: float | Sequence[float] = 0.0,
    topk: torch.Tensor | None = None,
) -> dict[str, np.ndarray]:
    """Per-image curves of the perturbation tests.

    Args:
        model: The classifier (eval mode).
        images: Normalised images [B, C, H, W].
        labels: True labels [B] (accuracy; unused with ``topk``).
        targets: Explained classes [B] (probability).
        maps: Relevance maps [B, H, W].
        generator: Tie-breaking randomness.
        fractions: Removed fractions.
        fill: Value of removed pixels in the normalised input, one or one per channel (0: the normalisation mean).
        topk: Multi-label models: long [B], per image the number of labels that count as detected (the scene's
            present classes). The probability is then the explained class's sigmoid and "correct" means that the
            explained class is still among the image's ``topk`` highest logits (with ``topk == 1`` and the true
            label explained, classification's top-1 test). None: a classifier (softmax, argmax against ``labels``).

    Returns:
        ``{"positive_correct", "negative_correct", "positive_prob", "negative_prob"}``, each [B, len(fractions)]
        (correctness as 0 / 1).
    """
    B, _, H, W = images.shape
    order = ranking_keys(maps.cpu(), generator).argsort(dim=1, descending=True).to(images.device)  # most first
    P = H * W
    fill_t = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(1, -1, 1, 1)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("positive_correct", "negative_correct")}
    out.update({"positive_prob": [], "negative_prob": []})
    for mode in ("positive", "negative"):
        for f in fractions:
            k = round(f * P)
            removed = order[:, :k] if mode == "positive" else order[:, P - k :]
            mask = torch.zeros(B, P, dtype=torch.bool, device=images.device).scatter_(1, removed, True)
            x = torch.where(mask.view(B, 1, H, W), fill_t, images)
            logits = model(x).float()
            if topk is None:
                probs = logits.softmax(dim=-1)
                correct = probs.argmax(-1) == labels
            else:  # the explained class's rank among the labels (0: highest) below the number of present classes
                probs = logits.sigmoid()
                rank = (logits > logits.gather(1, targets[:, None])).sum(1)
                correct = rank < topk.to(rank.device)
            out[f"{mode}_correct"].append(correct.float().cpu())
            out[f"{mode}_prob"].append(probs.gather(1, targets[:, None])[:, 0].cpu())
    return {k: torch.stack(v, dim=1).numpy() for k, v in out.items()}


def localisation_scores(
    maps: torch.Tensor, boxes: Sequence[torch.Tensor], generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pointing game hits and energy shares of [B, H, W] maps against boxes ([K, 4] x1 y1 x2 y2 pixels per map).

    Returns:
        ``(hits [B] 0/1, energy [B] in [0, 1])``.
    """
    B, H, W = maps.shape
    keys = ranking_keys(maps.cpu(), generator)
    top = keys.argmax(dim=1)
    hits, energy = np.zeros(B), np.zeros(B)
    for i in range(B):
        inside = torch.zeros(H, W, dtype=torch.bool)
        for x1, y1, x2, y2 in boxes[i].tolist():
            inside[int(y1) : int(np.ceil(y2)), int(x1) : int(np.ceil(x2))] = True
        y, x = divmod(int(top[i]), W)
        hits[i] = float(inside[y, x])
        m = maps[i].cpu().double()
        m = m - m.min()
        total = float(m.sum())
        energy[i] = float(m[inside].sum()) / total if total > 0 else float(inside.float().mean())
    return hits, energy


def summarise(per_image: dict[str, np.ndarray], fractions: Sequence[float] = FRACTIONS) -> dict[str, Any]:
    """Mean curves and their AUCs from the concatenated per-image curves of :func:`perturbation_curves`."""
    curves = {k: v.mean(axis=0) for k, v in per_image.items()}
    return {
        "positive_auc": auc(curves["positive_correct"], fractions),
        "negative_auc": auc(curves["negative_correct"], fractions),
        "deletion_auc": auc(curves["positive_prob"], fractions),
        "insertion_auc": auc(curves["negative_prob"][::-1], fractions),
        "curves": {k: [round(float(x), 5) for x in v] for k, v in curves.items()},
    }


ExplainFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
