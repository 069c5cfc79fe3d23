"""Output paths checked before anything is written: a folder that is a file, or a file that is a folder, is one clear
error naming the path and the fix."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["output_dir", "output_file"]


def output_dir(path: str | os.PathLike, what: str = "--output-dir") -> Path:
    """``path`` as a folder to write into (created); a ValueError when it is an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is a file, not a folder; choose a folder ({what} DIR)")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"{what} {path}: a part of the path is a file; choose another folder") from None
    return path


def output_file(path: str | os.PathLike, what: str = "the output file") -> Path:
    """``path`` as a file to write (its folder created); a ValueError when it is an existing folder."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a folder; give a file name (e.g. {path / 'model.safetensors'})")
    output_dir(path.parent, f"the folder of {what}")
    return path
