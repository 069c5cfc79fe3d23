"""Fashion-MNIST as embedded in the repository: IDX reading/writing and a map-style dataset.

The repository ships a class-balanced subset of the Fashion-MNIST training set and the full
test set under ``data/fashion_mnist/`` (gzip-compressed IDX files, MIT licence, Zalando SE), so
demos and tests run offline. ``scripts/build_fashion_mnist_subset.py`` rebuilds it.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from .embedded import DATA_DIR_ENV, embedded_dir

__all__ = [
    "CLASS_NAMES",
    "DATA_DIR_ENV",
    "REBUILD_COMMAND",
    "SPLIT_FILES",
    "FashionMNIST",
    "balanced_first",
    "fashion_mnist_dir",
    "read_idx",
    "write_idx",
]

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

REBUILD_COMMAND = (
    "apt-get install dataset-fashion-mnist && python scripts/build_fashion_mnist_subset.py  (from the repository root)"
)

# split -> (images file, labels file)
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# IDX type code -> big-endian numpy dtype (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_CODES: dict[np.dtype, int] = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _missing_message(what: str) -> str:
    return (
        f"{what}. The embedded Fashion-MNIST data ships in the repository's data/fashion_mnist/; point "
        f"${DATA_DIR_ENV} at a directory holding fashion_mnist/, pass root=..., or rebuild it with: {REBUILD_COMMAND}"
    )


def fashion_mnist_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """Locate the directory that holds the Fashion-MNIST IDX files.

    Resolution order: the explicit ``root`` (the directory holding the files), then
    ``$CROSSFORMER_DATA_DIR/fashion_mnist``, then the repository's ``data/fashion_mnist``
    next to the package source.

    Args:
        root: Directory holding ``train-images-idx3-ubyte.gz`` and the other IDX files.

    Returns:
        The directory, which exists.

    Raises:
        FileNotFoundError: The chosen directory does not exist; the message says how to rebuild it.
    """
    return embedded_dir("fashion_mnist", root, "", "the Fashion-MNIST IDX files", REBUILD_COMMAND)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or plain.

    Compression is detected from the content, not the name.

    Args:
        path: The file.

    Returns:
        The array in native byte order, e.g. ``[N, 28, 28]`` uint8 images or ``[N]`` uint8 labels.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: Corrupt file (bad gzip stream, bad magic number, unknown type code) or a payload
            whose length does not match the header's dimensions; the message names the file.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise ValueError(f"{path}: corrupt or truncated gzip stream ({exc})") from exc
    if len(raw) < 4:
        raise ValueError(f"{path}: not an IDX file (only {len(raw)} bytes, the header needs 4)")
    zero, type_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ValueError(
            f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000TTNN with type TT in "
            f"{sorted(f'{code:02x}' for code in _IDX_DTYPES)} and NN >= 1 dimensions)"
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header_len})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_len
    if actual != expected:
        kind = "truncated" if actual < expected else "has trailing bytes"
        raise ValueError(f"{path}: IDX payload {kind}: dimensions {dims} need {expected} bytes, found {actual}")
    array = np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims)
    # One copy: native byte order and a writable array (frombuffer over bytes is read-only).
    return array.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, compresslevel: int = 9) -> None:
    """Write an array as an IDX file, gzip-compressed when the name ends in ``.gz``.

    The gzip header carries mtime 0 and no file name, so equal arrays give byte-identical files
    (for a given zlib version).

    Args:
        path: Destination file.
        array: Array of uint8, int8, int16, int32, float32 or float64 with at least one dimension.
        compresslevel: gzip level, 0-9.

    Raises:
        ValueError: Unsupported dtype or a 0-d array.
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _IDX_CODES:
        raise ValueError(
            f"write_idx: dtype {array.dtype} has no IDX type code; use one of {sorted(map(str, _IDX_CODES))}"
        )
    if array.ndim == 0:
        raise ValueError("write_idx: IDX needs at least one dimension, got a 0-d array")
    header = bytes([0, 0, _IDX_CODES[native], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=native.newbyteorder(">")).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        buffer = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=compresslevel, mtime=0) as gz:
            gz.write(payload)
        payload = buffer.getvalue()
    path.write_bytes(payload)


