"""Untrusted model files: pickle memory bombs, damaged safetensors headers, reproducible and failure-safe writes."""

import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import SafetensorError

from crossformer_vision.models import io as model_io
from crossformer_vision.models.io import (
    FileWriteError,
    atomic_save_safetensors,
    read_checkpoint,
    read_safetensors_header,
)


class _Bomb:
    def __reduce__(self):
        return (bytearray, (10**13,))


@pytest.mark.parametrize("how", ["pickle2", "pickle4", "torch"])
def test_pickle_memory_bomb_is_refused_in_one_line(tmp_path, how):
    path = tmp_path / "bomb.pth"
    if how == "torch":
        torch.save({"model": {"w": torch.ones(2)}, "x": _Bomb()}, path)
    else:
        path.write_bytes(pickle.dumps({"x": _Bomb()}, protocol=int(how[-1])))
    with pytest.raises(ValueError, match=r"refusing to load .*bytearray asks for 10,000,000,000,000 bytes") as err:
        read_checkpoint(path)
    assert "\n" not in str(err.value)


def test_bounded_allocations_still_load_real_files(tmp_path):
    path = tmp_path / "ok.pth"
    torch.save({"model": {"w": torch.ones(3)}, "raw": bytearray(b"abc")}, path)
    assert read_checkpoint(path)["raw"] == bytearray(b"abc")
    legacy = tmp_path / "legacy.pth"
    torch.save({"model": {"w": torch.arange(4.0)}}, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(read_checkpoint(legacy)["model"]["w"], torch.arange(4.0))


@pytest.mark.parametrize("legacy", [False, True])
def test_tensor_storages_are_bounded_by_the_budget(tmp_path, monkeypatch, legacy):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(1000)}, path, _use_new_zipfile_serialization=not legacy)
    monkeypatch.setattr(model_io, "_pickle_budget", lambda p: 100)
    with pytest.raises(ValueError, match="a tensor storage asks for 4,000 bytes"):
        read_checkpoint(path)


def test_memory_error_is_one_line(tmp_path, monkeypatch):
    path = tmp_path / "w.pth"
    torch.save({"w": torch.ones(3)}, path)

    def oom(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(torch, "load", oom)
    with pytest.raises(ValueError, match="more memory than is available"):
        read_checkpoint(path)


def _good(tmp_path):
    path = tmp_path / "good.safetensors"
    atomic_save_safetensors({"a": torch.ones(2, 3), "b": torch.zeros(5, dtype=torch.int64)}, path, {"k": "v"})
    return path


def test_header_is_read_and_checked(tmp_path):
    meta, shapes = read_safetensors_header(_good(tmp_path))
    assert meta == {"k": "v"}
    assert shapes == {"a": ("F32", (2, 3)), "b": ("I64", (5,))}


def _header_file(path, header: bytes, data: bytes = b"") -> None:
    path.write_bytes(len(header).to_bytes(8, "little") + header + data)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("zero", b"", "the file is empty"),
        ("tiny", b"\x01\x02", "too few for a header"),
        ("huge_header", (10**12).to_bytes(8, "little") + b"{}", "header length"),
        ("short_header", (100).to_bytes(8, "little") + b"{}", "header needs 100 bytes"),
    ],
)
def test_damaged_safetensors_are_one_line(tmp_path, name, content, message):
    path = tmp_path / f"{name}.safetensors"
    path.write_bytes(content)
    for reader in (read_safetensors_header, read_checkpoint):
        with pytest.raises(ValueError, match=message) as err:
            reader(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_and_crafted_headers(tmp_path):
    data = _good(tmp_path).read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-7])
    with pytest.raises(ValueError, match="truncated: its tensors need"):
        read_checkpoint(cut)
    cases = {
        "notjson": (b"{nope", "not valid JSON"),
        "list": (b"[1]", "not a JSON object"),
        "meta": (b'{"__metadata__":{"a":1}}', "not a map of strings"),
        "dtype": (b'{"w":{"dtype":"X9","shape":[1],"data_offsets":[0,1]}}', "unknown dtype"),
        "shape": (b'{"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}', "invalid shape"),
        "range": (b'{"w":{"dtype":"F32","shape":[10],"data_offsets":[0,4]}}', "does not match its shape"),
        "beyond": (b'{"w":{"dtype":"U8","shape":[1000000],"data_offsets":[0,1000000]}}', "truncated"),
    }
    for name, (header, message) in cases.items():
        path = tmp_path / f"{name}.safetensors"
        _header_file(path, header, b"\0")
        with pytest.raises(ValueError, match=message):
            read_safetensors_header(path)


_SAVE = """
import sys, torch
from crossformer_vision.models.io import atomic_save_safetensors
meta = {f"key{i}": str(i) for i in range(40)}
meta["config"] = '{"b": 1, "a": "\\u00e9"}'
tensors = {f"t{i}": torch.arange(i + 1, dtype=torch.float32) for i in range(20)}
atomic_save_safetensors(tensors, sys.argv[1], meta)
"""


def test_saves_are_byte_identical_across_processes(tmp_path):
    outs = []
    for seed in ("1", "2"):
        out = tmp_path / f"final{seed}.safetensors"
        env = dict(os.environ, PYTHONHASHSEED=seed)
        subprocess.run([sys.executable, "-c", _SAVE, str(out)], check=True, env=env, timeout=120)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    meta, _ = read_safetensors_header(tmp_path / "final1.safetensors")
    assert list(meta) == sorted(meta)


def test_saved_file_mode_follows_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = _good(tmp_path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o640
    assert model_io.normal_file_mode() == 0o666 & ~old


@pytest.mark.parametrize(
    "error, reason",
    [
        (SafetensorError("Error while serializing: IoError(No space left on device (os error 28))"), "no space left"),
        (RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0"), "the disk may be full"),
        (OSError(30, "Read-only file system"), "the file system is read-only"),
    ],
)
def test_write_errors_are_one_line_and_keep_the_previous_file(tmp_path, monkeypatch, error, reason):
    path = _good(tmp_path)
    before = path.read_bytes()

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(model_io, "save_file", fail)
    with pytest.raises(FileWriteError, match=f"cannot write {path}: .*{reason}.*; the previous file is intact"):
        atomic_save_safetensors({"a": torch.ones(1)}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.safetensors"]


def test_file_size_limit_is_a_write_error(tmp_path):
    path = _good(tmp_path)
    before = path.read_bytes()
    script = textwrap.dedent(
        """
        import resource, signal, sys, torch
        from crossformer_vision.models.io import atomic_save_safetensors
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
        try:
            atomic_save_safetensors({"w": torch.ones(1 << 20)}, sys.argv[1])
        except OSError as err:
            print(err)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith(f"cannot write {path}: ")
    assert "the file is larger than the file size limit" in proc.stdout
    assert "the previous file is intact" in proc.stdout and len(proc.stdout.strip().splitlines()) == 1
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.safetensors"]


def test_refusal_suggests_an_option_true_for_every_command(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("never",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Payload()}, path)
    with pytest.raises(ValueError, match=r"--trust-checkpoint \(where the command offers it\) or trusted=True"):
        read_checkpoint(path)
