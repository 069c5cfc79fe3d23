"""Build the embedded detection / instance-segmentation demo set in ``data/det_demo/`` (COCO format).

No real detection set ships with the repository, so this composes scenes from the embedded Fashion-MNIST items
(``data/fashion_mnist/``, MIT, Zalando SE) with :mod:`crossformer_vision.data.scenes` (2-5 items per canvas, exact
masks by construction; see there): an object's ground-truth mask is its visible mask, its box the tight box of those
pixels, its area their count.

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
from crossformer_vision.data.scenes import MAX_SIDE, SPLITS, iter_scenes, tight_box

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "data" / "det_demo"


def annotation(mask: np.ndarray, label: int, ann_id: int, image_id: int) -> dict:
    """COCO annotation of a visible mask: tight box, pixel area, compressed RLE."""
    x, y, w, h = tight_box(mask)
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": label + 1,
        "bbox": [float(x), float(y), float(w), float(h)],
        "area": float(mask.sum()),
        "iscrowd": 0,
        "segmentation": {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle["counts"].decode("ascii")},
    }


def build_split(split: str, count: int, size: int, seed: int, out: Path) -> dict:
    """Write ``out/<split>/*.png``; return the COCO dict."""
    fmnist = FashionMNIST(split=SPLITS[split][0])
    items, labels = fmnist.data, np.asarray(fmnist.targets)
    (out / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index, (image, objects) in enumerate(iter_scenes(items, labels, split, count, size, seed)):
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
