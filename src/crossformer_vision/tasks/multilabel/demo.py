"""The multi-label demo: the same tiny CrossFormer with the CSRA head and with the plain average-pool head, trained on
the same scenes with the same budget, next to the label-frequency baseline; a table, ``demo_results.json`` and
pictures (``curves.png``: validation mAP of both runs per epoch; ``predictions.png``: a few validation scenes with
their item boxes and each head's class maps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ...engine import read_metrics
from ...engine.plots import _pyplot
from .evaluate import dataset_targets, frequency_baseline

__all__ = ["run_demo"]

RUNS = (("CSRA head", "csra", ["model.head=csra"]), ("plain head (avg pool)", "avg", ["model.head=avg"]))


def _config(overrides: list[str]) -> dict:
    from ...configs import resolve_config
    from ...engine import load_config
    from .config import DEFAULTS

    return load_config(DEFAULTS, resolve_config("demo", task="multilabel"), overrides)


def _curves(out: Path, runs: dict[str, Path], baseline: float) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for label, folder in runs.items():
        records = read_metrics(folder)
        train = [r for r in records if r.get("split") == "train"]
        val = [r for r in records if r.get("split") == "val" and "mAP" in r]
        ax[0].plot([r["step"] for r in train], [r["loss"] for r in train], label=label)
        ax[1].plot([r["step"] for r in val], [r["mAP"] for r in val], marker="o", label=label)
    ax[1].axhline(baseline, color="grey", linestyle="--", label="label frequency")
    ax[0].set(title="training loss (BCE)", xlabel="step")
    ax[1].set(title="validation mAP (%)", xlabel="step")
    for a in ax:
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    path = out / "curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def _predictions(out: Path, cfg: dict, models: dict[str, torch.nn.Module], count: int = 4) -> Path:
    """Per scene: the input with its items' boxes, then each model's class map of the scene's first two true labels."""
    from .data import data_config, demo_split

    scenes = demo_split(cfg, "val")
    dcfg = data_config(cfg)
    mean = torch.tensor(dcfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(dcfg["std"]).view(1, 3, 1, 1)
    images = torch.from_numpy(scenes.images[:count]).float().div(255)[:, None].expand(-1, 3, -1, -1)
    x = (images - mean) / std
    names = scenes.classes
    plt = _pyplot()
    cols = 1 + 2 * len(models)
    fig, axes = plt.subplots(count, cols, figsize=(2.2 * cols, 2.3 * count), squeeze=False)
    outputs = {k: (torch.sigmoid(m(x)), m.class_maps(x)) for k, m in models.items()}
    for i in range(count):
        grey = scenes.images[i]
        ax = axes[i, 0]
        ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
        for label, (bx, by, bw, bh) in scenes.boxes_of(i):
            ax.add_patch(plt.Rectangle((bx - 0.5, by - 0.5), bw, bh, fill=False, color="lime", linewidth=1))
            ax.text(bx, by - 1, names[label], color="lime", fontsize=6, va="bottom")
        ax.set_title("scene " + str(i), fontsize=8)
        true = [int(c) for c in np.flatnonzero(scenes.targets[i] == 1)][:2]
        col = 1
        for key, (probs, maps) in outputs.items():
            up = F.interpolate(maps[i : i + 1], size=grey.shape, mode="bilinear", align_corners=False)[0]
            for c in true:
                m = up[c]
                m = (m - m.min()) / (m.max() - m.min()).clamp_min(1e-6)
                a = axes[i, col]
                a.imshow(grey, cmap="gray", vmin=0, vmax=255)
                a.imshow(m.numpy(), cmap="jet", alpha=0.45)
                a.set_title(f"{key}: {names[c]} {probs[i, c]:.2f}", fontsize=7)
                col += 1
            col = 1 + (list(outputs).index(key) + 1) * 2
    for a in axes.ravel():
        a.axis("off")
    fig.tight_layout()
    path = out / "predictions.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_demo(out: Path, overrides: list[str], console: Any) -> dict[str, Any]:
    """Train both heads, evaluate the baseline, print the comparison and write the pictures; returns the summary."""
    from rich.table import Table

    from .data import build_datasets, data_config
    from .train import train

    for _, sub, _ in RUNS:
        if (out / sub / "checkpoints").exists() or (out / sub / "results.json").exists():
            raise ValueError(f"{out / sub} already holds a run; remove it or pass --output-dir")
    results, models, folders = {}, {}, {}
    for label, sub, extra in RUNS:
        cfg = _config([*overrides, *extra, f"train.output_dir={out / sub}"])
        d, m = cfg["data"], cfg["model"]
        console.rule(
            f"[bold]{label}[/]: {m['name']} (embed_dim {m['kwargs'].get('embed_dim')}, depths "
            f"{m['kwargs'].get('depths')}), {cfg['sched']['epochs']} epochs on {d['demo_train']} scenes of "
            f"{d['demo_size']} px ({d['demo_objects'][0]}-{d['demo_objects'][1]} Fashion-MNIST items each)"
        )
        result = train(cfg)
        results[sub], folders[label] = result, out / sub
        from ...engine.loading import load_model

        models[sub] = load_model(out / sub, "multilabel").model.eval()
    cfg = _config(overrides)
    train_ds, val_ds, classes = build_datasets(cfg, data_config(cfg), train=True)
    base = frequency_baseline(dataset_targets(train_ds), dataset_targets(val_ds), cfg["eval"]["threshold"])
    table = Table(title=f"multi-label demo: {base['num_images']} validation scenes, {len(classes)} labels, percent")
    for col in ("predictor", "steps", *_COLUMNS):
        table.add_column(col, justify="left" if col == "predictor" else "right")
    rows = {"CSRA head": results["csra"], "plain head (avg pool)": results["avg"]}
    for label, r in rows.items():
        table.add_row(label, str(r["steps"]), *(f"{r['metrics'][k]:.2f}" for k in _COLUMNS))
    table.add_row("label frequency (no image)", "-", *(f"{base[k]:.2f}" for k in _COLUMNS))
    console.print(table)
    gap = results["csra"]["metrics"]["mAP"] - results["avg"]["metrics"]["mAP"]
    console.print(f"CSRA - plain head: {gap:+.2f} mAP points on this set (one seed each; the paper's claim is on VOC / "
                  "COCO with ImageNet-pretrained backbones)")  # fmt: skip
    pictures = [_curves(out, folders, base["mAP"]), _predictions(out, cfg, {"CSRA": models["csra"],
                                                                            "plain": models["avg"]})]  # fmt: skip
    console.print(f"pictures: {', '.join(str(p) for p in pictures)}")
    summary = {
        "csra": {k: results["csra"][k] for k in ("metrics", "per_class", "steps", "train_seconds", "head")},
        "avg": {k: results["avg"][k] for k in ("metrics", "per_class", "steps", "train_seconds", "head")},
        "baseline": base,
        "csra_minus_avg_mAP": round(gap, 4),
        "output_dir": str(out),
    }
    (out / "demo_results.json").write_text(json.dumps(summary, indent=1))
    return summary


_COLUMNS = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "CF1_top3", "OF1_top3")
