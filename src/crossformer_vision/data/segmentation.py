"""Semantic segmentation data: ADE20K and generic folder layouts, the mmseg pipelines, the embedded demo set.

Datasets return ``(image, mask)``: with a pipeline from :func:`train_transforms` / :func:`eval_transforms`, a float
``[3, H, W]`` normalised image and an int64 ``[H, W]`` mask (255 = ignore); without one, the uint8 image and the
mask as ``tv_tensors``. :func:`collate` stacks a batch.

The pipelines follow mmseg's ADE20K configs, on image and mask together with torchvision transforms v2:

* train: random keep-ratio resize to ``ratio * (2048, 512)``, ratio ~ U(0.5, 2.0); random 512 x 512 crop with
  ``cat_max_ratio=0.75`` (up to 10 retries); horizontal flip (p 0.5); ``PhotoMetricDistortion``; normalise with
  ImageNet mean / std in 0-255 scale; pad to the crop size (image 0, mask 255);
* test: keep-ratio resize of the image to (2048, 512) (the mask keeps the original size: metrics are computed
  there), normalise.

Resizes are bilinear without antialiasing, as mmseg's cv2 resizes; masks use nearest.
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
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .embedded import embedded_dir
from .images import _PIL_ERRORS, IMAGE_EXTENSIONS, UnreadableImageError, decode_error, open_image, read_rgb_array

__all__ = [
    "ADE20K",
    "ADE20K_CLASSES",
    "IGNORE_INDEX",
    "IMAGENET_MEAN_255",
    "IMAGENET_STD_255",
    "IMAGE_EXTENSIONS",
    "SEG_DEMO_REBUILD_COMMAND",
    "SEG_DEMO_SIZES",
    "BadPair",
    "FolderSegmentation",
    "KeepRatioResize",
    "PadTo",
    "PhotoMetricDistortion",
    "RandomCropCatMax",
    "SegmentationDataset",
    "check_pairs",
    "collate",
    "eval_transforms",
    "find_bad_pairs",
    "read_class_file",
    "read_image",
    "read_mask",
    "rescale_size",
    "seg_demo",
    "seg_demo_dir",
    "train_transforms",
]

IGNORE_INDEX = 255
IMAGENET_MEAN_255 = (123.675, 116.28, 103.53)
IMAGENET_STD_255 = (58.395, 57.12, 57.375)

#: ADE20K SceneParsing classes, in label order (label k + 1 in the annotation files; 0 = "other", ignored).
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip

# Points at a data root holding ``seg_demo/`` (the layout of the repository's ``data/``).
SEG_DEMO_REBUILD_COMMAND = "python scripts/build_seg_demo_data.py  (from the repository root; needs scikit-image)"
#: Pipeline sizes for the 128 x 128 demo images (the ADE20K values scaled down by 4).
SEG_DEMO_SIZES = dict(scale=(512, 128), crop_size=(128, 128))


# ---------------------------------------------------------------------- reading files
def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``[H, W, 3]`` uint8 RGB (:func:`.images.read_rgb_array`, the reader of every task).

    Grey (``L``, ``1``), palette, CMYK and RGBA / LA images are converted to RGB (alpha dropped); 16-bit images
    (``I;16``, ``I``) are scaled to 8 bits (``round(x / 257)``).

    Raises:
        ValueError: Unreadable or corrupt file, values outside 16 bits, or an image over Pillow's decompression-bomb
            limit; names the file.
    """
    return read_rgb_array(path)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """A label map file as ``[H, W]`` int64 (raw values; no class mapping).

    ``L``, ``P`` (palette indices are the labels), ``I;16`` and ``I`` masks are read as they are; ``1`` gives 0 / 1;
    RGB / RGBA masks are accepted only when grey (all channels equal).

    Raises:
        ValueError: Unreadable file, or a colour mask (the labels would be ambiguous); names the file.
    """
    path = Path(path)
    with open_image(path, "mask") as img:
        mode = img.mode
        if not _mask_mode_ok(mode):
            raise ValueError(f"{path}: unsupported mask mode {mode!r}; save it as an 8-bit index PNG")
        try:
            img.load()
            array = np.asarray(img)
        except _PIL_ERRORS as err:
            raise decode_error(path, err, "mask") from None
    if mode in ("L", "P", "1") or mode.startswith("I"):
        return array.astype(np.int64)
    if mode == "LA":
        return array[..., 0].astype(np.int64)
    array = array[..., :3]  # RGB / RGBA
    if (array == array[..., :1]).all():
        return array[..., 0].astype(np.int64)
    raise ValueError(
        f"{path}: colour ({mode}) mask; masks must hold class indices (grey 'L', palette 'P' or 16-bit). "
        "Convert the colours to indices first"
    )


