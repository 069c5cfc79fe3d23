"""Test-time augmentation as mmseg does it: whole image or sliding window, multi-scale and flip.

All functions take normalised images ``[B, 3, H, W]`` and a segmentor whose ``encode_decode(images)`` (or, in eval
mode, ``forward``) returns logits at the input size (:class:`~.model.Segmentor` pads to its ``size_divisor`` and
crops back, so any size works). Results are resized to ``out_size`` (the original image size) with bilinear,
``align_corners=False`` interpolation.

* :func:`whole_inference`, :func:`slide_inference`: logits of one scale.
* :func:`inference`: softmax probabilities averaged over scales and flips (mmseg's ``aug_test``), from which
  :func:`predict_labels` takes the argmax.
* :func:`predict_probs`: one original-size uint8 image through the test scales of :class:`InferenceSettings`
  (resize per scale as mmseg's ``MultiScaleFlipAug``, normalise, infer, average).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ...data.segmentation import rescale_size
from ...engine.trainer import autocast_context
from .config import InferenceSettings

__all__ = [
    "ADE20K_TEST_SCALE",
    "MS_RATIOS",
    "align_size",
    "inference",
    "predict_labels",
    "predict_probs",
    "rescale_size",
    "scaled_sizes",
    "slide_inference",
    "whole_inference",
]

#: mmseg's ADE20K test scale (long edge <= 2048, short edge <= 512, aspect kept).
ADE20K_TEST_SCALE = (2048, 512)
#: mmseg's multi-scale test ratios of the test scale ("MS" results).
MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(not isinstance(v, int) or v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or (h, w) pair, got {value!r}")
    return pair  # type: ignore[return-value]


def _logits(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    encode = getattr(model, "encode_decode", None)
    return encode(images) if encode is not None else model(images)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


@torch.no_grad()
def whole_inference(model: nn.Module, images: torch.Tensor, out_size: Sequence[int] | None = None) -> torch.Tensor:
    """Logits of the whole image (mmseg ``mode='whole'``).

    Args:
        model: Segmentor in eval mode.
        images: ``[B, 3, H, W]`` normalised images.
        out_size: ``(H0, W0)`` to resize the logits to (default: the input size).

    Returns:
        ``[B, K, H0, W0]`` logits.
    """
    logits = _logits(model, images)
    return _resize(logits, out_size or images.shape[-2:])


@torch.no_grad()
def slide_inference(
    model: nn.Module,
    images: torch.Tensor,
    crop_size: int | Sequence[int] = 512,
    stride: int | Sequence[int] = 341,
    out_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Sliding-window logits (mmseg ``mode='slide'``).

    Windows of ``crop_size`` start every ``stride`` pixels; the last row / column is shifted back to end at the
    image border (``y1 = max(y2 - crop, 0)``). Each window's logits (at the window size) are summed into the image
    and divided by how many windows covered each pixel. Along a side shorter than the crop the window is the whole
    side, not padded (as mmseg 0.x does: an image smaller than the crop is decoded whole).

    Args:
        model: Segmentor in eval mode.
        images: ``[B, 3, H, W]`` normalised images.
        crop_size: Window ``(h, w)`` (512 in mmseg's ADE20K slide configs).
        stride: Window step ``(h, w)`` (341 there).
        out_size: ``(H0, W0)`` to resize the logits to (default: the input size).

    Returns:
        ``[B, K, H0, W0]`` logits.
    """
    crop_h, crop_w = _pair(crop_size, "crop_size")
    stride_h, stride_w = _pair(stride, "stride")
    h_img, w_img = images.shape[-2:]
    h_grids = max(h_img - crop_h + stride_h - 1, 0) // stride_h + 1
    w_grids = max(w_img - crop_w + stride_w - 1, 0) // stride_w + 1
    preds = None
    count = images.new_zeros((1, 1, h_img, w_img))
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * stride_h + crop_h, h_img)
            x2 = min(w_idx * stride_w + crop_w, w_img)
            y1, x1 = max(y2 - crop_h, 0), max(x2 - crop_w, 0)
            crop_logits = _logits(model, images[:, :, y1:y2, x1:x2])
            if preds is None:
                preds = images.new_zeros((images.shape[0], crop_logits.shape[1], h_img, w_img))
            preds[:, :, y1:y2, x1:x2] += crop_logits
            count[:, :, y1:y2, x1:x2] += 1
    assert preds is not None and bool((count > 0).all())
    return _resize(preds / count, out_size or (h_img, w_img))


