"""Image files from outside: one extension list and one reader for every task; decompression bombs, bad modes and
corrupt files become one-line ValueErrors naming the file, so callers that go image by image skip just that one."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from crafted import png_header_only
from crossformer_vision.data import coco, folder, images, segmentation
from crossformer_vision.data.folder import ImageFolderDataset, collate_skipping
from crossformer_vision.data.images import IMAGE_EXTENSIONS, UnreadableImageError, image_paths, read_rgb


def test_one_extension_list_and_one_reader_for_every_task():
    assert folder.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS and segmentation.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
    assert folder.image_paths is image_paths and folder.load_rgb is read_rgb
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".gif"} <= set(IMAGE_EXTENSIONS)


def test_image_paths_finds_every_listed_extension(tmp_path):
    for i, ext in enumerate((".PNG", ".webp", ".gif", ".tiff")):
        Image.new("RGB", (4, 4)).save(tmp_path / f"{i}{ext}")
    (tmp_path / "notes.txt").write_text("not an image")
    assert sorted(p.name for p in image_paths([tmp_path])) == ["0.PNG", "1.webp", "2.gif", "3.tiff"]


@pytest.mark.parametrize("declared", ["over the limit", "over twice the limit"])
def test_decompression_bombs_are_value_errors_naming_file_pixels_and_limit(tmp_path, declared):
    # Pillow warns between MAX_IMAGE_PIXELS and twice that and raises DecompressionBombError (not an OSError or a
    # ValueError) above: both must become the reader's ValueError, before any pixel is decoded
    limit = Image.MAX_IMAGE_PIXELS
    side = 10_000 if declared == "over the limit" else 20_000
    assert limit < side * side <= 2 * limit or declared != "over the limit"
    bomb = png_header_only(tmp_path / "bomb.png", side, side)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no DecompressionBombWarning leaks out
        for read in (read_rgb, segmentation.read_image, segmentation.read_mask):
            with pytest.raises(ValueError, match="decompression-bomb") as info:
                read(bomb)
            message = str(info.value)
            assert "\n" not in message and str(bomb) in message
            assert f"{side * side:,} pixels" in message and f"{limit:,} pixels" in message


def test_a_bomb_among_good_images_is_skipped_alone(tmp_path, monkeypatch):
    _make_class_folder(tmp_path, "train", "a", 3)
    Image.new("RGB", (30, 30)).save(tmp_path / "train" / "a" / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # 30 x 30 is over it, 8 x 8 is not
    ds = ImageFolderDataset(tmp_path, "train", transform=lambda im: torch.zeros(3, 2, 2))
    batch = collate_skipping([ds[i] for i in range(len(ds))])
    assert batch["images"].shape[0] == 3
    ((path, reason),) = batch["skipped"]
    assert path.endswith("big.png") and "900 pixels" in reason and "600 pixels" in reason


def test_coco_image_over_the_limit_names_the_image_id(tmp_path, monkeypatch):
    Image.new("RGB", (30, 20)).save(tmp_path / "a.png")
    (tmp_path / "ann.json").write_text(
        '{"images": [{"id": 7, "file_name": "a.png", "width": 30, "height": 20}], '
        '"categories": [{"id": 1, "name": "x"}], "annotations": []}'
    )
    ds = coco.CocoDetection(tmp_path, tmp_path / "ann.json", masks=False)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match=r"image id 7 \(.*a\.png\): the image has 600 pixels, over .* 100 pixels"):
        ds[0]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "cannot read the image"),
        (b"\x89PNG\r\n\x1a\n truncated", "cannot read the image"),
        (b"GIF89a\x01", "cannot read the image"),
    ],
)
def test_corrupt_files_are_one_line_value_errors(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(UnreadableImageError) as info:
        read_rgb(path)
    assert isinstance(info.value, ValueError) and info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: {reason}") and "\n" not in str(info.value)


def test_truncated_pixel_data_is_a_value_error(tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:300])  # header intact, pixel data cut short
    with pytest.raises(UnreadableImageError, match=r"cut\.png: cannot read the image"):
        read_rgb(cut)


def test_modes_16_bit_and_float(tmp_path):
    dark16 = tmp_path / "dark16.png"
    Image.fromarray(np.full((4, 4), 200, np.uint16)).save(dark16)  # a dark 16-bit image stays dark
    assert (np.asarray(read_rgb(dark16)) == 1).all()
    white16 = tmp_path / "white16.png"
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(white16)
    assert (np.asarray(read_rgb(white16)) == 255).all()
    ramp = tmp_path / "ramp.tif"
    Image.fromarray(np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4), mode="F").save(ramp)
    stretched = np.asarray(read_rgb(ramp))
    assert stretched.min() == 0 and stretched.max() == 255
    nan = tmp_path / "nan.tif"
    Image.fromarray(np.full((4, 4), np.nan, np.float32), mode="F").save(nan)
    with pytest.raises(ValueError, match=r"nan\.tif: float image with NaN"):
        read_rgb(nan)
    # every task decodes a file to the same pixels
    arrays = [np.asarray(read_rgb(dark16)), segmentation.read_image(dark16), images.read_rgb_array(dark16)]
    assert all(np.array_equal(arrays[0], a) for a in arrays)


def _make_class_folder(root, split, name, n):
    d = root / split / name
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (i, i, i)).save(d / f"{i}.png")


def test_skipped_images_keep_each_file_with_its_own_reason(tmp_path):
    _make_class_folder(tmp_path, "train", "a", 2)
    (tmp_path / "train" / "a" / "empty.png").write_bytes(b"")
    (tmp_path / "train" / "a" / "text.png").write_bytes(b"hello, not a picture at all")
    Image.fromarray(np.full((4, 4), 70000, np.int32), mode="I").save(tmp_path / "train" / "a" / "deep.tif")
    ds = ImageFolderDataset(tmp_path, "train", transform=lambda im: torch.zeros(3, 2, 2))
    batch = collate_skipping([ds[i] for i in range(len(ds))])
    reasons = {p.rsplit("/", 1)[1]: r for p, r in batch["skipped"]}
    assert sorted(reasons) == ["deep.tif", "empty.png", "text.png"]
    assert "16-bit range" in reasons["deep.tif"]
    assert "16-bit range" not in reasons["empty.png"] and "16-bit range" not in reasons["text.png"]
    for name, reason in reasons.items():  # the reason is about the file, and does not name another one
        assert not any(other in reason for other in reasons if other != name)
