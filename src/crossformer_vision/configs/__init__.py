"""Bundled run presets (YAML): ``resolve_config("fashion_mnist_demo")`` or a path to your own file."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["list_presets", "resolve_config"]


def list_presets(task: str = "classification") -> list[str]:
    folder = resources.files(__name__).joinpath(task)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def resolve_config(name_or_path: str | None, task: str = "classification") -> Path | None:
    """A YAML path: an existing file, or the bundled preset of that name."""
    if name_or_path is None:
        return None
    path = Path(name_or_path)
    if path.is_file():
        return path
    preset = resources.files(__name__).joinpath(task, f"{name_or_path.removesuffix('.yaml')}.yaml")
    if preset.is_file():
        return Path(str(preset))
    raise FileNotFoundError(
        f"config {name_or_path!r} is neither a file nor a bundled {task} preset ({', '.join(list_presets(task))})"
    )
