"""``crossformer demo``: the main job. Trains a CrossFormer on the embedded Fashion-MNIST subset, evaluates it, and
trains a timm Swin Transformer of similar size the same way for comparison; prints a results table and writes
PNGs (learning curves, confusion matrices, a side-by-side comparison)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from ..configs import resolve_config
from ..engine import load_config, merge_config, read_metrics
from ..engine.plots import _pyplot
from ..tasks.classification.config import DEFAULTS

RUNS = (
    ("CrossFormer", "crossformer", ["fashion_mnist_demo"]),
    ("Swin (timm)", "swin", ["fashion_mnist_demo", "fashion_mnist_demo_swin"]),
)
QUICK = ["data.train_limit=2000", "data.val_limit=1000", "sched.epochs=1", "sched.warmup_epochs=0"]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", default="runs/demo", help="where the two runs and the pictures go")
    p.add_argument("--skip-baseline", action="store_true", help="train only the CrossFormer")
    p.add_argument("--quick", action="store_true", help="a one-minute smoke run on 2,000 images")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides applied to both runs")


def _config(presets: list[str], out: Path, overrides: list[str]) -> dict:
    import yaml

    cfg = load_config(DEFAULTS, resolve_config(presets[0]))
    for extra in presets[1:]:
        cfg = merge_config(cfg, yaml.safe_load(resolve_config(extra).read_text()), extra)
    return load_config(cfg, None, [*overrides, f"train.output_dir={out}"])


def _count(model_name: str, kwargs: dict, size: int) -> tuple[float, float]:
    """Parameters (M) and MFLOPs per image, attention included: the models are built with the explicit attention
    math, because torch's flop counter does not see the fused CPU attention kernel (which path runs depends on the
    machine: CrossFormer picks it by L2 cache size), and the count must not."""
    import timm
    from timm.layers import set_fused_attn, use_fused_attn
    from torch.utils.flop_counter import FlopCounterMode

    fused, experimental = use_fused_attn(), use_fused_attn(experimental=True)
    set_fused_attn(False)
    try:
        model = timm.create_model(model_name, num_classes=10, **kwargs).eval()
    finally:
        set_fused_attn(fused, experimental=experimental)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return sum(p.numel() for p in model.parameters()) / 1e6, counter.get_total_flops() / 2e6


def run(args: argparse.Namespace) -> int:
    from ..tasks.classification.train import train

    console = Console(width=None if Console().is_terminal else 120)
    out = Path(args.output_dir)
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    rows = []
    for label, sub, presets in RUNS[:1] if args.skip_baseline else RUNS:
        cfg = _config(presets, out / sub, overrides)
        if (out / sub / "checkpoints").exists():
            raise ValueError(f"{out / sub} already holds a run; remove it or pass --output-dir")
        params, mflops = _count(cfg["model"]["name"], cfg["model"]["kwargs"], cfg["data"]["img_size"])
        n_train, size = cfg["data"]["train_limit"] or "all", cfg["data"]["img_size"]
        console.rule(
            f"[bold]{label}[/]: {cfg['model']['name']} ({params:.2f} M params, {mflops:.1f} MFLOPs/image), "
            f"{cfg['sched']['epochs']} epochs on {n_train} embedded Fashion-MNIST images at {size} px"
        )
        result = train(cfg)
        speeds = [r["img_per_s"] for r in read_metrics(out / sub) if r.get("split") == "train"]
        speeds = speeds[1:] if len(speeds) > 2 else speeds  # the first window includes warm-up
        rows.append(
            {
                "model": label,
                "name": cfg["model"]["name"],
                "params_M": round(params, 2),
                "mflops": round(mflops, 1),
                "train_s": round(result["train_seconds"], 1),
                "img_per_s": round(sorted(speeds)[len(speeds) // 2], 0) if speeds else None,
                **{k: result["metrics"][k] for k in ("top1", "top5", "loss")},
                "run": str(out / sub),
            }
        )
    table = Table(title="Fashion-MNIST test set (10,000 images): trained on CPU with the same recipe")
    for col in ("model", "params", "MFLOPs/img", "train time", "train img/s", "top-1 %", "top-5 %", "test loss", "run"):
        table.add_column(col, justify="left" if col in ("model", "run") else "right")
    for r in rows:
        table.add_row(
            r["model"],
            f"{r['params_M']} M",
            f"{r['mflops']}",
            f"{r['train_s'] / 60:.1f} min",
            f"{r['img_per_s']:.0f}",
            f"{r['top1']:.2f}",
            f"{r['top5']:.2f}",
            f"{r['loss']:.4f}",
            r["run"],
        )
    console.print(table)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    _comparison_png(out, rows)
    console.print(f"pictures: {out}/comparison.png, {out}/*/curves.png, {out}/*/confusion.png")
    return 0


def _comparison_png(out: Path, rows: list[dict]) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        recs = read_metrics(r["run"])
        train = [x for x in recs if x.get("split") == "train"]
        val = [x for x in recs if x.get("split") == "val"]
        axes[0].plot([x["step"] for x in train], [x["loss"] for x in train], label=r["model"])
        axes[1].plot(
            [x["epoch"] for x in val], [x["top1"] for x in val], marker="o", label=f"{r['model']} ({r['top1']:.2f}%)"
        )
    axes[0].set(title="training loss", xlabel="step")
    axes[1].set(title="test top-1 accuracy (%)", xlabel="epoch")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "comparison.png", dpi=110)
    plt.close(fig)
