"""Reading official checkpoint files safely, writing our safetensors files atomically, converting between them."""

from __future__ import annotations

import _compat_pickle
import functools
import json
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._keys import extract_backbone_state_dict, unwrap_state_dict

__all__ = ["ConfigNode", "atomic_save_safetensors", "convert_checkpoint", "read_checkpoint", "read_state_dict"]


class ConfigNode(dict):
    """Inert stand-in for ``yacs.config.CfgNode`` (the config object inside official classification checkpoints).

    It only holds the stored values (items, attribute access); no yacs code is imported or executed.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setstate__(self, state: Mapping[str, Any]) -> None:
        self.__dict__.update(state)


def _numpy_globals() -> list:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return []
    names = [(np.dtype, "numpy.dtype"), (np.ndarray, "numpy.ndarray")]
    core = getattr(np, "_core", None) or np.core
    names += [(core.multiarray.scalar, f"{mod}.multiarray.scalar") for mod in ("numpy.core", "numpy._core")]
    names += [(core.multiarray._reconstruct, f"{mod}.multiarray._reconstruct") for mod in ("numpy.core", "numpy._core")]
    for dtype in ("Float64DType", "Float32DType", "Int64DType", "Int32DType", "BoolDType"):
        if hasattr(np, "dtypes") and hasattr(np.dtypes, dtype):
            names.append((getattr(np.dtypes, dtype), f"numpy.dtypes.{dtype}"))
    return names


#: What an official checkpoint may contain besides tensors and builtins: the yacs config and numpy scalars.
SAFE_GLOBALS = [(ConfigNode, "yacs.config.CfgNode"), *_numpy_globals()]


@functools.lru_cache(maxsize=1)
def _allowed_globals() -> dict[str, Any]:
    # torch's own weights-only allow-list (tensor rebuild functions, dtypes, storages, OrderedDict, ...)
    from torch import _weights_only_unpickler

    allowed = dict(_weights_only_unpickler._get_allowed_globals())
    allowed.update({name: obj for obj, name in SAFE_GLOBALS})
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only callables are the allow-listed ones (the pattern of the ``pickle`` docs).

    torch's ``weights_only`` unpickler cannot rebuild the dict subclass ``yacs.config.CfgNode`` at all, so
    official classification checkpoints need this; it allows exactly torch's weights-only globals plus
    :data:`SAFE_GLOBALS`.
    """

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        # protocol-2 files name Python 2 modules (e.g. __builtin__.set); map them as pickle itself does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full in allowed:
            return allowed[full]
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {full}")


class _RestrictedPickleModule:
    """The ``pickle_module`` handed to ``torch.load``: ``Unpickler`` is restricted, ``load`` uses it."""

    __name__ = "crossformer_vision_restricted_pickle"
    Unpickler = _RestrictedUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return _RestrictedUnpickler(file, **kwargs).load()


def read_checkpoint(path: str | os.PathLike, trusted: bool = False) -> Mapping[str, Any]:
    """Load a checkpoint file without executing pickled code.

    ``.safetensors`` files are read directly. Pickle files (``.pth``, ``.pt``, ``.ckpt``) are unpickled with an
    allow-list: torch's weights-only globals plus what official files need (the yacs config, rebuilt as an
    inert :class:`ConfigNode`, and numpy scalars). Anything else is refused.

    Args:
        path: The file.
        trusted: Load arbitrary pickled objects (only for files whose origin you trust).

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is corrupted / truncated, or holds objects outside the allow-list (the message
            names them).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"cannot read {path}: the safetensors file is corrupted or truncated ({err})") from None
    try:
        if trusted:
            return torch.load(path, map_location="cpu", weights_only=False)
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise ValueError(f"cannot read {path}: the file is corrupted or not a checkpoint ({err})") from None
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            names = ", ".join(n for n in found if n not in _allowed_globals()) or str(err).split("GLOBAL ")[-1]
        except Exception:
            names = str(err).split("GLOBAL ")[-1]
        raise ValueError(
            f"refusing to load {path}: it contains pickled objects outside the allow-list ({names}). Only tensors, "
            "plain Python values, the yacs config and numpy scalars are accepted. If you trust the file's origin, "
            "load it with trusted=True (command line: --trust-checkpoint)."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"cannot read {path}: the file is corrupted or truncated ({err})") from None


def read_state_dict(path: str | os.PathLike, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The CrossFormer weights inside any official or converted file (prefixes and derived buffers removed)."""
    return extract_backbone_state_dict(unwrap_state_dict(read_checkpoint(path, trusted)))


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a safetensors file through a temporary file and ``os.replace``: the target is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp, metadata=dict(metadata or {}))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    variant: str | None = None,
    dense: bool | None = None,
    lda_rule: str | None = None,
    trusted: bool = False,
) -> dict[str, str]:
    """Convert any official file (classification, backbone-only, mmdet / mmseg) to a safetensors file.

    The variant is detected from the tensor shapes (or checked against ``variant``). The file's metadata
    records the variant, whether it is a dense backbone (no final norm / head), the LDA rule to run it with
    (``lda_rule``; ``None`` leaves the variant's default) and the source file name.

    Returns:
        The metadata written.
    """
    from ._official import build_from_state_dict, detect_variant, infer_architecture

    sd = read_state_dict(src, trusted)
    found = detect_variant(sd)
    if variant is not None and found is not None and variant != found:
        raise ValueError(f"{src} holds a {found!r} checkpoint, not {variant!r}")
    arch = infer_architecture(sd)
    is_dense = "head.weight" not in sd if dense is None else dense
    if is_dense:
        sd = {k: v for k, v in sd.items() if not k.startswith(("head.", "norm."))}
    build_from_state_dict(sd, dense=is_dense)  # proves every key loads with the right shape
    meta = {
        "format": "crossformer-vision",
        "variant": found or variant or "custom",
        "architecture": json.dumps({k: v for k, v in arch.items()}),
        "dense": str(is_dense).lower(),
        "source": Path(src).name,
    }
    if lda_rule is not None:
        meta["lda_rule"] = lda_rule
    atomic_save_safetensors(sd, dst, meta)
    return meta
