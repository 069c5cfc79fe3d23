"""Segmentation datasets and the mmseg pipelines: layouts, bad inputs, transforms, collate, the embedded demo set,
overlay pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from crossformer_vision.data import (
    ADE20K,
    SEG_DEMO_SIZES,
    FolderSegmentation,
    collate,
    eval_transforms,
    seg_demo,
    train_transforms,
)
from crossformer_vision.data.segmentation import (
    KeepRatioResize,
    PhotoMetricDistortion,
    RandomCropCatMax,
    _hsv_to_rgb,
    _rgb_to_hsv,
    read_image,
    read_mask,
)
from crossformer_vision.tasks.segmentation import save_overlays

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def write_pair(root, stem, image: np.ndarray, mask: np.ndarray, image_mode=None, ext=".png"):
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    Image.fromarray(image, mode=image_mode).save(root / "images" / f"{stem}{ext}")
    Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"{stem}.png")


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 3, (20, 30)).astype(np.uint8)
    mask[0, 0] = 255
    write_pair(tmp_path, "rgb", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8), mask, ext=".jpg")
    write_pair(tmp_path, "grey", rng.integers(0, 256, (20, 30), dtype=np.uint8), mask)
    write_pair(tmp_path, "rgba", rng.integers(0, 256, (20, 30, 4), dtype=np.uint8), mask)
    sixteen = np.full((20, 30), 257 * 200, dtype=np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "images" / "sixteen.png")  # 16-bit grey ('I;16')
    Image.fromarray(mask).save(tmp_path / "masks" / "sixteen.png")
    (tmp_path / "classes.txt").write_text("# name per line\nsky\n\ntree\nroad\n")
    return tmp_path


def test_generic_layout_reads_grey_rgba_and_16_bit_images(folder):
    ds = FolderSegmentation(folder / "images", folder / "masks", folder / "classes.txt")
    assert ds.classes == ["sky", "tree", "road"] and len(ds) == 4
    samples = {path.stem: ds[i] for i, (path, _) in enumerate(ds.samples)}
    for image, mask in samples.values():
        assert isinstance(image, tv_tensors.Image) and image.shape == (3, 20, 30) and image.dtype == torch.uint8
        assert isinstance(mask, tv_tensors.Mask) and mask.shape == (20, 30) and mask[0, 0] == 255
    grey = samples["grey"][0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    assert (samples["sixteen"][0] == 200).all()  # 16-bit scaled to 8 bits


def test_missing_mask_names_the_image(folder):
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(folder / "images" / "lonely.png")
    with pytest.raises(ValueError, match=r"no mask in .*lonely\.png"):
        FolderSegmentation(folder / "images", folder / "masks", ["a", "b", "c"])


def test_size_mismatch_and_out_of_range_labels_name_the_files(folder):
    Image.fromarray(np.zeros((21, 30), np.uint8)).save(folder / "masks" / "grey.png")
    Image.fromarray(np.full((20, 30), 9, np.uint8)).save(folder / "masks" / "rgba.png")
    ds = FolderSegmentation(folder / "images", folder / "masks", folder / "classes.txt")
    index = {path.stem: i for i, (path, _) in enumerate(ds.samples)}
    with pytest.raises(ValueError, match=r"grey\.png is 20x30 but its mask .*grey\.png is 21x30"):
        ds[index["grey"]]
    with pytest.raises(ValueError, match=r"rgba\.png: labels 9 outside \[0, 3\)"):
        ds[index["rgba"]]


def test_bad_files_raise_value_errors(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"broken\.png: cannot read"):
        read_image(tmp_path / "broken.png")
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(ValueError, match=r"colour .* mask"):
        read_mask(tmp_path / "colour.png")
    Image.fromarray(np.full((4, 4, 3), 7, np.uint8)).save(tmp_path / "grey_rgb.png")
    assert (read_mask(tmp_path / "grey_rgb.png") == 7).all()
    palette = Image.fromarray(np.array([[0, 1], [2, 255]], np.uint8), mode="L").convert("P")
    palette.save(tmp_path / "palette.png")
    assert read_mask(tmp_path / "palette.png").tolist() == [[0, 1], [2, 255]]


def test_ade20k_layout_reduces_the_zero_label(tmp_path):
    for split in ("training", "validation"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "images" / "validation" / "ADE_val_1.jpg")
    mask = np.array([[0, 1, 150, 255]] * 8, np.uint8).repeat(2, axis=1)
    Image.fromarray(mask).save(tmp_path / "annotations" / "validation" / "ADE_val_1.png")
    ds = ADE20K(tmp_path, "val")
    assert ds.num_classes == 150 and ds.classes[0] == "wall" and ds.classes[-1] == "flag"
    _, labels = ds[0]
    assert labels[0].tolist() == [255, 255, 0, 0, 149, 149, 255, 255]
    with pytest.raises(ValueError, match="unknown split"):
        ADE20K(tmp_path, "test")
    with pytest.raises(ValueError, match="no images"):
        ADE20K(tmp_path, "training")


def test_train_pipeline_pads_small_images_and_gives_fixed_size_tensors(folder):
    torch.manual_seed(0)
    transforms = train_transforms(crop_size=64, scale=(64, 16), ratio_range=(0.5, 2.0))
    ds = FolderSegmentation(folder / "images", folder / "masks", folder / "classes.txt", transforms=transforms)
    image, mask = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert mask.shape == (64, 64) and mask.dtype == torch.int64
    valid = mask != 255
    assert valid.sum() <= 20 * 2 * 30 * 2  # at most a 2x-resized 20x30 image is real, the rest is padding
    assert (image[:, ~valid.any(1)] == 0).all()  # padded rows: image 0 (after normalisation), mask 255
    images, masks = collate([ds[i] for i in range(len(ds))])
    assert images.shape == (4, 3, 64, 64) and masks.shape == (4, 64, 64) and type(images) is torch.Tensor


def test_keep_ratio_resize_follows_mmcv():
    image = tv_tensors.Image(torch.zeros(3, 40, 100, dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.zeros(40, 100, dtype=torch.uint8))
    out_image, out_mask = KeepRatioResize((2048, 512))(image, mask)
    assert out_image.shape[-2:] == (512, 1280) and out_mask.shape == (512, 1280)  # short edge 40 -> 512 decides
    out_image, out_mask = KeepRatioResize((2048, 512))(
        *(tv_tensors.wrap(x[..., :20, :], like=x) for x in (image, mask))
    )
    assert out_image.shape[-2:] == (410, 2048) and out_mask.shape == (410, 2048)  # long edge 100 -> 2048 decides
    test_image, test_mask = eval_transforms(scale=(200, 50))(image, mask)
    assert test_image.shape[-2:] == (50, 125) and test_mask.shape == (40, 100)
    test_image, test_mask = eval_transforms(scale=(64, 16))(image, mask)
    assert test_image.shape[-2:] == (16, 40) and test_mask.shape == (40, 100)  # the mask keeps its size
    torch.testing.assert_close(test_image, ((torch.zeros(3, 16, 40) - MEAN) / STD))


def test_cat_max_ratio_retries_like_mmseg():
    h, w, crop = 30, 40, 10
    image = tv_tensors.Image(torch.zeros(3, h, w, dtype=torch.uint8))

    def draws(n: int, seed: int) -> list[tuple[int, int]]:
        torch.manual_seed(seed)
        return [
            (int(torch.randint(0, h - crop + 1, ()).item()), int(torch.randint(0, w - crop + 1, ()).item()))
            for _ in range(n)
        ]

    transform = RandomCropCatMax(crop, cat_max_ratio=0.75)
    uniform = tv_tensors.Mask(torch.zeros(h, w, dtype=torch.uint8))  # every crop fails: the 11th draw is used
    torch.manual_seed(3)
    assert transform.make_params([image, uniform])["bbox"] == (*draws(11, 3)[-1], crop, crop)
    mixed = tv_tensors.Mask((torch.arange(h * w).reshape(h, w) % 2).to(torch.uint8))  # every crop passes
    torch.manual_seed(3)
    assert transform.make_params([image, mixed])["bbox"] == (*draws(1, 3)[0], crop, crop)
    stripe = torch.zeros(h, w, dtype=torch.uint8)
    stripe[:, 35:] = 1
    stripe[:, :5] = 255  # ignored pixels are not counted
    torch.manual_seed(0)
    for _ in range(20):
        top, left, ch, cw = transform.make_params([image, tv_tensors.Mask(stripe)])["bbox"]
        crop_mask = stripe[top : top + ch, left : left + cw]
        counts = torch.bincount(crop_mask[crop_mask != 255].long(), minlength=2)
        if len(counts[counts > 0]) > 1:
            assert counts.max() / counts.sum() < 0.75
    small = RandomCropCatMax(64)(image, uniform)  # smaller than the crop: taken whole
    assert small[0].shape[-2:] == (h, w)


def test_photometric_distortion_keeps_masks_and_dtype():
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8))
    mask = tv_tensors.Mask(torch.randint(0, 3, (16, 16), dtype=torch.uint8))
    changed = 0
    for _ in range(8):
        out_image, out_mask = PhotoMetricDistortion()(image, mask)
        assert out_image.dtype == torch.uint8 and out_image.shape == image.shape and torch.equal(out_mask, mask)
        changed += not torch.equal(out_image, image)
    assert changed >= 4
    rgb = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    back = _hsv_to_rgb(_rgb_to_hsv(rgb)).int()
    assert (back - rgb.int()).abs().max() <= 4  # OpenCV's 8-bit HSV round trip is lossy by a few levels
    with pytest.raises(TypeError, match="uint8"):
        PhotoMetricDistortion()(tv_tensors.Image(torch.zeros(3, 4, 4)))


def test_collate_rejects_mixed_sizes():
    with pytest.raises(ValueError, match="batch_size=1"):
        collate([(torch.zeros(3, 4, 4), torch.zeros(4, 4)), (torch.zeros(3, 4, 5), torch.zeros(4, 5))])


def test_embedded_demo_set_loads_and_trains_through_the_pipeline(tmp_path):
    train = seg_demo("train", transforms=train_transforms(**SEG_DEMO_SIZES))
    val = seg_demo("val", transforms=eval_transforms(scale=None))
    assert (len(train), len(val), train.num_classes) == (300, 60, 8)
    assert train.classes[:3] == ["gravel", "brick", "grass"]
    image, mask = train[0]
    assert image.shape == (3, 128, 128) and mask.shape == (128, 128)
    raw_image, raw_mask = val.load(5)
    assert raw_image.shape == (3, 128, 128) and int(raw_mask.max()) < 8 and len(raw_mask.unique()) >= 2
    path = save_overlays(raw_image[None], raw_mask[None], raw_mask[None], tmp_path / "o.png", mean=None, std=None)
    assert Image.open(path).size == (3 * 132, 132)
    images, masks = collate([val[i] for i in range(2)])
    path = save_overlays(images, masks, masks, tmp_path / "sub" / "batch.png")  # normalised images are undone
    assert Image.open(path).size == (3 * 132, 2 * 132)
