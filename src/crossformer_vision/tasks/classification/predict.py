"""``crossformer predict``: images and folders in, top-k labels with probabilities out."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...data.folder import image_paths, load_rgb
from ...engine.loading import load_model
from ...engine.trainer import autocast_context
from .config import DEFAULTS, PATH_KEYS
from .data import eval_transform
from .model import data_config_of

__all__ = ["predict_images", "results_json"]


@torch.no_grad()
def predict_images(
    checkpoint: str | Path,
    inputs: Sequence[str],
    topk: int = 5,
    model_name: str | None = None,
    batch_size: int = 32,
    trusted: bool = False,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Top-k labels with probabilities for images and folders of images.

    Runs on ``device`` (default: the GPU when there is one), under the run's autocast setting (``train.amp``).
    """
    loaded = load_model(checkpoint, "classification", trusted=trusted, model_name=model_name)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = loaded.model.to(dev).eval()
    amp = loaded.run_config(DEFAULTS, PATH_KEYS)["train"]["amp"] if loaded.config or loaded.run_dir else None
    dcfg = data_config_of(loaded)
    transform = eval_transform(dcfg)
    classes = loaded.classes
    results = []
    paths = image_paths(inputs)
    for start in range(0, len(paths), batch_size):
        chunk, images, errors = paths[start : start + batch_size], [], {}
        for p in chunk:
            try:
                images.append(transform(load_rgb(p)))
            except (OSError, ValueError) as err:
                errors[p] = str(err)
        probs = torch.empty(0)
        if images:
            with autocast_context(dev, amp):
                probs = model(torch.stack(images).to(dev)).float().softmax(dim=-1).cpu()
        k = min(topk, probs.shape[-1]) if images else 0
        it = iter(range(len(images)))
        for p in chunk:
            if p in errors:
                results.append({"image": str(p), "error": errors[p]})
                continue
            row = probs[next(it)]
            top = row.topk(k)
            results.append(
                {
                    "image": str(p),
                    "top": [
                        {"label": classes[i] if classes else str(i), "index": int(i), "probability": round(float(v), 6)}
                        for v, i in zip(top.values.tolist(), top.indices.tolist())
                    ],
                }
            )
    return results


def results_json(results: list[dict[str, Any]]) -> str:
    return json.dumps(results, indent=1)
