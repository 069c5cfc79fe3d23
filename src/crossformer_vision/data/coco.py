"""COCO-format instance data (an ``instances_*.json`` plus an image folder) for torchvision's detectors.

``CocoDetection(image_dir, ann_file)[i]`` gives ``(image, target)``: a float image ``[3, H, W]`` in ``[0, 1]`` and
``boxes [N, 4]`` (``x1, y1, x2, y2`` pixels), ``labels [N]`` (``1..K``), ``masks [N, H, W]`` uint8, ``image_id``,
``orig_size`` (the file's ``(H, W)``) and ``size`` (after the transforms). Batch with :func:`detection_collate`.

* Category ids are mapped to contiguous labels ``1..K`` in id order (``cat_id_to_label`` / ``label_to_cat_id``, the
  latter for writing results with the original ids). ``0`` is background.
* Crowd regions (``iscrowd=1``) are never training targets (torchvision has no "ignore" boxes); evaluation uses the
  GT json as is, where pycocotools treats them as ignore regions.
* Images without annotations are kept (evaluation needs them) unless ``skip_empty=True`` (mmdet ``filter_empty_gt``).
* Bad entries never reach the model: boxes partly outside the image are clipped; degenerate boxes (width or height
  <= 0, or < ``min_box_size`` after clipping), annotations of unknown images or categories, malformed boxes, unusable
  segmentations (when masks are loaded: polygons without 3 finite points; RLEs whose size is not the image's or
  whose counts do not decode to exactly height x width pixels, checked without decoding the mask) and images whose
  file is missing are dropped. One warning gives the counts (``stats`` keeps them) and names the first files and
  annotations (``bad_segmentations`` keeps ``(annotation id, file name, reason)`` of each); a file that cannot be
  decoded or whose size differs from the json raises an error naming the image.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .embedded import embedded_dir
from .images import UnreadableImageError, read_rgb_array

__all__ = [
    "CROP_POLICY_RANGE",
    "CROP_POLICY_RESIZE",
    "DETECTION_POLICIES",
    "DET_DEMO_REBUILD_COMMAND",
    "CocoDetection",
    "crop_policy",
    "det_demo",
    "det_demo_dir",
    "detection_collate",
    "detection_transforms",
    "random_range_crop",
]

DET_DEMO_REBUILD_COMMAND = "python scripts/build_det_demo_data.py --train 400 --val 100 --size 128 --seed 0"
# <repo>/src/crossformer_vision/data/coco.py -> <repo>/data

# stats keys that are problems in the input (warned about); the others are informational
_PROBLEMS = {
    "boxes_clipped": "boxes clipped to the image",
    "boxes_degenerate": "degenerate boxes (width or height <= 0) dropped",
    "boxes_too_small": "boxes smaller than min_box_size after clipping (e.g. outside the image) dropped",
    "boxes_malformed": "annotations with a missing or non-finite bbox dropped",
    "unknown_image": "annotations of image ids not in 'images' dropped",
    "unknown_category": "annotations of category ids not in 'categories' dropped",
    "bad_segmentation": "annotations without a usable segmentation (polygon / RLE) dropped",
    "missing_file": "images whose file is missing dropped",
}


def _pycocotools_mask():
    try:
        from pycocotools import mask
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("COCO masks need pycocotools: pip install pycocotools") from exc
    return mask


def _rle_string_counts(counts: str) -> list[int] | None:
    """The runs of a compressed COCO RLE string (pycocotools' ``rleFrString`` in Python: 5-bit groups, offset 48,
    deltas from the 3rd run on), or None for a string it cannot hold (a character outside ``'0'..'o'``, or a run
    cut short at the end, which the C decoder would read past)."""
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        runs.append(x)
    return runs


def _check_rle(segm: dict, height: int, width: int) -> str | None:
    """Why ``segm`` is not an RLE of a ``height x width`` image (None: it is)."""
    size = segm.get("size")
    if (
        not isinstance(size, (list, tuple))
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in size)
    ):
        return f"RLE size {size!r} is not [height, width]"
    if list(size) != [height, width]:
        return f"RLE size {list(size)} differs from the image's [height, width] = [{height}, {width}]"
    counts, area = segm["counts"], height * width
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            return "compressed RLE counts are not an ASCII string"
    if isinstance(counts, str):
        runs = _rle_string_counts(counts)
        if runs is None:
            return "compressed RLE counts are not a valid COCO RLE string"
        kind = "compressed RLE counts decode to"
    elif isinstance(counts, (list, tuple)):
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in counts):
            return "uncompressed RLE counts must be integers"
        runs = list(counts)
        kind = "uncompressed RLE counts are"
    else:
        return f"RLE counts must be a list or a string, got {type(counts).__name__}"
    if any(v < 0 for v in runs):
        return f"{kind} a negative run"
    if sum(runs) != area:
        return f"{kind} {sum(runs)} pixels, not height x width = {height} x {width} = {area}"
    return None


def _valid_segmentation(segm: Any, height: int, width: int) -> tuple[Any, str | None]:
    """The usable part of a COCO segmentation (polygons with >= 3 finite points, or an RLE of the image size) and,
    when there is none, why."""
    if isinstance(segm, list):
        polys = [
            [float(v) for v in p]
            for p in segm
            if isinstance(p, (list, tuple))
            and len(p) >= 6
            and len(p) % 2 == 0
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p)
        ]
        if polys:
            return polys, None
        return None, "no polygon with 3 or more finite points" if segm else "empty segmentation"
    if isinstance(segm, dict) and "counts" in segm:
        reason = _check_rle(segm, height, width)
        return (None, reason) if reason else (segm, None)
    if segm is None:
        return None, "no segmentation"
    return None, f"segmentation is neither polygons nor an RLE dict ({type(segm).__name__})"


def _segmentation_to_rle(segm: Any, height: int, width: int) -> dict:
    mask_utils = _pycocotools_mask()
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
    if isinstance(segm["counts"], list):  # uncompressed RLE
        return mask_utils.frPyObjects(segm, height, width)
    return segm


class CocoDetection(Dataset):
    """A COCO instances file and its image folder, as ``(image, target)`` pairs for torchvision's detectors.

    Args:
        image_dir: folder the json's ``file_name`` entries are relative to.
        ann_file: the ``instances_*.json``.
        transforms: ``callable(image, target) -> (image, target)`` on ``tv_tensors`` (``Image`` uint8,
            ``BoundingBoxes``, ``Mask``), e.g. :func:`detection_transforms`. Outputs are turned into plain tensors
            and a uint8 image into float ``[0, 1]``.
        masks: load instance masks (Mask R-CNN); annotations without a usable segmentation are then dropped.
        skip_empty: leave out images with no (remaining) annotation; for training only.
        min_box_size: boxes narrower or lower than this (pixels, after clipping) are dropped (mmdet: 1).
        check_files: drop images whose file does not exist (one stat per image at construction).

    Attributes:
        ids: image ids, in json order.
        cat_ids: category ids in label order (label ``i`` is ``cat_ids[i - 1]``).
        cat_id_to_label / label_to_cat_id: the mapping both ways.
        class_names: category names by label - 1.
        stats: counts of clipped / dropped entries (see the module docstring).
        bad_segmentations: ``(annotation id, image file name, reason)`` of each annotation dropped for its
            segmentation.

    Raises:
        FileNotFoundError: missing json or image folder.
        ValueError: malformed json (naming the entry): not COCO format, duplicate image / category ids, images
            without width / height.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        *,
        transforms: Callable[[Any, Any], tuple[Any, Any]] | None = None,
        masks: bool = True,
        skip_empty: bool = False,
        min_box_size: float = 1.0,
        check_files: bool = True,
    ):
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.masks = masks
        if not self.ann_file.is_file():
            raise FileNotFoundError(f"COCO annotation file {str(self.ann_file)!r} not found")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder {str(self.image_dir)!r} not found")
        try:
            data = json.loads(self.ann_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{self.ann_file}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise ValueError(f"{self.ann_file}: not a COCO instances file (no 'images' list)")
        stats: Counter[str] = Counter()

        self.cat_ids, names = self._categories(data.get("categories"))
        self.cat_id_to_label = {cat_id: i + 1 for i, cat_id in enumerate(self.cat_ids)}
        self.label_to_cat_id = {label: cat_id for cat_id, label in self.cat_id_to_label.items()}
        self.class_names = [names[c] for c in self.cat_ids]

        self.images: dict[int, dict[str, Any]] = {}
        missing_files: list[str] = []
        for entry in data["images"]:
            image_id = entry.get("id") if isinstance(entry, dict) else None
            if not isinstance(image_id, int) or not isinstance(entry.get("file_name"), str):
                raise ValueError(f"{self.ann_file}: image entry {entry!r} needs an int 'id' and a 'file_name'")
            if image_id in self.images:
                raise ValueError(f"{self.ann_file}: duplicate image id {image_id}")
            h, w = entry.get("height"), entry.get("width")
            if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
                raise ValueError(f"{self.ann_file}: image id {image_id} needs positive int 'height' and 'width'")
            self.images[image_id] = dict(file_name=entry["file_name"], height=h, width=w)
            if check_files and not (self.image_dir / entry["file_name"]).is_file():
                missing_files.append(entry["file_name"])
                self.images[image_id]["missing"] = True

        self.annotations: dict[int, list[tuple[tuple[float, float, float, float], int, Any]]] = {
            i: [] for i in self.images
        }
        self.bad_segmentations: list[tuple[Any, str, str]] = []
        for ann in data.get("annotations") or []:
            self._add_annotation(ann, stats, min_box_size)

        stats["missing_file"] = len(missing_files)
        ids = [i for i, info in self.images.items() if not info.get("missing")]
        if skip_empty:
            stats["empty_images_skipped"] = sum(not self.annotations[i] for i in ids)
            ids = [i for i in ids if self.annotations[i]]
        self.ids: list[int] = ids
        self.stats = Counter({k: v for k, v in stats.items() if v})
        problems = [f"{self.stats[k]} {text}" for k, text in _PROBLEMS.items() if self.stats[k]]
        if problems:
            examples = []
            if missing_files:
                examples.append(f"missing: {', '.join(missing_files[:3])}")
            for ann_id, file_name, reason in self.bad_segmentations[:3]:
                examples.append(f"annotation id {ann_id} of {file_name}: {reason}")
            example = f" (e.g. {'; '.join(examples)})" if examples else ""
            warnings.warn(f"{self.ann_file}: {'; '.join(problems)}{example}", stacklevel=2)

    def _categories(self, categories: Any) -> tuple[list[int], dict[int, str]]:
        if not isinstance(categories, list) or not categories:
            raise ValueError(f"{self.ann_file}: no 'categories' list")
        names: dict[int, str] = {}
        for cat in categories:
            cat_id = cat.get("id") if isinstance(cat, dict) else None
            if not isinstance(cat_id, int) or isinstance(cat_id, bool):
                raise ValueError(f"{self.ann_file}: category entry {cat!r} needs an int 'id'")
            if cat_id in names:
                raise ValueError(f"{self.ann_file}: duplicate category id {cat_id}")
            names[cat_id] = str(cat.get("name", cat_id))
        return sorted(names), names

    def _add_annotation(self, ann: Any, stats: Counter, min_box_size: float) -> None:
        if not isinstance(ann, dict):
            stats["boxes_malformed"] += 1
            return
        image_id = ann.get("image_id")
        if image_id not in self.images:
            stats["unknown_image"] += 1
            return
        info = self.images[image_id]
        if info.get("missing"):
            return
        if ann.get("category_id") not in self.cat_id_to_label:
            stats["unknown_category"] += 1
            return
        if ann.get("iscrowd", 0):
            stats["crowd_ignored"] += 1
            return
        bbox = ann.get("bbox")
        if (
            not isinstance(bbox, (list, tuple))
            or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bbox)
        ):
            stats["boxes_malformed"] += 1
            return
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            stats["boxes_degenerate"] += 1
            return
        width, height = info["width"], info["height"]
        box = (
            min(max(x, 0.0), width),
            min(max(y, 0.0), height),
            min(max(x + w, 0.0), width),
            min(max(y + h, 0.0), height),
        )
        if box[2] - box[0] < min_box_size or box[3] - box[1] < min_box_size:
            stats["boxes_too_small"] += 1
            return
        if box != (x, y, x + w, y + h):
            stats["boxes_clipped"] += 1
        segm = None
        if self.masks:
            segm, reason = _valid_segmentation(ann.get("segmentation"), height, width)
            if segm is None:
                stats["bad_segmentation"] += 1
                self.bad_segmentations.append((ann.get("id"), info["file_name"], str(reason)))
                return
        self.annotations[image_id].append((box, self.cat_id_to_label[ann["category_id"]], segm))

    def __len__(self) -> int:
        return len(self.ids)

    def load_image(self, image_id: int) -> Tensor:
        """The image file as uint8 ``[3, H, W]`` RGB; errors name the image."""
        info = self.images[image_id]
        path = self.image_dir / info["file_name"]
        try:
            array = read_rgb_array(path)
        except UnreadableImageError as exc:
            raise ValueError(f"image id {image_id} ({path}): {exc.reason}") from None
        if array.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"image id {image_id} ({path}): file is {array.shape[1]}x{array.shape[0]} (WxH) but the json says "
                f"{info['width']}x{info['height']}; the annotations would not fit the pixels"
            )
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def __getitem__(self, index: int) -> tuple[Tensor, dict[str, Any]]:
        from torchvision import tv_tensors

        image_id = self.ids[index]
        height, width = self.images[image_id]["height"], self.images[image_id]["width"]
        anns = self.annotations[image_id]
        boxes = torch.tensor([a[0] for a in anns], dtype=torch.float32).reshape(-1, 4)
        target: dict[str, Any] = {
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(height, width)),
            "labels": torch.tensor([a[1] for a in anns], dtype=torch.int64),
            "image_id": image_id,
            "orig_size": torch.tensor([height, width]),
        }
        if self.masks:
            if anns:
                try:
                    rles = [_segmentation_to_rle(a[2], height, width) for a in anns]
                    with warnings.catch_warnings():  # pycocotools' decode predates numpy 2's __array__(copy=)
                        warnings.simplefilter("ignore", DeprecationWarning)
                        masks = np.ascontiguousarray(_pycocotools_mask().decode(rles).transpose(2, 0, 1))
                except (ValueError, TypeError) as exc:  # checked at construction: only a changed file gets here
                    raise ValueError(
                        f"image id {image_id} ({self.images[image_id]['file_name']}) of {self.ann_file}: "
                        f"pycocotools cannot decode its segmentations ({exc})"
                    ) from None
            else:
                masks = np.zeros((0, height, width), dtype=np.uint8)
            target["masks"] = tv_tensors.Mask(torch.from_numpy(masks))
        image: Any = tv_tensors.Image(self.load_image(image_id))
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        image = image.as_subclass(Tensor)
        if not image.is_floating_point():
            image = image.float() / 255
        target = {k: v.as_subclass(Tensor) if isinstance(v, Tensor) else v for k, v in target.items()}
        target["size"] = torch.tensor(image.shape[-2:])
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(images={len(self)}, classes={len(self.cat_ids)}, masks={self.masks}, "
            f"ann_file={str(self.ann_file)!r})"
        )


