"""Keep freed activation memory in the process instead of handing it back to the kernel after every use.

PyTorch's CPU allocator has no cache: each large tensor is a fresh ``malloc``, which glibc serves with ``mmap`` and
returns with ``munmap``. Every forward pass (and training step) then touches its activation pages for the first time
again: about 450 000 page faults per CrossFormer-S training step at batch 16 with 4 KiB pages, ~0.8 s of kernel time
on 2 cores (``benchmarks/speed.py``). With ``mmap`` off for ``malloc`` and no trimming of the heap, freed blocks are
reused as they are and (almost) nothing faults; the peak RSS is that of the largest pass plus fragmentation.

It trades memory for time. Measured on 2 cores with huge pages on (alternating processes):

* inference, CrossFormer-S, batch 32, 224: fp32 13.3-14.2 -> 15.7-16.5 img/s (medians of three processes each),
  bf16 autocast 24.3-25.4 -> 26.1-28.8 img/s, peak RSS 1.25-1.30 -> 1.51-1.72 GiB; batch 1 at 1344: 0.37 -> 0.46 img/s,
  1.43 -> 1.72 GiB;
* training, CrossFormer-S, batch 16: ~6 % faster steps (median 3.38 vs 3.59 s) but peak RSS 2.82-2.88 ->
  3.14-3.30 GiB.

So the ``crossformer`` CLI turns it on for its inference commands (``eval``, ``predict``, ``seg eval|predict``,
``det eval|predict``) and leaves it off for training; ``CROSSFORMER_KEEP_FREED_MEMORY=1`` turns it on for every
command, ``=0`` for none. In your own script, call :func:`keep_freed_memory` yourself, early.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["INFERENCE_COMMANDS", "keep_freed_memory", "keep_freed_memory_wanted", "release_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_state: dict = {"done": False}


def _glibc():
    """glibc's ``mallopt`` and ``malloc_trim`` (typed), or None off glibc (musl, macOS, Windows)."""
    if "libc" not in _state:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.mallopt.argtypes, libc.mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            libc.malloc_trim.argtypes, libc.malloc_trim.restype = (ctypes.c_size_t,), ctypes.c_int
        except (OSError, AttributeError):
            libc = None
        _state["libc"] = libc
    return _state["libc"]


def release_freed_memory() -> bool:
    """Hand the free pages of glibc's heap back to the kernel (``malloc_trim(0)``); a no-op off glibc and once
    :func:`keep_freed_memory` was called. Returns whether memory was released.

    Blocks under glibc's mmap threshold (up to 32 MiB once large blocks have been freed) live in the heap, and a freed
    block below a live one stays resident. Gradient checkpointing calls this between stages: measured on
    CrossFormer-S training (batch 16, 224, 2 cores) it lowers the peak RSS from 1.87-1.98 to 1.67-1.71 GiB, at ~5 ms
    a call.
    """
    libc = _glibc()
    if libc is None or _state["done"]:
        return False
    return bool(libc.malloc_trim(0))


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to serve every block from its heap and never trim it. Returns whether it did so
    (False off glibc). Call it early, before the large allocations."""
    if _state["done"]:
        return True
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    # mallopt returns 1 on success; the trim threshold is an int, so its largest value is 2**31 - 1 bytes
    _state["done"] = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _state["done"]


# CLI commands that only run forward passes: (command, subcommand or None)
INFERENCE_COMMANDS = frozenset(
    {("eval", None), ("predict", None), ("seg", "eval"), ("seg", "predict"), ("det", "eval"), ("det", "predict")}
)


def keep_freed_memory_wanted(command: str, subcommand: str | None = None, env: dict | None = None) -> bool:
    """Whether the CLI should call :func:`keep_freed_memory` for this command.

    ``CROSSFORMER_KEEP_FREED_MEMORY`` decides when set (``1``: yes, ``0``: no); otherwise inference commands get it
    and training does not (there it would cost ~0.3 GiB of peak RSS for ~6 % of step time).
    """
    value = (os.environ if env is None else env).get("CROSSFORMER_KEEP_FREED_MEMORY", "").strip()
    if value in ("0", "1"):
        return value == "1"
    if value:
        raise ValueError(f"CROSSFORMER_KEEP_FREED_MEMORY must be 0 or 1 (or unset for the default), got {value!r}")
    return (command, subcommand) in INFERENCE_COMMANDS
