"""Evaluate or run a trained / official classifier: ``crossformer eval`` and ``crossformer predict``."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from timm.data import create_transform, resolve_model_data_config
from torch import nn

from ...data.folder import image_paths, load_rgb
from ...engine import DistInfo, apply_overrides, autocast_context, init_distributed, load_config
from ...models import detect_variant
from ...models.io import read_checkpoint, read_state_dict
from .config import DEFAULTS
from .data import build_datasets
from .evaluate import evaluate_classifier, per_class_accuracy
from .model import load_classifier_weights, load_run_model

__all__ = ["evaluate_checkpoint", "load_any_classifier", "predict_images"]


def _is_run_file(path: Path) -> bool:
    """A run directory, a file of one (``final`` / ``best.safetensors``) or one of its ``checkpoints/step-*``."""
    if path.is_dir():
        if (path / "meta.json").is_file() and path.parent.name == "checkpoints":
            return (path.parent.parent / "config.yaml").is_file()
        return (path / "final.safetensors").is_file()
    if path.suffix != ".safetensors" or not path.is_file():
        return False
    with safe_open(str(path), "pt") as f:
        if (f.metadata() or {}).get("task") == "classification":
            return True
    return (path.parent / "final.safetensors").is_file() and (path.parent / "config.yaml").is_file()


def load_any_classifier(
    checkpoint: str | Path,
    model_name: str | None = None,
    trusted: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """A run of ``crossformer train`` (directory or ``final.safetensors``) or an official / converted checkpoint.

    Returns:
        ``(model in eval mode, info)`` with ``info["classes"]`` (None when unknown), ``info["data_config"]``
        and ``info["run_config"]`` (the training config, for runs).
    """
    path = Path(checkpoint)
    if _is_run_file(path):
        model, info = load_run_model(path)
        run_cfg = info.pop("run_dir") / "config.yaml"
        info["run_config"] = load_config(DEFAULTS, run_cfg) if run_cfg.is_file() else None
        return model, info
    sd = read_state_dict(path, trusted)
    name = model_name or detect_variant(sd)
    if name is None:
        raise ValueError(f"cannot tell which model {path} holds; pass --model NAME")
    num_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 1000
    model = timm.create_model(name, num_classes=num_classes, **(model_kwargs or {}))
    load_classifier_weights(model, path) if path.suffix == ".safetensors" else _load_official(model, path, trusted)
    classes = timm.data.ImageNetInfo().label_descriptions() if num_classes == 1000 else None
    return model.eval(), {
        "classes": classes,
        "data_config": resolve_model_data_config(model),
        "model": name,
        "run_config": None,
    }


def _load_official(model: nn.Module, path: Path, trusted: bool) -> None:
    from ...models import load_official_state_dict

    ckpt = read_checkpoint(path, trusted)
    if type(model).__name__ == "CrossFormer":
        load_official_state_dict(model, ckpt)
    else:
        model.load_state_dict(ckpt.get("model", ckpt.get("state_dict", ckpt)))


def evaluate_checkpoint(
    checkpoint: str | Path,
    overrides: Sequence[str] = (),
    model_name: str | None = None,
    batch_size: int = 128,
    trusted: bool = False,
) -> dict[str, Any]:
    """Top-1 / top-5 / loss / per-class accuracy of a checkpoint on a dataset.

    The dataset is the run's validation data (for runs) unless ``overrides`` say otherwise
    (``data.dataset=folder data.root=/imagenet data.val_split=val``); preprocessing comes from the run or
    from the model's pretrained config (resize 256 bicubic, centre crop 224 for ImageNet models). A run is
    evaluated under its own autocast setting (``train.amp``), which an override can change (``train.amp=bf16``).
    """
    dist: DistInfo = init_distributed()
    # model.kwargs overrides shape an official / converted file's model (a run's own file describes its model)
    model_kwargs = apply_overrides(DEFAULTS, [o for o in overrides if o.startswith("model.kwargs.")])["model"]["kwargs"]
    model, info = load_any_classifier(checkpoint, model_name, trusted, model_kwargs)
    model.to(dist.device)
    cfg = copy.deepcopy(info["run_config"] or DEFAULTS)
    cfg = apply_overrides(cfg, overrides)
    dcfg = dict(info["data_config"])
    dcfg = {k: dcfg[k] for k in ("input_size", "crop_pct", "interpolation", "mean", "std")}
    dcfg["input_size"] = tuple(dcfg["input_size"])
    _, val_ds, classes = build_datasets(cfg, dcfg, train=False)
    # an official file carries no class names: its head says how many classes it predicts
    num_classes = len(info["classes"]) if info["classes"] is not None else getattr(model, "num_classes", len(classes))
    if len(classes) != num_classes:
        raise ValueError(
            f"the model predicts {num_classes} classes but the dataset has {len(classes)}: evaluate it on data with "
            "the classes it was trained on (data.root=...)"
        )
    # the run's autocast setting (``train.amp=null`` overrides it), so a run evaluates to the metrics it reported
    amp = cfg["train"]["amp"]
    metrics, confusion = evaluate_classifier(
        model, val_ds, num_classes, dist, batch_size, cfg["data"]["workers"], amp=amp
    )
    names = info["classes"] or classes
    return {"metrics": metrics, "per_class": per_class_accuracy(confusion[: len(names), : len(names)], list(names))}


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
    model, info = load_any_classifier(checkpoint, model_name, trusted)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev).eval()
    amp = info["run_config"]["train"]["amp"] if info["run_config"] else None
    dcfg = info["data_config"]
    transform = create_transform(
        input_size=tuple(dcfg["input_size"]),
        crop_pct=dcfg["crop_pct"],
        interpolation=dcfg["interpolation"],
        mean=tuple(dcfg["mean"]),
        std=tuple(dcfg["std"]),
    )
    classes = info["classes"]
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
