"""Whole / sliding-window / multi-scale + flip inference (mmseg semantics), any image size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crossformer_vision.tasks.segmentation import (
    build_segmentor,
    inference,
    predict_labels,
    rescale_size,
    slide_inference,
    whole_inference,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    tiny = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
    return build_segmentor("upernet_crossformer_s", num_classes=4, channels=16, aux_channels=8, backbone_kwargs=tiny)


class PixelModel(nn.Module):
    """A per-pixel classifier (1x1 conv): any window gives the same logits for a pixel, so sliding == whole."""

    def __init__(self, num_classes: int = 3, symmetric: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 3 if symmetric else 1, padding="same")
        if symmetric:  # left-right symmetric kernels: flip-equivariant
            with torch.no_grad():
                self.conv.weight.copy_((self.conv.weight + self.conv.weight.flip(-1)) / 2)

    def encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_slide_equals_whole_when_the_crop_covers_the_image(model):
    model.eval()
    x = torch.randn(2, 3, 64, 96)
    assert torch.equal(slide_inference(model, x, crop_size=(64, 96), stride=(43, 64)), whole_inference(model, x))


def test_slide_decodes_a_side_shorter_than_the_crop_whole_without_padding(model):
    model.eval()
    x = torch.randn(1, 3, 40, 50)
    assert torch.equal(slide_inference(model, x, crop_size=64, stride=43), whole_inference(model, x))
    seen = []
    pixel = PixelModel()
    pixel.conv.register_forward_pre_hook(lambda _, args: seen.append(tuple(args[0].shape[-2:])))
    wide = torch.randn(1, 3, 40, 100)  # shorter than the crop in height only: windows (40, 64) at x = 0 and 36
    with torch.no_grad():
        out = slide_inference(pixel, wide, crop_size=64, stride=43)
        torch.testing.assert_close(out, whole_inference(pixel, wide), atol=1e-6, rtol=1e-6)
    assert seen[:-1] == [(40, 64), (40, 64)]  # mmseg 0.x: the short side is taken whole, never padded


def test_slide_windows_cover_and_average_like_mmseg():
    pixel = PixelModel()
    x = torch.randn(1, 3, 70, 100)  # 3 x 4 overlapping windows, the last ones shifted back to the border
    with torch.no_grad():
        slide = slide_inference(pixel, x, crop_size=(32, 40), stride=(19, 27))
        whole = whole_inference(pixel, x)
    torch.testing.assert_close(slide, whole, atol=1e-6, rtol=1e-6)
    resized = slide_inference(pixel, x, crop_size=(32, 40), stride=(19, 27), out_size=(35, 50))
    assert resized.shape == (1, 3, 35, 50)


def test_multi_scale_flip_returns_probabilities_at_the_original_size(model):
    model.train()
    x = torch.randn(1, 3, 48, 80)
    probs = inference(model, x, ratios=(0.5, 0.75, 1.0, 1.25), flip=True, out_size=(60, 100))
    assert model.training  # restored
    assert probs.shape == (1, 4, 60, 100)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 60, 100))
    labels = predict_labels(model, x, mode="slide", crop_size=(48, 64), stride=(32, 43), ratios=(1.0, 1.25), flip=True)
    assert labels.shape == (1, 48, 80) and labels.dtype == torch.int64
    scaled = inference(model, x, scale=(128, 32), ratios=(1.0, 2.0))  # ratios of a keep-ratio test scale
    assert scaled.shape == (1, 4, 48, 80)


def test_flip_augmentation_is_equivariant(model):
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    a = inference(model, x, flip=True)
    b = inference(model, x.flip(-1), flip=True).flip(-1)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # averaging over both flips is flip-symmetric
    symmetric = PixelModel(symmetric=True)
    y = torch.randn(1, 3, 20, 30)
    torch.testing.assert_close(inference(symmetric, y, flip=True), inference(symmetric, y), atol=1e-6, rtol=0)


def test_single_scale_argmax_equals_logit_argmax(model):
    model.eval()
    x = torch.randn(1, 3, 40, 72)
    with torch.no_grad():
        assert torch.equal(predict_labels(model, x), model(x).argmax(1))


def test_rescale_size_is_mmcv_imrescale():
    assert rescale_size((512, 683), (2048, 512)) == (512, 683)  # a typical ADE20K image is left as it is
    assert rescale_size((1024, 768), (2048, 512)) == (683, 512)  # the short edge bound decides
    assert rescale_size((100, 300), (2048, 512)) == (512, 1536)
    assert rescale_size((100, 3000), (512, 2048)) == (68, 2048)  # the long edge bound decides; order-free


def test_inference_argument_errors(model):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="mode"):
        inference(model, x, mode="tiles")
    with pytest.raises(ValueError, match="ratios"):
        inference(model, x, ratios=())
    with pytest.raises(ValueError, match="crop_size"):
        slide_inference(model.eval(), x, crop_size=0)
