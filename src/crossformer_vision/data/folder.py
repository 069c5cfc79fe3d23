"""Image folders in ImageNet layout (``<root>/<split>/<class>/<image>``), robust to the usual bad input.

* images are read by :func:`.images.read_rgb`, the reader of every task: any mode becomes RGB (grey, palette,
  CMYK; RGBA drops alpha; 16-bit grey is scaled to 8 bits, not clipped);
* unreadable or corrupt files and images over Pillow's decompression-bomb limit are skipped and counted
  (:class:`SkippedSample` markers with the file and its own reason, dropped by :func:`collate_skipping`), or raise
  by choice (``on_error="raise"``);
* a missing split, an empty class folder, and different class sets between splits are explained.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from .images import IMAGE_EXTENSIONS, UnreadableImageError, image_paths, read_rgb

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "SkippedSample",
    "collate_skipping",
    "image_paths",
    "load_rgb",
    "read_or_skip",
    "scan_classes",
]


@dataclass(frozen=True)
class SkippedSample:
    """Stands in for a sample whose image could not be read: its file and why (``reason``, of that file)."""

    path: str
    reason: str


#: The reader of every task (:func:`.images.read_rgb`), under its former name.
load_rgb = read_rgb


def read_or_skip(path: str | os.PathLike, transform: Callable | None, on_error: str) -> Any:
    """A dataset's image: ``transform(read_rgb(path))``, or a :class:`SkippedSample` for an unreadable file
    (``on_error="skip"``; ``"raise"``: a one-line ``ValueError``)."""
    try:
        image = read_rgb(path)
    except UnreadableImageError as err:
        if on_error == "raise":
            raise ValueError(f"cannot read image {path}: {err.reason}") from None
        return SkippedSample(str(path), err.reason)
    return transform(image) if transform is not None else image


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
        image = read_or_skip(path, self.transform, self.on_error)
        return image if isinstance(image, SkippedSample) else (image, label)


def collate_skipping(batch: list) -> dict[str, Any]:
    """Collate ``(image, label)`` samples, dropping :class:`SkippedSample` markers (reported in ``skipped``)."""
    skipped = [s for s in batch if isinstance(s, SkippedSample)]
    kept = [s for s in batch if not isinstance(s, SkippedSample)]
    if kept:
        images, labels = default_collate(kept)
    else:
        images, labels = torch.empty(0), torch.empty(0, dtype=torch.long)
    return {"images": images, "labels": labels, "skipped": [(s.path, s.reason) for s in skipped]}
