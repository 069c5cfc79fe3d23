"""Keep freed activation memory in the process instead of handing it back to the kernel after every use.

PyTorch's CPU allocator has no cache: each large tensor is a fresh ``malloc``, which glibc serves with ``mmap`` and
returns with ``munmap``. Every forward pass (and training step) then touches its activation pages for the first time
again, and on a small CPU those page faults are a large share of the time. With ``mmap`` off for ``malloc`` and no
trimming of the heap, freed blocks are reused as they are and (almost) nothing faults; the peak RSS is that of the
largest pass plus fragmentation.

It trades memory for time: inference gets faster for some more peak RSS, training only a little faster for a
larger rise in peak RSS (the numbers: docs/benchmarks.md, "The allocator"). So the ``crossformer`` CLI turns it on
for its inference commands (``eval``, ``predict``, ``explain``, ``seg|det|multilabel eval|predict``) and leaves it
off for training; ``CROSSFORMER_KEEP_FREED_MEMORY=1`` turns it on for every command, ``=0`` for none. In your own
script, call :func:`keep_freed_memory` yourself, early.

For training, a different allocator does better than either: gperftools' tcmalloc caches freed memory itself,
without glibc's fragmentation. Where it is installed (Debian/Ubuntu: ``apt install libtcmalloc-minimal4``), the CLI's
training commands restart themselves once, first thing, with it in ``LD_PRELOAD`` (:func:`preload_tcmalloc`; same
PID and command line, so ``torchrun`` and signals are unaffected) and say so on stderr; ``CROSSFORMER_TCMALLOC=0``
keeps the default allocator, ``=1`` asks for tcmalloc for every command (an error if it is not installed). It gives
the fastest training steps at the lowest peak RSS of the allocators measured (``benchmarks/speed.py
--training-only``; docs/benchmarks.md). In your own script, preload it yourself (``LD_PRELOAD``, or
``python -m torch.backends.xeon.run_cpu --enable-tcmalloc``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = [
    "INFERENCE_COMMANDS",
    "TRAINING_COMMANDS",
    "keep_freed_memory",
    "keep_freed_memory_wanted",
    "preload_tcmalloc",
    "release_freed_memory",
    "tcmalloc_library",
    "tcmalloc_notice",
    "tcmalloc_wanted",
]

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
    block below a live one stays resident. Gradient checkpointing calls this between stages, where it lowers the
    peak RSS for a few milliseconds a call (docs/benchmarks.md, "Gradient checkpointing").
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
    {("eval", None), ("predict", None), ("explain", None)}
    | {(task, sub) for task in ("seg", "det", "multilabel") for sub in ("eval", "predict")}
)


def keep_freed_memory_wanted(command: str, subcommand: str | None = None, env: dict | None = None) -> bool:
    """Whether the CLI should call :func:`keep_freed_memory` for this command.

    ``CROSSFORMER_KEEP_FREED_MEMORY`` decides when set (``1``: yes, ``0``: no); otherwise inference commands get it
    and training does not (there it costs more peak RSS than the step time it saves).
    """
    switch = _env_switch("CROSSFORMER_KEEP_FREED_MEMORY", env)
    return (command, subcommand) in INFERENCE_COMMANDS if switch is None else switch


def _env_switch(name: str, env: dict | None = None) -> bool | None:
    """An on/off environment variable: ``1`` True, ``0`` False, unset or empty None (the default applies)."""
    value = (os.environ if env is None else env).get(name, "").strip()
    if value in ("0", "1"):
        return value == "1"
    if value:
        raise ValueError(f"{name} must be 0 or 1 (or unset for the default), got {value!r}")
    return None


# CLI commands that train: (command, subcommand or None)
TRAINING_COMMANDS = frozenset(
    {("train", None), ("demo", None)}
    | {(task, sub) for task in ("seg", "det", "multilabel") for sub in ("train", "demo")}
)
_TCMALLOC_ENV = "CROSSFORMER_TCMALLOC"
_REEXEC_GUARD = "CROSSFORMER_TCMALLOC_PRELOADED"


def tcmalloc_library() -> str | None:
    """The name of an installed gperftools tcmalloc that ``LD_PRELOAD`` takes, or None (not Linux, not installed)."""
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")


def tcmalloc_wanted(command: str, subcommand: str | None = None, env: dict | None = None) -> bool:
    """Whether the CLI should run this command with tcmalloc preloaded.

    ``CROSSFORMER_TCMALLOC`` decides when set (``1``: yes, ``0``: no); otherwise training commands get it (the
    measurements are in this module's docstring).
    """
    switch = _env_switch(_TCMALLOC_ENV, env)
    return (command, subcommand) in TRAINING_COMMANDS if switch is None else switch


def preload_tcmalloc(command: str, subcommand: str | None = None) -> None:
    """Restart this process (same PID, same command line) with tcmalloc in ``LD_PRELOAD`` when
    :func:`tcmalloc_wanted` says so and it is installed; otherwise return. An allocator can only be swapped before
    the process starts, so this runs first thing in the console script. Does nothing when tcmalloc is already
    preloaded or this process is the restarted one."""
    if os.environ.get(_REEXEC_GUARD) or "tcmalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    if not tcmalloc_wanted(command, subcommand):
        return
    lib = tcmalloc_library()
    if lib is None:
        if _env_switch(_TCMALLOC_ENV):
            raise ValueError(
                f"{_TCMALLOC_ENV}=1 but no tcmalloc is installed: install gperftools' tcmalloc "
                "(Debian/Ubuntu: apt install libtcmalloc-minimal4) or unset the variable"
            )
        return
    os.environ[_REEXEC_GUARD] = lib
    os.environ["LD_PRELOAD"] = ":".join(filter(None, [lib, os.environ.get("LD_PRELOAD", "")]))
    # tcmalloc reports every allocation over 1 GiB on stderr by default; large activations are normal here
    os.environ.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def tcmalloc_notice() -> str | None:
    """A line for the restarted process to print (on its first rank), or None when it was not restarted."""
    lib = os.environ.get(_REEXEC_GUARD)
    if not lib or "tcmalloc" not in os.environ.get("LD_PRELOAD", ""):
        return None
    return f"crossformer: running with tcmalloc ({lib}, preloaded; {_TCMALLOC_ENV}=0 turns it off)"
