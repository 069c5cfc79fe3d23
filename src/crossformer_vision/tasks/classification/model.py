"""Classifiers by name (any timm model; the CrossFormer variants are registered), their weights, and rebuilding them
from a model file (:mod:`crossformer_vision.engine.loading`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import resolve_model_data_config
from torch import nn

from ...engine.config import model_arguments_from
from ...engine.loading import LoadedModel
from ...models import detect_variant, load_official_state_dict
from ...models.io import read_checkpoint

__all__ = [
    "build_classifier",
    "load_classifier_weights",
    "load_foreign",
    "model_from_metadata",
    "validate_model_args",
]


def build_classifier(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """``timm.create_model(model.name, num_classes, drop_path_rate, **model.kwargs)`` plus weights and options.

    ``model.drop_path_rate`` null keeps the model's own default (a CrossFormer variant's official value).
    """
    m = cfg["model"]
    kwargs = dict(m["kwargs"] or {})
    if m["drop_path_rate"] is not None:
        kwargs["drop_path_rate"] = m["drop_path_rate"]
    try:
        with model_arguments_from(m["name"], {"model.kwargs": m["kwargs"]}):
            model = timm.create_model(m["name"], num_classes=num_classes, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown model {m['name']!r}: use a CrossFormer variant or any timm model name") from None
        raise
    if m["pretrained"]:
        load_classifier_weights(model, m["pretrained"], new_head=True)
    if m["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    return model


def _head_keys(model: nn.Module) -> set[str]:
    head = getattr(model, "get_classifier", lambda: None)()
    if not isinstance(head, nn.Module):
        return set()
    prefix = next((n + "." for n, m in model.named_modules() if m is head and n), "")
    return {prefix + n for n, _ in head.named_parameters()}


def load_classifier_weights(model: nn.Module, path: str | Path, *, new_head: bool = False) -> None:
    """Initialise ``model`` from a run, one of our files, or an official checkpoint (``model.pretrained``).

    Every tensor must fit, except the classifier head when ``new_head`` (fine-tuning on other classes: a head of
    another size keeps its initialisation).
    """
    path = Path(path)
    if path.is_dir():
        from ...engine.loading import resolve_model_path

        kind, path = resolve_model_path(path)
        state = read_checkpoint(path / "model.safetensors") if kind == "checkpoint" else read_checkpoint(path)
    else:
        state = read_checkpoint(path)
    own = model.state_dict()
    head = _head_keys(model)
    if type(model).__name__ == "CrossFormer":
        from ...models._keys import extract_backbone_state_dict, unwrap_state_dict

        sd = extract_backbone_state_dict(unwrap_state_dict(state))
        skip = new_head and any(k not in sd or tuple(sd[k].shape) != tuple(own[k].shape) for k in head)
        load_official_state_dict(model, state, skip_head=skip)
        return
    sd = dict(state.get("model", state.get("state_dict", state)))
    if new_head:
        sd = {k: v for k, v in sd.items() if k not in head or tuple(v.shape) == tuple(own[k].shape)}
    wrong = [k for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{path}: {len(wrong)} tensor(s) of another shape than the model's, e.g. {wrong[0]}: "
                         f"{tuple(sd[wrong[0]].shape)} vs {tuple(own[wrong[0]].shape)}")  # fmt: skip
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not (new_head and k in head)]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit {type(model).__name__}: missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}")  # fmt: skip


def validate_model_args(name: str, args: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Model arguments read from a file, checked against the allow-list of :mod:`crossformer_vision.models.arguments`
    (no downloads, no paths, bounded sizes)."""
    from ...models.arguments import validate_model_arguments

    try:
        return validate_model_arguments(name, args)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def model_from_metadata(meta: Mapping[str, Any], **_: Any) -> nn.Module:
    """The classifier a model file describes, without its weights."""
    classes = meta["classes"] or []
    return timm.create_model(meta["model"], num_classes=len(classes), **meta["model_args"])