def detection_collate(batch: Sequence[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict[str, Any]]]:
    """``[(image, target), ...]`` -> ``(images, targets)`` lists, the input of torchvision's detectors."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


#: The crop branch of the Swin 3x policy (``aug.policy: 3x``): shorter side to one of these (longer side <= 1333) ...
CROP_POLICY_RESIZE: tuple[int, ...] = (400, 500, 600)
#: ... then a crop of height and width each drawn from 384..600 (mmdet ``RandomCrop(crop_type='absolute_range')``).
CROP_POLICY_RANGE: tuple[int, int] = (384, 600)


def _random_range_crop_cls() -> type:
    from torchvision.transforms import v2
    from torchvision.transforms.v2._utils import query_size

    class RandomRangeCrop(v2.Transform):
        """A crop of height and width each drawn uniformly from ``min(side, lo)..min(side, hi)`` at a uniform offset
        (mmdet ``RandomCrop(crop_type='absolute_range')``); boxes are shifted and clipped to the crop, boxes left with
        no area dropped with their labels and masks (follow with ``SanitizeBoundingBoxes``)."""

        def __init__(self, lo: int, hi: int) -> None:
            super().__init__()
            if not 0 < lo <= hi:
                raise ValueError(f"crop range must satisfy 0 < lo <= hi, got ({lo}, {hi})")
            self.lo, self.hi = lo, hi

        def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
            h, w = query_size(flat_inputs)
            ch = int(torch.randint(min(h, self.lo), min(h, self.hi) + 1, ()))
            cw = int(torch.randint(min(w, self.lo), min(w, self.hi) + 1, ()))
            top = int(torch.randint(0, h - ch + 1, ()))
            left = int(torch.randint(0, w - cw + 1, ()))
            return dict(top=top, left=left, height=ch, width=cw)

        def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
            return self._call_kernel(v2.functional.crop, inpt, **params)

    return RandomRangeCrop


def random_range_crop(lo: int = CROP_POLICY_RANGE[0], hi: int = CROP_POLICY_RANGE[1]) -> Callable[..., Any]:
    """The random crop of the Swin 3x policy as a torchvision v2 transform, boxes clipped and empty ones dropped."""
    from torchvision.transforms import v2

    return v2.Compose([_random_range_crop_cls()(lo, hi), v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1)])


def crop_policy(max_size: int = 1333) -> Callable[..., Any]:
    """Swin's 3x ``AutoAugment`` policy, one of two branches per image with equal probability: (a) nothing here, or
    (b) shorter side to 400 / 500 / 600 (longer side <= ``max_size``) then :func:`random_range_crop`. Both branches
    end with the detector's own multi-scale resize (``model.min_size`` 480..800, ``max_size`` 1333), which is the
    policy's resize of branch (a) and its final ``override`` resize of branch (b)."""
    from torchvision.transforms import v2

    crop = v2.Compose([v2.RandomShortestSize(list(CROP_POLICY_RESIZE), max_size), random_range_crop()])
    return v2.RandomChoice([v2.Identity(), crop])


