"""The allocator setting the CLI applies to inference commands (utils/allocator.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from crossformer_vision.utils import allocator


@pytest.mark.parametrize(
    ("command", "sub", "expected"),
    [
        ("eval", None, True),
        ("predict", None, True),
        ("seg", "eval", True),
        ("seg", "predict", True),
        ("det", "eval", True),
        ("det", "predict", True),
        ("multilabel", "eval", True),
        ("multilabel", "predict", True),
        ("explain", None, True),
        ("train", None, False),
        ("multilabel", "train", False),
        ("seg", "train", False),
        ("det", "train", False),
        ("demo", None, False),
    ],
)
def test_default_is_on_for_inference_commands_only(command, sub, expected):
    assert allocator.keep_freed_memory_wanted(command, sub, env={}) is expected


def test_environment_overrides_the_default_and_rejects_other_values():
    assert allocator.keep_freed_memory_wanted("train", None, env={"CROSSFORMER_KEEP_FREED_MEMORY": "1"}) is True
    assert allocator.keep_freed_memory_wanted("predict", None, env={"CROSSFORMER_KEEP_FREED_MEMORY": "0"}) is False
    with pytest.raises(ValueError, match="must be 0 or 1"):
        allocator.keep_freed_memory_wanted("predict", None, env={"CROSSFORMER_KEEP_FREED_MEMORY": "yes"})


def test_cli_entry_point_applies_it_for_inference_only(monkeypatch, tmp_path):
    from crossformer_vision.cli import main as cli

    calls = []
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: calls.append(True) or True)
    monkeypatch.delenv("CROSSFORMER_KEEP_FREED_MEMORY", raising=False)
    missing = str(tmp_path / "missing")
    # the console script: argv from sys.argv (the commands then fail on the missing checkpoint, which is fine here)
    monkeypatch.setattr(sys, "argv", ["crossformer", "predict", "--checkpoint", missing, missing])
    assert cli.main() == 2
    assert calls == [True]
    monkeypatch.setattr(sys, "argv", ["crossformer", "seg", "train", "--config", missing])
    assert cli.main() == 2
    assert calls == [True]
    # called as a function: no process-wide setting
    assert cli.main(["predict", "--checkpoint", missing, missing]) == 2
    assert calls == [True]


# PyTorch's allocator without huge pages (importing the CLI sets THP_MEM_ALLOC_ENABLE=1 in this process; its 2 MiB
# aligned blocks would not raise glibc's mmap threshold as the scripts below need)
_PLAIN_ENV = {**os.environ, "THP_MEM_ALLOC_ENABLE": "0"}

_RSS_AFTER_FREE = """
import sys
import torch
from crossformer_vision.utils.allocator import keep_freed_memory

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

if sys.argv[1] == "1":
    assert keep_freed_memory()
