"""Image folders in ImageNet layout (``<root>/<split>/<class>/<image>``), robust to the usual bad input.

* images of any mode are converted to RGB (grey, palette, CMYK; RGBA drops alpha; 16-bit grey is scaled to
  8 bits, not clipped);
* unreadable or corrupt files are skipped and counted (:class:`SkippedSample` markers, dropped by
  :func:`collate_skipping`), or raise by choice (``on_error="raise"``);
* a missing split, an empty class folder, and different class sets between splits are explained.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "SkippedSample", "collate_skipping", "load_rgb", "scan_classes"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass(frozen=True)
class SkippedSample:
    """Stands in for a sample whose image could not be read."""

    path: str
    reason: str


def image_paths(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs`` (files, and folders searched recursively for :data:`IMAGE_EXTENSIONS`), in
    order; a file named twice (a folder and a file in it) is listed once. Raises when an input does not exist or no
    image is found (the ``predict`` commands of every task)."""
    paths: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found = [p]
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                paths.append(f)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {[str(i) for i in inputs]}")
    return paths


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open any image as 8-bit RGB (16-bit grey is rescaled, alpha is dropped)."""
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float64)
            top = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
            im = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
        elif im.mode == "F":
            arr = np.asarray(im, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            im = Image.fromarray(((arr - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5).astype(np.uint8), mode="L")
        return im.convert("RGB")


def scan_classes(split_dir: Path) -> list[str]:
    return sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


class ImageFolderDataset(Dataset):
    """``(image, label)`` samples from ``<root>/<split>/<class>/*``.

    Args:
        root: Dataset root holding the split folders.
        split: Split folder name (``train``, ``val``, ...).
        transform: Applied to the RGB PIL image.
        classes: Expected class names (e.g. the training split's); a different set raises ``ValueError``
            listing the differences.
        on_error: ``"skip"`` (warn, count, and return a :class:`SkippedSample`) or ``"raise"``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        transform: Callable[[Image.Image], Any] | None = None,
        classes: Sequence[str] | None = None,
        on_error: str = "skip",
    ):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        root = Path(root)
        split_dir = root / split
        if not split_dir.is_dir():
            present = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
            raise FileNotFoundError(
                f"split folder {split_dir} does not exist (found: {present or 'nothing'}); expected the ImageNet "
                f"layout {root}/<split>/<class>/<image>"
            )
        found = scan_classes(split_dir)
        if not found:
            raise ValueError(f"{split_dir} has no class folders; expected {split_dir}/<class>/<image>")
        if classes is not None and list(classes) != found:
            only_here = sorted(set(found) - set(classes))
            missing = sorted(set(classes) - set(found))
            raise ValueError(
                f"the classes of {split_dir} differ from the training classes: only in {split}: {only_here or 'none'}; "
                f"missing from {split}: {missing or 'none'}. Both splits need the same class folders."
            )
        self.root, self.split, self.transform, self.on_error = root, split, transform, on_error
        self.classes = found
        self.samples: list[tuple[str, int]] = []
        empty = []
        for label, name in enumerate(found):
            files = sorted(
                str(p) for p in (split_dir / name).rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not files:
                empty.append(name)
            self.samples += [(f, label) for f in files]
        if empty:
            warnings.warn(
                f"{split_dir}: {len(empty)} class folder(s) hold no images ({', '.join(empty[:10])}); they are kept as "
                "classes so that labels stay aligned, but nothing of them is seen in this split",
                stacklevel=2,
            )
        if not self.samples:
            raise ValueError(f"{split_dir} holds no images with extensions {IMAGE_EXTENSIONS}")
        self.targets = [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int] | SkippedSample:
        path, label = self.samples[index]
        try:
            image = load_rgb(path)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
            if self.on_error == "raise":
                raise ValueError(f"cannot read image {path}: {err}") from None
            return SkippedSample(path, f"{type(err).__name__}: {err}")
        return (self.transform(image) if self.transform is not None else image), label


def collate_skipping(batch: list) -> dict[str, Any]:
    """Collate ``(image, label)`` samples, dropping :class:`SkippedSample` markers (reported in ``skipped``)."""
    skipped = [s for s in batch if isinstance(s, SkippedSample)]
    kept = [s for s in batch if not isinstance(s, SkippedSample)]
    if kept:
        images, labels = default_collate(kept)
    else:
        images, labels = torch.empty(0), torch.empty(0, dtype=torch.long)
    return {"images": images, "labels": labels, "skipped": [(s.path, s.reason) for s in skipped]}
