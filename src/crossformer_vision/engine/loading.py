"""The one place trained models are opened: run directory | checkpoint directory | model file | foreign file.

Every task saves its models with the same metadata (:func:`model_metadata`): string values, JSON where structured.

====================  =====================================================================================
``format``            ``"crossformer-vision"``
``task``              ``classification`` / ``segmentation`` / ``detection`` / ``multilabel``
``model``             the model name (``crossformer_s``, ``upernet_crossformer_s``, ``maskrcnn_swin_t``, ...)
``model_args``        JSON object: the arguments that rebuild the architecture (validated when read)
``classes``           JSON list of class names (its length fixes the head)
``config``            JSON object: the run configuration (test-time settings; its paths are never followed)
``steps``             optimizer steps trained
task extras           e.g. ``data_config`` (classification preprocessing), ``palette`` (segmentation)
====================  =====================================================================================

A file is untrusted data: its metadata is parsed with bounds and validated by the task before any model is built,
the architecture it describes is first built on the ``meta`` device and its tensor shapes compared with the file's
header, and only then are real weights allocated and loaded (strictly: a shape mismatch is an error).

Each task module named in :data:`TASK_MODELS` provides ``model_from_metadata(meta, **options) -> nn.Module`` (the
model without weights) and ``load_foreign(path, trusted=..., **options) -> LoadedModel`` (official / mm files).
"""

from __future__ import annotations

import copy
import importlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models._keys import state_mismatch

__all__ = [
    "FORMAT",
    "TASK_MODELS",
    "LoadedModel",
    "load_model",
    "model_metadata",
    "resolve_model_path",
    "save_model",
]

FORMAT = "crossformer-vision"

#: The task modules that rebuild models from metadata (imported only when a model of that task is loaded).
TASK_MODELS = {
    "classification": "crossformer_vision.tasks.classification.model",
    "segmentation": "crossformer_vision.tasks.segmentation.model",
    "detection": "crossformer_vision.tasks.detection.model",
    "multilabel": "crossformer_vision.tasks.multilabel.model",
}

_MAX_CLASSES = 100_000
_MAX_NAME = 1_000
_MAX_JSON = 10_000_000  # characters of one metadata value


@dataclass
class LoadedModel:
    """A model in eval mode on the CPU and what is known about it.

    ``classes`` is None for a foreign file without class names; ``config`` is the run configuration (None for
    foreign files); ``kind`` is ``"run"`` (a run's model file), ``"checkpoint"`` (a training checkpoint),
    ``"converted"`` or ``"official"``.
    """

    model: nn.Module
    task: str
    name: str
    classes: list[str] | None
    config: dict[str, Any] | None
    source: str
    kind: str
    extras: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)  # the validated architecture arguments
    run_dir: Path | None = None  # the run folder on disk (with its config.yaml) the model came from, if any

    def run_config(self, defaults: Mapping[str, Any], path_keys: Sequence[str] = ()) -> dict[str, Any]:
        """The run's configuration on top of ``defaults``: its ``config.yaml`` on disk when the model came from a
        run folder, else the configuration stored in the file with the entries ``path_keys`` (files, folders)
        reset to their defaults: a path is never taken from a model file."""
        from .config import load_config, merge_config

        if self.run_dir is not None:
            return load_config(defaults, self.run_dir / "config.yaml")
        if not self.config:
            return merge_config(defaults, {})
        cfg = merge_config(defaults, self.config, f"the configuration stored in {self.source}")
        for key in path_keys:
            node, default = cfg, defaults
            *parents, leaf = key.split(".")
            for part in parents:
                node, default = node[part], default[part]
            node[leaf] = default[leaf]
        return cfg


# ---------------------------------------------------------------------------------------------------------- writing
def model_metadata(
    task: str,
    model: str,
    model_args: Mapping[str, Any],
    classes: Sequence[str],
    config: Mapping[str, Any] | None = None,
    steps: int = 0,
    *,
    path_keys: Sequence[str] = (),
    **extras: Any,
) -> dict[str, str]:
    """The metadata of a model file, every value a string (JSON with sorted keys where structured).

    The entries ``path_keys`` of ``config`` (files and folders of this machine) are stored as null: a model file does
    not carry local paths, and two identical runs in different folders write identical files.
    """
    config = copy.deepcopy(dict(config or {}))
    for key in path_keys:
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and leaf in node:
            node[leaf] = None
    if task not in TASK_MODELS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_MODELS)}")
    meta = {
        "format": FORMAT,
        "task": task,
        "model": str(model),
        "model_args": _dumps(dict(model_args)),
        "classes": _dumps([str(c) for c in classes]),
        "config": _dumps(config),
        "steps": str(int(steps)),
    }
    meta.update({k: v if isinstance(v, str) else _dumps(v) for k, v in extras.items()})
    return meta


