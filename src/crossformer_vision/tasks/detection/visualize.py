"""Run a detector on images and look at the result: detections as JSON, PNGs with boxes, labels, scores and masks."""

from __future__ import annotations

import colorsys
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["detect", "detection_to_json", "draw_detections", "load_image", "predict_and_save"]


def _color(label: int) -> tuple[int, int, int]:
    """A distinct, stable colour per label (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.75, 1.0)
    return int(255 * r), int(255 * g), int(255 * b)


def load_image(path: str | os.PathLike) -> Tensor:
    """An image file as uint8 ``[3, H, W]`` RGB (:func:`crossformer_vision.data.images.read_rgb_array`: unreadable
    files and decompression bombs are a ``ValueError`` naming the file)."""
    from ...data.images import read_rgb_array

    return torch.from_numpy(read_rgb_array(path)).permute(2, 0, 1)


def _as_uint8(image: Tensor) -> Tensor:
    if image.dtype == torch.uint8:
        return image
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def draw_detections(
    image: Tensor,
    detection: Mapping[str, Tensor],
    *,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.3,
    mask_thresh: float = 0.5,
    mask_alpha: float = 0.45,
    box_width: int = 2,
) -> Tensor:
    """Draw one image's detections.

    Args:
        image: ``[3, H, W]`` uint8, or float in ``[0, 1]``.
        detection: ``boxes [N, 4]``, ``scores [N]``, ``labels [N]`` (1..K) and optionally ``masks [N, 1, H, W]``.
        class_names: names by label - 1 (default: the label number).
        score_thresh: draw only detections scoring at least this.
        mask_thresh: binarisation threshold of soft masks.

    Returns:
        ``[3, H, W]`` uint8.
    """
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    canvas = _as_uint8(image.detach().cpu())
    keep = detection["scores"].detach().cpu() >= score_thresh
    if not keep.any():
        return canvas
    labels = detection["labels"].detach().cpu()[keep].tolist()
    scores = detection["scores"].detach().cpu()[keep].tolist()
    colors = [_color(label) for label in labels]
    if "masks" in detection:
        masks = detection["masks"].detach().cpu()[keep]
        masks = (masks[:, 0] if masks.ndim == 4 else masks) >= mask_thresh
        canvas = draw_segmentation_masks(canvas, masks, alpha=mask_alpha, colors=colors)
    names = [
        f"{class_names[label - 1] if class_names and 0 < label <= len(class_names) else label} {score:.2f}"
        for label, score in zip(labels, scores)
    ]
    boxes = detection["boxes"].detach().cpu()[keep].float()
    return draw_bounding_boxes(canvas, boxes, labels=names, colors=colors, width=box_width)


def detection_to_json(
    detection: Mapping[str, Tensor],
    *,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.0,
    mask_thresh: float = 0.5,
) -> list[dict[str, Any]]:
    """One image's detections as JSON-ready dicts: ``box`` (x1, y1, x2, y2 pixels), ``label``, ``name``, ``score``,
    and ``mask`` (COCO RLE, counts as str) for Mask R-CNN."""
    keep = detection["scores"].detach().cpu() >= score_thresh
    out = []
    rles: list[Any] = []
    if "masks" in detection and keep.any():
        from .coco_eval import masks_to_rle

        masks = detection["masks"].detach().cpu()[keep]
        rles = masks_to_rle((masks[:, 0] if masks.ndim == 4 else masks) >= mask_thresh)
    boxes = detection["boxes"].detach().cpu()[keep].tolist()
    labels = detection["labels"].detach().cpu()[keep].tolist()
    scores = detection["scores"].detach().cpu()[keep].tolist()
    for i, (box, label, score) in enumerate(zip(boxes, labels, scores)):
        item: dict[str, Any] = {"box": [round(v, 2) for v in box], "label": label, "score": round(score, 4)}
        if class_names and 0 < label <= len(class_names):
            item["name"] = class_names[label - 1]
        if rles:
            item["mask"] = rles[i]
        out.append(item)
    return out


@torch.no_grad()
def detect(
    model: nn.Module,
    images: Sequence[str | os.PathLike | Tensor],
    *,
    device: str | torch.device | None = None,
    batch_size: int = 1,
) -> list[dict[str, Tensor]]:
    """Detections (on the CPU) for image files or ``[3, H, W]`` tensors (uint8, or float in ``[0, 1]``).

    The model is put in eval mode; boxes and masks are in the input images' pixels.
    """
    model.eval()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    outputs: list[dict[str, Tensor]] = []
    for start in range(0, len(images), batch_size):
        batch = [
            (load_image(x) if isinstance(x, (str, os.PathLike)) else x) for x in images[start : start + batch_size]
        ]
        batch = [(x.float() / 255 if x.dtype == torch.uint8 else x.float()).to(device) for x in batch]
        for det in model(batch):
            outputs.append({k: v.cpu() for k, v in det.items()})
    return outputs


def predict_and_save(
    model: nn.Module,
    image_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    score_thresh: float = 0.3,
    device: str | torch.device | None = None,
    unreadable: dict[str, str] | None = None,
) -> Path:
    """Run ``model`` on image files; write ``<out_dir>/<stem>.png`` (drawn detections) and
    ``<out_dir>/predictions.json`` (``{file: [detections]}``, those scoring at least ``score_thresh``).

    Files sharing a base name get ``_`` appended to the later ones' picture names (``x.png``, ``x_.png``).

    Args:
        unreadable: When given, unreadable images are skipped and recorded here (``{path: error message}``), and a
            :class:`ValueError` is raised only when no image can be read; otherwise the first one raises.

    Returns:
        The JSON file's path.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    results: dict[str, Any] = {}
    used: set[str] = set()
    for path in image_paths:
        try:
            image = load_image(path)
        except ValueError as err:
            if unreadable is None:
                raise
            unreadable[str(path)] = str(err)
            continue
        (det,) = detect(model, [image], device=device)
        drawn = draw_detections(image, det, class_names=class_names, score_thresh=score_thresh)
        stem = Path(path).stem
        while stem in used:
            stem += "_"
        used.add(stem)
        out_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(out_dir / f"{stem}.png")
        results[str(path)] = detection_to_json(det, class_names=class_names, score_thresh=score_thresh)
    if image_paths and not results:
        first = next(iter(unreadable.values())) if unreadable else "no images"
        raise ValueError(f"none of the {len(image_paths)} images could be read ({first})")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "predictions.json"
    json_path.write_text(json.dumps(results, indent=1))
    return json_path
