"""Synthetic scenes of embedded Fashion-MNIST items: the one scene builder of the detection and multi-label demos.

Every canvas is a dark background (a random level plus a horizontal or vertical ramp) with ``objects`` items (2-5
by default), each resized to a random width in ``side`` (height: width x 0.8..1.25), placed at a random position and
painted in order (later items on top). The labels are exact by construction:

* an item's mask is the set of its resized pixels with value >= :data:`MASK_THRESHOLD` (its non-zero pixels, without
  the faint halo of the bilinear resize), and exactly those pixels are painted;
* an object's visible mask is its mask minus the pixels of the items painted later (occlusion order); its box is the
  tight box of those visible pixels;
* a placement is accepted only if every earlier object keeps at least :data:`MIN_VISIBLE` of its pixels.

Train scenes use items of the embedded Fashion-MNIST training subset, validation scenes items of its test set, so no
item is in both. Scene ``i`` of a split draws from its own generator ``numpy.random.default_rng([seed, stream, i])``,
so the first ``n`` scenes do not depend on how many are built. ``scripts/build_det_demo_data.py`` writes the
detection demo set (``data/det_demo``) from :func:`iter_scenes`; the multi-label demo
(:mod:`crossformer_vision.data.multilabel`) builds its scenes from the same function with smaller items.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from PIL import Image

__all__ = [
    "MASK_THRESHOLD",
    "MAX_OBJECTS",
    "MAX_SIDE",
    "MIN_OBJECTS",
    "MIN_SIDE",
    "MIN_VISIBLE",
    "SPLITS",
    "compose_canvas",
    "iter_scenes",
    "tight_box",
]

MASK_THRESHOLD = 32  # of 255, on the resized item
MIN_VISIBLE = 0.7  # fraction of an object's pixels that must stay visible
MIN_SIDE, MAX_SIDE = 24, 64  # item width in pixels (height: width x 0.8..1.25), the detection demo's
MIN_OBJECTS, MAX_OBJECTS = 2, 5
PLACEMENT_TRIES = 30
SPLITS = {"train": ("train", 0), "val": ("test", 1)}  # our split -> (Fashion-MNIST split, rng stream id)


def compose_canvas(
    items: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    size: int,
    *,
    side: tuple[int, int] = (MIN_SIDE, MAX_SIDE),
    objects: tuple[int, int] = (MIN_OBJECTS, MAX_OBJECTS),
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One canvas: ``(image [size, size] uint8, objects)`` with ``objects = [(label, visible mask [size, size])]``.

    Args:
        items: ``[N, h, w]`` uint8 item images; labels: their ``N`` class indices.
        rng: The canvas's own generator (its draws fix the canvas).
        side: Smallest and largest item width in pixels (at most ``size``).
        objects: Fewest and most items tried; an item that cannot be placed (or is almost empty) is left out, so a
            canvas can hold fewer than ``objects[0]``.
    """
    min_side, max_side = side
    if not 1 <= min_side <= max_side <= size:
        raise ValueError(f"item sides {side} must lie within 1..{size} (the canvas)")
    base = rng.uniform(0, 40)
    ramp = rng.uniform(-12, 12) * np.linspace(-1, 1, size)
    background = base + (ramp[:, None] if rng.random() < 0.5 else ramp[None, :])
    canvas = np.clip(np.broadcast_to(background, (size, size)), 0, 255)  # a new float array
    owner = np.full((size, size), -1, dtype=np.int64)  # which object each pixel shows
    masks: list[np.ndarray] = []
    object_labels: list[int] = []
    for _ in range(int(rng.integers(objects[0], objects[1] + 1))):
        index = int(rng.integers(len(items)))
        width = int(rng.integers(min_side, max_side + 1))
        height = int(np.clip(round(width * rng.uniform(0.8, 1.25)), min_side, size))
        resized = np.asarray(Image.fromarray(items[index]).resize((width, height), Image.BILINEAR), dtype=np.float64)
        brightness = rng.uniform(0.6, 1.0)
        if (resized >= MASK_THRESHOLD).sum() < 16:
            continue  # an almost empty item (very dark article)
        for _ in range(PLACEMENT_TRIES):
            y, x = int(rng.integers(0, size - height + 1)), int(rng.integers(0, size - width + 1))
            mask = np.zeros((size, size), dtype=bool)
            mask[y : y + height, x : x + width] = resized >= MASK_THRESHOLD
            trial = owner.copy()
            trial[mask] = len(masks)
            if all((trial == j).sum() >= MIN_VISIBLE * m.sum() for j, m in enumerate(masks)):
                break
        else:
            continue  # no placement keeps the others visible enough: leave this item out
        patch = canvas[y : y + height, x : x + width]
        value = patch + (resized / 255.0) * (255.0 - patch) * brightness
        inside = mask[y : y + height, x : x + width]
        patch[inside] = value[inside]
        owner = trial
        masks.append(mask)
        object_labels.append(int(labels[index]))
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return image, [(label, owner == j) for j, label in enumerate(object_labels)]


def tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """``(x, y, width, height)`` in pixels of the smallest box holding every pixel of a non-empty mask."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)


def iter_scenes(
    items: np.ndarray, labels: np.ndarray, split: str, count: int, size: int, seed: int, **canvas: tuple[int, int]
) -> Iterator[tuple[np.ndarray, list[tuple[int, np.ndarray]]]]:
    """The ``count`` canvases of ``split`` (``"train"`` / ``"val"``, :data:`SPLITS`), each from its own generator;
    ``canvas`` passes ``side`` / ``objects`` to :func:`compose_canvas`."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    stream = SPLITS[split][1]
    for index in range(count):
        yield compose_canvas(items, labels, np.random.default_rng([seed, stream, index]), size, **canvas)
