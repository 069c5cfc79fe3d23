"""PNG pictures of a run: learning curves and confusion matrices (matplotlib, headless)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .metrics_logger import read_metrics

__all__ = ["plot_confusion", "plot_curves"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(run_dir: str | os.PathLike, path: str | os.PathLike, val_keys: Sequence[str] = ("top1",)) -> Path:
    """Training loss and learning rate per step, validation metrics per evaluation, from ``metrics.jsonl``."""
    plt = _pyplot()
    records = read_metrics(run_dir)
    train = [r for r in records if r.get("split") == "train"]
    val = [r for r in records if r.get("split") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if train:
        steps = [r["step"] for r in train]
        marker = "o" if len(steps) < 30 else None
        axes[0].plot(steps, [r["loss"] for r in train], color="tab:blue", marker=marker)
        axes[1].plot(steps, [r["lr"] for r in train], color="tab:orange", marker=marker)
    axes[0].set(title="training loss", xlabel="step")
    axes[1].set(title="learning rate", xlabel="step")
    for key in val_keys:
        pts = [(r["step"], r[key]) for r in val if isinstance(r.get(key), (int, float))]
        if pts:
            axes[2].plot(*zip(*pts), marker="o", label=key)
    handles, labels = axes[2].get_legend_handles_labels()
    legend_ax = axes[2]
    if val and "loss" in val[0]:
        ax2 = axes[2].twinx()
        ax2.plot([r["step"] for r in val], [r["loss"] for r in val], color="tab:red", linestyle="--", label="val loss")
        ax2.set_ylabel("val loss", color="tab:red")
        more, more_labels = ax2.get_legend_handles_labels()
        handles, labels, legend_ax = handles + more, labels + more_labels, ax2
    axes[2].set(title="validation", xlabel="step")
    if handles:  # one legend for both axes, drawn on top, between the rising metrics and the falling loss
        legend_ax.legend(handles, labels, loc="center right", framealpha=0.9)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) with counts in the cells."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=np.int64)
    norm = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    size = max(5.0, 0.45 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:
        ax.set_xticks(range(n), classes, rotation=45, ha="right")
        ax.set_yticks(range(n), classes)
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(
                        j,
                        i,
                        str(matrix[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
