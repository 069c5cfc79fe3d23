"""Reading official checkpoint files safely, writing our safetensors files atomically, converting between them."""

from __future__ import annotations

import _compat_pickle
import errno
import functools
import json
import math
import os
import pickle
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ._keys import extract_backbone_state_dict, unwrap_state_dict

__all__ = [
    "ConfigNode",
    "FileWriteError",
    "atomic_save_safetensors",
    "convert_checkpoint",
    "normal_file_mode",
    "read_checkpoint",
    "read_safetensors_header",
    "read_state_dict",
    "write_error_reason",
]

#: The suggestion every refusal of a pickle file ends with (true for every command and for the Python API).
TRUST_HINT = (
    "If you trust the file's origin, pass --trust-checkpoint (where the command offers it) or trusted=True "
    "(Python API)."
)


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


class _AllocationRefused(pickle.UnpicklingError):
    """A pickle asked for more memory than its file could hold data for (a memory bomb or a damaged file)."""


def _pickle_budget(path: Path) -> int:
    """The most bytes one object of a pickle file may ask for: its data is in the file, so twice its size."""
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return 2 * size + (1 << 20)


def _bounded(name: str, fn: Any, nbytes: Any, budget: int) -> Any:
    """``fn`` refusing calls for which ``nbytes(*args)`` exceeds ``budget``."""

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            wanted = nbytes(*args, **kwargs)
        except (TypeError, ValueError, OverflowError, IndexError):
            wanted = None
        if wanted is not None and wanted > budget:
            raise _AllocationRefused(f"{name} asks for {wanted:,} bytes")
        return fn(*args, **kwargs)

    return call


def _bytearray_size(source: Any = None, *_: Any, **__: Any) -> int | None:
    return source if isinstance(source, int) and not isinstance(source, bool) else None


def _numel(shape: Any) -> int:
    return shape if isinstance(shape, int) else math.prod(int(d) for d in shape)


def _ndarray_size(_subtype: Any, shape: Any, dtype: Any, *_: Any) -> int:
    import numpy as np

    return _numel(shape) * max(np.dtype(dtype).itemsize, 1)


def _qtensor_size(storage: Any, _offset: Any, size: Any, *_: Any) -> int:
    return _numel(size) * torch._utils._element_size(storage.dtype)