@torch.no_grad()
def inference(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mode: str = "whole",
    crop_size: int | Sequence[int] = 512,
    stride: int | Sequence[int] = 341,
    scale: Sequence[int] | None = None,
    ratios: Sequence[float] = (1.0,),
    flip: bool = False,
    out_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Class probabilities averaged over test-time scales and flips (mmseg's ``aug_test``).

    For each ratio ``r`` the image is resized (bilinear, ``align_corners=False``) to
    :func:`rescale_size` ``(image, r * scale)``, or by ``r`` when ``scale`` is None; for each flip, the logits are
    computed (``mode``), resized to ``out_size``, soft-maxed, flipped back and averaged.

    Args:
        model: Segmentor (put in eval mode for the call, then restored).
        images: ``[B, 3, H, W]`` normalised images: the original images when ``scale`` is given, else images
            already at the test scale (the dataset's test pipeline).
        mode: ``"whole"`` or ``"slide"``.
        crop_size: Sliding window size.
        stride: Sliding window step.
        scale: ``(long, short)`` test scale, e.g. :data:`ADE20K_TEST_SCALE`; None: ratios apply to the input.
        ratios: Scale ratios; :data:`MS_RATIOS` for mmseg's multi-scale test.
        flip: Add horizontally flipped copies.
        out_size: ``(H0, W0)`` of the output (default: the input size).

    Returns:
        ``[B, K, H0, W0]`` averaged probabilities.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
    if images.dim() != 4:
        raise ValueError(f"images must be [B, 3, H, W], got shape {tuple(images.shape)}")
    if not ratios or min(ratios) <= 0:
        raise ValueError(f"ratios must be positive, got {ratios!r}")
    size = tuple(images.shape[-2:])
    out_size = tuple(out_size) if out_size is not None else size
    was_training = model.training
    model.eval()
    try:
        total = None
        for ratio in ratios:
            if scale is not None:
                target = rescale_size(size, (ratio * scale[0], ratio * scale[1]))
            else:
                target = (int(size[0] * ratio + 0.5), int(size[1] * ratio + 0.5))
            scaled = _resize(images, target)
            for flipped in (False, True) if flip else (False,):
                x = scaled.flip(-1) if flipped else scaled
                if mode == "whole":
                    logits = whole_inference(model, x, out_size)
                else:
                    logits = slide_inference(model, x, crop_size, stride, out_size)
                probs = logits.softmax(dim=1)
                if flipped:
                    probs = probs.flip(-1)
                total = probs if total is None else total + probs
        return total / (len(ratios) * (2 if flip else 1))
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_labels(model: nn.Module, images: torch.Tensor, **kwargs) -> torch.Tensor:
    """Label maps ``[B, H0, W0]`` (int64): the argmax of :func:`inference` (same keyword arguments)."""
    return inference(model, images, **kwargs).argmax(dim=1)


def align_size(size: Sequence[int], divisor: int | None) -> tuple[int, int]:
    """``(h, w)`` rounded up to multiples of ``divisor`` (the official ``AlignResize``; None: unchanged)."""
    h, w = int(size[0]), int(size[1])
    if not divisor or divisor <= 1:
        return h, w
    return -(-h // divisor) * divisor, -(-w // divisor) * divisor


def scaled_sizes(size: Sequence[int], settings: InferenceSettings) -> list[tuple[int, int]]:
    """The network input size ``(h, w)`` of an image of ``size`` for each test ratio (mmseg's MultiScaleFlipAug)."""
    h, w = int(size[0]), int(size[1])
    sizes = []
    for ratio in settings.ratios:
        if settings.scale is not None:
            target = rescale_size((h, w), (int(settings.scale[0] * ratio), int(settings.scale[1] * ratio)))
        else:
            target = (int(h * ratio + 0.5), int(w * ratio + 0.5))
        sizes.append(align_size((max(target[0], 1), max(target[1], 1)), settings.size_divisor))
    return sizes


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: torch.Tensor,
    settings: InferenceSettings,
    *,
    device: torch.device | str | None = None,
    amp: str | None = None,
) -> torch.Tensor:
    """Class probabilities of one image, averaged over the test scales and flips of ``settings``.

    Args:
        model: A segmentor (it is put in eval mode for the call).
        image: ``[3, H, W]`` uint8 RGB at its original size (resized here per scale, in uint8 like mmseg's cv2).
        settings: Test-time settings.
        device: Where to run (default: the model's device).
        amp: ``"bf16"`` / ``"fp16"`` autocast, or None.

    Returns:
        ``[1, K, H, W]`` float32 probabilities at the original size.
    """
    if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 [3, H, W] image, got {image.dtype} {tuple(image.shape)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    size = tuple(image.shape[-2:])
    mean = torch.tensor(settings.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(settings.std, device=device).view(1, -1, 1, 1)
    image = image.to(device)[None]
    total = None
    for target in scaled_sizes(size, settings):
        x = image if target == size else TF.resize(image, list(target), InterpolationMode.BILINEAR, antialias=False)
        x = (x.float() - mean) / std
        with autocast_context(device, amp):
            probs = inference(
                model,
                x,
                mode=settings.mode,
                crop_size=settings.crop_size,
                stride=settings.stride,
                flip=settings.flip,
                out_size=size,
            ).float()
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(settings.ratios)
