"""Engine pieces: config resolution, sampling, atomic checkpoints, write failures, the NaN guard."""

import errno
import json

import pytest
import torch
from torch import nn

from crossformer_vision.engine import (
    CheckpointManager,
    CheckpointWriteError,
    DistInfo,
    LoopConfig,
    ResumableSampler,
    Trainer,
    TrainingDivergedError,
    apply_overrides,
    load_config,
    load_training_checkpoint,
)
from crossformer_vision.engine import checkpoint as ckpt_module

# ------------------------------------------------------------------ config


def test_config_layers_and_errors(tmp_path):
    defaults = {"optim": {"lr": 1.0, "betas": [0.9, 0.999]}, "model": {"name": "a", "kwargs": {}}}
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 3e-4\nmodel:\n  kwargs:\n    embed_dim: 64\n")
    cfg = load_config(defaults, path, ["optim.betas=[0.8,0.9]", "model.kwargs.depths=[1,1,2,1]"])
    assert cfg == {
        "optim": {"lr": 3e-4, "betas": [0.8, 0.9]},
        "model": {"name": "a", "kwargs": {"embed_dim": 64, "depths": [1, 1, 2, 1]}},
    }
    with pytest.raises(ValueError, match=r"unknown config key 'optim\.lrr'.*did you mean optim\.lr"):
        apply_overrides(defaults, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(defaults, ["optim.lr"])
    path.write_text("optimizer:\n  lr: 1\n")
    with pytest.raises(ValueError, match="unknown config key 'optimizer'"):
        load_config(defaults, path)


# ------------------------------------------------------------------ sampling


def test_sampler_shards_global_batches_and_resumes():
    single = list(ResumableSampler(100, 8, seed=3))
    r0 = list(ResumableSampler(100, 8, rank=0, world_size=2, seed=3))
    r1 = list(ResumableSampler(100, 8, rank=1, world_size=2, seed=3))
    # global batch b of the single process = rank 0's local batch b + rank 1's local batch b
    for b in range(len(single) // 8):
        assert single[8 * b : 8 * b + 8] == r0[4 * b : 4 * b + 4] + r1[4 * b : 4 * b + 4]
    assert len(single) == 96  # the last incomplete batch is dropped
    s = ResumableSampler(100, 8, seed=3)
    s.set_epoch(0, start_batch=5)
    assert list(s) == single[40:]
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in single]  # a new order each epoch
    with pytest.raises(ValueError, match="not divisible"):
        ResumableSampler(100, 6, world_size=4)


# ------------------------------------------------------------------ checkpoints


def _save(manager, step):
    return manager.save(step, {"w": torch.full((3,), float(step))}, {"step": step}, {"a": 1})


def test_checkpoints_are_atomic_and_pruned(tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=2)
    (tmp_path / ".step-00000009.abc.tmp").mkdir()  # left by a killed writer
    for step in (1, 2, 3):
        _save(manager, step)
    assert [p.name for p in manager.checkpoints()] == ["step-00000002", "step-00000003"]
    assert not list(tmp_path.glob(".*.tmp"))
    (tmp_path / "step-00000004").mkdir()  # incomplete: no meta.json
    loaded = load_training_checkpoint(tmp_path)
    assert loaded["meta"]["step"] == 3 and torch.equal(loaded["model"]["w"], torch.full((3,), 3.0))
    assert json.loads((manager.latest() / "meta.json").read_text())["step"] == 3


@pytest.mark.parametrize("code,text", [(errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied")])
def test_write_failure_keeps_previous_checkpoint(tmp_path, monkeypatch, code, text):
    manager = CheckpointManager(tmp_path, keep_last=1)
    good = _save(manager, 1)

    def broken(*args, **kwargs):
        raise OSError(code, "simulated")

    monkeypatch.setattr(ckpt_module.torch, "save", broken)
    with pytest.raises(CheckpointWriteError, match=rf"{text}.*step-00000001 is intact"):
        _save(manager, 2)
    assert manager.latest() == good
    assert torch.equal(load_training_checkpoint(good)["model"]["w"], torch.full((3,), 1.0))
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------ the loop


class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randn(4, generator=g), torch.tensor(float(i % 2))


def _trainer(tmp_path, step_fn, **loop):
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    class _Sched:
        def __init__(self, o, n):
            pass

        def step_update(self, num_updates):
            pass

        def state_dict(self):
            return {}

        def load_state_dict(self, s):
            pass

    return Trainer(
        model=model,
        optimizer=opt,
        scheduler_fn=_Sched,
        train_dataset=_Data(),
        collate_fn=None,
        global_batch=8,
        step_fn=step_fn,
        evaluate_fn=None,
        dist=DistInfo(),
        run_dir=tmp_path,
        config={"x": 1},
        loop=LoopConfig(epochs=2, progress=False, **loop),
    )


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def step(model, batch):
        x, y = batch
        calls["n"] += 1
        loss = nn.functional.mse_loss(model(x).squeeze(1), y)
        return (loss * float("nan") if calls["n"] == 4 else loss), x.shape[0]

    trainer = _trainer(tmp_path, step, ckpt_every=1)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan at epoch 0, step 3.*step-00000003 is intact"):
        trainer.fit()
    ckpt = load_training_checkpoint(tmp_path)
    assert ckpt["meta"]["step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_gradient_accumulation_counts_optimizer_steps(tmp_path):
    def step(model, batch):
        x, y = batch
        return nn.functional.mse_loss(model(x).squeeze(1), y), x.shape[0]

    trainer = _trainer(tmp_path, step, accum_steps=3)
    trainer.fit()
    assert trainer.steps_per_epoch == 2  # 8 micro-batches of 8 per epoch, 3 per step
    assert trainer.global_step == 4


def test_deterministic_mode_is_strict_on_cpu_and_warns_on_cuda():
    from crossformer_vision.engine import set_deterministic

    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.is_deterministic_algorithms_warn_only_enabled()
        # some CUDA backward kernels of the dense heads have no deterministic version: warn, naming the op, not stop
        set_deterministic(True, "cuda")
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_strict_json_writes_null_for_non_finite_metrics():
    import json
    import math

    import numpy as np
    import torch

    from crossformer_vision.engine.json_safe import finite_or_none, strict_json_dumps

    report = {
        "metrics": {"top1": 50.0, "nan": float("nan"), "inf": float("inf")},
        "per_class": [{"class": "a", "accuracy": float("nan"), "n": 0}, {"class": "b", "IoU": np.float32("nan")}],
        "t": (torch.tensor(float("-inf")), np.float64(1.5), True, None, "x"),
    }
    text = strict_json_dumps(report, indent=1)
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text)
    assert back["metrics"] == {"top1": 50.0, "nan": None, "inf": None}
    assert back["per_class"][0]["accuracy"] is None and back["per_class"][1]["IoU"] is None
    assert back["t"] == [None, 1.5, True, None, "x"]
    assert finite_or_none(math.pi) == math.pi


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("epochs", 0, "sched.epochs must be a whole number >= 1, got 0"),
        ("epochs", 1.5, "sched.epochs must be a whole number >= 1, got 1.5"),
        ("accum_steps", 0, "train.accum_steps must be a whole number >= 1"),
        ("log_every", 0, "train.log_every must be"),
        ("eval_every", -1, "train.eval_every must be a whole number >= 0"),
        ("ckpt_every", -2, "train.ckpt_every must be a whole number >= 0"),
        ("max_steps", 0, r"train.max_steps \(sched.iters for segmentation\) must be"),
        ("keep_last", True, "train.keep_last must be"),
        ("amp", "fp8", "train.amp must be 'bf16', 'fp16' or null, got 'fp8'"),
    ],
)
def test_loop_config_refuses_values_the_loop_cannot_run_with(field, value, message):
    with pytest.raises(ValueError, match=message):
        LoopConfig(**{field: value})
    LoopConfig(eval_every=0, ckpt_every=0, max_steps=None, amp="bf16")  # the edges that are allowed


def test_unknown_auto_augment_policy_is_named():
    from crossformer_vision.tasks.classification.config import DEFAULTS
    from crossformer_vision.tasks.classification.data import build_transform, data_config

    cfg = {**DEFAULTS, "aug": {**DEFAULTS["aug"], "auto_augment": "randaug"}}
    with pytest.raises(ValueError, match=r"aug.auto_augment='randaug' is not a timm augmentation policy"):
        build_transform(cfg, data_config(cfg), train=True)
    for policy in ("rand-m9-mstd0.5-inc1", "augmix-m5-w3", "v0"):
        cfg["aug"]["auto_augment"] = policy
        assert build_transform(cfg, data_config(cfg), train=True) is not None
