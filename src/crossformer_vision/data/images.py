"""Reading image files from outside: the one list of image extensions and the one image reader of every task.

An image file is untrusted input. :func:`read_rgb` turns every way a file can fail into an
:class:`UnreadableImageError` (a ``ValueError``) naming the file, so that callers which handle images one at a time
(the ``predict`` commands, the skipping datasets) skip just that file:

* unreadable, truncated or corrupt files, and files of an unknown format;
* images over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``): Pillow itself warns above the
  limit and raises ``DecompressionBombError`` (not an ``OSError``) above twice the limit; both are refused here,
  with the pixel count and the limit, before any pixel is decoded.

Modes: grey, palette, CMYK, RGBA / LA (alpha dropped) are converted to RGB; 16-bit (``I;16*``, ``I`` within
``0..65535``) is scaled to 8 bits (``round(x / 257)``, white stays white); float (``F``) images are stretched from
their minimum to their maximum.
"""

from __future__ import annotations

import os
import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "UnreadableImageError",
    "decode_error",
    "image_paths",
    "open_image",
    "read_rgb",
    "read_rgb_array",
]

#: The file extensions (lower case) taken as images when a folder is searched, by every task.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")

# What Pillow raises on a bad file, beyond OSError (UnidentifiedImageError, truncated data): some plugins raise
# SyntaxError, ValueError, EOFError or struct.error on malformed headers.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError)


class UnreadableImageError(ValueError):
    """An image file that cannot be used; ``str()`` is one line naming the file, ``reason`` says why alone."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _bomb_reason(err: Exception) -> str:
    limit = Image.MAX_IMAGE_PIXELS
    match = re.search(r"\((\d+) pixels\)", str(err))
    size = f"{int(match.group(1)):,} pixels" if match else "too many pixels"
    return (
        f"the image has {size}, over Pillow's decompression-bomb limit of {limit:,} pixels "
        "(PIL.Image.MAX_IMAGE_PIXELS); downscale the image, or raise that limit if you trust the file"
    )


@contextmanager
def open_image(path: str | os.PathLike, what: str = "image") -> Iterator[Image.Image]:
    """``Image.open`` for untrusted files: only the header is read (``.size`` and ``.mode`` are known, no pixel is
    decoded); images over the decompression-bomb limit and unreadable files raise :class:`UnreadableImageError`.
    Errors of ``load()`` / ``convert()`` inside the block are the caller's: :func:`decode_error` turns them into
    one."""
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse those as well
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UnreadableImageError(path, _bomb_reason(err)) from None
    except FileNotFoundError:
        raise UnreadableImageError(path, f"no such {what} file") from None
    except _PIL_ERRORS as err:
        raise UnreadableImageError(path, f"cannot read the {what} ({_one_line(err)})") from None
    with img:
        yield img


def decode_error(path: str | os.PathLike, err: BaseException, what: str = "image") -> UnreadableImageError:
    """The :class:`UnreadableImageError` for an error of ``load()`` / ``convert()`` on an opened file (own errors of
    this module pass through unchanged)."""
    if isinstance(err, UnreadableImageError):
        return err
    return UnreadableImageError(path, f"cannot read the {what} ({_one_line(err)})")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def _to_rgb(img: Image.Image, path: str | os.PathLike) -> Image.Image:
    mode = img.mode
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I (32-bit, 16-bit PNGs in older Pillows)
        array = np.asarray(img).astype(np.float64)
        if array.size and (array.max() > 65535 or array.min() < 0):
            raise UnreadableImageError(
                path, f"{mode} image values outside the 16-bit range 0..65535; convert it to 8-bit RGB"
            )
        grey = np.clip(np.round(array / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "F":
        array = np.asarray(img).astype(np.float64)
        if not np.isfinite(array).all():
            raise UnreadableImageError(path, "float image with NaN or infinite values; convert it to 8-bit RGB")
        lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        grey = ((array - lo) / max(hi - lo, 1e-12) * 255.0 + 0.5).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    return img.convert("RGB")


def read_rgb(path: str | os.PathLike) -> Image.Image:
    """An image file as an 8-bit RGB PIL image (fully decoded; the file is closed).

    Raises:
        UnreadableImageError: (a ``ValueError``) the file is missing, unreadable, corrupt, of an unsupported mode, or
            over the decompression-bomb limit; the one-line message names the file and the reason.
    """
    with open_image(path) as img:
        try:
            img.load()
            return _to_rgb(img, path)
        except _PIL_ERRORS as err:
            raise decode_error(path, err) from None


def read_rgb_array(path: str | os.PathLike) -> np.ndarray:
    """:func:`read_rgb` as a writable ``[H, W, 3]`` uint8 array."""
    return np.array(read_rgb(path))


def image_paths(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``inputs`` (files, and folders searched recursively for :data:`IMAGE_EXTENSIONS`), in
    order; a file named twice (a folder and a file in it) is listed once. Raises when an input does not exist or no
    image is found (the ``predict`` commands of every task)."""
    paths: list[Path] = []
    seen: set[Path] = set()
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            found = [p]
        else:
            raise FileNotFoundError(f"no such image or folder: {p}")
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                paths.append(f)
    if not paths:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {[str(i) for i in inputs]}")
    return paths