def _data_config(value: Any) -> dict[str, Any] | None:
    """The stored preprocessing, checked (numbers and a known interpolation)."""
    if not isinstance(value, dict):
        return None
    try:
        size = tuple(int(v) for v in value["input_size"])
        out = {
            "input_size": size,
            "crop_pct": float(value["crop_pct"]),
            "interpolation": str(value["interpolation"]),
            "mean": tuple(float(v) for v in value["mean"]),
            "std": tuple(float(v) for v in value["std"]),
        }
    except (KeyError, TypeError, ValueError):
        return None
    ok = (
        len(size) == 3
        and all(0 < s <= 8192 for s in size)
        and out["interpolation"] in ("bilinear", "bicubic", "nearest", "lanczos")
    )
    return out if ok and 0 < out["crop_pct"] <= 1 else None  # fmt: skip


def data_config_of(loaded: LoadedModel) -> dict[str, Any]:
    """Preprocessing of a loaded classifier: the run's, else the model's pretrained config."""
    import json

    raw = loaded.extras.get("data_config")
    stored = _data_config(json.loads(raw)) if isinstance(raw, str) else None
    if stored is not None:
        return stored
    dcfg = resolve_model_data_config(loaded.model)
    return {k: dcfg[k] for k in ("input_size", "crop_pct", "interpolation", "mean", "std")}


def load_foreign(
    path: Path, *, trusted: bool = False, model_name: str | None = None, model_kwargs: Mapping | None = None, **_: Any
) -> LoadedModel:
    """An official CrossFormer / HRFormer / SOFT / CMT / AugViT checkpoint, a ``crossformer convert`` file, or a timm
    model's state dict, as a classifier in eval mode.

    The model is ``model_name`` (``crossformer eval / predict --model NAME``) with ``model_kwargs``
    (``model.kwargs.KEY=VALUE`` overrides), else the variant read from the file: a CrossFormer variant from its tensor
    shapes, a family's variant from its keys and shapes
    (:func:`~crossformer_vision.models.family_weights.family_variant_of`). A family's file goes through
    :func:`~crossformer_vision.models.family_weights.family_state_dict`, the reader ``crossformer convert --variant``
    and the dense trunks use (the family's ``checkpoint_filter_fn``, every key and shape checked, arguments
    validated); the head's size is the file's.

    Raises:
        ValueError: One line: the model cannot be told (pass ``--model``), the file holds a trunk without a
            classifier head, or its tensors do not fit the model.
    """
    from ...models._keys import extract_backbone_state_dict, unwrap_state_dict
    from ...models.family_weights import family_of, family_state_dict, family_variant_of

    raw = read_checkpoint(path, trusted)
    name = model_name or family_variant_of(raw, str(path))
    if family_of(name) is not None:
        state, args, num_classes, dense = family_state_dict(
            raw, name, model_kwargs, trusted=trusted, where=str(path), usage="eval"
        )
        if dense:
            raise ValueError(f"{path} holds a dense {name} trunk without a classifier head; it cannot classify (use it "
                             "as model.backbone.weights of a segmentation / detection model)")  # fmt: skip
        model = timm.create_model(name, num_classes=num_classes, **args)
        model.load_state_dict(state, strict=True)
    else:
        sd = extract_backbone_state_dict(unwrap_state_dict(raw))
        name = model_name or detect_variant(sd)
        if name is None:
            raise ValueError(f"cannot tell which model {path} holds; pass --model NAME")
        if "head.weight" not in sd and model_name is None:
            raise ValueError(f"{path} holds a backbone without a classifier head; it cannot classify (use it as "
                             "model.pretrained to fine-tune)")  # fmt: skip
        num_classes = sd["head.weight"].shape[0] if "head.weight" in sd else 1000
        args = dict(model_kwargs or {})
        model = timm.create_model(name, num_classes=num_classes, **args)
        if type(model).__name__ == "CrossFormer":
            load_official_state_dict(model, raw)
        else:
            model.load_state_dict(raw.get("model", raw.get("state_dict", raw)))
    classes = timm.data.ImageNetInfo().label_descriptions() if num_classes == 1000 else None
    return LoadedModel(
        model=model.eval(),
        task="classification",
        name=name,
        classes=list(classes) if classes else None,
        config=None,
        source=str(path),
        kind="converted" if path.suffix == ".safetensors" else "official",
        model_args=dict(args),
    )


def num_classes_of(model: nn.Module) -> int:
    """Classes a classifier predicts (its head's size)."""
    n = getattr(model, "num_classes", None)
    if isinstance(n, int) and n > 0:
        return n
    with torch.no_grad():
        return int(model.get_classifier().weight.shape[0])
