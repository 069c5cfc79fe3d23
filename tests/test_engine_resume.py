"""A run killed with SIGKILL at an arbitrary step and resumed ends with bitwise the same weights."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from crossformer_vision.engine import read_metrics
from train_utils import TINY_RUN, run_cli, weights

RUN = [
    *TINY_RUN,
    "train.deterministic=true",
    "train.ckpt_every=1",
    "train.keep_last=2",
    "model.drop_path_rate=0.1",
    "aug.mixup=0.8",
    "aug.cutmix=1.0",
    "aug.label_smoothing=0.1",
    "train.ema=true",
    "train.ema_decay=0.9",
]


@pytest.mark.slow
def test_sigkill_and_resume_is_bitwise_exact(tmp_path):
    full = tmp_path / "uninterrupted"
    run_cli(["train", *RUN, f"train.output_dir={full}"])

    killed = tmp_path / "killed"
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "crossformer_vision.cli.main", "train", *RUN, f"train.output_dir={killed}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    target = killed / "checkpoints" / "step-00000013"  # mid-epoch 2 (10 steps per epoch)
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "final.safetensors").exists()

    run_cli(["train", *RUN, f"train.output_dir={killed}", "--resume", str(killed)])
    a, b = weights(full), weights(killed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ema_a = (full / "checkpoints").glob("step-*/ema.safetensors")
    assert any(ema_a)
    # the resumed log has each step once, in order
    steps = [r["step"] for r in read_metrics(killed) if r["split"] == "train"]
    assert steps == sorted(set(steps)) == [r["step"] for r in read_metrics(full) if r["split"] == "train"]
    assert not list((killed / "checkpoints").glob(".*.tmp"))


def test_fresh_run_refuses_an_existing_run_and_resume_checks_config(tmp_path):
    out = tmp_path / "run"
    run_cli(["train", *TINY_RUN, "sched.epochs=1", f"train.output_dir={out}"])
    proc = run_cli(["train", *TINY_RUN, "sched.epochs=1", f"train.output_dir={out}"], check=False)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    proc = run_cli(["train", *TINY_RUN, "optim.lr=5e-3", f"train.output_dir={out}", "--resume", str(out)], check=False)
    assert proc.returncode == 2 and "optim.lr: 0.002 (checkpoint) -> 0.005 (now)" in proc.stderr
    # more epochs is a legitimate change: training continues from the checkpoint
    run_cli(["train", *TINY_RUN, "sched.epochs=2", f"train.output_dir={out}", "--resume", str(out)])
    assert max(r["epoch"] for r in read_metrics(out)) == 2


def test_resume_refuses_to_overwrite_another_run_and_a_finished_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_cli(["train", *TINY_RUN, "sched.epochs=1", f"train.output_dir={a}"])
    run_cli(["train", *TINY_RUN, "sched.epochs=1", f"train.output_dir={b}"])
    before = {p.name: p.read_bytes() for p in a.iterdir() if p.is_file()}
    # resuming b with a config whose output_dir is a: a's results must not be overwritten
    proc = run_cli(["train", *TINY_RUN, "sched.epochs=2", f"train.output_dir={a}", "--resume", str(b)], check=False)
    assert proc.returncode == 2 and "holds another run" in proc.stderr and str(b) in proc.stderr
    assert {p.name: p.read_bytes() for p in a.iterdir() if p.is_file()} == before
    # a finished run has nothing left to train at the same number of epochs
    proc = run_cli(["train", *TINY_RUN, "sched.epochs=1", f"train.output_dir={b}", "--resume", str(b)], check=False)
    assert proc.returncode == 2 and "nothing left to train" in proc.stderr
    # a path that does not exist is named as such
    proc = run_cli(
        ["train", *TINY_RUN, f"train.output_dir={tmp_path / 'c'}", "--resume", str(tmp_path / "x")], check=False
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr
