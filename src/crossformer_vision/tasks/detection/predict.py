"""``crossformer det predict``: images in, ``predictions.json`` and one PNG per image (boxes, labels, scores,
masks) out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ...engine.loading import load_model
from ...utils.paths import output_dir as make_output_dir

__all__ = ["predict_files"]


def predict_files(
    checkpoint: str | Path,
    inputs: Sequence[str],
    output_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    score_thresh: float = 0.3,
    device: str | None = None,
    trusted: bool = False,
) -> tuple[Path, list[Path], dict[str, str]]:
    """``det predict``: ``<output_dir>/<image>.png`` with boxes, labels, scores (and masks) plus ``predictions.json``.

    Folders are searched recursively; a file named twice is predicted once. Pictures share a base name: the later
    ones get ``_`` appended (``x.png``, ``x_.png``), as in ``seg predict``. Unreadable images are skipped (not in
    ``predictions.json``); a :class:`ValueError` when none can be read.

    Returns:
        ``(json path, image paths predicted, {unreadable image path: error message})``.
    """
    from ...data.folder import image_paths
    from .visualize import predict_and_save

    folder = make_output_dir(output_dir)  # before any work: a wrong path is the first thing to hear about
    paths = image_paths(inputs)
    loaded = load_model(checkpoint, "detection", trusted=trusted, overrides=overrides)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = loaded.model.to(dev)
    unreadable: dict[str, str] = {}
    json_path = predict_and_save(
        model,
        paths,
        folder,
        class_names=loaded.classes,
        score_thresh=score_thresh,
        device=dev,
        unreadable=unreadable,
    )
    return json_path, [p for p in paths if str(p) not in unreadable], unreadable