#: ``aug.policy`` values: ``None`` (flip only) or ``"3x"`` (:func:`crop_policy`).
DETECTION_POLICIES: tuple[str | None, ...] = (None, "3x")


def detection_transforms(
    *,
    train: bool,
    flip_prob: float = 0.5,
    min_size: int | Sequence[int] | None = None,
    max_size: int | None = None,
    policy: str | None = None,
) -> Callable[[Any, Any], tuple[Any, Any]]:
    """torchvision v2 transforms for :class:`CocoDetection` (image, boxes and masks transformed together).

    Training: random horizontal flip; evaluation: nothing. Optional resizing (shorter side ``min_size``, one of the
    values at random per image in training, longer side <= ``max_size``) is rarely needed: torchvision's detectors
    resize inside the model (``build_detector(min_size=..., max_size=...)``, which is also where multi-scale training
    belongs, since the model would otherwise resize the image again), and predictions are in the input's pixels.
    Boxes that become smaller than 1 pixel are dropped with their labels and masks. ``policy="3x"`` adds Swin's 3x
    resize-and-crop policy after the flip in training (:func:`crop_policy`).
    """
    from torchvision.transforms import v2

    if policy not in DETECTION_POLICIES:
        raise ValueError(f"aug.policy must be one of {DETECTION_POLICIES}, got {policy!r}")
    ops: list[Any] = []
    if train and flip_prob > 0:
        ops.append(v2.RandomHorizontalFlip(flip_prob))
    if train and policy == "3x":
        ops.append(crop_policy(max_size or 1333))
    if min_size is not None:
        sizes = [min_size] if isinstance(min_size, int) else list(min_size)
        if train and len(sizes) > 1:
            ops.append(v2.RandomShortestSize(sizes, max_size))
        else:
            ops.append(v2.Resize(sizes[-1], max_size=max_size))
        ops.append(v2.SanitizeBoundingBoxes(min_size=1))
    ops.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(ops)


def det_demo_dir(root: str | os.PathLike | None = None) -> Path:
    """The embedded detection demo set (:func:`~crossformer_vision.data.embedded.embedded_dir`)."""
    layout = "instances_{train,val}.json, train/, val/"
    return embedded_dir("det_demo", root, "instances_val.json", layout, DET_DEMO_REBUILD_COMMAND)


def det_demo(split: str = "train", *, root: str | os.PathLike | None = None, **kwargs: Any) -> CocoDetection:
    """The embedded demo set: 128 x 128 scenes of 2-5 Fashion-MNIST items, 10 classes, exact boxes and masks
    (a synthetic layout; see ``data/det_demo/README.md``).

    Args:
        split: ``"train"`` (400 images) or ``"val"`` (100 images).
        root: folder holding ``instances_{train,val}.json`` and ``train/``, ``val/`` (default: :func:`det_demo_dir`).
        **kwargs: :class:`CocoDetection` options (``transforms``, ``masks``, ``skip_empty``, ...).
    """
    if split not in ("train", "val"):
        raise ValueError(f"det_demo: unknown split {split!r}; use 'train' or 'val'")
    path = det_demo_dir(root)
    return CocoDetection(path / split, path / f"instances_{split}.json", **kwargs)
