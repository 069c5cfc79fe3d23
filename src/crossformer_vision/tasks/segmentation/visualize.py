"""Overlay pictures of predictions next to the ground truth (PIL only)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

__all__ = ["colorize", "make_palette", "save_overlays", "to_uint8_image"]

IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)


def make_palette(num_classes: int, seed: int = 0) -> np.ndarray:
    """``[K, 3]`` uint8 distinct-ish colours (deterministic; first colours are well separated hues)."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(num_classes) * 0.618033988749895) % 1.0
    sat = 0.55 + 0.4 * rng.random(num_classes)
    val = 0.75 + 0.25 * rng.random(num_classes)
    i = np.floor(hues * 6).astype(int) % 6
    f = hues * 6 - np.floor(hues * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    table = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)]
    rgb = np.stack([np.choose(i, [row[c] for row in table]) for c in range(3)], axis=1)
    return (rgb * 255).round().astype(np.uint8)


def to_uint8_image(
    image: torch.Tensor | np.ndarray,
    mean: Sequence[float] | None = IMAGENET_MEAN_255,
    std: Sequence[float] | None = IMAGENET_STD_255,
) -> np.ndarray:
    """An image as ``[H, W, 3]`` uint8.

    Accepts ``[3, H, W]`` tensors (normalised with ``mean`` / ``std`` in 0-255 scale, as the datasets produce; pass
    ``mean=None`` for un-normalised 0-255 or 0-1 tensors) and ``[H, W, 3]`` / ``[H, W]`` arrays.
    """
    if isinstance(image, torch.Tensor):
        x = image.detach().float().cpu()
        if x.dim() != 3:
            raise ValueError(f"expected a [3, H, W] image tensor, got shape {tuple(x.shape)}")
        if mean is not None and std is not None:
            x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
        elif x.max() <= 1.0:
            x = x * 255
        array = x.permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = np.clip(array * (255 if array.max() <= 1.0 else 1), 0, 255).round().astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"cannot interpret an image of shape {array.shape}")
    return array


def _numpy(labels: torch.Tensor | np.ndarray) -> np.ndarray:
    return labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)


def colorize(labels: torch.Tensor | np.ndarray, palette: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """``[H, W]`` labels -> ``[H, W, 3]`` uint8 colours; ``ignore_index`` and out-of-range labels are black."""
    labels = _numpy(labels)
    palette = np.asarray(palette, dtype=np.uint8)
    out = np.zeros((*labels.shape, 3), dtype=np.uint8)
    valid = (labels >= 0) & (labels < len(palette)) & (labels != ignore_index)
    out[valid] = palette[labels[valid]]
    return out


def save_overlays(
    images: torch.Tensor | Sequence,
    preds: torch.Tensor | Sequence,
    gts: torch.Tensor | Sequence | None,
    path: str | os.PathLike,
    palette: Sequence[Sequence[int]] | np.ndarray | None = None,
    *,
    alpha: float = 0.5,
    ignore_index: int = 255,
    mean: Sequence[float] | None = IMAGENET_MEAN_255,
    std: Sequence[float] | None = IMAGENET_STD_255,
    max_images: int = 16,
) -> Path:
    """Write one PNG: a row per image with the image, the ground-truth overlay and the prediction overlay.

    Args:
        images: ``[B, 3, H, W]`` tensor (normalised as the datasets give it, see ``mean`` / ``std``) or a sequence
            of images (tensors or ``[H, W, 3]`` arrays).
        preds: ``[B, H, W]`` predicted labels (resized to the image size if they differ).
        gts: ``[B, H, W]`` ground-truth labels, or None to show predictions only.
        path: Output ``.png`` file (parent directories are created).
        palette: ``[K, 3]`` colours; default :func:`make_palette` for the largest label.
        alpha: Opacity of the label colours; ignored pixels stay uncoloured.
        ignore_index: Label drawn without colour.
        mean: Normalisation mean (0-255 scale) to undo; None for un-normalised images.
        std: Normalisation std to undo.
        max_images: Draw at most this many rows.

    Returns:
        The written path.
    """
    n = min(len(images), len(preds), max_images)
    if n == 0:
        raise ValueError("save_overlays needs at least one image")
    if gts is not None and len(gts) < n:
        raise ValueError(f"{len(gts)} ground-truth maps for {n} images")
    if palette is None:
        top = 0
        for labels in [preds[i] for i in range(n)] + ([gts[i] for i in range(n)] if gts is not None else []):
            labels = _numpy(labels)
            valid = labels[labels != ignore_index]
            top = max(top, int(valid.max()) if valid.size else 0)
        palette = make_palette(top + 1)
    palette = np.asarray(palette, dtype=np.uint8)
    rows = []
    for i in range(n):
        image = to_uint8_image(images[i], mean, std)
        h, w = image.shape[:2]
        panels = [image]
        for labels in ([gts[i]] if gts is not None else []) + [preds[i]]:
            labels = _numpy(labels)
            if labels.shape != (h, w):
                labels = np.asarray(Image.fromarray(labels.astype(np.uint8)).resize((w, h), Image.NEAREST))
            colours = colorize(labels, palette, ignore_index).astype(np.float32)
            mask = ((labels != ignore_index) & (labels >= 0) & (labels < len(palette)))[..., None]
            blended = np.where(mask, (1 - alpha) * image + alpha * colours, image)
            panels.append(blended.round().astype(np.uint8))
        rows.append(np.concatenate([np.pad(p, ((2, 2), (2, 2), (0, 0)), constant_values=255) for p in panels], 1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, 0)).save(path)
    return path
