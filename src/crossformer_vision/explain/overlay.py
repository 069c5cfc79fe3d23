"""PNG overlays: the image, then one relevance map per method drawn over it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["save_overlay"]


def save_overlay(image: np.ndarray, maps: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """Write ``image`` [H, W, 3] in [0, 1] and each ``maps[method]`` [H, W] (min-max scaled, jet, half transparent)
    side by side."""
    from ..engine.plots import _pyplot

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(maps) + 1, figsize=(2.6 * (len(maps) + 1), 2.9), squeeze=False)
    axes[0, 0].imshow(image)
    axes[0, 0].set_title("image", fontsize=9)
    for ax, (method, m) in zip(axes[0, 1:], maps.items()):
        span = float(m.max() - m.min())
        ax.imshow(image)
        ax.imshow((m - m.min()) / span if span > 0 else np.zeros_like(m), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        ax.set_title(method, fontsize=9)
    for ax in axes[0]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
