"""Create the classifier of a run (any timm model; CrossFormer variants are registered) and load its weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ...engine.config import model_arguments_from
from ...models import load_official_state_dict
from ...models.io import read_checkpoint
from .config import DROP_PATH

__all__ = ["build_classifier", "load_classifier_weights", "load_run_model"]


def build_classifier(cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """``timm.create_model(model.name, num_classes, drop_path_rate, **model.kwargs)`` plus weights and options."""
    m = cfg["model"]
    kwargs = dict(m["kwargs"] or {})
    drop_path = m["drop_path_rate"] if m["drop_path_rate"] is not None else DROP_PATH.get(m["name"])
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    try:
        with model_arguments_from(m["name"], {"model.kwargs": m["kwargs"]}):
            model = timm.create_model(m["name"], num_classes=num_classes, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown model {m['name']!r}: use a CrossFormer variant or any timm model name") from None
        raise
    if m["pretrained"]:
        load_classifier_weights(model, m["pretrained"])
    if m["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    return model


def load_classifier_weights(model: nn.Module, path: str | Path) -> None:
    """Load a run directory, our safetensors, or an official checkpoint; the head is skipped if its size differs."""
    path = Path(path)
    if path.is_dir():
        path = path / "final.safetensors" if (path / "final.safetensors").is_file() else path
    state = read_checkpoint(path) if path.is_file() else None
    if state is None:
        from ...engine import load_training_checkpoint

        state = load_training_checkpoint(path)["model"]
    head = getattr(model, "get_classifier", lambda: None)()
    head_keys = {n for n, _ in head.named_parameters()} if isinstance(head, nn.Module) else set()
    own = model.state_dict()
    skip_head = any(
        k.endswith(tuple(head_keys)) and k in own and tuple(v.shape) != tuple(own[k].shape)
        for k, v in (state.get("model", state) if isinstance(state, dict) else state).items()
        if isinstance(v, torch.Tensor)
    )
    if hasattr(model, "patch_embed") and hasattr(model, "layers") and type(model).__name__ == "CrossFormer":
        load_official_state_dict(model, state, skip_head=skip_head)
        return
    sd = state.get("model", state.get("state_dict", state))
    if skip_head:
        sd = {k: v for k, v in sd.items() if not any(k.endswith(h) for h in head_keys)}
    _, unexpected = model.load_state_dict(sd, strict=not skip_head)
    if unexpected:
        raise ValueError(f"unexpected keys in {path}: {unexpected[:8]}")


def load_run_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """A model saved by ``crossformer train`` and its metadata: the run directory or its ``final.safetensors``, or
    other weights of the run (``best.safetensors``, ``checkpoints/step-*``) described by its ``final.safetensors``."""
    from safetensors import safe_open

    path = Path(path)
    weights = path
    if path.is_dir() and (path / "meta.json").is_file():  # a training checkpoint: <run>/checkpoints/step-*
        path = path.parent.parent / "final.safetensors"
    elif path.is_dir():
        path = weights = path / "final.safetensors"
    elif path.is_file() and path.name != "final.safetensors" and (path.parent / "final.safetensors").is_file():
        with safe_open(str(path), "pt") as f:  # best.safetensors: weights only, the run's final file describes them
            if (f.metadata() or {}).get("task") != "classification":
                path = path.parent / "final.safetensors"
    if not path.is_file():
        raise FileNotFoundError(
            f"no trained model at {path} (expected a run directory, its final.safetensors or best.safetensors, or one "
            "of its checkpoints/step-* folders once the run has written final.safetensors)"
        )
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if meta.get("task") != "classification":
        raise ValueError(
            f"{path} is not a classifier saved by `crossformer train` (metadata task={meta.get('task')!r})"
        )
    classes = json.loads(meta["classes"])
    model = timm.create_model(meta["model"], num_classes=len(classes), **json.loads(meta.get("model_kwargs", "{}")))
    load_classifier_weights(model, weights)
    info = {"classes": classes, "data_config": json.loads(meta["data_config"]), "model": meta["model"]}
    info["run_dir"] = path.parent  # the folder of the final.safetensors that describes the model
    return model.to(device).eval(), info
