"""Build the embedded detection / instance-segmentation demo set in ``data/det_demo/`` (COCO format).

No real detection set ships with the repository, so this composes scenes from the embedded Fashion-MNIST items
(``data/fashion_mnist/``, MIT, Zalando SE): every canvas is a dark background with 2-5 items, each resized to a
random size and placed at a random position, painted in order (later items on top). The labels are exact by
construction:

* an item's mask is the set of its resized pixels with value >= ``MASK_THRESHOLD`` (its non-zero pixels, without
  the faint halo of the bilinear resize), and exactly those pixels are painted;
* an object's ground-truth mask is its mask minus the pixels of the items painted later (occlusion order), its box
  the tight box of those visible pixels, its area their count;
* a placement is accepted only if every earlier object keeps at least ``MIN_VISIBLE`` of its pixels.

Train canvases use items of the embedded training subset, validation canvases items of the test set, so no item is
in both. Every canvas draws from its own generator ``numpy.random.default_rng([seed, split, index])``, so the first
``n`` canvases do not depend on how many are built.

Usage (from the repository root)::

    python scripts/build_det_demo_data.py            # --train 400 --val 100 --size 128 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from crossformer_vision.data.fashion_mnist import CLASS_NAMES, FashionMNIST

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "data" / "det_demo"
MASK_THRESHOLD = 32  # of 255, on the resized item
MIN_VISIBLE = 0.7  # fraction of an object's pixels that must stay visible
MIN_SIDE, MAX_SIDE = 24, 64  # item width in pixels (height: width x 0.8..1.25)
MIN_OBJECTS, MAX_OBJECTS = 2, 5
PLACEMENT_TRIES = 30
SPLITS = {"train": ("train", 0), "val": ("test", 1)}  # our split -> (Fashion-MNIST split, rng stream id)


def compose_canvas(items: np.ndarray, labels: np.ndarray, rng: np.random.Generator, size: int) -> tuple:
    """One canvas: ``(image [size, size] uint8, objects)`` with ``objects = [(label, visible mask [size, size])]``."""
    base = rng.uniform(0, 40)
    ramp = rng.uniform(-12, 12) * np.linspace(-1, 1, size)
    background = base + (ramp[:, None] if rng.random() < 0.5 else ramp[None, :])
    canvas = np.clip(np.broadcast_to(background, (size, size)), 0, 255)  # a new float array
    owner = np.full((size, size), -1, dtype=np.int64)  # which object each pixel shows
    masks: list[np.ndarray] = []
    object_labels: list[int] = []
    for _ in range(int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))):
        index = int(rng.integers(len(items)))
        width = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
        height = int(np.clip(round(width * rng.uniform(0.8, 1.25)), MIN_SIDE, size))
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


def annotation(mask: np.ndarray, label: int, ann_id: int, image_id: int) -> dict:
    """COCO annotation of a visible mask: tight box, pixel area, compressed RLE."""
    ys, xs = np.nonzero(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": label + 1,
        "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)],
        "area": float(mask.sum()),
        "iscrowd": 0,
        "segmentation": {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")},
    }


def build_split(split: str, count: int, size: int, seed: int, out: Path) -> dict:
    """Write ``out/<split>/*.png``; return the COCO dict."""
    source, stream = SPLITS[split]
    fmnist = FashionMNIST(split=source)
    items, labels = fmnist.data, np.asarray(fmnist.targets)
    (out / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        rng = np.random.default_rng([seed, stream, index])
        image, objects = compose_canvas(items, labels, rng, size)
        image_id = index + 1
        file_name = f"{image_id:06d}.png"
        Image.fromarray(np.repeat(image[:, :, None], 3, axis=2)).save(out / split / file_name, optimize=True)
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size, "license": 1})
        for label, mask in objects:
            annotations.append(annotation(mask, label, len(annotations) + 1, image_id))
    return {
        "info": {
            "description": f"det_demo {split}: synthetic scenes of Fashion-MNIST items (build_det_demo_data.py)",
            "version": "1.0",
            "contributor": "crossformer-vision",
        },
        "licenses": [
            {
                "id": 1,
                "name": "MIT (Fashion-MNIST, Zalando SE)",
                "url": "https://github.com/zalandoresearch/fashion-mnist",
            }
        ],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": name, "supercategory": "fashion"} for i, name in enumerate(CLASS_NAMES)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=int, default=400, help="training canvases")
    parser.add_argument("--val", type=int, default=100, help="validation canvases")
    parser.add_argument("--size", type=int, default=128, help="canvas side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if args.size < MAX_SIDE:
        parser.error(f"--size must be at least {MAX_SIDE} (the largest item)")
    for split in SPLITS:
        shutil.rmtree(args.out / split, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", args.train), ("val", args.val)):
        coco = build_split(split, count, args.size, args.seed, args.out)
        path = args.out / f"instances_{split}.json"
        path.write_text(json.dumps(coco, separators=(",", ":")) + "\n")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} objects -> {path} (sha256 {digest})")


if __name__ == "__main__":
    main()
