"""Two CPU processes (torchrun, gloo) train the same model as one process with the same global batch (classification
and multi-label: its mAP needs every score, gathered from the evaluation shards)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from train_utils import TINY_RUN, run_cli, weights

RUN = [
    *TINY_RUN,
    "model.drop_path_rate=0.0",
    "aug.mixup=0.0",
    "aug.cutmix=0.0",
    "train.deterministic=true",
    "sched.epochs=1",
]
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
needs_torchrun = pytest.mark.skipif(
    shutil.which("torchrun") is None and not os.path.exists(TORCHRUN), reason="torchrun not found"
)


def _torchrun(args: list[str], command: tuple[str, ...] = ("train",), **env_vars: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1", **env_vars)
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "crossformer_vision.cli.main", *command, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _assert_same_weights(single, ddp, tol=1e-4):
    a, b = weights(single), weights(ddp)
    diffs = {k: (a[k] - b[k]).abs().max().item() for k in a}
    # identical data, augmentations and lr; only the order of floating-point sums differs
    assert max(diffs.values()) < tol, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]


@pytest.mark.slow
@needs_torchrun
def test_two_processes_equal_one(tmp_path):
    single = tmp_path / "single"
    run_cli(["train", *RUN, "train.batch_size=32", f"train.output_dir={single}"])
    ddp = tmp_path / "ddp"
    proc = _torchrun([*RUN, "train.batch_size=16", f"train.output_dir={ddp}"])
    assert proc.stdout.count("top-1 ") == 1, proc.stdout  # only rank 0 reports
    from crossformer_vision.utils.allocator import tcmalloc_library

    if tcmalloc_library():  # every worker restarts with it (same PIDs under torchrun); only rank 0 says so
        assert proc.stderr.count("running with tcmalloc") == 1, proc.stderr[-3000:]
    _assert_same_weights(single, ddp)


@pytest.mark.slow
@needs_torchrun
def test_two_processes_equal_one_when_an_unreadable_image_is_skipped(tmp_path):
    """The process that skips an image has fewer images than the other: its share of the gradient is weighted by
    its count, so the step is the mean over all the batch's readable images, as in one process."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 23), ("val", 4)):
        for c, name in enumerate(("dark", "light")):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(n if c == 0 else n + (split == "train")):
                arr = (rng.random((36, 36, 3)) * 80 + 120 * c).astype(np.uint8)
                Image.fromarray(arr).save(folder / f"{i:02d}.png")
    (tmp_path / "data" / "train" / "dark" / "99.png").write_bytes(b"not a png")  # 48 training files in all
    run = [*RUN, "data.dataset=folder", f"data.root={tmp_path / 'data'}", "data.train_limit=null"]
    run += ["data.val_limit=null", "sched.epochs=2", "sched.warmup_epochs=0"]
    single = tmp_path / "single"
    proc = run_cli(["train", *run, "train.batch_size=8", f"train.output_dir={single}"])
    assert "1 unreadable training image(s) were skipped (2 time(s) in all)" in proc.stderr  # one file, two epochs
    ddp = tmp_path / "ddp"
    proc = _torchrun([*run, "train.batch_size=4", f"train.output_dir={ddp}"])
    assert "unreadable training image" in proc.stderr
    _assert_same_weights(single, ddp)


@pytest.mark.slow
@needs_torchrun
def test_multilabel_two_processes_equal_one(tmp_path):
    """A tiny CSRA run on demo scenes: same weights, and the same mAP over 21 validation scenes (uneven shards)."""
    cache = dict(CROSSFORMER_CACHE_DIR=str(tmp_path / "cache"))
    run = ["--config", "demo", "data.demo_train=64", "data.demo_val=21", "data.demo_size=64", "data.img_size=64"]
    run += ["data.demo_side=[12,28]", "model.kwargs.embed_dim=16", "model.kwargs.group_size=[4,4,4]"]
    run += ["sched.epochs=1", "sched.warmup_epochs=0", "train.progress=false", "train.deterministic=true"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    run_cli(
        ["multilabel", "train", *run, "train.batch_size=16", f"--output-dir={single}"], env=dict(os.environ, **cache)
    )
    _torchrun([*run, "train.batch_size=8", f"--output-dir={ddp}"], ("multilabel", "train"), **cache)
    _assert_same_weights(single, ddp)
    one, two = (json.loads((d / "results.json").read_text()) for d in (single, ddp))
    assert one["steps"] == two["steps"] == 4
    for key in ("mAP", "CF1", "OF1"):
        assert two["metrics"][key] == pytest.approx(one["metrics"][key], abs=0.05), key
