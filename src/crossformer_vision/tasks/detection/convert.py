"""``crossformer det convert``: an official mmdetection checkpoint -> a self-describing detector ``.safetensors``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ...utils.paths import output_file
from .model import load_foreign, save_detector

__all__ = ["convert_mmdet_to_safetensors"]


def convert_mmdet_to_safetensors(
    src: str | Path, dst: str | Path, overrides: Sequence[str] = (), trusted: bool = False
) -> dict[str, Any]:
    """An official mmdet checkpoint as a self-describing detector ``.safetensors`` (``det eval`` / ``det predict``
    read it without mmdet).

    Returns:
        ``{"path", "model", "lda_rule", "classes", "report"}`` (``report`` says what transferred).
    """
    if Path(src).suffix == ".safetensors":
        raise ValueError(f"{src} is already a safetensors file; convert expects an official mmdet .pth")
    dst = output_file(dst, "the output file")
    loaded = load_foreign(Path(src), trusted=trusted, overrides=overrides)
    path = save_detector(loaded.model, dst, loaded.model_args, loaded.classes or [], source=Path(src).name)
    return {
        "path": path,
        "model": loaded.name,
        "lda_rule": loaded.model_args.get("lda_rule"),
        "classes": loaded.classes,
        "report": loaded.extras["report"],
    }
