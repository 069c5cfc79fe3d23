"""Batched tensor preprocessing of the embedded data (``data.batch_transforms``)."""

import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from timm.data import create_transform

from crossformer_vision.data.tensor_pipeline import (
    BatchWarpCollate,
    TensorImageDataset,
    crop_flip_theta,
)
from crossformer_vision.tasks.classification.config import DEFAULTS
from crossformer_vision.tasks.classification.data import build_datasets, collate_for, data_config
from train_utils import TINY_RUN, run_cli, weights

MEAN, STD = (0.3, 0.3, 0.3), (0.35, 0.35, 0.35)


@pytest.mark.parametrize("scale,ratio,hflip", [((0.08, 1.0), (3 / 4, 4 / 3), 0.5), ((0.85, 1.0), (0.9, 1.1), 0.3)])
def test_training_samples_get_the_crop_and_flip_of_timms_pipeline(scale, ratio, hflip):
    """Seeded like the trainer seeds a sample, the batched path warps exactly what timm's transforms would crop."""
    # a smooth image, so that resampling differences at crop borders stay small next to any wrong crop or flip
    smooth = F.interpolate(torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(3)), size=28, mode="bicubic")
    image = (smooth.clamp(0, 1)[0, 0] * 255).round().to(torch.uint8)
    ds = TensorImageDataset(image[None], [0], train=True, scale=scale, ratio=ratio, hflip=hflip)
    collate = BatchWarpCollate(32, MEAN, STD)
    tf = create_transform(
        input_size=(3, 32, 32), is_training=True, scale=scale, ratio=ratio, hflip=hflip, interpolation="bilinear",
        mean=MEAN, std=STD, auto_augment=None, color_jitter=None, re_prob=0.0,
    )  # fmt: skip
    pil = Image.fromarray(image.numpy()).convert("RGB")
    same, other = [], []
    for seed in range(40):
        random.seed(seed)
        torch.manual_seed(seed)
        ours = collate([ds[0]])["images"][0]
        random.seed(seed)
        torch.manual_seed(seed)
        same.append((tf(pil) - ours).abs().mean().item())
        random.seed(seed + 1000)
        torch.manual_seed(seed + 1000)
        other.append((tf(pil) - ours).abs().mean().item())
    assert max(same) < 0.05, max(same)
    assert sorted(other)[len(other) // 2] > 4 * max(same)  # a different draw is far off


def _images(n=6, seed=0):
    return torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_warp_of_a_same_size_crop_is_the_crop_itself_flipped_or_not():
    images = _images(2)
    collate = BatchWarpCollate(12, MEAN, STD)
    box = (5, 9, 12, 12)  # top, left, h, w
    samples = [
        ((images[0], crop_flip_theta(28, 28, box, False)), 0),
        ((images[1], crop_flip_theta(28, 28, box, True)), 1),
    ]
    out = collate(samples)
    assert out["images"].shape == (2, 3, 12, 12) and out["labels"].tolist() == [0, 1] and out["skipped"] == []
    expect = (images[:, 5:17, 9:21].float() / 255 - 0.3) / 0.35
    torch.testing.assert_close(out["images"][0, 1], expect[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["images"][1, 2], expect[1].flip(-1), atol=1e-5, rtol=0)


def test_eval_warp_is_bilinear_resizing_and_matches_timm_eval_transform():
    images = _images(4)
    ds = TensorImageDataset(images, [0, 1, 2, 3], train=False, collate_fn=BatchWarpCollate(32, MEAN, STD))
    batch = collate_for(ds)([ds[i] for i in range(4)])["images"]
    resized = F.interpolate(images[:, None].float() / 255, size=32, mode="bilinear", align_corners=False)
    torch.testing.assert_close(batch[:, :1], (resized - 0.3) / 0.35, atol=1e-5, rtol=0)
    # timm's PIL pipeline rounds the resized image to 8 bits: agreement within that rounding
    tf = create_transform(input_size=(3, 32, 32), crop_pct=1.0, interpolation="bilinear", mean=MEAN, std=STD)
    pil = torch.stack([tf(Image.fromarray(im.numpy()).convert("RGB")) for im in images])
    assert (pil - batch).abs().max() < 1.5 / 255 / 0.35


def test_training_samples_are_seeded_per_sample_and_cover_crops_and_flips():
    images = _images(1)
    ds = TensorImageDataset(images, [3], train=True, scale=(0.5, 1.0), ratio=(0.8, 1.25), hflip=0.5)
    random.seed(1)
    torch.manual_seed(1)
    first = [ds[0][0][1] for _ in range(50)]
    random.seed(1)
    torch.manual_seed(1)
    again = [ds[0][0][1] for _ in range(50)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    flips = sum(bool(t[0, 0] < 0) for t in first)
    assert 10 < flips < 40
    assert len({tuple(t.flatten().tolist()) for t in first}) > 40


def test_bad_configurations_are_explained():
    cfg = {k: dict(v) for k, v in DEFAULTS.items()}
    cfg["data"].update(dataset="folder", root="/nowhere", batch_transforms=True, img_size=32, crop_pct=1.0)
    with pytest.raises(ValueError, match="embedded in-memory data only"):
        build_datasets(cfg, data_config(cfg))
    cfg["data"].update(dataset="fashion_mnist", root=None, interpolation="bilinear")
    with pytest.raises(ValueError, match=r"aug\.auto_augment"):
        build_datasets(cfg, data_config(cfg))
    cfg["aug"].update(auto_augment=None, color_jitter=0.0, reprob=0.0)
    cfg["data"]["crop_pct"] = 0.875
    with pytest.raises(ValueError, match="crop_pct"):
        build_datasets(cfg, data_config(cfg))
    cfg["data"].update(crop_pct=1.0, train_limit=50, val_limit=20)
    train_ds, val_ds, classes = build_datasets(cfg, data_config(cfg))
    assert len(train_ds) == 50 and len(val_ds) == 20 and len(classes) == 10
    batch = collate_for(train_ds)([train_ds[i] for i in range(5)])
    assert batch["images"].shape == (5, 3, 32, 32) and batch["images"].dtype == torch.float32
    assert np.isfinite(batch["images"].numpy()).all()


@pytest.mark.slow
def test_batch_transform_run_trains_and_resumes_exactly(tmp_path):
    run = [*TINY_RUN, "data.batch_transforms=true", "data.interpolation=bilinear", "train.deterministic=true"]
    full, part = tmp_path / "full", tmp_path / "part"
    out = run_cli(["train", *run, f"train.output_dir={full}"]).stdout
    assert "top-1" in out
    run_cli(["train", *run, "train.max_steps=13", f"train.output_dir={part}"])
    run_cli(["train", *run, f"train.output_dir={part}", "--resume", str(part)])
    a, b = weights(full), weights(part)
    for key in a:
        assert torch.equal(a[key], b[key]), key
