"""The embedded Fashion-MNIST data and its loader."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crossformer_vision.data import (
    CLASS_NAMES,
    DATA_DIR_ENV,
    FashionMNIST,
    balanced_first,
    fashion_mnist_dir,
    read_idx,
    write_idx,
)
from crossformer_vision.data.fashion_mnist import SPLIT_FILES

SPLIT_SIZES = {"train": 30000, "test": 10000}


@pytest.fixture(scope="module")
def train_set() -> FashionMNIST:
    return FashionMNIST(split="train")


@pytest.fixture(scope="module")
def test_set() -> FashionMNIST:
    return FashionMNIST(split="test")


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Path:
    """A directory with both splits: 7 train images over 3 classes, 4 test images."""
    train_labels = np.array([0, 0, 0, 1, 2, 2, 1], dtype=np.uint8)
    test_labels = np.array([3, 4, 5, 9], dtype=np.uint8)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        images = np.stack([np.full((28, 28), 10 * i, dtype=np.uint8) for i in range(len(labels))])
        images_name, labels_name = SPLIT_FILES[split]
        write_idx(tmp_path / images_name, images)
        write_idx(tmp_path / labels_name, labels)
    return tmp_path


@pytest.mark.parametrize("split", ["train", "test"])
def test_embedded_split(split: str, train_set: FashionMNIST, test_set: FashionMNIST) -> None:
    dataset = train_set if split == "train" else test_set
    assert len(dataset) == SPLIT_SIZES[split]
    assert dataset.data.shape == (SPLIT_SIZES[split], 28, 28) and dataset.data.dtype == np.uint8
    assert isinstance(dataset.targets, list) and all(isinstance(t, int) for t in dataset.targets[:100])
    counts = np.bincount(dataset.targets, minlength=10)
    assert counts.tolist() == [SPLIT_SIZES[split] // 10] * 10
    assert min(dataset.targets) == 0 and max(dataset.targets) == 9
    assert dataset.classes == list(CLASS_NAMES) and len(CLASS_NAMES) == 10
    assert dataset.data.max() > 200 and dataset.data.min() == 0  # real images, not blank


def test_default_dir_is_repo_data() -> None:
    expected = Path(__file__).resolve().parents[1] / "data" / "fashion_mnist"
    assert fashion_mnist_dir() == expected


def test_getitem_is_rgb_pil(test_set: FashionMNIST) -> None:
    image, label = test_set[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (28, 28)
    assert isinstance(label, int) and label == test_set.targets[0]
    pixels = np.asarray(image)
    assert pixels.shape == (28, 28, 3)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], test_set.data[0])


def test_transform_hooks(test_set: FashionMNIST) -> None:
    def to_tensor(image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float() / 255

    dataset = FashionMNIST(split="test", transform=to_tensor, target_transform=lambda t: t + 100, limit=20)
    image, label = dataset[3]
    assert image.shape == (3, 28, 28) and image.dtype == torch.float32
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert label == dataset.targets[3] + 100
    batch_images, batch_labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    assert batch_images.shape == (8, 3, 28, 28) and batch_labels.shape == (8,)


def test_limit_is_balanced_and_deterministic(train_set: FashionMNIST) -> None:
    dataset = FashionMNIST(split="train", limit=105)
    assert len(dataset) == 105 and dataset.data.shape == (105, 28, 28)
    counts = np.bincount(dataset.targets, minlength=10)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 105
    # The selection is the first samples of each class, in file order.
    full_targets = np.array(train_set.targets)
    for label in range(10):
        first = np.flatnonzero(full_targets == label)[: counts[label]]
        np.testing.assert_array_equal(dataset.data[np.array(dataset.targets) == label], train_set.data[first])
    again = FashionMNIST(split="train", limit=105)
    assert again.targets == dataset.targets and np.array_equal(again.data, dataset.data)


def test_balanced_first_takes_turns() -> None:
    labels = np.array([0, 0, 0, 1, 2, 2, 1, 0])
    np.testing.assert_array_equal(balanced_first(labels, 3), [0, 3, 4])
    np.testing.assert_array_equal(balanced_first(labels, 5), [0, 1, 3, 4, 6])
    # Once a class runs out, the others fill in.
    np.testing.assert_array_equal(balanced_first(labels, 8), np.arange(8))


@pytest.mark.parametrize("limit", [0, -1, 8, 2.5, True])
def test_bad_limit_raises(tiny_dir: Path, limit: object) -> None:
    with pytest.raises(ValueError, match="limit"):
        FashionMNIST(tiny_dir, split="train", limit=limit)  # type: ignore[arg-type]


def test_bad_split_raises(tiny_dir: Path) -> None:
    with pytest.raises(ValueError, match="'val'"):
        FashionMNIST(tiny_dir, split="val")


def test_explicit_root_and_env_var(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset = FashionMNIST(tiny_dir, split="train")
    assert len(dataset) == 7 and dataset.targets == [0, 0, 0, 1, 2, 2, 1]
    assert np.asarray(dataset[4][0])[0, 0].tolist() == [40, 40, 40]

    data_root = tiny_dir.parent / "data_root"
    data_root.mkdir()
    tiny_dir.rename(data_root / "fashion_mnist")
    monkeypatch.setenv(DATA_DIR_ENV, str(data_root))
    assert fashion_mnist_dir() == data_root / "fashion_mnist"
    assert len(FashionMNIST(split="test")) == 4


@pytest.mark.parametrize("compressed", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path: Path, compressed: bool, dtype: type) -> None:
    array = (np.arange(60) - 7).astype(dtype).reshape(3, 4, 5)
    path = tmp_path / ("a.idx.gz" if compressed else "a.idx")
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") is compressed
    loaded = read_idx(path)
    assert loaded.dtype == np.dtype(dtype) and loaded.flags.writeable
    np.testing.assert_array_equal(loaded, array)


def test_idx_gzip_is_reproducible(tmp_path: Path) -> None:
    array = np.arange(1000, dtype=np.uint8)
    write_idx(tmp_path / "a.gz", array)
    write_idx(tmp_path / "b.gz", array)
    assert (tmp_path / "a.gz").read_bytes() == (tmp_path / "b.gz").read_bytes()


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("truncated-payload.idx", _idx_bytes(np.zeros((4, 28, 28)))[:-100], "truncated"),
        ("trailing.idx", _idx_bytes(np.zeros((4, 28, 28))) + b"\0", "trailing"),
        ("bad-magic.idx", b"\x01\x02\x08\x03" + _idx_bytes(np.zeros((2, 2, 2)))[4:], "magic"),
        ("bad-type.idx", b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "magic"),
        ("short.idx", b"\x00\x00", "header"),
        ("short-dims.idx", b"\x00\x00\x08\x03\x00\x00\x00\x04", "header"),
        ("truncated.gz", gzip.compress(_idx_bytes(np.arange(4 * 28 * 28).reshape(4, 28, 28)), mtime=0)[:-50], "gzip"),
        ("corrupt.gz", b"\x1f\x8b" + b"not gzip at all" * 4, "gzip"),
    ],
)
def test_corrupt_idx_raises_naming_the_file(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert name in str(info.value)


def test_truncated_split_file_raises_in_dataset(tiny_dir: Path) -> None:
    images_path = tiny_dir / SPLIT_FILES["train"][0]
    images_path.write_bytes(images_path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=SPLIT_FILES["train"][0]):
        FashionMNIST(tiny_dir, split="train")


def test_inconsistent_split_files_raise(tiny_dir: Path) -> None:
    write_idx(tiny_dir / SPLIT_FILES["test"][1], np.array([1, 2, 3], dtype=np.uint8))
    with pytest.raises(ValueError, match="4 images but"):
        FashionMNIST(tiny_dir, split="test")
    write_idx(tiny_dir / SPLIT_FILES["test"][1], np.array([1, 2, 3, 10], dtype=np.uint8))
    with pytest.raises(ValueError, match="label 10"):
        FashionMNIST(tiny_dir, split="test")


def test_missing_dir_raises_with_rebuild_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"build_fashion_mnist_subset\.py") as info:
        FashionMNIST(missing)
    assert str(missing) in str(info.value)

    monkeypatch.setenv(DATA_DIR_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match=DATA_DIR_ENV):
        fashion_mnist_dir()


def test_missing_file_raises_with_rebuild_hint(tiny_dir: Path) -> None:
    (tiny_dir / SPLIT_FILES["test"][1]).unlink()
    with pytest.raises(FileNotFoundError, match=r"build_fashion_mnist_subset\.py") as info:
        FashionMNIST(tiny_dir, split="test")
    assert SPLIT_FILES["test"][1] in str(info.value)