before = rss_mib()
x = torch.ones(64 * 2**20)  # 256 MiB, touched
del x
print(rss_mib() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_freed_memory_stays_in_the_process_only_when_asked():
    def grown(flag: str) -> float:
        out = subprocess.run(
            [sys.executable, "-c", _RSS_AFTER_FREE, flag], capture_output=True, text=True, check=True, env=_PLAIN_ENV
        )
        return float(out.stdout.strip().splitlines()[-1])

    assert grown("0") < 64  # glibc served the tensor with mmap and gave it back on free
    assert grown("1") > 192  # kept in the heap for the next allocation


_RELEASE = """
import ctypes

from crossformer_vision.utils.allocator import release_freed_memory

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallopt(-3, 16 * 2**20)  # M_MMAP_THRESHOLD: blocks under 16 MiB come from the heap


def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024


blocks = []
for _ in range(256):  # 256 MiB in the heap
    blocks.append(libc.malloc(2**20))
    ctypes.memset(blocks[-1], 1, 2**20)
before = rss_mib()
for b in blocks[:-1:2]:  # every other MiB: each freed block lies between live ones, so free() cannot trim it
    libc.free(b)
freed = rss_mib()
released = release_freed_memory()
print(before - freed, before - rss_mib(), released)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_release_freed_memory_returns_freed_heap_pages():
    out = subprocess.run([sys.executable, "-c", _RELEASE], capture_output=True, text=True, check=True, env=_PLAIN_ENV)
    dropped_on_free, dropped_on_release, released = out.stdout.split()
    assert float(dropped_on_free) < 32  # 128 MiB freed, but still resident
    assert float(dropped_on_release) > 96 and released == "True"


# ---- tcmalloc for training commands (utils/allocator.py: preload_tcmalloc)


@pytest.mark.parametrize(
    ("command", "sub", "expected"),
    [
        ("train", None, True),
        ("seg", "train", True),
        ("det", "demo", True),
        ("multilabel", "train", True),
        ("multilabel", "demo", True),
        ("eval", None, False),
        ("multilabel", "predict", False),
        ("models", None, False),
    ],
)
def test_tcmalloc_default_is_on_for_training_commands_only(command, sub, expected):
    assert allocator.tcmalloc_wanted(command, sub, env={}) is expected
    assert allocator.tcmalloc_wanted(command, sub, env={"CROSSFORMER_TCMALLOC": "0"}) is False
    assert allocator.tcmalloc_wanted(command, sub, env={"CROSSFORMER_TCMALLOC": "1"}) is True
    with pytest.raises(ValueError, match="CROSSFORMER_TCMALLOC must be 0 or 1"):
        allocator.tcmalloc_wanted(command, sub, env={"CROSSFORMER_TCMALLOC": "on"})


def test_command_of_a_raw_command_line():
    from crossformer_vision.cli.main import _command_of

    assert _command_of(["train", "--config", "x", "a=1"]) == ("train", None)
    assert _command_of(["seg", "train", "--config", "x"]) == ("seg", "train")
    assert _command_of(["det"]) == ("det", None)
    assert _command_of([]) == (None, None)


def test_preload_restarts_the_process_with_tcmalloc(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, "tcmalloc_library", lambda: "libtcmalloc_test.so.4")
    monkeypatch.setattr(os, "execv", lambda exe, argv: calls.append((exe, list(argv), dict(os.environ))))
    for var in ("CROSSFORMER_TCMALLOC", "CROSSFORMER_TCMALLOC_PRELOADED", "LD_PRELOAD"):
        monkeypatch.setenv(var, "")  # recorded, so the values preload_tcmalloc sets are undone after the test
        monkeypatch.delenv(var)
    allocator.preload_tcmalloc("eval")  # not a training command: nothing
    assert calls == []
    allocator.preload_tcmalloc("train")
    ((exe, argv, env),) = calls
    assert exe == sys.executable and argv == sys.orig_argv
    assert env["LD_PRELOAD"] == "libtcmalloc_test.so.4" and env["CROSSFORMER_TCMALLOC_PRELOADED"]
    assert "running with tcmalloc (libtcmalloc_test.so.4" in allocator.tcmalloc_notice()
    allocator.preload_tcmalloc("train")  # the restarted process: no second restart
    assert len(calls) == 1


def test_preload_asked_for_but_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(allocator, "tcmalloc_library", lambda: None)
    monkeypatch.setattr(os, "execv", lambda *a: pytest.fail("must not restart"))
    monkeypatch.delenv("CROSSFORMER_TCMALLOC_PRELOADED", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    monkeypatch.delenv("CROSSFORMER_TCMALLOC", raising=False)
    allocator.preload_tcmalloc("train")  # not installed, not asked for: the default allocator
    monkeypatch.setenv("CROSSFORMER_TCMALLOC", "1")
    with pytest.raises(ValueError, match="apt install libtcmalloc-minimal4"):
        allocator.preload_tcmalloc("train")


@pytest.mark.skipif(allocator.tcmalloc_library() is None, reason="tcmalloc is not installed")
def test_training_cli_runs_with_tcmalloc_when_installed(tmp_path):
    from train_utils import TINY_RUN, run_cli

    run = [*TINY_RUN, "sched.epochs=1", "data.train_limit=64", "data.val_limit=32"]
    proc = run_cli(["train", *run, f"train.output_dir={tmp_path / 'a'}"])
    assert "running with tcmalloc" in proc.stderr
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    proc = run_cli(["train", *run, f"train.output_dir={tmp_path / 'b'}"], env={**env, "CROSSFORMER_TCMALLOC": "0"})
    assert "tcmalloc" not in proc.stderr
