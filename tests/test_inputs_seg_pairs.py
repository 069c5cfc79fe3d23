"""Segmentation image / mask pairs checked before a run: a bad validation mask (unreadable, damaged, or of another
size than its image) is reported up front in one line, not at the final evaluation; bad training pairs can be left
out with a warning naming them."""

import warnings

import numpy as np
import pytest
from PIL import Image

from crossformer_vision.data.segmentation import BadPair, FolderSegmentation, check_pairs, find_bad_pairs


@pytest.fixture
def layout(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(tmp_path / "images" / f"p{i}.jpg")
        Image.fromarray(rng.integers(0, 3, (20, 30), dtype=np.uint8)).save(tmp_path / "masks" / f"p{i}.png")
    return tmp_path


def _dataset(root):
    return FolderSegmentation(root / "images", root / "masks", ["a", "b", "c"])


def _break(root):
    """p1: mask of another size; p2: mask that is no image; p3: PNG mask cut short; p4: colour-mode (CMYK) mask."""
    Image.fromarray(np.zeros((21, 30), np.uint8)).save(root / "masks" / "p1.png")
    (root / "masks" / "p2.png").write_bytes(b"this is not a png")
    good = (root / "masks" / "p3.png").read_bytes()
    (root / "masks" / "p3.png").write_bytes(good[: len(good) // 2])
    Image.new("CMYK", (30, 20)).save(root / "masks" / "p4.tif")
    (root / "masks" / "p4.png").unlink()
    (root / "masks" / "p4.tif").rename(root / "masks" / "p4.png")


def test_good_pairs_pass(layout):
    ds = _dataset(layout)
    assert find_bad_pairs(ds) == [] and check_pairs(ds) == [] and check_pairs(ds, decode=True) == []


def test_bad_validation_pairs_raise_one_line_naming_the_first_few(layout):
    _break(layout)
    ds = _dataset(layout)
    bad = find_bad_pairs(ds)
    assert [b.image.stem for b in bad] == ["p1", "p2", "p3", "p4"] and all(isinstance(b, BadPair) for b in bad)
    reasons = {b.image.stem: b.reason for b in bad}
    assert "is 20x30 but its mask" in reasons["p1"] and "is 21x30" in reasons["p1"]
    assert reasons["p2"].startswith(str(layout / "masks" / "p2.png")) and "cannot read the mask" in reasons["p2"]
    assert "p3.png: cannot read the mask" in reasons["p3"]
    assert "unsupported mask mode 'CMYK'" in reasons["p4"]
    with pytest.raises(ValueError) as info:
        check_pairs(ds, what="validation set")
    message = str(info.value)
    assert message.startswith("validation set: 4 of 6 image/mask pairs are unusable: ") and "\n" not in message
    assert "p1.png" in message and "p3.png" in message and "(1 more)" in message and "p4.png" not in message
    assert "fix or remove these files" in message
    assert len(ds.samples) == 6  # raising leaves the dataset as it is


def test_bad_training_pairs_are_left_out_with_a_warning(layout):
    _break(layout)
    ds = _dataset(layout)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bad = check_pairs(ds, what="training set", drop=True)
    assert len(bad) == 4 and [i.stem for i, _ in ds.samples] == ["p0", "p5"]
    (warning,) = caught
    assert str(warning.message).startswith("training set: 4 of 6 image/mask pairs are unusable and left out: ")
    ds[0], ds[1]  # what is left loads


def test_nothing_left_raises_even_when_dropping(layout):
    for i in range(6):
        Image.fromarray(np.zeros((5, 5), np.uint8)).save(layout / "masks" / f"p{i}.png")
    with pytest.raises(ValueError, match=r"training set: 6 of 6 image/mask pairs are unusable \(none left\)"):
        check_pairs(_dataset(layout), what="training set", drop=True)


def test_decode_finds_what_headers_cannot(layout):
    good = (layout / "images" / "p0.jpg").read_bytes()
    (layout / "images" / "p0.jpg").write_bytes(good[: len(good) - 400])  # JPEG data cut short: header intact
    colour = np.zeros((20, 30, 3), np.uint8)
    colour[..., 0] = 2
    Image.fromarray(colour).save(layout / "masks" / "p1.png")  # an RGB mask that is not grey
    Image.fromarray(np.full((20, 30), 7, np.uint8)).save(layout / "masks" / "p2.png")  # label 7 of 3 classes
    ds = _dataset(layout)
    assert find_bad_pairs(ds) == []
    reasons = {b.image.stem: b.reason for b in find_bad_pairs(ds, decode=True)}
    assert sorted(reasons) == ["p0", "p1", "p2"]
    assert "p0.jpg: cannot read the image" in reasons["p0"] and "colour (RGB) mask" in reasons["p1"]
    assert "labels 7 outside [0, 3)" in reasons["p2"]


def test_an_image_over_the_bomb_limit_is_a_bad_pair(layout, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 20 x 30 = 600 pixels
    with pytest.raises(ValueError, match=r"6 of 6 .*600 pixels, over Pillow's decompression-bomb limit of 500"):
        check_pairs(_dataset(layout))