def save_model(model: nn.Module, path: str | os.PathLike, meta: Mapping[str, str]) -> Path:
    """Write ``model``'s weights with ``meta`` atomically (``final.safetensors`` of every task)."""
    from ..models.io import atomic_save_safetensors

    return atomic_save_safetensors(model.state_dict(), path, dict(meta))


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------------------------------------------------- reading
def resolve_model_path(path: str | os.PathLike) -> tuple[str, Path]:
    """What ``path`` names: ``("file", x.safetensors)``, ``("checkpoint", step-dir)`` or ``("foreign", file)``.

    A run directory means its ``final.safetensors``, or its latest training checkpoint when the run has not finished
    (a killed run); a ``checkpoints/step-*`` directory means that checkpoint.
    """
    from .checkpoint import CheckpointManager

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint file or run directory: {path}")
    if path.is_dir():
        if (path / "meta.json").is_file():
            return "checkpoint", path
        if (path / "final.safetensors").is_file():
            return "file", path / "final.safetensors"
        latest = CheckpointManager(path / "checkpoints").latest() or CheckpointManager(path).latest()
        if latest is not None:
            return "checkpoint", latest
        raise FileNotFoundError(
            f"{path} holds no trained model: expected a run directory (final.safetensors or checkpoints/step-*), "
            "a checkpoints/step-* folder, a .safetensors file or an official checkpoint file"
        )
    return ("file" if path.suffix == ".safetensors" else "foreign"), path


def _header(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """Metadata and tensor shapes from a safetensors header (no tensor is read)."""
    from ..models.io import read_safetensors_header

    meta, entries = read_safetensors_header(path)
    return dict(meta), {name: tuple(shape) for name, (_, shape) in entries.items()}


def _json(meta: Mapping[str, str], key: str, kind: type, where: str) -> Any:
    text = meta.get(key)
    if text is None or text == "":
        return None
    if not isinstance(text, str) or len(text) > _MAX_JSON:
        raise ValueError(f"{where}: metadata entry {key!r} is not a bounded string")
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        raise ValueError(f"{where}: metadata entry {key!r} is not valid JSON") from None
    if value is not None and not isinstance(value, kind):
        raise ValueError(f"{where}: metadata entry {key!r} must be a JSON {kind.__name__}")
    return value


def _classes(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    if len(value) > _MAX_CLASSES or not all(isinstance(c, str) and len(c) <= _MAX_NAME for c in value):
        raise ValueError(
            f"{where}: metadata 'classes' must be at most {_MAX_CLASSES} names of at most {_MAX_NAME} characters"
        )
    return list(value)


def _legacy(meta: dict[str, str]) -> dict[str, str]:
    """Files written before the shared schema: classification ``model_kwargs``, detection ``model`` as JSON and
    ``class_names``, segmentation ``config`` holding the model section."""
    if "model_args" in meta or meta.get("format") != FORMAT or "task" not in meta:
        return meta
    meta = dict(meta)
    task = meta["task"]
    if task == "classification" and "model_kwargs" in meta:
        meta["model_args"] = meta.pop("model_kwargs")
    elif task == "detection" and meta.get("model", "").startswith("{"):
        model_cfg = json.loads(meta["model"])
        meta["model"], meta["model_args"] = str(model_cfg.get("name")), meta["model"]
        meta["classes"] = meta.pop("class_names", meta.get("classes", "[]"))
    elif task == "segmentation" and meta.get("kind") == "run" and "config" in meta:
        meta["model_args"] = _dumps(json.loads(meta["config"]).get("model", {}))
    return meta


def _parsed(raw: Mapping[str, str], where: str) -> dict[str, Any]:
    """Metadata with its JSON values parsed and bounded (the task validates the model arguments next)."""
    meta: dict[str, Any] = {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}
    name = meta.get("model")
    if not isinstance(name, str) or not name or len(name) > 200:
        raise ValueError(f"{where}: metadata 'model' is missing or not a model name")
    meta["model_args"] = _json(raw, "model_args", dict, where) or {}
    meta["classes"] = _classes(_json(raw, "classes", list, where), where)
    meta["config"] = _json(raw, "config", dict, where)
    steps = raw.get("steps", "0")
    meta["steps"] = int(steps) if isinstance(steps, str) and steps.isdigit() and len(steps) < 19 else 0
    return meta


def _is_model_file(meta: Mapping[str, str]) -> bool:
    return meta.get("format") == FORMAT and meta.get("task") in TASK_MODELS and "model_args" in meta


def _task_module(task: str) -> Any:
    if task not in TASK_MODELS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASK_MODELS)}")
    return importlib.import_module(TASK_MODELS[task])