def balanced_first(labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of a class-balanced selection of ``limit`` samples, taking the first of each class.

    Classes take turns in label order (each class's 1st sample, then each one's 2nd, ...), so class
    counts differ by at most one while every class has samples left. The result is sorted.

    Args:
        labels: ``[N]`` integer labels.
        limit: Number of samples to select, ``1 <= limit <= N``.

    Returns:
        ``[limit]`` sorted int64 indices into ``labels``.
    """
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    sorted_labels = labels[order]
    class_start = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(labels), dtype=np.int64)
    rank[order] = np.arange(len(labels)) - class_start
    # lexsort's last key is the primary one: by rank within class, then by label.
    turn_order = np.lexsort((labels, rank))
    return np.sort(turn_order[:limit]).astype(np.int64)


class FashionMNIST(Dataset):
    """Fashion-MNIST from the IDX files embedded in the repository (or any directory holding them).

    Images are held in memory as one ``[N, 28, 28]`` uint8 array. ``__getitem__`` gives a PIL image
    converted to RGB (so models see 3 channels), passed through ``transform`` when one is given,
    and the integer label.

    Args:
        root: Directory holding the IDX files; default: see :func:`fashion_mnist_dir`.
        split: ``"train"`` (the embedded class-balanced subset) or ``"test"`` (the full 10,000 images).
        transform: Callable applied to the RGB PIL image, e.g. a torchvision transform.
        target_transform: Callable applied to the integer label.
        limit: Keep only this many samples, class-balanced: the first samples of each class in file
            order, classes taking turns (deterministic). ``None`` keeps all.

    Attributes:
        classes: The 10 class names, indexed by label.
        data: ``[N, 28, 28]`` uint8 images.
        targets: ``N`` integer labels in ``[0, 10)``.
        root: The directory the files were read from.
        split: The split name.

    Raises:
        ValueError: Unknown split, bad ``limit``, or corrupt/inconsistent files (the message names the file).
        FileNotFoundError: Missing directory or files; the message says how to rebuild them.
    """

    classes: list[str] = list(CLASS_NAMES)

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "train",
        *,
        transform: Callable[[Image.Image], Any] | None = None,
        target_transform: Callable[[int], Any] | None = None,
        limit: int | None = None,
    ) -> None:
        if split not in SPLIT_FILES:
            raise ValueError(f"FashionMNIST: unknown split {split!r}; use one of {sorted(SPLIT_FILES)}")
        self.root = fashion_mnist_dir(root)
        self.split = split
        self.transform = transform
        self.target_transform = target_transform

        images_path, labels_path = (self.root / name for name in SPLIT_FILES[split])
        for path in (images_path, labels_path):
            if not path.is_file():
                raise FileNotFoundError(_missing_message(f"Fashion-MNIST file {str(path)!r} not found"))
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{images_path}: expected [N, H, W] uint8 images, got {images.dtype} {images.shape}")
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise ValueError(f"{labels_path}: expected [N] uint8 labels, got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{images_path}: {len(images)} images but {labels_path} has {len(labels)} labels")
        if len(labels) and labels.max() >= len(CLASS_NAMES):
            raise ValueError(f"{labels_path}: label {int(labels.max())} outside [0, {len(CLASS_NAMES)})")

        if limit is not None:
            if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= len(labels):
                raise ValueError(f"FashionMNIST: limit={limit!r} must be an int in [1, {len(labels)}] or None")
            keep = balanced_first(labels, limit)
            images, labels = images[keep], labels[keep]
        self.data: np.ndarray = images
        self.targets: list[int] = labels.tolist()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image: Any = Image.fromarray(self.data[index]).convert("RGB")
        target: Any = self.targets[index]
        if self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split!r}, num_samples={len(self)}, root={str(self.root)!r})"
