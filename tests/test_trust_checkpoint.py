"""Training checkpoints: damaged files are one line naming the checkpoint, failed writes keep the previous one."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors import SafetensorError

from crossformer_vision.engine import checkpoint as ckpt_module
from crossformer_vision.engine.checkpoint import CheckpointManager, CheckpointWriteError, load_training_checkpoint


def _state(step: int) -> dict:
    return {
        "optimizer": {"state": {}, "param_groups": []},
        "scheduler": {},
        "scaler": {},
        "rng": {"torch": torch.get_rng_state()},
        "epoch": 0,
        "step_in_epoch": step,
        "global_step": step,
        "best": None,
        "global_batch": 4,
    }


def _two_checkpoints(tmp_path):
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    for step in (1, 2):
        manager.save(step, {"w": torch.full((4,), float(step))}, _state(step), {"train": {"seed": 0}})
    return manager


def test_a_good_checkpoint_loads_and_has_normal_modes(tmp_path):
    old = os.umask(0o022)
    try:
        manager = _two_checkpoints(tmp_path)
    finally:
        os.umask(old)
    latest = manager.latest()
    assert latest.stat().st_mode & 0o777 == 0o755
    assert (latest / "model.safetensors").stat().st_mode & 0o777 == 0o644
    loaded = load_training_checkpoint(tmp_path / "run")
    assert loaded["path"] == latest and torch.equal(loaded["model"]["w"], torch.full((4,), 2.0))


class _Payload:
    def __reduce__(self):
        return (print, ("never",))


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: torch.save({**_state(2), "x": _Payload()}, d / "state.pt"), "outside the weights-only allow-list"),
        (lambda d: _truncate(d / "state.pt"), "state.pt is missing, truncated or damaged"),
        (lambda d: (d / "state.pt").write_bytes(b""), "state.pt is missing, truncated or damaged"),
        (lambda d: (d / "state.pt").unlink(), "state.pt is missing"),
        (lambda d: torch.save([1, 2], d / "state.pt"), "not a training state"),
        (lambda d: _truncate(d / "model.safetensors"), "model.safetensors is damaged"),
        (lambda d: (d / "model.safetensors").write_bytes(b""), "model.safetensors is damaged: .*empty"),
        (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda d: (d / "meta.json").write_text("{garbled"), "meta.json is missing or unreadable"),
        (lambda d: (d / "meta.json").write_text("[1]"), "meta.json is not a JSON object"),
        (lambda d: (d / "config.yaml").write_text("a: [unclosed"), "config.yaml is missing or unreadable"),
        (lambda d: (d / "config.yaml").unlink(), "config.yaml is missing or unreadable"),
        (lambda d: (d / "config.yaml").write_text("just a string"), "config.yaml is not a configuration"),
    ],
)
def test_damaged_checkpoint_is_one_line_naming_earlier_ones(tmp_path, capsys, damage, message):
    manager = _two_checkpoints(tmp_path)
    first, latest = manager.checkpoints()
    damage(latest)
    with pytest.raises(ValueError, match=message) as err:
        load_training_checkpoint(tmp_path / "run")
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"cannot resume from {latest}: ")
    assert f"resume from an earlier checkpoint ({first}) or start a fresh run" in text
    assert "never" not in capsys.readouterr().out


def test_damaged_only_checkpoint_suggests_a_fresh_run(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints")
    only = manager.save(1, {"w": torch.ones(2)}, _state(1), {})
    _truncate(only / "state.pt")
    with pytest.raises(ValueError, match="no earlier checkpoint exists: start a fresh run"):
        load_training_checkpoint(only)


@pytest.mark.parametrize(
    "target, error, reason",
    [
        ("save_file", SafetensorError("I/O error: No space left on device (os error 28)"), "no space left"),
        ("torch_save", RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64"), "disk may be"),
        ("save_file", OSError(30, "Read-only file system"), "read-only"),
    ],
)
def test_write_errors_become_checkpoint_write_errors(tmp_path, monkeypatch, target, error, reason):
    manager = _two_checkpoints(tmp_path)
    latest = manager.latest()

    def fail(*args, **kwargs):
        raise error

    if target == "torch_save":
        monkeypatch.setattr(ckpt_module.torch, "save", fail)
    else:
        monkeypatch.setattr(ckpt_module, target, fail)
    with pytest.raises(CheckpointWriteError, match=f"{reason}.*the previous checkpoint {latest} is intact"):
        manager.save(3, {"w": torch.ones(4)}, _state(3), {})
    assert manager.latest() == latest
    assert sorted(p.name for p in manager.directory.iterdir()) == ["step-00000001", "step-00000002"]


_FULL_DISK = """
import resource, signal, sys, torch
from crossformer_vision.engine.checkpoint import CheckpointManager, CheckpointWriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # over the limit, write() fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
manager = CheckpointManager(sys.argv[1])
state = dict(optimizer={}, scheduler={}, scaler={}, rng={}, epoch=0, step_in_epoch=0, global_step=1, global_batch=1)
manager.save(1, {"w": torch.ones(10)}, state, {})
big_model, big_state = sys.argv[2] == "model", sys.argv[2] == "state"
try:
    manager.save(
        2,
        {"w": torch.ones(1_000_000 if big_model else 10)},
        {**state, "blob": torch.ones(1_000_000 if big_state else 1)},
        {},
    )
except CheckpointWriteError as err:
    print(err)
"""


@pytest.mark.parametrize("which", ["model", "state"])
def test_file_size_limit_while_saving_keeps_the_previous_checkpoint(tmp_path, which):
    directory = tmp_path / "checkpoints"
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_FULL_DISK), str(directory), which],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cannot write checkpoint {directory}/step-00000002: ")
    assert f"the previous checkpoint {directory}/step-00000001 is intact" in lines[0]
    assert sorted(p.name for p in directory.iterdir()) == ["step-00000001"]
    assert load_training_checkpoint(directory)["state"]["global_step"] == 1
