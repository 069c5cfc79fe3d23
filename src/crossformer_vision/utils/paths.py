"""Output paths checked before anything is written: a folder that is a file, or a file that is a folder, is one clear
error naming the path and the fix."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["output_dir", "output_file"]


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path`` itself) when it is not a folder."""
    for part in (path, *path.parents):
        if part.exists() or part.is_symlink():
            return None if part.is_dir() else part
    return None


def _make_dir(path: Path, what: str, shown: Path) -> None:
    blocker = _file_in_the_way(path)
    if blocker is not None:
        if blocker == shown:
            raise ValueError(f"{what} {shown} is a file, not a folder; choose a folder ({what} DIR)")
        raise ValueError(f"{what} {shown}: {blocker} is a file, not a folder; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(f"cannot create the folder of {what} {shown}: {reason.lower()}") from None


def output_dir(path: str | os.PathLike, what: str = "--output-dir") -> Path:
    """``path`` as a folder to write into, created with its parents.

    Args:
        path: The folder.
        what: How the user set it (``--output-dir``, ``train.output_dir``, ...), named in the error.

    Raises:
        ValueError: One line: ``path`` (or a folder above it) is an existing file, or it cannot be created.
    """
    path = Path(path)
    _make_dir(path, what, path)
    return path


def output_file(path: str | os.PathLike, what: str = "the output file") -> Path:
    """``path`` as a file to write; its folder is created.

    Args:
        path: The file.
        what: How the user set it (``--output``, ...), named in the error.

    Raises:
        ValueError: One line: ``path`` is an existing folder, a folder above it is a file, or its folder cannot be
            created.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name (e.g. {path / 'model.safetensors'})")
    _make_dir(path.parent, what, path)
    return path