def _mask_mode_ok(mode: str) -> bool:
    return mode in ("L", "P", "1", "LA", "RGB", "RGBA") or mode.startswith("I")


def read_class_file(path: str | os.PathLike) -> list[str]:
    """Class names, one per line in label order (blank lines and ``#`` comments skipped)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"class list {path} not found (one class name per line, in label order)")
    names = [line.strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise ValueError(f"{path}: no class names (one per line, in label order)")
    if len(names) > IGNORE_INDEX:
        raise ValueError(f"{path}: {len(names)} classes; at most {IGNORE_INDEX} fit 8-bit masks with 255 = ignore")
    return names


# ---------------------------------------------------------------------- datasets
class SegmentationDataset(Dataset):
    """Image / mask file pairs with a class list.

    Args:
        samples: ``(image path, mask path)`` pairs.
        classes: Class names in label order.
        transforms: Callable on ``(tv_tensors.Image uint8 [3, H, W], tv_tensors.Mask uint8 [H, W])`` returning the
            pair, e.g. :func:`train_transforms`. None returns the pair untransformed.
        reduce_zero_label: ADE20K convention: file label 0 ("other") becomes 255 (ignored), the others shift by -1.
        ignore_index: The ignored label (255).
        check_labels: Raise when a mask holds labels outside ``[0, len(classes))`` other than ``ignore_index``.

    Raises (at ``__getitem__``):
        ValueError: Unreadable files, image / mask size mismatch, labels out of range; the message names the files.
    """

    def __init__(
        self,
        samples: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
        classes: Sequence[str],
        *,
        transforms: Callable[..., Any] | None = None,
        reduce_zero_label: bool = False,
        ignore_index: int = IGNORE_INDEX,
        check_labels: bool = True,
    ):
        if not classes:
            raise ValueError("classes must list at least one class name")
        if not 0 <= ignore_index <= 255:
            raise ValueError(f"ignore_index must fit 8-bit masks (0..255), got {ignore_index}")
        self.samples = [(Path(i), Path(m)) for i, m in samples]
        self.classes = list(classes)
        self.transforms = transforms
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = ignore_index
        self.check_labels = check_labels

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def encode_labels(self, mask: np.ndarray, path: Path) -> np.ndarray:
        """File labels -> training labels (``reduce_zero_label``), checked against the class range."""
        if self.reduce_zero_label:
            reduced = mask - 1
            reduced[(mask == 0) | (mask == self.ignore_index)] = self.ignore_index
            mask = reduced
        if self.check_labels:
            bad = (mask != self.ignore_index) & ((mask < 0) | (mask >= self.num_classes))
            if bad.any():
                values = np.unique(mask[bad])
                shown = ", ".join(map(str, values[:8].tolist())) + (" ..." if len(values) > 8 else "")
                note = " after reduce_zero_label (file value - 1)" if self.reduce_zero_label else ""
                raise ValueError(
                    f"{path}: labels {shown}{note} outside [0, {self.num_classes}) for {self.num_classes} classes "
                    f"(ignore index {self.ignore_index}); check the class list or the mask"
                )
        return mask.astype(np.uint8)

    def load(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        """The raw pair: ``Image`` uint8 ``[3, H, W]`` and ``Mask`` uint8 ``[H, W]`` (training labels)."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        mask = read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise ValueError(
                f"image {image_path} is {image.shape[0]}x{image.shape[1]} but its mask {mask_path} is "
                f"{mask.shape[0]}x{mask.shape[1]} (H x W); they must have the same size"
            )
        mask = self.encode_labels(mask, mask_path)
        return (
            tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)),
            tv_tensors.Mask(torch.from_numpy(mask)),
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if self.transforms is not None:
            image, mask = self.transforms(image, mask)
        return image, mask

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={len(self)}, num_classes={self.num_classes})"