#: Allow-listed callables that allocate what their arguments say, and how many bytes a call asks for.
_ALLOCATORS = {
    "builtins.bytearray": _bytearray_size,
    "numpy.core.multiarray._reconstruct": _ndarray_size,
    "numpy._core.multiarray._reconstruct": _ndarray_size,
    "torch._utils._rebuild_qtensor": _qtensor_size,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose only callables are the allow-listed ones (the pattern of the ``pickle`` docs).

    torch's ``weights_only`` unpickler cannot rebuild the dict subclass ``yacs.config.CfgNode`` at all, so
    official classification checkpoints need this; it allows exactly torch's weights-only globals plus
    :data:`SAFE_GLOBALS`. What the pickle may allocate is bounded by ``budget`` bytes per object (the data of a
    real checkpoint is in its file): allow-listed constructors that take a size (``bytearray(n)``, numpy and
    quantized tensor rebuilds) and the storages torch creates for persistent ids are checked before allocating.
    """

    budget = 1 << 62

    def __init__(self, file: Any, **kwargs: Any) -> None:
        self._storage_loader: Any = None
        super().__init__(file, **kwargs)

    # torch.load assigns its storage loader to ``persistent_load``; the C unpickler calls the method found at
    # ``__init__``, which checks the storage size before handing the id on
    @property
    def persistent_load(self) -> Any:
        return self._checked_persistent_load

    @persistent_load.setter
    def persistent_load(self, loader: Any) -> None:
        self._storage_loader = loader

    def _checked_persistent_load(self, pid: Any) -> Any:
        if self._storage_loader is None:
            raise pickle.UnpicklingError("persistent id without a storage loader")
        if isinstance(pid, tuple) and len(pid) >= 5:
            storage_type, numel = pid[1], pid[4]
            try:
                dtype = torch.uint8 if storage_type is torch.UntypedStorage else storage_type.dtype
                wanted = int(numel) * torch._utils._element_size(dtype)
            except (AttributeError, TypeError, ValueError, RuntimeError):
                wanted = None
            if wanted is not None and wanted > self.budget:
                raise _AllocationRefused(f"a tensor storage asks for {wanted:,} bytes")
        return self._storage_loader(pid)

    def find_class(self, module: str, name: str) -> Any:
        allowed = _allowed_globals()
        # protocol-2 files name Python 2 modules (e.g. __builtin__.set); map them as pickle itself does
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        full = f"{module}.{name}"
        if full in allowed:
            if full in _ALLOCATORS:
                return _bounded(full, allowed[full], _ALLOCATORS[full], self.budget)
            return allowed[full]
        raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {full}")


def _restricted_pickle_module(budget: int) -> Any:
    """The ``pickle_module`` handed to ``torch.load``: ``Unpickler`` is restricted and bounded, ``load`` uses it."""

    class Unpickler(_RestrictedUnpickler):
        pass

    Unpickler.budget = budget

    class RestrictedPickleModule:
        __name__ = "crossformer_vision_restricted_pickle"

        @staticmethod
        def load(file: Any, **kwargs: Any) -> Any:
            return Unpickler(file, **kwargs).load()

    RestrictedPickleModule.Unpickler = Unpickler  # type: ignore[attr-defined]
    return RestrictedPickleModule


# ------------------------------------------------------------------------------------------------ safetensors
#: Bytes per element of the safetensors dtypes.
_ST_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip

#: Largest safetensors header accepted (the library's own limit).
MAX_HEADER_BYTES = 100_000_000
_MAX_RANK = 16


def read_safetensors_header(
    path: str | os.PathLike,
) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """The metadata and tensor list of a ``.safetensors`` file, read from its header only (no tensor data).

    The header is checked: bounded length, valid JSON, string metadata, known dtypes, and tensor byte ranges that
    match their shapes and exactly tile the data that follows the header in the file.

    Returns:
        ``(metadata, {name: (dtype, shape)})``, e.g. ``({"format": "pt"}, {"head.weight": ("F32", (10, 64))})``.

    Raises:
        FileNotFoundError: No such file.
        ValueError: One line naming the file: empty, truncated, or not a safetensors file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")

    def bad(why: str) -> ValueError:
        return ValueError(f"cannot read {path}: the safetensors file is corrupted or truncated ({why})")

    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise bad("the file is empty")
            prefix = f.read(8)
            if len(prefix) < 8:
                raise bad(f"the file has {size} bytes, too few for a header")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER_BYTES:
                raise bad(f"its header length {n:,} is over the {MAX_HEADER_BYTES:,} accepted")
            if n > size - 8:
                raise bad(f"the file is truncated: its header needs {n:,} bytes, {size - 8:,} follow")
            raw = f.read(n)
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise bad("its header is not valid JSON") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise bad("its __metadata__ is not a map of strings")
    data_len = size - 8 - n
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    ranges = []
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise bad(f"tensor {name[:80]!r} has no description")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _ST_DTYPES:
            raise bad(f"tensor {name[:80]!r} has an unknown dtype {str(dtype)[:20]!r}")
        ok_shape = isinstance(shape, list) and len(shape) <= _MAX_RANK
        if not ok_shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise bad(f"tensor {name[:80]!r} has an invalid shape")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]
        ):
            raise bad(f"tensor {name[:80]!r} has invalid data offsets")
        if offsets[1] - offsets[0] != math.prod(shape) * _ST_DTYPES[dtype]:
            raise bad(f"tensor {name[:80]!r}: its byte range does not match its shape {shape}")
        tensors[name] = (dtype, tuple(shape))
        ranges.append((offsets[0], offsets[1]))
    end = 0
    for begin, stop in sorted(ranges):
        if begin != end:
            raise bad("its tensors' byte ranges overlap or leave gaps")
        end = stop
    if end > data_len:
        raise bad(f"the file is truncated: its tensors need {end:,} bytes of data, {data_len:,} follow the header")
    if end < data_len:
        raise bad(f"{data_len - end:,} bytes follow the last tensor")
    return dict(meta), tensors


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
        read_safetensors_header(path)  # one clear line for an empty, truncated or crafted file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise ValueError(f"cannot read {path}: the safetensors file is corrupted or truncated ({err})") from None
        except MemoryError:
            raise ValueError(f"cannot read {path}: not enough memory for its tensors") from None
    try:
        if trusted:
            return torch.load(path, map_location="cpu", weights_only=False)
        module = _restricted_pickle_module(_pickle_budget(path))
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)
    except _AllocationRefused as err:
        raise ValueError(
            f"refusing to load {path}: {err}, more than a file of {path.stat().st_size:,} bytes holds data for (a "
            "crafted or damaged file)"
        ) from None
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
            f"plain Python values, the yacs config and numpy scalars are accepted. {TRUST_HINT}"
        ) from None
    except MemoryError:
        raise ValueError(
            f"cannot read {path}: it asks for more memory than is available (a crafted or damaged file, or too "
            "little memory for it)"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, TypeError) as err:
        raise ValueError(f"cannot read {path}: the file is corrupted or truncated ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_state_dict(path: str | os.PathLike, trusted: bool = False) -> dict[str, torch.Tensor]:
    """The CrossFormer weights inside any official or converted file (prefixes and derived buffers removed)."""
    return extract_backbone_state_dict(unwrap_state_dict(read_checkpoint(path, trusted)))


class FileWriteError(OSError):
    """A file could not be written (full disk, read-only folder, size limit, ...); the previous file is intact."""


def write_error_reason(err: BaseException) -> str:
    """What a failed write says, in words: the errno's meaning, or the first line of the library's message."""
    reasons = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "the file system is read-only",
        errno.EFBIG: "the file is larger than the file size limit (ulimit -f)",
    }
    code = getattr(err, "errno", None)
    if code is None:  # the safetensors library's errors end with the OS error: "... (os error 28)"
        found = re.search(r"os error (\d+)", str(err))
        code = int(found.group(1)) if found else None
    if code in reasons:
        return reasons[code]
    text = _first_line(err)
    if "unexpected pos" in text:  # torch.save's writer: the OS refused a write (full disk, size limit)
        return f"the write failed, the disk may be full ({text})"
    return text


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc (not Linux): read it by setting it, then put it back
    os.umask(mask)
    return mask


