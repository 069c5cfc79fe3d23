"""Two CPU processes (torchrun, gloo) train the same model as one process with the same global batch."""

import os
import shutil
import subprocess
import sys

import pytest

from train_utils import TINY_RUN, run_cli, weights

RUN = [
    *TINY_RUN,
    "model.drop_path_rate=0.0",
    "aug.mixup=0.0",
    "aug.cutmix=0.0",
    "train.deterministic=true",
    "sched.epochs=1",
]


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("torchrun") is None and not os.path.exists(os.path.join(os.path.dirname(sys.executable), "torchrun")),
    reason="torchrun not found",
)
def test_two_processes_equal_one(tmp_path):
    single = tmp_path / "single"
    run_cli(["train", *RUN, "train.batch_size=32", f"train.output_dir={single}"])
    ddp = tmp_path / "ddp"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "crossformer_vision.cli.main",
            "train",
            *RUN,
            "train.batch_size=16",
            f"train.output_dir={ddp}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    from crossformer_vision.engine.allocator import tcmalloc_library

    if tcmalloc_library():  # every worker restarts with it (same PIDs under torchrun); only rank 0 says so
        assert proc.stderr.count("running with tcmalloc") == 1, proc.stderr[-3000:]
    a, b = weights(single), weights(ddp)
    diffs = {k: (a[k] - b[k]).abs().max().item() for k in a}
    # identical data, augmentations and lr; only the order of floating-point sums differs
    assert max(diffs.values()) < 1e-4, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
