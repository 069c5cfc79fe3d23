"""``crossformer seg predict``: images in, label PNGs (class indices, palette) and overlay PNGs out."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ...data.folder import image_paths
from ...data.segmentation import read_image
from ...engine.config import apply_overrides
from ...engine.loading import load_model
from ...utils.paths import output_dir as make_output_dir
from .config import DEFAULTS, PATH_KEYS
from .evaluate import test_settings
from .model import palette_of
from .tta import predict_probs
from .visualize import save_overlays

__all__ = ["MAX_PIXELS", "bounded_size", "predict_images", "save_label_png"]

#: Default bound of ``seg predict``: images above it are segmented scaled down (about 4.2 megapixels, 2048 x 2048).
MAX_PIXELS = 2048 * 2048


def bounded_size(size: tuple[int, int], max_pixels: int) -> tuple[int, int]:
    """``(h, w)`` scaled down, aspect kept, to at most ``max_pixels`` pixels (unchanged within the bound or for 0)."""
    h, w = size
    if not max_pixels or h * w <= max_pixels:
        return h, w
    factor = (max_pixels / (h * w)) ** 0.5
    return max(1, int(h * factor)), max(1, int(w * factor))


def save_label_png(labels: np.ndarray, path: str | os.PathLike, palette: np.ndarray) -> Path:
    """``[H, W]`` class indices as an indexed PNG (pixel value = class index, coloured by ``palette``)."""
    path = Path(path)
    if labels.max(initial=0) < 256:
        image = Image.fromarray(labels.astype(np.uint8), mode="P")
        flat = np.zeros((256, 3), dtype=np.uint8)
        flat[: min(len(palette), 256)] = palette[:256]
        image.putpalette(flat.reshape(-1).tolist())
    else:  # more than 256 classes: 16-bit grey indices
        image = Image.fromarray(labels.astype(np.uint16))
    image.save(path)
    return path


def predict_images(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    mode: str | None = None,
    multi_scale: bool = False,
    flip: bool = False,
    overrides: Sequence[str] = (),
    lda_rule: str | None = None,
    trusted: bool = False,
    device: str | None = None,
    max_pixels: int = MAX_PIXELS,
) -> list[dict[str, Any]]:
    """Segment images: for each, ``<stem>_labels.png`` (indexed PNG of class indices) and ``<stem>_overlay.png``
    (the image next to the coloured prediction) in ``output_dir``.

    Test settings are the run's ``eval.*`` (mmseg checkpoints: ADE20K's (2048, 512) keep-ratio scale, whole image).
    Memory grows with the image (class probabilities are kept at its size): an image of more than ``max_pixels``
    pixels is segmented at the largest size within that bound and its labels scaled back up (nearest), with a
    warning; ``max_pixels=0`` lifts the bound.

    Returns:
        Per image: ``{"image", "labels", "overlay", "classes": {name: pixel fraction}}`` (largest first, plus
        ``"segmented_at": [h, w]`` when the image was scaled down) or ``{"image", "error"}`` for an unreadable file.
    """
    if max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0 (0: no bound), got {max_pixels}")
    out = make_output_dir(output_dir)  # before any work: a wrong path is the first thing to hear about
    loaded = load_model(checkpoint, "segmentation", trusted=trusted, lda_rule=lda_rule)
    model = loaded.model
    cfg = apply_overrides(loaded.run_config(DEFAULTS, PATH_KEYS), overrides)
    cfg, settings = test_settings(cfg, mode, multi_scale, flip)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    palette = palette_of(model)
    used: set[str] = set()
    results = []
    for path in image_paths(inputs):
        try:
            array = read_image(path)
        except ValueError as err:
            results.append({"image": str(path), "error": str(err)})
            continue
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        work = bounded_size(tuple(image.shape[-2:]), max_pixels)
        if work != tuple(image.shape[-2:]):
            warnings.warn(
                f"{path}: {image.shape[-1]} x {image.shape[-2]} pixels exceed the bound of {max_pixels}; segmented at "
                f"{work[1]} x {work[0]} and scaled back up (--max-pixels raises the bound, 0 lifts it)",
                stacklevel=2,
            )
        small = TF.resize(image, list(work), antialias=True) if work != tuple(image.shape[-2:]) else image
        labels = predict_probs(model, small, settings, device=dev).argmax(dim=1)
        if work != tuple(image.shape[-2:]):
            labels = F.interpolate(labels[None].float(), size=tuple(image.shape[-2:]), mode="nearest")[0].long()
        labels = labels[0].cpu().numpy()
        stem = path.stem
        while stem in used:
            stem += "_"
        used.add(stem)
        label_path = save_label_png(labels, out / f"{stem}_labels.png", palette)
        overlay_path = save_overlays([array], [labels], None, out / f"{stem}_overlay.png", palette, mean=None, std=None)
        counts = np.bincount(labels.reshape(-1), minlength=len(names))
        order = np.argsort(-counts)
        fractions = {names[k]: round(float(counts[k] / labels.size), 4) for k in order if counts[k]}
        result = {"image": str(path), "labels": str(label_path), "overlay": str(overlay_path), "classes": fractions}
        if work != tuple(image.shape[-2:]):
            result["segmented_at"] = list(work)
        results.append(result)
    return results
