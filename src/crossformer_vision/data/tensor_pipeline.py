"""Batched tensor preprocessing for small in-memory image sets (the embedded Fashion-MNIST).

timm's transforms run per sample on PIL images: about a millisecond per 28x28 image here, which on two cores
costs more than the small demo models' own training step. For an in-memory set of small grey images this module
does the same work on whole batches instead:

* each sample draws its crop box with timm's ``RandomResizedCropAndInterpolation.get_params`` and its flip with
  ``torch.rand(1) < p`` as ``RandomHorizontalFlip`` does, in the order of timm's training pipeline, so a sample seeded
  by the trainer's sampler gets the crop and flip it would get from timm's per-image transforms; it is returned as
  the raw ``uint8`` image plus a 2x3 affine matrix;
* the collate function warps every image of the batch by its matrix to the output size in one ``grid_sample``
  (bilinear, edge pixels repeated, as PIL does when it enlarges), repeats the grey channel three times and
  normalises.

Only crops, flips and resizing are supported (that is all the Fashion-MNIST demo uses); RandAugment, colour jitter
and random erasing need timm's per-sample pipeline. The warp enlarges or keeps the size; shrinking would alias
(PIL filters when it shrinks), so the output must be at least as large as the crops it is given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.data.transforms import RandomResizedCropAndInterpolation
from torch.utils.data import Dataset, default_collate

__all__ = ["BatchWarpCollate", "TensorImageDataset", "crop_flip_theta"]


def crop_flip_theta(height: int, width: int, box: tuple[int, int, int, int], flip: bool) -> torch.Tensor:
    """The 2x3 ``affine_grid`` matrix (``align_corners=False``) that maps the output onto ``box`` of the input."""
    top, left, h, w = box
    sx, sy = w / width, h / height
    cx, cy = (2 * left + w) / width - 1, (2 * top + h) / height - 1
    return torch.tensor([[-sx if flip else sx, 0.0, cx], [0.0, sy, cy]], dtype=torch.float32)


class TensorImageDataset(Dataset):
    """``(uint8 image [1, H, W], affine [2, 3]), label`` samples of in-memory grey images.

    Args:
        images: ``[N, H, W]`` uint8 array or tensor.
        targets: ``N`` labels: class indices, or anything ``default_collate`` batches (multi-label target dicts).
        train: Draw a random crop and flip per sample; otherwise the whole image (identity matrix).
        scale, ratio: Random-resized-crop area fraction and aspect-ratio ranges (training).
        hflip: Probability of a horizontal flip (training).
        collate_fn: The collate function its batches need (a :class:`BatchWarpCollate`); the training loop and
            evaluation pick it up from this attribute.
    """

    def __init__(
        self,
        images: np.ndarray | torch.Tensor,
        targets: Sequence[int],
        train: bool,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        collate_fn: BatchWarpCollate | None = None,
    ):
        self.collate_fn = collate_fn
        self.images = torch.as_tensor(images)
        if self.images.ndim != 3 or self.images.dtype != torch.uint8:
            raise ValueError(f"expected [N, H, W] uint8 images, got {self.images.dtype} {tuple(self.images.shape)}")
        if len(targets) != len(self.images):
            raise ValueError(f"{len(self.images)} images but {len(targets)} labels")
        self.targets = list(targets)
        self.train = train
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        self._identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[tuple[torch.Tensor, torch.Tensor], int]:
        image = self.images[index]
        if not self.train:
            return (image, self._identity), self.targets[index]
        box = RandomResizedCropAndInterpolation.get_params(image, self.scale, self.ratio)
        flip = self.hflip > 0 and bool(torch.rand(1) < self.hflip)
        return (image, crop_flip_theta(*image.shape, box, flip)), self.targets[index]


class BatchWarpCollate:
    """Collate :class:`TensorImageDataset` samples into normalised ``[B, 3, S, S]`` float images.

    Returns the trainer's batch dict: ``{"images", "labels", "skipped": []}`` (``labels``: the samples' labels
    through ``default_collate``: a long tensor of class indices, or a dict of stacked tensors).

    Args:
        size: Output ``(height, width)``.
        mean, std: Per-channel normalisation of the 0-1 images (3 values).
    """

    def __init__(self, size: int | Sequence[int], mean: Sequence[float], std: Sequence[float]):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, samples: list) -> dict[str, Any]:
        images = torch.stack([s[0][0] for s in samples]).unsqueeze(1).float().div_(255)
        theta = torch.stack([s[0][1] for s in samples])
        labels = default_collate([s[1] for s in samples])  # class indices -> long [B]; dicts of tensors too
        grid = F.affine_grid(theta, [len(samples), 1, *self.size], align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out = (out - self.mean) / self.std  # [B, 1, S, S] grey -> [B, 3, S, S]
        return {"images": out, "labels": labels, "skipped": []}