_COMMANDS = {"classification": "crossformer eval / predict", "segmentation": "crossformer seg eval / predict",
             "detection": "crossformer det eval / predict",
             "multilabel": "crossformer multilabel eval / predict"}  # fmt: skip


def _check_shapes(build: Callable[[], nn.Module], shapes: Mapping[str, tuple[int, ...]], where: str) -> None:
    """Build the architecture on the ``meta`` device (no memory) and compare its tensors with the file's."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in build().state_dict().items()}
    except (NotImplementedError, RuntimeError):  # a model that cannot be built on the meta device: checked on load
        return
    expected = {k: v for k, v in expected.items() if not k.endswith("num_batches_tracked") or k in shapes}
    parts = state_mismatch(expected, shapes)
    if parts:
        raise ValueError(
            f"{where} does not match the model its metadata describes ({'; '.join(parts)}). The file is damaged or "
            "was edited; use the run's own final.safetensors or checkpoints"
        )


def _load_state(kind: str, path: Path) -> dict[str, torch.Tensor]:
    from ..models.io import read_checkpoint

    if kind == "checkpoint":
        from .checkpoint import load_training_checkpoint

        return dict(load_training_checkpoint(path)["model"])
    return dict(read_checkpoint(path))


def _strip_compile_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
    prefix = "_orig_mod."
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _checkpoint_meta(path: Path) -> tuple[dict[str, str], dict[str, tuple[int, ...]]]:
    """The model metadata a training checkpoint carries (``meta.json``) and its weights' shapes."""
    try:
        info = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        raise ValueError(f"{path}/meta.json is unreadable: the checkpoint is damaged; use an earlier one") from None
    meta = info.get("model_meta") if isinstance(info, dict) else None
    if not isinstance(meta, dict) or not meta:
        raise ValueError(
            f"{path} does not say which model it holds (a checkpoint written before model metadata was stored); "
            "evaluate the run's final.safetensors, or resume the run to write one"
        )
    _, shapes = _header(path / "model.safetensors")
    return meta, shapes


def load_model(path: str | os.PathLike, task: str, *, trusted: bool = False, **options: Any) -> LoadedModel:
    """Open any model file of ``task``: a run directory, a ``checkpoints/step-*`` directory, a ``.safetensors`` of
    a run (``final`` / ``best``), a converted file or an official file (read by the task's ``load_foreign``).

    Args:
        path: What to open.
        task: The task the caller expects; a model of another task is refused with the command to use.
        trusted: Unpickle arbitrary objects from pickle files (only for files whose origin you trust).
        **options: Task options (segmentation ``lda_rule``, detection ``overrides``, classification ``model_name``).

    Returns:
        The model in eval mode on the CPU with its metadata.
    """
    module = _task_module(task)
    kind, file = resolve_model_path(path)
    if kind == "foreign":
        return module.load_foreign(file, trusted=trusted, **options)
    if kind == "checkpoint":
        raw, shapes = _checkpoint_meta(file)
    else:
        raw, shapes = _header(file)
        if (
            not _is_model_file(_legacy(raw))
            and (file.parent / "final.safetensors").is_file()
            and raw.get("format") != FORMAT
        ):  # best.safetensors of an older run: its run's final file says what it is
            raw = _header(file.parent / "final.safetensors")[0]
    raw = _legacy(raw)
    if not _is_model_file(raw):
        return module.load_foreign(file, trusted=trusted, **options)
    where = str(file)
    if raw["task"] != task:
        raise ValueError(f"{where} holds a {raw['task']} model, not a {task} model: use {_COMMANDS[raw['task']]}")
    meta = _parsed(raw, where)
    shapes = {k[len("_orig_mod.") :] if k.startswith("_orig_mod.") else k: v for k, v in shapes.items()}
    meta["model_args"] = module.validate_model_args(meta["model"], meta["model_args"], where)

    def build() -> nn.Module:
        return module.model_from_metadata(meta, **options)

    _check_shapes(build, shapes, where)
    model = build()
    model.load_state_dict(_strip_compile_prefix(_load_state(kind, file)))
    extras = {k: v for k, v in meta.items() if k not in ("format", "task", "model", "model_args", "classes", "config")}
    folder = file.parent.parent if kind == "checkpoint" else file.parent
    return LoadedModel(
        model=model.eval(),
        task=task,
        name=meta["model"],
        classes=meta["classes"],
        config=meta["config"],
        source=where,
        kind="checkpoint" if kind == "checkpoint" else "run",
        extras=extras,
        model_args=meta["model_args"],
        run_dir=folder if (folder / "config.yaml").is_file() else None,
    )