@dataclass(frozen=True)
class BadPair:
    """An image / mask pair that cannot be used, and why (one line)."""

    image: Path
    mask: Path
    reason: str


def _header(path: Path, what: str) -> tuple[tuple[int, int], str]:
    """``((h, w), mode)`` of a file from its header; ``verify()`` checks the rest of the file where the format can
    without decoding (PNG chunk checksums, which catches truncated and damaged masks)."""
    with open_image(path, what) as img:
        (w, h), mode = img.size, img.mode
        try:
            img.verify()
        except _PIL_ERRORS as err:
            raise decode_error(path, err, what) from None
    return (h, w), mode


def _pair_problem(image_path: Path, mask_path: Path) -> str | None:
    try:
        image_size, _ = _header(image_path, "image")
        mask_size, mask_mode = _header(mask_path, "mask")
    except UnreadableImageError as err:
        return str(err)
    if not _mask_mode_ok(mask_mode):
        return f"{mask_path}: unsupported mask mode {mask_mode!r}; save it as an 8-bit index PNG"
    if image_size != mask_size:
        return (
            f"image {image_path} is {image_size[0]}x{image_size[1]} but its mask {mask_path} is "
            f"{mask_size[0]}x{mask_size[1]} (H x W); they must have the same size"
        )
    return None


def find_bad_pairs(dataset: SegmentationDataset, *, decode: bool = False) -> list[BadPair]:
    """The pairs of ``dataset.samples`` that would fail when loaded, found before training.

    By default only the file headers are read (no pixel is decoded): missing or unreadable files, files over
    Pillow's decompression-bomb limit, damaged PNGs (``verify()``), unsupported mask modes, and image / mask size
    mismatches. ``decode=True`` also loads every pair as training would (truncated JPEG data, colour masks,
    labels outside the class range), at the cost of decoding everything.
    """
    bad: list[BadPair] = []
    for index, (image_path, mask_path) in enumerate(dataset.samples):
        reason = _pair_problem(image_path, mask_path)
        if reason is None and decode:
            try:
                dataset.load(index)
            except ValueError as err:
                reason = " ".join(str(err).split())
        if reason is not None:
            bad.append(BadPair(Path(image_path), Path(mask_path), reason))
    return bad


def check_pairs(
    dataset: SegmentationDataset,
    *,
    what: str = "validation set",
    drop: bool = False,
    decode: bool = False,
    show: int = 3,
) -> list[BadPair]:
    """Check every image / mask pair of ``dataset`` before a run (see :func:`find_bad_pairs`; header reads only
    unless ``decode``), so that a bad file does not stop the run hours later.

    Args:
        dataset: The dataset; with ``drop`` its ``samples`` lose the bad pairs.
        what: How the messages name the dataset (``"validation set"``, ``"training set"``).
        drop: False: raise when any pair is bad (the validation set, whose metrics must cover all of it). True:
            leave the bad pairs out with one warning naming them (the training set); raise only when none is left.
        decode: Also decode every pair (slower; see :func:`find_bad_pairs`).
        show: How many bad pairs the message names.

    Returns:
        The bad pairs (empty when all are usable).

    Raises:
        ValueError: One line: how many pairs are bad, the first ``show`` with the reason, and the fix.
    """
    bad = find_bad_pairs(dataset, decode=decode)
    if not bad:
        return bad
    total = len(dataset.samples)
    shown = "; ".join(b.reason for b in bad[:show]) + (f"; ... ({len(bad) - show} more)" if len(bad) > show else "")
    fix = "fix or remove these files (a mask is a grey or palette PNG of class indices, the size of its image)"
    if not drop or len(bad) == total:
        left = " (none left)" if drop else ""
        raise ValueError(f"{what}: {len(bad)} of {total} image/mask pairs are unusable{left}: {shown}; {fix}")
    bad_set = {(b.image, b.mask) for b in bad}
    dataset.samples = [pair for pair in dataset.samples if (Path(pair[0]), Path(pair[1])) not in bad_set]
    warnings.warn(
        f"{what}: {len(bad)} of {total} image/mask pairs are unusable and left out: {shown}; {fix}", stacklevel=2
    )
    return bad


