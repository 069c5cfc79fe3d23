"""``crossformer multilabel predict``: images in, labels with probabilities out (JSON), and optionally each image's
per-class maps from the head drawn over it (PNG)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...data.images import image_paths, read_rgb
from ...engine.loading import load_model
from ...engine.plots import _pyplot
from ...engine.trainer import autocast_context
from ..classification.data import eval_transform
from ..classification.model import _data_config
from .config import DEFAULTS, PATH_KEYS

__all__ = ["draw_maps", "predict_images", "results_json"]


def draw_maps(
    image: np.ndarray,
    maps: torch.Tensor,
    labels: Sequence[tuple[str, float]],
    path: str | Path,
    boxes: Sequence[tuple[str, tuple[int, int, int, int]]] = (),
) -> Path:
    """The image, then one panel per label with its class map (``[n, h, w]``, upsampled bilinearly, min-max scaled
    per map) over the image; ``boxes`` (name, (x, y, w, h)) are outlined on the first panel."""
    plt = _pyplot()
    n = len(labels)
    fig, axes = plt.subplots(1, n + 1, figsize=(2.4 * (n + 1), 2.6), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title("input", fontsize=9)
    for name, (x, y, w, h) in boxes:
        axes[0].add_patch(plt.Rectangle((x - 0.5, y - 0.5), w, h, fill=False, color="lime", linewidth=1))
        axes[0].text(x, y - 1, name, color="lime", fontsize=6, va="bottom")
    if n:
        up = F.interpolate(maps[None].float(), size=image.shape[:2], mode="bilinear", align_corners=False)[0]
        for ax, m, (name, p) in zip(axes[1:], up, labels):
            m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-6)
            ax.imshow(image)
            ax.imshow(m.numpy(), cmap="jet", alpha=0.45)
            ax.set_title(f"{name} {p:.2f}", fontsize=9)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@torch.no_grad()
def predict_images(
    checkpoint: str | Path,
    inputs: Sequence[str],
    output_dir: str | Path | None = None,
    threshold: float | None = None,
    topk: int = 5,
    maps: bool = False,
    batch_size: int = 16,
    trusted: bool = False,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Per image: the labels at ``probability >= threshold`` (default: the run's ``eval.threshold``) and the ``topk``
    most probable, with probabilities; with ``maps`` also ``<output_dir>/<stem>_maps.png`` (the class maps of the
    predicted labels, or of the top 3 when none is predicted). Unreadable images get an ``error`` entry."""
    loaded = load_model(checkpoint, "multilabel", trusted=trusted)
    cfg = loaded.run_config(DEFAULTS, PATH_KEYS) if loaded.config or loaded.run_dir else None
    threshold = threshold if threshold is not None else (cfg["eval"]["threshold"] if cfg else 0.5)
    amp = cfg["train"]["amp"] if cfg else None
    raw = loaded.extras.get("data_config")
    dcfg = _data_config(json.loads(raw)) if isinstance(raw, str) else None
    if dcfg is None:
        raise ValueError(f"{loaded.source} stores no usable preprocessing (data_config): a damaged model file?")
    dcfg["crop_mode"] = json.loads(raw).get("crop_mode", "squash") if raw else "squash"
    if dcfg["crop_mode"] not in ("squash", "center", "border"):
        dcfg["crop_mode"] = "squash"
    transform = eval_transform(dcfg)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = loaded.model.to(dev).eval()
    classes = loaded.classes or [str(i) for i in range(model.num_classes)]
    out = Path(output_dir) if output_dir is not None else None
    if maps:
        if out is None:
            raise ValueError("attention maps need an output folder (--output-dir)")
        out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    paths = image_paths(inputs)
    for start in range(0, len(paths), batch_size):
        chunk, pictures, tensors, errors = paths[start : start + batch_size], {}, [], {}
        for p in chunk:
            try:
                picture = read_rgb(p)
                tensors.append(transform(picture))
                pictures[p] = picture
            except (OSError, ValueError) as err:
                errors[p] = str(err)
        if tensors:
            x = torch.stack(tensors).to(dev)
            with autocast_context(dev, amp):
                feats = model.forward_features(x)
                probs = torch.sigmoid(model.forward_head(feats).float()).cpu()
                class_maps = model.head.attention(feats).float().cpu() if maps else None
        row = 0
        for p in chunk:
            if p in errors:
                results.append({"image": str(p), "error": errors[p]})
                continue
            prob = probs[row]
            top = prob.topk(min(topk, len(classes)))
            entry: dict[str, Any] = {
                "image": str(p),
                "labels": [
                    {"label": classes[i], "probability": round(float(prob[i]), 6)}
                    for i in prob.argsort(descending=True).tolist()
                    if prob[i] >= threshold
                ],
                "top": [
                    {"label": classes[i], "probability": round(float(v), 6)}
                    for v, i in zip(top.values.tolist(), top.indices.tolist())
                ],
            }
            if maps and class_maps is not None:
                shown = [c for c in prob.argsort(descending=True).tolist() if prob[c] >= threshold][:6]
                shown = shown or prob.argsort(descending=True).tolist()[:3]
                picture = np.asarray(pictures[p].resize(tuple(dcfg["input_size"][1:][::-1])))
                png = draw_maps(
                    picture, class_maps[row, shown], [(classes[c], float(prob[c])) for c in shown],
                    out / f"{Path(p).stem}_maps.png",  # type: ignore[operator]
                )  # fmt: skip
                entry["maps"] = str(png)
            results.append(entry)
            row += 1
    return results


def results_json(results: list[dict[str, Any]]) -> str:
    return json.dumps(results, indent=1)
