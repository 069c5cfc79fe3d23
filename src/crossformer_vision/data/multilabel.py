"""Multi-label image sets: PASCAL VOC2007 as distributed, COCO instances files (image-level labels), a plain CSV layout
for your own data, and the embedded multi-label demo scenes.

Every reader returns a :class:`MultiLabelSet`: image files with a target row each, ``1`` (present), ``0`` (absent) or
``-1`` (ignored: counts in no loss and no metric). Input from outside is untrusted: bad entries (a missing or
unparsable annotation file, an object of an unknown class, an image file that is missing, a CSV row without an
image) are left out, counted by kind in ``stats`` and named in one warning with the first examples; only a set with
nothing usable left is an error. Images are read by :func:`.images.read_rgb` when a sample is drawn (unreadable ones
become :class:`.folder.SkippedSample` markers, as in classification).

* **VOC2007** (``root`` = ``VOCdevkit/VOC2007`` or ``VOCdevkit``): ``ImageSets/Main/<split>.txt`` lists the images,
  ``Annotations/<id>.xml`` their objects, ``JPEGImages/<id>.jpg`` the pictures. A class is present when the image
  has an object of it that is not ``difficult``; a class with ``difficult`` objects only is, as in the paper's code
  (``prepare_voc.py`` / ``cal_mAP.py``), a negative for training and ignored in evaluation (``difficult=`` chooses).
* **COCO** (an ``instances_*.json`` and its image folder): a category is present when the image has a (non-crowd,
  valid) box of it; images without annotations are left out, as in the paper's ``prepare_coco.py``. The json is read
  by :class:`.coco.CocoDetection`, which counts and names its own bad entries.
* **CSV** (``<root>/<split>.csv``): columns ``image`` (a path relative to ``root``), ``labels`` (class names joined
  by ``;``, may be empty) and optionally ``ignore`` (names neither present nor absent). The classes are the lines of
  ``<root>/classes.txt`` when it exists, else every name the training CSV uses, sorted.
* **demo** (:func:`demo_scenes`): 2-5 Fashion-MNIST items per canvas, built by :mod:`.scenes`.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .folder import SkippedSample, read_or_skip

__all__ = [
    "DIFFICULT_CHOICES",
    "VOC_CLASSES",
    "DemoScenes",
    "MultiLabelImages",
    "MultiLabelSet",
    "demo_cache_dir",
    "demo_scenes",
    "read_coco_labels",
    "read_csv_labels",
    "read_voc2007",
]

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
DIFFICULT_CHOICES = ("negative", "ignore", "positive")  # the choices of ``difficult=``
_MAX_XML_BYTES = 1_000_000  # a VOC annotation is a few KB
_MAX_CSV_BYTES = 500_000_000
_EXAMPLES = 3


@dataclass
class MultiLabelSet:
    """Image files and their targets: ``targets [N, K]`` int8 in {1, 0, -1}; ``stats`` counts what was left out."""

    paths: list[str]
    targets: np.ndarray
    classes: list[str]
    source: str
    stats: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def warn_problems(self) -> None:
        """One warning naming the counts and the first bad entries (nothing when all was usable)."""
        if self.stats:
            counts = "; ".join(f"{n} {what}" for what, n in sorted(self.stats.items()))
            warnings.warn(f"{self.source}: left out {counts} (e.g. {'; '.join(self.examples)})", stacklevel=3)


def _note(found: MultiLabelSet, kind: str, example: str) -> None:
    found.stats[kind] += 1
    if len(found.examples) < _EXAMPLES:
        found.examples.append(example)


def _finish(found: MultiLabelSet) -> MultiLabelSet:
    found.warn_problems()
    if not found.paths:
        raise ValueError(f"{found.source}: no usable image (left out: {dict(found.stats) or 'none listed'})")
    return found


# ------------------------------------------------------------------------------------------------------------ VOC
def _voc_dir(root: str | os.PathLike) -> Path:
    root = Path(root)
    for candidate in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (candidate / "Annotations").is_dir() and (candidate / "ImageSets" / "Main").is_dir():
            return candidate
    raise FileNotFoundError(
        f"{root} is not a VOC2007 folder: expected Annotations/, ImageSets/Main/ and JPEGImages/ in it, or in its "
        "VOC2007/ or VOCdevkit/VOC2007/"
    )


def _voc_objects(xml_path: Path) -> list[tuple[str, bool]]:
    """``(class name, difficult)`` of each object of a VOC annotation file (ValueError when unusable)."""
    if xml_path.stat().st_size > _MAX_XML_BYTES:
        raise ValueError(f"larger than {_MAX_XML_BYTES} bytes")
    try:
        root = ET.fromstring(xml_path.read_bytes())
    except ET.ParseError as err:
        raise ValueError(f"not valid XML ({err})") from None
    objects = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        objects.append((name, (obj.findtext("difficult") or "0").strip() == "1"))
    return objects


def read_voc2007(
    root: str | os.PathLike, split: str, difficult: str = "ignore", classes: Sequence[str] = VOC_CLASSES
) -> MultiLabelSet:
    """The images of ``ImageSets/Main/<split>.txt`` with their labels (see the module docstring).

    Args:
        difficult: What a class with ``difficult`` objects only is: ``"ignore"`` (-1, the paper's evaluation),
            ``"negative"`` (0, the paper's training) or ``"positive"``.
    """
    if difficult not in DIFFICULT_CHOICES:
        raise ValueError(f"difficult must be one of {DIFFICULT_CHOICES}, got {difficult!r}")
    voc = _voc_dir(root)
    listing = voc / "ImageSets" / "Main" / f"{split}.txt"
    if not listing.is_file():
        present = sorted(p.stem for p in (voc / "ImageSets" / "Main").glob("*.txt") if "_" not in p.stem)
        raise FileNotFoundError(f"no image list {listing} (found: {present or 'none'}); VOC2007 has trainval and test")
    index = {name: i for i, name in enumerate(classes)}
    only_difficult = {"ignore": -1, "negative": 0, "positive": 1}[difficult]
    found = MultiLabelSet([], np.zeros((0, len(classes)), np.int8), list(classes), f"VOC2007 {split} ({voc})")
    rows = []
    for line in listing.read_text().splitlines():
        image_id = line.strip().split()[0] if line.strip() else ""
        if not image_id:
            continue
        xml_path, jpg = voc / "Annotations" / f"{image_id}.xml", voc / "JPEGImages" / f"{image_id}.jpg"
        if not jpg.is_file():
            _note(found, "image(s) whose file is missing", f"missing {jpg.name}")
            continue
        try:
            objects = _voc_objects(xml_path)
        except FileNotFoundError:
            _note(found, "image(s) without an annotation file", f"missing {xml_path.name}")
            continue
        except (OSError, ValueError) as err:
            _note(found, "image(s) with an unreadable annotation file", f"{xml_path.name}: {err}")
            continue
        row = np.zeros(len(classes), np.int8)
        hard = np.zeros(len(classes), bool)
        for name, is_difficult in objects:
            if name not in index:
                _note(found, "object(s) of an unknown class", f"{xml_path.name}: class {name[:40]!r}")
                continue
            if is_difficult:
                hard[index[name]] = True
            else:
                row[index[name]] = 1
        row[hard & (row == 0)] = only_difficult
        found.paths.append(str(jpg))
        rows.append(row)
    found.targets = np.stack(rows) if rows else found.targets
    return _finish(found)


# ----------------------------------------------------------------------------------------------------------- COCO
def read_coco_labels(image_dir: str | os.PathLike, ann_file: str | os.PathLike) -> MultiLabelSet:
    """Image-level labels of a COCO instances file (categories in id order; images without annotations left out)."""
    from .coco import CocoDetection

    coco = CocoDetection(image_dir, ann_file, masks=False, skip_empty=True)  # warns about its own bad entries
    targets = np.zeros((len(coco.ids), len(coco.cat_ids)), np.int8)
    paths = []
    for row, image_id in enumerate(coco.ids):
        paths.append(str(coco.image_dir / coco.images[image_id]["file_name"]))
        for _, label, _ in coco.annotations[image_id]:
            targets[row, label - 1] = 1
    found = MultiLabelSet(paths, targets, list(coco.class_names), f"COCO {Path(ann_file).name}")
    found.stats.update({k: v for k, v in coco.stats.items() if k != "empty_images_skipped"})
    return _finish(found)


# ------------------------------------------------------------------------------------------------------------ CSV
def csv_classes(root: str | os.PathLike, train_split: str) -> list[str]:
    """``<root>/classes.txt`` (one name a line), else the sorted names the training CSV uses."""
    root = Path(root)
    listed = root / "classes.txt"
    if listed.is_file():
        names = [n.strip() for n in listed.read_text().splitlines() if n.strip()]
        if len(set(names)) != len(names):
            raise ValueError(f"{listed} names a class twice")
        return names
    names = set()
    for row in _csv_rows(root / f"{train_split}.csv"):
        names.update(_names(row.get("labels")))
        names.update(_names(row.get("ignore")))
    if not names:
        raise ValueError(f"{root / f'{train_split}.csv'} names no label; list the classes in {listed}")
    return sorted(names)


def _names(cell: str | None) -> list[str]:
    return [n.strip() for n in (cell or "").split(";") if n.strip()]


def _csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"no label file {path}; expected a CSV with columns image,labels[,ignore]")
    if path.stat().st_size > _MAX_CSV_BYTES:
        raise ValueError(f"{path} is larger than {_MAX_CSV_BYTES} bytes")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "image" not in reader.fieldnames or "labels" not in reader.fieldnames:
            raise ValueError(f"{path}: the first line must name the columns image,labels[,ignore]")
        return list(reader)


def read_csv_labels(root: str | os.PathLike, split: str, classes: Sequence[str]) -> MultiLabelSet:
    """The rows of ``<root>/<split>.csv`` (see the module docstring) over ``classes``."""
    root = Path(root)
    path = root / f"{split}.csv"
    index = {name: i for i, name in enumerate(classes)}
    found = MultiLabelSet([], np.zeros((0, len(classes)), np.int8), list(classes), str(path))
    rows = []
    for line, row in enumerate(_csv_rows(path), start=2):
        image = (row.get("image") or "").strip()
        if not image:
            _note(found, "row(s) without an image", f"line {line}")
            continue
        file = root / image
        if not file.is_file():
            _note(found, "image(s) whose file is missing", f"line {line}: {image[:80]}")
            continue
        target = np.zeros(len(classes), np.int8)
        for column, value in (("ignore", -1), ("labels", 1)):  # a name in both is present
            for name in _names(row.get(column)):
                if name not in index:
                    _note(found, "label(s) of an unknown class", f"line {line}: {name[:40]!r}")
                    continue
                target[index[name]] = value
        found.paths.append(str(file))
        rows.append(target)
    found.targets = np.stack(rows) if rows else found.targets
    return _finish(found)


# ------------------------------------------------------------------------------------------------------ datasets
class MultiLabelImages(Dataset):
    """``(image, {"target": float [K], "index": i})`` samples of a :class:`MultiLabelSet`, images read when drawn.

    Args:
        found: The files and targets.
        transform: Applied to the RGB PIL image.
        on_error: ``"skip"`` (return a :class:`~.folder.SkippedSample`, counted by the collate function) or
            ``"raise"``.
    """

    def __init__(self, found: MultiLabelSet, transform: Callable | None = None, on_error: str = "skip"):
        if on_error not in ("skip", "raise"):
            raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        self.found, self.transform, self.on_error = found, transform, on_error
        self.classes = found.classes
        self.targets = torch.from_numpy(found.targets.astype(np.float32))

    def __len__(self) -> int:
        return len(self.found.paths)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]] | SkippedSample:
        image = read_or_skip(self.found.paths[index], self.transform, self.on_error)
        return image if isinstance(image, SkippedSample) else (image, {"target": self.targets[index], "index": index})


# ----------------------------------------------------------------------------------------------------------- demo
@dataclass
class DemoScenes:
    """The multi-label demo scenes of one split: ``images [N, S, S]`` uint8 (grey), ``targets [N, 10]`` int8 and each
    item's ``boxes [M, 6]`` int32 rows ``(scene, class, x, y, width, height)`` (tight boxes of its visible pixels,
    for explanation maps' pointing game)."""

    images: np.ndarray
    targets: np.ndarray
    boxes: np.ndarray
    classes: list[str]

    def boxes_of(self, scene: int) -> list[tuple[int, tuple[int, int, int, int]]]:
        """``[(class, (x, y, width, height))]`` of scene ``scene``'s items."""
        rows = self.boxes[self.boxes[:, 0] == scene]
        return [(int(r[1]), (int(r[2]), int(r[3]), int(r[4]), int(r[5]))) for r in rows]


#: Where the demo scenes are cached (else ``~/.cache/crossformer_vision``).
CACHE_ENV = "CROSSFORMER_CACHE_DIR"
_DEMO_VERSION = 1  # bump when the scene builder changes what it draws


def demo_cache_dir() -> Path:
    base = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "crossformer_vision")
    return Path(base) / "multilabel_demo"


def _build_scenes(split: str, count: int, size: int, side, objects, seed: int, root) -> DemoScenes:
    from .fashion_mnist import CLASS_NAMES, FashionMNIST
    from .scenes import SPLITS, iter_scenes, tight_box

    fmnist = FashionMNIST(root, SPLITS[split][0])
    items, labels = fmnist.data, np.asarray(fmnist.targets)
    images = np.zeros((count, size, size), np.uint8)
    targets = np.zeros((count, len(CLASS_NAMES)), np.int8)
    boxes = []
    scenes = iter_scenes(items, labels, split, count, size, seed, side=tuple(side), objects=tuple(objects))
    for i, (image, placed) in enumerate(scenes):
        images[i] = image
        for label, mask in placed:
            targets[i, label] = 1
            boxes.append((i, label, *tight_box(mask)))
    return DemoScenes(images, targets, np.asarray(boxes, np.int32).reshape(-1, 6), list(CLASS_NAMES))


def demo_scenes(
    split: str,
    count: int,
    size: int = 96,
    side: Sequence[int] = (16, 40),
    objects: Sequence[int] = (2, 5),
    seed: int = 0,
    root: str | os.PathLike | None = None,
    cache: bool = True,
) -> DemoScenes:
    """The multi-label demo scenes, built deterministically from the embedded Fashion-MNIST at first use and cached.

    Scene ``i`` depends only on ``(split, size, side, objects, seed, i)`` (:mod:`.scenes`); the cache file (an
    ``.npz`` in :func:`demo_cache_dir`, named by those settings and the Fashion-MNIST files' contents) only saves
    the few seconds of building: a missing or damaged file is rebuilt, and ``cache=False`` never touches the disk.

    Args:
        split: ``"train"`` (items of the Fashion-MNIST training subset) or ``"val"`` (items of its test set).
        count: Scenes. size: Canvas side in pixels. side: Smallest / largest item width. objects: Items tried per
            canvas. seed: Generator seed. root: The Fashion-MNIST folder (default: the embedded one).
    """
    from .fashion_mnist import SPLIT_FILES, fashion_mnist_dir

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not cache:
        return _build_scenes(split, count, size, side, objects, seed, root)
    source = fashion_mnist_dir(root)
    digest = hashlib.sha256()
    for name in SPLIT_FILES["train" if split == "train" else "test"]:
        digest.update((source / name).read_bytes())
    key = f"v{_DEMO_VERSION}-{split}-{count}-{size}-{tuple(side)}-{tuple(objects)}-{seed}-{digest.hexdigest()[:16]}"
    path = demo_cache_dir() / f"scenes-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                scenes = DemoScenes(data["images"], data["targets"], data["boxes"], [str(c) for c in data["classes"]])
            if scenes.images.shape == (count, size, size) and scenes.targets.shape[0] == count:
                return scenes
        except (OSError, ValueError, KeyError):
            pass  # damaged: rebuilt below
    scenes = _build_scenes(split, count, size, side, objects, seed, root)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, images=scenes.images, targets=scenes.targets, boxes=scenes.boxes,
                            classes=np.asarray(scenes.classes))  # fmt: skip
        os.replace(tmp, path)
    except OSError as err:  # a read-only home: the scenes are still returned
        warnings.warn(f"could not cache the multi-label demo scenes in {path.parent} ({err})", stacklevel=2)
    return scenes