def _index_files(folder: Path, extensions: Sequence[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} folder {folder} not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in extensions:
            if path.stem in files:
                raise ValueError(
                    f"{what} folder {folder}: two files with the stem {path.stem!r} "
                    f"({files[path.stem].name}, {path.name}); stems must be unique"
                )
            files[path.stem] = path
    return files


def _pair_files(image_dir: Path, mask_dir: Path, mask_suffix: str = "") -> list[tuple[Path, Path]]:
    images = _index_files(image_dir, IMAGE_EXTENSIONS, "image")
    masks = _index_files(mask_dir, (".png", ".tif", ".tiff", ".bmp"), "mask")
    if not images:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {image_dir}")
    missing = [path for stem, path in images.items() if f"{stem}{mask_suffix}" not in masks]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5]) + (f" ... ({len(missing)} in all)" if len(missing) > 5 else "")
        raise ValueError(f"no mask in {mask_dir} for image(s) {shown} (masks are matched by file stem)")
    return [(path, masks[f"{stem}{mask_suffix}"]) for stem, path in images.items()]


class FolderSegmentation(SegmentationDataset):
    """Generic layout: an image folder, a mask folder (matched by file stem) and a class-list file.

    Args:
        image_dir: Images (``.jpg``, ``.png``, ...).
        mask_dir: Masks with the same stems (``.png``), holding class indices and 255 for ignored pixels.
        classes: Class names, or the path of a class-list file (one name per line, in label order).
        mask_suffix: Extra suffix of mask stems (``"_mask"`` for ``a.jpg`` / ``a_mask.png``).
        **kwargs: :class:`SegmentationDataset` options (``transforms``, ``reduce_zero_label``, ...).

    Raises:
        FileNotFoundError: Missing folder or class file.
        ValueError: An image without a mask (named), duplicate stems, no images.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        mask_dir: str | os.PathLike,
        classes: Sequence[str] | str | os.PathLike,
        *,
        mask_suffix: str = "",
        **kwargs: Any,
    ):
        if isinstance(classes, (str, os.PathLike)):
            classes = read_class_file(classes)
        super().__init__(_pair_files(Path(image_dir), Path(mask_dir), mask_suffix), classes, **kwargs)
        self.image_dir, self.mask_dir = Path(image_dir), Path(mask_dir)


class ADE20K(FolderSegmentation):
    """ADE20K SceneParsing (``ADEChallengeData2016``): 150 classes, ``reduce_zero_label``.

    Layout: ``root/images/{training,validation}/*.jpg`` and ``root/annotations/{training,validation}/*.png``.

    Args:
        root: The ``ADEChallengeData2016`` folder.
        split: ``"training"`` / ``"validation"`` (or ``"train"`` / ``"val"``).
        **kwargs: :class:`SegmentationDataset` options (``transforms``, ...).
    """

    _SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}

    def __init__(self, root: str | os.PathLike, split: str = "training", **kwargs: Any):
        if split not in self._SPLITS:
            raise ValueError(f"ADE20K: unknown split {split!r}; use one of {sorted(self._SPLITS)}")
        root = Path(root)
        split = self._SPLITS[split]
        kwargs.setdefault("reduce_zero_label", True)
        super().__init__(root / "images" / split, root / "annotations" / split, ADE20K_CLASSES, **kwargs)
        self.root, self.split = root, split


def seg_demo_dir(root: str | os.PathLike | None = None) -> Path:
    """The embedded segmentation demo set (:func:`~crossformer_vision.data.embedded.embedded_dir`)."""
    return embedded_dir("seg_demo", root, "classes.txt", "classes.txt, images/, masks/", SEG_DEMO_REBUILD_COMMAND)


def seg_demo(split: str = "train", *, root: str | os.PathLike | None = None, **kwargs: Any) -> FolderSegmentation:
    """The embedded demo set (a synthetic layout of real CC0 texture pixels; see ``data/seg_demo/README.md``).

    Args:
        split: ``"train"`` (300 images) or ``"val"`` (60 images), 128 x 128.
        root: Folder holding ``classes.txt``, ``images/`` and ``masks/`` (default: :func:`seg_demo_dir`).
        **kwargs: :class:`SegmentationDataset` options; use ``train_transforms(**SEG_DEMO_SIZES)``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"seg_demo: unknown split {split!r}; use 'train' or 'val'")
    path = seg_demo_dir(root)
    return FolderSegmentation(path / "images" / split, path / "masks" / split, path / "classes.txt", **kwargs)


# ---------------------------------------------------------------------- transforms (torchvision v2)
def rescale_size(size: Sequence[int], scale: Sequence[float]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest ``(h, w)`` with long edge <= max(scale), short edge <= min(scale)
    (each ``int(x * factor + 0.5)``, at least 1)."""
    h, w = size
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def _first_image_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            h, w = inpt.shape[-2:]
            return int(h), int(w)
    raise TypeError("expected a tv_tensors.Image or tv_tensors.Mask among the inputs")


class KeepRatioResize(v2.Transform):
    """mmseg ``Resize(img_scale, ratio_range, keep_ratio=True)``.

    The target scale is ``ratio * scale`` with ``ratio ~ U(ratio_range)`` (``ratio = 1`` without a range); the
    image is resized to the largest size whose long / short edges fit that scale, aspect kept (mmcv
    ``imrescale``). Images: bilinear (no antialias, like cv2); masks: nearest.

    Args:
        scale: ``(long, short)`` bound, e.g. ``(2048, 512)``.
        ratio_range: ``(low, high)`` of the random ratio, or None.
        resize_mask: Also resize masks (False for the test pipeline: metrics use the original-size mask).
        antialias: Antialias image downscaling (mmseg: no).
    """

    def __init__(
        self,
        scale: Sequence[int] = (2048, 512),
        ratio_range: Sequence[float] | None = None,
        *,
        resize_mask: bool = True,
        antialias: bool = False,
    ):
        super().__init__()
        if len(scale) != 2 or min(scale) < 1:
            raise ValueError(f"scale must be a positive (long, short) pair, got {scale!r}")
        if ratio_range is not None and (len(ratio_range) != 2 or not 0 < ratio_range[0] <= ratio_range[1]):
            raise ValueError(f"ratio_range must be (low, high) with 0 < low <= high, got {ratio_range!r}")
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range) if ratio_range is not None else None
        self.resize_mask = resize_mask
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        ratio = 1.0
        if self.ratio_range is not None:
            low, high = self.ratio_range
            ratio = low + torch.rand(()).item() * (high - low)
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        return dict(size=list(rescale_size(_first_image_size(flat_inputs), target)))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, tv_tensors.Mask):
            if not self.resize_mask:
                return inpt
            return TF.resize(inpt, params["size"], interpolation=v2.InterpolationMode.NEAREST)
        if isinstance(inpt, tv_tensors.Image):
            return TF.resize(
                inpt, params["size"], interpolation=v2.InterpolationMode.BILINEAR, antialias=self.antialias
            )
        return inpt


class RandomCropCatMax(v2.Transform):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)``: a random crop where no single class dominates.

    A crop is accepted when it holds more than one labelled class and the largest one covers less than
    ``cat_max_ratio`` of its labelled (non-ignore) pixels; up to 10 rejected crops are redrawn, after which the
    last draw is used, exactly as mmseg. An image smaller than the crop is taken whole (pad it afterwards).

    Args:
        size: ``(h, w)`` crop.
        cat_max_ratio: Largest allowed share of one class (1.0 disables the check).
        ignore_index: Label not counted.
    """

    def __init__(self, size: int | Sequence[int], cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"crop size must be a positive int or (h, w), got {size!r}")
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _bbox(self, h: int, w: int) -> tuple[int, int, int, int]:
        top = int(torch.randint(0, max(h - self.size[0], 0) + 1, ()).item())
        left = int(torch.randint(0, max(w - self.size[1], 0) + 1, ()).item())
        return top, left, min(self.size[0], h - top), min(self.size[1], w - left)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _first_image_size(flat_inputs)
        bbox = self._bbox(h, w)
        mask = next((x for x in flat_inputs if isinstance(x, tv_tensors.Mask)), None)
        if mask is not None and self.cat_max_ratio < 1.0:
            for _ in range(10):
                top, left, ch, cw = bbox
                crop = mask[..., top : top + ch, left : left + cw]
                counts = torch.bincount(crop.reshape(-1).long(), minlength=256)
                counts[self.ignore_index] = 0
                counts = counts[counts > 0]
                if len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio:
                    break
                bbox = self._bbox(h, w)
        return dict(bbox=bbox)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            top, left, h, w = params["bbox"]
            return TF.crop(inpt, top, left, h, w)
        return inpt


def _convert(x: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """mmseg's ``convert``: ``uint8(clip(x * alpha + beta, 0, 255))`` (truncating, as numpy's astype)."""
    return (x.float() * alpha + beta).clamp(0, 255).to(torch.uint8)


def _rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """uint8 RGB ``[3, H, W]`` -> uint8 HSV in OpenCV's 8-bit convention (H in [0, 180), S and V in [0, 255])."""
    r, g, b = img.float()
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    s = torch.where(v > 0, diff * 255 / v.clamp(min=1), torch.zeros_like(v))
    safe = diff.clamp(min=1e-6)
    h = torch.where(
        v == r, 60 * (g - b) / safe, torch.where(v == g, 120 + 60 * (b - r) / safe, 240 + 60 * (r - g) / safe)
    )
    h = torch.where(diff == 0, torch.zeros_like(h), h)
    h = torch.where(h < 0, h + 360, h) / 2
    h = torch.round(h) % 180
    return torch.stack([h, torch.round(s), v]).to(torch.uint8)


def _hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """uint8 HSV (OpenCV 8-bit convention) ``[3, H, W]`` -> uint8 RGB."""
    h, s, v = hsv.float()
    h6 = (h * 2 % 360) / 60
    sector = torch.floor(h6)
    f = h6 - sector
    s, v = s / 255, v / 255
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sector = sector.long() % 6
    table = torch.stack([torch.stack(c) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    rgb = torch.gather(table, 0, sector[None, None].expand(1, 3, *sector.shape))[0]
    return torch.round(rgb * 255).clamp(0, 255).to(torch.uint8)


class PhotoMetricDistortion(v2.Transform):
    """mmseg ``PhotoMetricDistortion`` on uint8 images (masks untouched).

    In order, each applied with probability 0.5: brightness ``+U(-32, 32)``; contrast ``*U(0.5, 1.5)`` (before or
    after the HSV steps, chosen at random); saturation ``S *= U(0.5, 1.5)``; hue ``H += randint(-18, 18)`` (OpenCV's
    8-bit HSV, H in [0, 180), upper bound exclusive as numpy's ``randint``). Every step clips to [0, 255] and
    truncates to uint8 like mmseg. The HSV conversion follows OpenCV's formulas (not its fixed-point tables).
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ):
        super().__init__()
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    @staticmethod
    def _coin() -> bool:
        return bool(torch.randint(0, 2, ()).item())

    @staticmethod
    def _uniform(low: float, high: float) -> float:
        return low + torch.rand(()).item() * (high - low)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        # Drawn in mmseg's order so the same decisions are taken for the same random stream.
        params: dict[str, Any] = {}
        if self._coin():
            params["beta"] = self._uniform(-self.brightness_delta, self.brightness_delta)
        contrast_first = self._coin()
        if contrast_first and self._coin():
            params["alpha"] = self._uniform(*self.contrast_range)
        if self._coin():
            params["saturation"] = self._uniform(*self.saturation_range)
        if self._coin():
            params["hue"] = int(torch.randint(-self.hue_delta, self.hue_delta, ()).item())
        if not contrast_first and self._coin():
            params["alpha"] = self._uniform(*self.contrast_range)
        params["contrast_first"] = contrast_first
        return params

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        if inpt.dtype != torch.uint8 or inpt.shape[-3] != 3:
            raise TypeError(f"PhotoMetricDistortion expects uint8 RGB images [3, H, W], got {inpt.dtype} {inpt.shape}")
        x = inpt.as_subclass(torch.Tensor)
        if "beta" in params:
            x = _convert(x, beta=params["beta"])
        if params["contrast_first"] and "alpha" in params:
            x = _convert(x, alpha=params["alpha"])
        if "saturation" in params:
            hsv = _rgb_to_hsv(x)
            hsv[1] = _convert(hsv[1], alpha=params["saturation"])
            x = _hsv_to_rgb(hsv)
        if "hue" in params:
            hsv = _rgb_to_hsv(x)
            hsv[0] = ((hsv[0].long() + params["hue"]) % 180).to(torch.uint8)
            x = _hsv_to_rgb(hsv)
        if not params["contrast_first"] and "alpha" in params:
            x = _convert(x, alpha=params["alpha"])
        return tv_tensors.wrap(x, like=inpt)


class PadTo(v2.Transform):
    """Pad at the bottom / right to at least ``size`` (mmseg ``Pad(size=crop_size)``): image 0, mask 255.

    Args:
        size: ``(h, w)`` minimum size.
        fill: Image fill value (after normalisation mmseg pads with 0).
        mask_fill: Mask fill value (the ignore label).
    """

    def __init__(self, size: int | Sequence[int], fill: float = 0.0, mask_fill: int = IGNORE_INDEX):
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.fill = fill
        self.mask_fill = mask_fill

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        h, w = _first_image_size(flat_inputs)
        return dict(padding=[0, 0, max(self.size[1] - w, 0), max(self.size[0] - h, 0)])

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)) or not any(params["padding"]):
            return inpt
        fill = self.mask_fill if isinstance(inpt, tv_tensors.Mask) else self.fill
        return TF.pad(inpt, params["padding"], fill=fill)


def _normalize(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    # Images to float in the 0-255 scale, then mmseg's mean / std; masks stay uint8 until the end.
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=False), v2.Normalize(mean, std)]


def _finish() -> v2.Transform:
    return v2.ToDtype({tv_tensors.Mask: torch.int64, "others": None})


def train_transforms(
    *,
    crop_size: int | Sequence[int] = (512, 512),
    scale: Sequence[int] = (2048, 512),
    ratio_range: Sequence[float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN_255,
    std: Sequence[float] = IMAGENET_STD_255,
    ignore_index: int = IGNORE_INDEX,
) -> v2.Compose:
    """mmseg's ADE20K training pipeline on ``(Image, Mask)`` pairs (defaults: the official values).

    Returns:
        A v2 pipeline giving a float ``[3, crop_h, crop_w]`` image and an int64 ``[crop_h, crop_w]`` mask.
    """
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    steps: list[v2.Transform] = [
        KeepRatioResize(scale, ratio_range),
        RandomCropCatMax(crop, cat_max_ratio, ignore_index),
        v2.RandomHorizontalFlip(flip_prob),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps += [*_normalize(mean, std), PadTo(crop, 0.0, ignore_index), _finish()]
    return v2.Compose(steps)


def eval_transforms(
    *,
    scale: Sequence[int] | None = (2048, 512),
    mean: Sequence[float] = IMAGENET_MEAN_255,
    std: Sequence[float] = IMAGENET_STD_255,
) -> v2.Compose:
    """mmseg's single-scale test pipeline: keep-ratio resize of the image to ``scale`` (None: no resize), normalise.

    The mask keeps its original size (predictions are resized to it for the metrics, as mmseg does); pass
    ``out_size=mask.shape[-2:]`` to :func:`crossformer_vision.tasks.segmentation.inference`. For mmseg's exact
    multi-scale test, use ``scale=None`` and let the inference resize (``scale=(2048, 512), ratios=MS_RATIOS``).
    """
    steps: list[v2.Transform] = []
    if scale is not None:
        steps.append(KeepRatioResize(scale, None, resize_mask=False))
    return v2.Compose([*steps, *_normalize(mean, std), _finish()])


def collate(batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, mask)`` pairs into ``([B, 3, H, W] float, [B, H, W] int64)`` plain tensors.

    Raises:
        ValueError: Samples of different sizes (test pipelines keep each image's size: use ``batch_size=1``).
    """
    if not batch:
        raise ValueError("collate got an empty batch")
    images, masks = zip(*batch)
    for name, items in (("image", images), ("mask", masks)):
        shapes = {tuple(x.shape) for x in items}
        if len(shapes) > 1:
            raise ValueError(
                f"collate: {name}s of different sizes {sorted(shapes)[:4]} cannot be stacked; training pipelines crop "
                "and pad to one size, test pipelines keep each image's size (use batch_size=1 for evaluation)"
            )
    image_batch = torch.stack([x.as_subclass(torch.Tensor) for x in images])
    mask_batch = torch.stack([m.as_subclass(torch.Tensor) for m in masks]).long()
    return image_batch, mask_batch
