"""Segmentation training through the engine: iteration-based loop with periodic evaluation, the mmseg schedule and
parameter groups, exact resume, eval / predict / convert of runs and mmseg files, sharded evaluation."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from crossformer_vision.cli.main import main
from crossformer_vision.configs import list_presets, resolve_config
from crossformer_vision.data.segmentation import seg_demo
from crossformer_vision.engine import DistInfo, LoopConfig, Trainer, load_config, read_metrics
from crossformer_vision.engine.loading import load_model
from crossformer_vision.tasks.segmentation import build_segmentor, list_segmentors, summarize_areas
from crossformer_vision.tasks.segmentation.config import DEFAULTS, InferenceSettings
from crossformer_vision.tasks.segmentation.evaluate import evaluate_segmentor, majority_baseline
from crossformer_vision.tasks.segmentation.train import param_groups, poly_warmup_factor
from crossformer_vision.tasks.segmentation.tta import scaled_sizes
from train_utils import run_cli

TINY_SEG = [
    "--config",
    "seg_demo",
    "model.backbone.kwargs.embed_dim=16",
    "model.backbone.kwargs.depths=[1,1,1,1]",
    "model.backbone.kwargs.num_heads=[1,1,2,2]",
    "model.kwargs.channels=16",
    "model.kwargs.aux_channels=8",
    "data.scale=[256,64]",
    "data.crop_size=[64,64]",
    "data.train_limit=16",
    "data.val_limit=4",
    "eval.overlays=2",
    "eval.every=3",
    "sched.iters=6",
    "sched.warmup_iters=2",
    "train.global_batch_size=4",
    "train.ckpt_every=3",
    "train.keep_last=5",
    "train.threads=1",
    "train.deterministic=true",
    "train.progress=false",
    "train.log_every=1",
]
TINY_MODEL = dict(
    num_classes=8,
    channels=16,
    aux_channels=8,
    backbone_kwargs=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2)),
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# ---------------------------------------------------------------------- engine: evaluation every N steps
class _Data(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return torch.randn(4, generator=torch.Generator().manual_seed(i)), torch.tensor(float(i % 2))


def _trainer(run_dir: Path, calls: list[int], **loop) -> Trainer:
    model = nn.Linear(4, 1)

    def step(m, batch):
        x, y = batch
        return nn.functional.mse_loss(m(x).squeeze(1), y), x.shape[0]

    def evaluate(m):
        calls.append(trainer.global_step)
        return {"score": float(trainer.global_step)}

    trainer = Trainer(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scheduler_fn=lambda opt, n: torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0),
        train_dataset=_Data(),
        collate_fn=None,
        global_batch=8,  # 8 steps per epoch
        step_fn=step,
        evaluate_fn=evaluate,
        dist=DistInfo(),
        run_dir=run_dir,
        config={"x": 1},
        loop=LoopConfig(progress=False, **loop),
        primary_metric="score",
    )
    return trainer


def test_eval_every_steps_mid_epoch_end_and_no_double_evaluation(tmp_path):
    calls: list[int] = []
    trainer = _trainer(tmp_path / "a", calls, epochs=5, eval_every=0, eval_every_steps=3, max_steps=10, ckpt_every=3)
    trainer.fit()
    assert calls == [3, 6, 9, 10]  # every 3 steps, and the end (mid-epoch 2)
    assert [r["step"] for r in read_metrics(tmp_path / "a") if r["split"] == "val"] == [3, 6, 9, 10]
    steps = sorted(int(p.name[5:]) for p in (tmp_path / "a" / "checkpoints").glob("step-*"))
    assert steps[-1] == 10 and trainer.best == 10.0

    # epoch-based and step-based evaluation together: step 8 ends epoch 1 and is evaluated once
    calls.clear()
    _trainer(tmp_path / "b", calls, epochs=2, eval_every=1, eval_every_steps=4).fit()
    assert calls == [4, 8, 12, 16]

    # resuming from the checkpoint written right after the evaluation of step 3 does not evaluate step 3 again
    calls.clear()
    _trainer(tmp_path / "a", calls, epochs=5, eval_every=0, eval_every_steps=3, max_steps=12).fit(
        resume=tmp_path / "a" / "checkpoints" / "step-00000009"
    )
    assert calls == [12]


# ---------------------------------------------------------------------- recipe pieces
def test_poly_schedule_with_linear_warmup_is_mmcv():
    f = poly_warmup_factor(160000, power=1.0, warmup_iters=1500, warmup_ratio=1e-6)
    assert f(0) == pytest.approx(1e-6)  # mmcv: regular lr * (1 - (1 - 0 / 1500) * (1 - 1e-6))
    k = (1 - 750 / 1500) * (1 - 1e-6)
    assert f(750) == pytest.approx((1 - 750 / 160000) * (1 - k))
    assert f(1500) == pytest.approx(1 - 1500 / 160000)
    assert f(160000) == 0.0
    g = poly_warmup_factor(80000, power=0.9, min_lr_ratio=0.1)
    assert g(40000) == pytest.approx(0.9 * 0.5**0.9 + 0.1) and g(80000) == pytest.approx(0.1)


def test_param_groups_follow_mmseg_norm_custom_key():
    model = build_segmentor("upernet_crossformer_s", **TINY_MODEL)
    decay, no_decay = param_groups(model, 0.01, 0.0)
    names = {id(p): n for n, p in model.named_parameters()}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert "backbone.patch_embed.norm.weight" in skipped and "backbone.layers.0.blocks.0.norm1.bias" in skipped
    assert all("norm" in n for n in skipped)
    # mmseg's substring rule decays biases and the heads' BatchNorms ("bn" does not contain "norm")
    decayed = {names[id(p)] for p in decay["params"]}
    assert {"decode_head.bottleneck.bn.weight", "decode_head.conv_seg.bias"} <= decayed
    assert len(skipped) + len(decayed) == len(list(model.parameters()))


def test_presets_resolve_to_the_recipes():
    presets = list_presets("segmentation")
    for variant in ("crossformer_s", "crossformer_b", "crossformer_l", "crossformerpp_s"):
        assert {f"ade20k_upernet_{variant}", f"ade20k_semfpn_{variant}"} <= set(presets)
    for name in presets:
        cfg = load_config(DEFAULTS, resolve_config(name, task="segmentation"))
        assert cfg["model"]["name"] in list_segmentors()
        if name.startswith("ade20k_upernet"):
            o = cfg["optim"]
            assert (o["lr"], o["weight_decay"], o["norm_decay_mult"]) == (6e-5, 0.01, 0)
            assert (cfg["sched"]["iters"], cfg["sched"]["power"], cfg["sched"]["warmup_iters"]) == (160000, 1.0, 1500)
            assert cfg["model"]["aux_weight"] == 0.4 and cfg["train"]["global_batch_size"] == 16
        elif name.startswith("ade20k_semfpn"):
            assert (cfg["optim"]["lr"], cfg["optim"]["weight_decay"], cfg["sched"]["power"]) == (1e-4, 1e-4, 0.9)
            assert cfg["sched"]["iters"] == 80000 and cfg["train"]["global_batch_size"] == 16


def test_test_sizes_are_mmseg_keep_ratio_then_align():
    settings = InferenceSettings(scale=(2048, 512), size_divisor=32, ratios=(0.75, 1.0, 1.75))
    # 512 x 683: ratio 0.75 -> fits (1536, 384) -> 384 x 512; 1.0 -> 512 x 683 -> aligned 512 x 704
    assert scaled_sizes((512, 683), settings) == [(384, 512), (512, 704), (896, 1216)]
    assert scaled_sizes((100, 130), InferenceSettings(scale=None, size_divisor=None)) == [(100, 130)]


# ---------------------------------------------------------------------- evaluation
def test_sharded_evaluation_sums_areas_before_dividing():
    torch.manual_seed(0)
    model = build_segmentor("upernet_crossformer_s", **TINY_MODEL).eval()
    val = seg_demo("val")
    val.samples = val.samples[:6]
    settings = InferenceSettings(scale=None, size_divisor=32)
    whole = evaluate_segmentor(model, val, settings, num_classes=8)
    shards = [
        evaluate_segmentor(model, val, settings, num_classes=8, dist=DistInfo(rank=r, world_size=2)) for r in (0, 1)
    ]
    assert [s["metrics"]["num_images"] for s in shards] == [3, 3]
    assert torch.equal(shards[0]["areas"] + shards[1]["areas"], whole["areas"])
    summed = summarize_areas(shards[0]["areas"] + shards[1]["areas"])
    assert 100 * summed["mIoU"] == pytest.approx(whole["metrics"]["mIoU"])


def test_majority_baseline_on_the_demo_set():
    train, val = seg_demo("train"), seg_demo("val")
    result = majority_baseline(train, val, 8, train.classes)
    assert result["class"] == "gravel"  # 53 % of the training pixels
    m = result["metrics"]
    assert m["mIoU"] == pytest.approx(m["aAcc"] / 8) and m["mAcc"] == pytest.approx(100 / 8)


def test_convert_mmseg_roundtrip(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_segmentor("upernet_crossformer_s", **TINY_MODEL).eval()
    classes = [f"c{i}" for i in range(8)]
    src = tmp_path / "upernet.pth"
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "meta": {"CLASSES": classes, "PALETTE": [[i, i, i] for i in range(8)]}}, src)
    assert main(["seg", "convert", str(src), str(tmp_path / "upernet.safetensors")]) == 0
    assert "fixed_interval" in capsys.readouterr().out
    found = load_model(tmp_path / "upernet.safetensors", "segmentation")
    loaded = found.model
    assert found.kind == "converted" and found.classes == classes and loaded.lda_rule == "fixed_interval"
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


# ---------------------------------------------------------------------- the CLI end to end
def test_train_resume_eval_predict(tmp_path, capsys):
    full = tmp_path / "full"
    proc = run_cli(["seg", "train", *TINY_SEG, f"train.output_dir={full}"])
    assert "mIoU" in proc.stdout
    for name in ("final.safetensors", "best.safetensors", "results.json", "per_class.txt", "overlays.png"):
        assert (full / name).is_file(), name
    records = read_metrics(full)
    assert [r["step"] for r in records if r["split"] == "val"] == [3, 6]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    results = json.loads((full / "results.json").read_text())
    assert results["steps"] == 6 and len(results["per_class"]) == 8

    # a fresh process resumed from the step-3 checkpoint ends with bitwise the same weights
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(full / "checkpoints" / "step-00000003", resumed / "checkpoints" / "step-00000003")
    run_cli(["seg", "train", *TINY_SEG, f"train.output_dir={resumed}", "--resume", str(resumed)])
    a, b = load_file(str(full / "final.safetensors")), load_file(str(resumed / "final.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert json.loads((resumed / "results.json").read_text())["metrics"] == results["metrics"]

    # eval of the run reproduces the run's final evaluation (in-process: eval and predict change no global state)
    capsys.readouterr()
    assert main(["seg", "eval", "--checkpoint", str(full), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "run" and out["metrics"] == pytest.approx(results["metrics"])
    other = "fixed_group" if out["lda_rule"] == "fixed_interval" else "fixed_interval"
    assert main(["seg", "eval", "--checkpoint", str(full), "--lda-rule", other]) == 2  # was silently ignored
    assert f"--lda-rule {other} applies to official mmseg checkpoints" in capsys.readouterr().err
    assert main(["seg", "eval", "--checkpoint", str(full / "checkpoints" / "step-00000003"), "--flip"]) == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "gravel" in text and "+ flip" in text

    # predict writes an indexed label PNG and an overlay per image
    images = sorted((Path(seg_demo("val").image_dir)).glob("*.jpg"))[:2]
    out_dir = tmp_path / "pred"
    assert main(["seg", "predict", "--checkpoint", str(full), *map(str, images), "--output-dir", str(out_dir)]) == 0
    for image in images:
        labels = Image.open(out_dir / f"{image.stem}_labels.png")
        assert labels.mode == "P" and labels.size == Image.open(image).size
        assert np.asarray(labels).max() < 8
        assert (out_dir / f"{image.stem}_overlay.png").is_file()


def test_demo_quick_reports_model_and_baseline(tmp_path, capsys):
    out = tmp_path / "demo"
    tiny = [a for a in TINY_SEG[2:] if not a.startswith(("sched.", "eval.every", "train.ckpt_every"))]
    proc = run_cli(["seg", "demo", "--quick", "--output-dir", str(out), *tiny, "sched.iters=2"])
    summary = json.loads((out / "demo_results.json").read_text())
    assert summary["baseline"]["class"] == "gravel" and summary["model"]["steps"] == 2
    assert math.isfinite(summary["model"]["metrics"]["mIoU"]) and "trivial" in proc.stdout
    assert main(["seg", "demo", "--quick", "--output-dir", str(out)]) == 2
    assert "already holds a run" in capsys.readouterr().err
