"""Trainer: Ctrl-C is one line that says how to resume; resuming at the end of an unfinished run evaluates it."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from crossformer_vision.engine.distributed import DistInfo
from crossformer_vision.engine.trainer import LoopConfig, Trainer, TrainingInterrupted
from train_utils import TINY_RUN, run_cli


class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randn(4, generator=g), torch.tensor(float(i % 2))


class _Sched:
    def __init__(self, optimizer, steps):
        pass

    def step_update(self, num_updates):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def _step(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x).squeeze(1), y), x.shape[0]


def _trainer(run_dir, step_fn=_step, evaluate_fn=None, **loop):
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    return Trainer(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scheduler_fn=_Sched,
        train_dataset=_Data(),
        collate_fn=None,
        global_batch=8,
        step_fn=step_fn,
        evaluate_fn=evaluate_fn,
        dist=DistInfo(),
        run_dir=run_dir,
        config={"x": 1},
        loop=LoopConfig(**{"epochs": 2, "progress": False, **loop}),
    )


def test_keyboard_interrupt_becomes_training_interrupted(tmp_path):
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return _step(model, batch)

    trainer = _trainer(tmp_path, step, ckpt_every=1)
    with pytest.raises(TrainingInterrupted) as err:
        trainer.fit()
    text = str(err.value)
    assert "\n" not in text
    assert f"the last complete checkpoint is {tmp_path / 'checkpoints' / 'step-00000002'}" in text
    assert f"--resume {tmp_path}" in text


def test_interrupt_before_any_checkpoint_says_so(tmp_path):
    def step(model, batch):
        raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted, match="no checkpoint was written yet"):
        _trainer(tmp_path, step).fit()


def test_length_keys_name_the_task_keys(tmp_path):
    _trainer(tmp_path).fit()
    (tmp_path / "final.safetensors").write_bytes(b"")  # the run finished
    again = _trainer(tmp_path, length_keys=("sched.iters",))
    with pytest.raises(ValueError, match=r"and has finished; raise sched\.iters to train further") as err:
        again.fit(tmp_path)
    assert "sched.epochs" not in str(err.value) and "max_steps" not in str(err.value)
    with pytest.raises(ValueError, match="length_keys"):
        LoopConfig(length_keys="sched.iters")


def test_default_length_keys_message(tmp_path):
    _trainer(tmp_path, epochs=2).fit()
    with pytest.raises(ValueError, match=r"raise sched\.epochs \(or train\.max_steps\) to train further"):
        _trainer(tmp_path, epochs=1).fit(tmp_path)  # the checkpoint is beyond this run's end


def test_resume_at_the_end_of_an_unfinished_run_goes_to_the_final_evaluation(tmp_path):
    state = {"evals": 0, "fail": True}

    def evaluate(model):
        state["evals"] += 1
        if state["fail"]:
            raise RuntimeError("crash in the final evaluation")
        return {"acc": 1.0}

    # eval only at the end (eval_every=0); the periodic checkpoint on the last step is written before it
    with pytest.raises(RuntimeError, match="crash in the final evaluation"):
        _trainer(tmp_path, evaluate_fn=evaluate, eval_every=0, ckpt_every=1).fit()
    assert (tmp_path / "checkpoints" / "step-00000008").is_dir()
    state["fail"] = False
    resumed = _trainer(tmp_path, evaluate_fn=evaluate, eval_every=0, ckpt_every=1)
    metrics = resumed.fit(tmp_path)
    assert metrics == {"acc": 1.0} and state["evals"] == 2 and resumed.global_step == 8
    # that checkpoint now records the evaluation: a run that stopped after it (before final.safetensors) trains
    # nothing and leaves the evaluation to the task (empty metrics)
    again = _trainer(tmp_path, evaluate_fn=evaluate, eval_every=0, ckpt_every=1)
    assert again.fit(tmp_path) == {} and state["evals"] == 2


def test_resume_refuses_a_state_of_another_loop(tmp_path):
    trainer = _trainer(tmp_path, ckpt_every=1, epochs=1)
    trainer.fit()
    latest = trainer.ckpt.latest()
    torch.save({"epoch": 1}, latest / "state.pt")
    with pytest.raises(ValueError, match=r"its state\.pt lacks optimizer"):
        _trainer(tmp_path).fit(tmp_path)


@pytest.mark.slow
def test_ctrl_c_during_training_is_one_line_and_resumable(tmp_path):
    run = tmp_path / "run"
    args = [*TINY_RUN, "sched.epochs=20", "train.ckpt_every=1", f"train.output_dir={run}"]
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(
        [sys.executable, "-m", "crossformer_vision.cli.main", "train", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not list(run.glob("checkpoints/step-*/meta.json")):
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("crossformer train: training interrupted at step ")
    assert f"--resume {run}" in lines[0] and "Traceback" not in stderr
    last = sorted(run.glob("checkpoints/step-*"))[-1]
    assert str(last) in lines[0]
    step = int(last.name.split("-")[1])
    # resume and finish two steps later
    run_cli(["train", *args, f"train.max_steps={step + 2}", "--resume", str(run)])
    assert (run / "final.safetensors").is_file()