def normal_file_mode(directory: bool = False) -> int:
    """The mode ``open`` / ``mkdir`` give under the current umask (``mkstemp`` / ``mkdtemp`` make 0600 / 0700)."""
    return (0o777 if directory else 0o666) & ~_umask()


def _canonical_header(path: str) -> None:
    """Rewrite a safetensors header with its metadata keys sorted, so equal inputs give equal bytes.

    The safetensors library writes its metadata from a Rust ``HashMap``, in a different order in every process.
    The reordered header has the same length (same JSON, other order); if not, the file is rewritten.
    """
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        meta = header.pop("__metadata__", None)
        ordered: dict[str, Any] = {} if meta is None else {"__metadata__": dict(sorted(meta.items()))}
        ordered.update(sorted(header.items(), key=lambda kv: (kv[1]["data_offsets"][0], kv[0])))
        text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(text) <= n:
            f.seek(8)
            f.write(text + b" " * (n - len(text)))
            return
        padded = text + b" " * (-len(text) % 8)
        with open(path + ".hdr", "wb") as out:
            out.write(struct.pack("<Q", len(padded)) + padded)
            f.seek(8 + n)
            shutil.copyfileobj(f, out)
    os.replace(path + ".hdr", path)


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write a safetensors file through a temporary file and ``os.replace``: the target is never half-written.

    The bytes depend only on the tensors and metadata (metadata keys sorted); the file gets the mode the umask
    gives new files.

    Raises:
        FileWriteError: The file could not be written (full disk, read-only folder, ...); one line naming it.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        save_file({k: v.detach().contiguous() for k, v in tensors.items()}, tmp, metadata=dict(metadata or {}))
        _canonical_header(tmp)
        os.chmod(tmp, normal_file_mode())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError, RuntimeError) as err:
        kept = "the previous file is intact" if path.exists() else "nothing was written"
        raise FileWriteError(f"cannot write {path}: {write_error_reason(err)}; {kept}") from None
    finally:
        for leftover in (tmp, f"{tmp}.hdr"):
            if tmp is not None and leftover is not None and os.path.exists(leftover):
                os.unlink(leftover)
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
    from ..utils.paths import output_file
    from ._official import build_from_state_dict, detect_variant, infer_architecture

    dst = output_file(dst)
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
