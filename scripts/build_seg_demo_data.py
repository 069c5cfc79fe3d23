"""Build the embedded segmentation demo set in ``data/seg_demo/``: a synthetic layout of real pixels.

No real multi-class segmentation set installs on this machine, so this composes one from real photographs and
textures bundled with scikit-image, all CC0 or public domain (each licence is quoted from
``skimage/data/_fetchers.py`` into ``data/seg_demo/LICENSE``). Every image is a layout of regions (a background plus
random ellipses / polygons, or a Voronoi tessellation), each region filled with a random crop of one source
picture; the mask records which source every pixel came from, so the labels are exact.

Train and validation crops come from disjoint parts of each source (the left 70 % / right 30 % of its width), so
the validation pixels were never seen in training. Images are written as JPEG (quality 90, no chroma subsampling; as
ADE20K's images) to keep the set at a few MB (lossless PNG would be ~8.7 MB: ``--image-format png``); masks are PNG,
so labels stay exact.

Usage (from the repository root; needs scikit-image)::

    python scripts/build_seg_demo_data.py            # --train 300 --val 60 --size 128 --seed 0
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO_ROOT / "data" / "seg_demo"
TRAIN_FRACTION = 0.7  # of each source's width
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Source:
    """One class: a scikit-image picture, the region used, and its licence as the skimage docstring states it."""

    name: str  # class name
    loader: str  # skimage.data function
    licence: str
    box: tuple[int, int, int, int] | None = None  # (top, left, bottom, right) part of the picture used


SOURCES = (
    Source("gravel", "gravel", "CC0 (CC0Textures 'Gravel04'; skimage.data.gravel)"),
    Source("brick", "brick", "CC0 (CC0Textures 'Bricks25'; skimage.data.brick)"),
    Source("grass", "grass", "CC0 (DeviantArt 'Grass-01' by linolafett; skimage.data.grass)"),
    Source("coffee", "coffee", "CC0 by the photographer Rachel Michetti (skimage.data.coffee)"),
    Source("cat", "chelsea", "CC0 by the photographer Stefan van der Walt (skimage.data.chelsea)"),
    Source("space", "hubble_deep_field", "public domain, NASA (skimage.data.hubble_deep_field)"),
    # The fundus is a disc with black corners: use a square inside it.
    Source("retina", "retina", "CC0 1.0, Mikael Haggstrom, Wikimedia (skimage.data.retina)", (305, 305, 1105, 1105)),
    Source("astronaut", "astronaut", "public domain, NASA (skimage.data.astronaut)"),
)
BACKGROUND = 0  # gravel fills the background of the shape layouts


def load_sources() -> list[np.ndarray]:
    """Each source picture as ``[H, W, 3]`` uint8 (grey textures repeated over 3 channels)."""
    import skimage
    import skimage.data

    print(f"scikit-image {skimage.__version__}")
    out = []
    for src in SOURCES:
        array = np.asarray(getattr(skimage.data, src.loader)())
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if src.box is not None:
            top, left, bottom, right = src.box
            array = array[top:bottom, left:right]
        out.append(np.ascontiguousarray(array[..., :3]))
    return out


def split_region(picture: np.ndarray, split: str) -> np.ndarray:
    """The left 70 % of the width for training, the right 30 % for validation."""
    cut = int(picture.shape[1] * TRAIN_FRACTION)
    return picture[:, :cut] if split == "train" else picture[:, cut:]


def texture(rng: np.random.Generator, region: np.ndarray, size: int) -> np.ndarray:
    """A random square crop of ``region`` (side 0.75-1.5x ``size``), randomly rotated / flipped, resized to ``size``."""
    h, w = region.shape[:2]
    side = int(min(rng.uniform(0.75, 1.5) * size, h, w))
    top, left = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = region[top : top + side, left : left + side]
    crop = np.rot90(crop, k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR))


def shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random ellipse or polygon (3-9 vertices around a centre), as a boolean ``[size, size]`` mask."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = rng.uniform(0.1, 0.9, 2) * size
    radius = rng.uniform(0.12, 0.35) * size
    if rng.random() < 0.4:
        rx, ry = radius * rng.uniform(0.5, 1.3, 2)
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=1)
    else:
        n = int(rng.integers(3, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.5, 1.3, n)
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)], fill=1)
    return np.asarray(canvas, dtype=bool)


def voronoi_labels(rng: np.random.Generator, size: int, num_cells: int) -> np.ndarray:
    """Cell index of every pixel for ``num_cells`` random seeds (nearest seed, Euclidean)."""
    seeds = rng.uniform(0, size, (num_cells, 2))
    yy, xx = np.mgrid[:size, :size]
    dist = (yy[..., None] - seeds[:, 0]) ** 2 + (xx[..., None] - seeds[:, 1]) ** 2
    return dist.argmin(axis=-1)


def compose(rng: np.random.Generator, regions: list[np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray]:
    """One image ``[size, size, 3]`` uint8 and its exact mask ``[size, size]`` uint8."""
    num_classes = len(regions)
    image = np.zeros((size, size, 3), np.uint8)
    mask = np.zeros((size, size), np.uint8)
    if rng.random() < 0.3:
        cells = voronoi_labels(rng, size, int(rng.integers(3, 7)))
        for cell in np.unique(cells):
            cls = int(rng.integers(num_classes))
            where = cells == cell
            image[where] = texture(rng, regions[cls], size)[where]
            mask[where] = cls
    else:
        image[:] = texture(rng, regions[BACKGROUND], size)
        mask[:] = BACKGROUND
        for _ in range(int(rng.integers(2, 6))):
            cls = int(rng.integers(1, num_classes))
            where = shape_mask(rng, size)
            image[where] = texture(rng, regions[cls], size)[where]
            mask[where] = cls
    return image, mask


def palette(num_classes: int) -> list[int]:
    """A flat PIL palette: distinct colours for the classes, white for 255 (ignore)."""
    colours = [(128, 128, 128), (178, 34, 34), (34, 139, 34), (139, 90, 43), (255, 165, 0), (25, 25, 112)]
    colours += [(220, 20, 60), (70, 130, 180), (154, 205, 50), (106, 90, 205)]
    flat = [c for colour in colours[:num_classes] for c in colour]
    flat += [0] * (3 * 255 - len(flat)) + [255, 255, 255]
    return flat


def write_split(
    out: Path, split: str, count: int, sources: list[np.ndarray], size: int, seed: int, image_format: str
) -> np.ndarray:
    """Write ``count`` image / mask pairs; returns the per-class pixel counts."""
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    regions = [split_region(s, split) for s in sources]
    image_dir, mask_dir = out / "images" / split, out / "masks" / split
    image_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    pixels = np.zeros(len(sources), np.int64)
    flat_palette = palette(len(sources))
    for i in range(count):
        image, mask = compose(rng, regions, size)
        stem = f"{split}_{i:04d}"
        if image_format == "jpg":
            Image.fromarray(image).save(image_dir / f"{stem}.jpg", quality=JPEG_QUALITY, subsampling=0, optimize=True)
        else:
            Image.fromarray(image).save(image_dir / f"{stem}.png", optimize=True)
        mask_png = Image.fromarray(mask, mode="L").convert("P")
        mask_png.putpalette(flat_palette)
        mask_png.save(mask_dir / f"{stem}.png", optimize=True)
        pixels += np.bincount(mask.ravel(), minlength=len(sources))
    return pixels


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.suffix in (".png", ".jpg")):
        h.update(p.relative_to(path).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()


LICENCE_HEADER = """The images and masks in this folder were composed by scripts/build_seg_demo_data.py from
pictures bundled with scikit-image (skimage.data). Every source picture is CC0 or public domain, and the composition
(layouts, masks, this folder) is released under CC0 1.0 as well
(https://creativecommons.org/publicdomain/zero/1.0/). The source pictures and their licences, as stated in
scikit-image's skimage/data/_fetchers.py docstrings:

"""


def write_docs(out: Path, args: argparse.Namespace, pixels: dict[str, np.ndarray]) -> None:
    names = [s.name for s in SOURCES]
    fmt = "JPEG" if args.image_format == "jpg" else "PNG"
    fmt_note = (
        f"Images are JPEG (quality {JPEG_QUALITY}, 4:4:4, like ADE20K's JPEG images) to keep the set small;\n"
        "lossless PNG images would take about 8.7 MB (`--image-format png`). The masks are lossless PNG: labels are\n"
        "exact, while JPEG changes pixel values slightly (mostly at region boundaries)."
        if args.image_format == "jpg"
        else "Images and masks are lossless PNG."
    )
    (out / "classes.txt").write_text("\n".join(names) + "\n")
    lines = [f"{i}  {s.name:<10} skimage.data.{s.loader}(): {s.licence}" for i, s in enumerate(SOURCES)]
    (out / "LICENSE").write_text(LICENCE_HEADER + "\n".join(lines) + "\n")
    sizes = {split: folder_bytes(out / "images" / split) + folder_bytes(out / "masks" / split) for split in pixels}
    share = {split: 100 * counts / counts.sum() for split, counts in pixels.items()}
    rows = "\n".join(
        f"| {i} | {s.name} | `skimage.data.{s.loader}()` | {s.licence} | "
        f"{share['train'][i]:.1f} % | {share['val'][i]:.1f} % |"
        for i, s in enumerate(SOURCES)
    )
    readme = f"""# Segmentation demo set: a synthetic layout of real pixels

A small multi-class semantic segmentation set that ships with the repository, so the segmentation demo and tests run
offline. **It is not a natural-scene dataset**: no real multi-class segmentation set installs here, so every image is
a *synthetic layout of real pixels* — a background plus random ellipses / polygons, or a Voronoi tessellation — whose
regions are filled with random crops (rescaled 0.75-1.5x, rotated by multiples of 90 degrees, flipped) of real
CC0 / public-domain pictures bundled with scikit-image. The mask records which picture every pixel came from, so the
labels are exact. The task is texture / material recognition with exact boundaries, not scene understanding.

Load it with `crossformer_vision.data.seg_demo("train" | "val", transforms=...)` (generic layout below), e.g. with
`train_transforms(**SEG_DEMO_SIZES)` (scale (512, 128), crop 128) and `eval_transforms(scale=None)`.

| split | images | size | files (images + masks) |
| --- | --- | --- | --- |
| train | {args.train} | {args.size} x {args.size} RGB {fmt} | {sizes["train"] / 1e6:.2f} MB |
| val | {args.val} | {args.size} x {args.size} RGB {fmt} | {sizes["val"] / 1e6:.2f} MB |

{fmt_note}

Layout (the generic folder layout of `FolderSegmentation`; masks are matched to images by file stem):

```
classes.txt             one class name per line, in label order
images/{{train,val}}/*.{args.image_format}   RGB images
masks/{{train,val}}/*.png    palette PNGs whose indices are the labels (0..{len(SOURCES) - 1}; no ignored pixels)
```

## Classes and sources

| label | class | source | licence | train pixels | val pixels |
| --- | --- | --- | --- | --- | --- |
{rows}

Grey textures (gravel, brick, grass) are repeated over the three channels; the retina source is the square
`[305:1105, 305:1105]` inside the fundus disc. Train crops come from the left {int(TRAIN_FRACTION * 100)} % of
each source's width and validation crops from the right {100 - int(TRAIN_FRACTION * 100)} %, so no validation
pixel was seen in training (the same pictures, disjoint parts). Shape layouts (70 %) use gravel as background;
Voronoi layouts (30 %) draw every cell's class uniformly.

## How it was built

From the repository root (scikit-image {args.skimage_version}, numpy {np.__version__}):

```bash
python scripts/build_seg_demo_data.py --train {args.train} --val {args.val} --size {args.size} --seed {args.seed} \\
    --image-format {args.image_format}
```

Randomness comes from `numpy.random.default_rng([seed, split])` only, so a rebuild gives the same layouts, masks
and source pixels (file bytes may differ across libjpeg / zlib / Pillow versions). sha256 over all image and mask
files (relative path + bytes, sorted):
`{tree_digest(out)}`.

Licences: see `LICENSE` (all sources CC0 or public domain; the composition is CC0).
"""
    (out / "README.md").write_text(readme)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--train", type=int, default=300)
    parser.add_argument("--val", type=int, default=60)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-format", choices=("jpg", "png"), default="jpg")
    args = parser.parse_args()
    import skimage

    args.skimage_version = skimage.__version__
    sources = load_sources()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    pixels = {
        split: write_split(args.out, split, count, sources, args.size, args.seed, args.image_format)
        for split, count in (("train", args.train), ("val", args.val))
    }
    write_docs(args.out, args, pixels)
    print(f"wrote {args.out}: {folder_bytes(args.out) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
