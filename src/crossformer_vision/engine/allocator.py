"""Keep freed activation memory in the process instead of handing it back to the kernel after every use.

PyTorch's CPU allocator has no cache: each large tensor is a fresh ``malloc``, which glibc serves with ``mmap`` and
returns with ``munmap``. A training step then touches every activation page for the first time again: about
450 000 page faults per CrossFormer-S step at batch 16 with 4 KiB pages, ~0.8 s of kernel time on 2 cores
(``benchmarks/speed.py``). With ``mmap`` off for ``malloc`` and no trimming of the heap, freed blocks are reused as
they are and a step runs with (almost) no page faults; the peak RSS stays that of the largest step.

It trades memory for time: measured on CrossFormer-S training (batch 16, 224, fp32, 2 cores, huge pages on), steps
ran ~6 % faster (median 3.38 vs 3.59 s over three alternating runs of each) while the peak RSS rose from 2.82-2.88 to
3.14-3.30 GiB (freed blocks stay in the heap, fragmented). So it is opt-in: ``CROSSFORMER_KEEP_FREED_MEMORY=1`` makes
the ``crossformer`` CLI call :func:`keep_freed_memory` at start-up; in your own script, call it yourself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["keep_freed_memory", "keep_freed_memory_requested"]

_M_TRIM_THRESHOLD = -1  # glibc mallopt parameters (malloc.h)
_M_MMAP_MAX = -4
_state = {"done": False}


def keep_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to serve every block from its heap and never trim it. Returns whether it did so
    (False off glibc). Call it early, before the large allocations."""
    if _state["done"]:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; the trim threshold is an int, so its largest value is 2**31 - 1 bytes
    _state["done"] = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _state["done"]


def keep_freed_memory_requested() -> bool:
    """Whether ``CROSSFORMER_KEEP_FREED_MEMORY=1`` asks the CLI to call :func:`keep_freed_memory`."""
    return os.environ.get("CROSSFORMER_KEEP_FREED_MEMORY", "0") == "1"
