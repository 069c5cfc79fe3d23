"""``crossformer seg predict``: images in, label PNGs (class indices, palette) and overlay PNGs out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

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

__all__ = ["predict_images", "save_label_png"]


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
) -> list[dict[str, Any]]:
    """Segment images: for each, ``<stem>_labels.png`` (indexed PNG of class indices) and ``<stem>_overlay.png``
    (the image next to the coloured prediction) in ``output_dir``.

    Test settings are the run's ``eval.*`` (mmseg checkpoints: ADE20K's (2048, 512) keep-ratio scale, whole image).

    Returns:
        Per image: ``{"image", "labels", "overlay", "classes": {name: pixel fraction}}`` (largest first) or
        ``{"image", "error"}`` for an unreadable file.
    """
    loaded = load_model(checkpoint, "segmentation", trusted=trusted, lda_rule=lda_rule)
    model = loaded.model
    cfg = apply_overrides(loaded.run_config(DEFAULTS, PATH_KEYS), overrides)
    cfg, settings = test_settings(cfg, mode, multi_scale, flip)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    palette = palette_of(model)
    out = make_output_dir(output_dir)
    used: set[str] = set()
    results = []
    for path in image_paths(inputs):
        try:
            array = read_image(path)
        except ValueError as err:
            results.append({"image": str(path), "error": str(err)})
            continue
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        labels = predict_probs(model, image, settings, device=dev).argmax(dim=1)[0].cpu().numpy()
        stem = path.stem
        while stem in used:
            stem += "_"
        used.add(stem)
        label_path = save_label_png(labels, out / f"{stem}_labels.png", palette)
        overlay_path = save_overlays([array], [labels], None, out / f"{stem}_overlay.png", palette, mean=None, std=None)
        counts = np.bincount(labels.reshape(-1), minlength=len(names))
        order = np.argsort(-counts)
        fractions = {names[k]: round(float(counts[k] / labels.size), 4) for k in order if counts[k]}
        results.append(
            {"image": str(path), "labels": str(label_path), "overlay": str(overlay_path), "classes": fractions}
        )
    return results
