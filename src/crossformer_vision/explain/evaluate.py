"""``crossformer explain eval``: every method through every faithfulness test on the embedded data, one table and
one picture.

Perturbation and deletion / insertion run on the Fashion-MNIST test set (the first ``limit`` images, class-balanced),
preprocessed like the model's run; localisation runs on the 100 ``det_demo`` val scenes (128 x 128, 2-5 items with
exact boxes) at their own size, explaining every class present in a scene. A classifier trained on single items
sees the scenes as they are (CrossFormer takes any size; a ViT's position embedding is resampled to the scene size).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .faithfulness import FRACTIONS, localisation_scores, perturbation_curves, summarise
from .methods import METHODS, explain
from .tracing import family_of, network_of

__all__ = ["HIGHER_IS_BETTER", "evaluate_explanations", "plot_evaluation"]

#: Metric -> whether a larger value is better (the table's arrows).
HIGHER_IS_BETTER: dict[str, bool] = {
    "positive_auc": False,
    "negative_auc": True,
    "deletion_auc": False,
    "insertion_auc": True,
    "pointing": True,
    "pointing_top1": True,
    "energy": True,
}


def _classification_data(dcfg: dict[str, Any], limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    from timm.data import create_transform

    from ..data.fashion_mnist import FashionMNIST

    transform = create_transform(
        input_size=tuple(dcfg["input_size"]),
        crop_pct=dcfg["crop_pct"],
        interpolation=dcfg["interpolation"],
        mean=tuple(dcfg["mean"]),
        std=tuple(dcfg["std"]),
    )
    data = FashionMNIST(split="test", limit=limit, transform=transform)
    images, labels = zip(*(data[i] for i in range(len(data))))
    return torch.stack(images), torch.tensor(labels)


def _scenes(dcfg: dict[str, Any], limit: int | None) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """``(normalised scene [3, 128, 128], class, boxes of that class [K, 4] xyxy)`` per class present per scene."""
    from ..data.coco import det_demo

    data = det_demo("val")
    mean = torch.tensor(dcfg["mean"]).view(3, 1, 1)
    std = torch.tensor(dcfg["std"]).view(3, 1, 1)
    pairs = []
    for i in range(len(data) if limit is None else min(limit, len(data))):
        image, target = data[i]
        image = (image - mean) / std
        labels = target["labels"] - 1  # category ids 1-10 are Fashion-MNIST labels 0-9
        for c in sorted(set(labels.tolist())):
            pairs.append((image, c, target["boxes"][labels == c]))
    return pairs


def _at_size(model: nn.Module, size: tuple[int, int]) -> nn.Module:
    """``model`` able to run at ``size`` (a copy of a fixed-size ViT / Swin with resampled position tables)."""
    if family_of(model) == "crossformer" or network_of(model) is not model:
        return model
    img_size = tuple(model.patch_embed.img_size) if model.patch_embed.img_size is not None else None
    if img_size == tuple(size):
        return model
    resized = copy.deepcopy(model)
    resized.set_input_size(img_size=size)
    return resized.eval()


def evaluate_explanations(
    model: nn.Module,
    dcfg: dict[str, Any],
    methods: tuple[str, ...] = METHODS,
    limit: int = 500,
    scene_limit: int | None = None,
    batch_size: int = 50,
    seed: int = 0,
    fill: str = "black",
) -> dict[str, Any]:
    """All faithfulness tests of :mod:`.faithfulness` for every method.

    Args:
        model: A classifier of the Fashion-MNIST labels (eval mode).
        dcfg: Its preprocessing (``input_size``, ``crop_pct``, ``interpolation``, ``mean``, ``std``).
        methods: The methods to compare.
        limit: Fashion-MNIST test images for the perturbation tests.
        scene_limit: ``det_demo`` val scenes for localisation (None: all 100).
        batch_size: Images per explanation batch.
        seed: Seed of the ``random`` maps and of the tie-breaking.
        fill: Removed pixels become ``"black"`` (pixel value 0, the embedded data's background) or ``"mean"`` (the
            normalisation mean, the papers' choice).

    Returns:
        ``{"methods": {method: {metric: value, "curves": ...}}, "top1": ..., "images": ..., "scenes": ...,
        "pairs": ..., "pairs_top1": ..., "fractions": ..., "fill": ..., "seconds_per_image": {method: seconds},
        "examples": ...}``. ``pointing_top1`` is the pointing game on the (scene, class) pairs whose class is the
        model's top-1 on the scene: the classes the classifier actually reports there.
    """
    if fill not in ("black", "mean"):
        raise ValueError(f"fill must be 'black' or 'mean', got {fill!r}")
    model.eval()
    blank = [0.0] * 3 if fill == "mean" else [-m / s for m, s in zip(dcfg["mean"], dcfg["std"])]
    images, labels = _classification_data(dcfg, limit)
    pairs = _scenes(dcfg, scene_limit)
    scene_size = tuple(pairs[0][0].shape[-2:]) if pairs else None
    scene_model = _at_size(model, scene_size) if pairs else model
    with torch.no_grad():
        logits = torch.cat([model(images[i : i + batch_size]) for i in range(0, len(images), batch_size)])
    predicted = logits.argmax(-1)
    with torch.no_grad():  # the scene classifier's top-1: localisation of the classes it actually reports
        scene_top1 = [int(scene_model(p[0][None]).argmax()) for p in pairs]
    seen = np.array([top == p[1] for top, p in zip(scene_top1, pairs)], dtype=bool)
    for method in methods:  # warm-up (lazy initialisation, kernel selection) outside the timed calls
        explain(model, images[:2], predicted[:2], method)
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    examples: dict[str, Any] = {"scene": pairs[0][0].tolist() if pairs else None, "class": None, "maps": {}}
    for m, method in enumerate(methods):
        gen = torch.Generator().manual_seed(seed)
        per_image: dict[str, list[np.ndarray]] = {}
        spent = 0.0
        for i in range(0, len(images), batch_size):
            x, y, t = images[i : i + batch_size], labels[i : i + batch_size], predicted[i : i + batch_size]
            start = time.perf_counter()
            maps = explain(model, x, t, method, seed=seed + m * 100003 + i)
            spent += time.perf_counter() - start
            for k, v in perturbation_curves(model, x, y, t, maps, gen, fill=blank).items():
                per_image.setdefault(k, []).append(v)
        row = summarise({k: np.concatenate(v) for k, v in per_image.items()})
        hits, energy = [], []
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            x = torch.stack([p[0] for p in chunk])
            maps = explain(scene_model, x, [p[1] for p in chunk], method, seed=seed + m * 100003 + 7 + i)
            h, e = localisation_scores(maps, [p[2] for p in chunk], gen)
            hits.append(h)
            energy.append(e)
            if i == 0:
                examples["class"] = int(chunk[0][1])
                examples["maps"][method] = maps[0].tolist()
        hits_all = np.concatenate(hits) if hits else np.zeros(0)
        row["pointing"] = float(hits_all.mean()) if hits else None
        row["pointing_top1"] = float(hits_all[seen].mean()) if seen.any() else None
        row["energy"] = float(np.concatenate(energy).mean()) if energy else None
        results[method] = row
        seconds[method] = round(spent / max(1, len(images)), 5)
    return {
        "methods": results,
        "top1": float((predicted == labels).float().mean()),
        "images": len(images),
        "scenes": len({id(p[0]) for p in pairs}),
        "pairs": len(pairs),
        "pairs_top1": int(seen.sum()),
        "fractions": list(FRACTIONS),
        "fill": fill,
        "seconds_per_image": seconds,
        "examples": examples,
    }


def plot_evaluation(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """The curves of the perturbation tests, the localisation scores and one scene's maps, as one PNG."""
    from ..engine.plots import _pyplot

    plt = _pyplot()
    methods = list(result["methods"])
    fig = plt.figure(figsize=(16, 8.5))
    grid = fig.add_gridspec(2, max(4, len(methods) + 1))
    x = np.asarray(result["fractions"]) * 100
    panels = [
        ("positive_correct", "positive perturbation (AUC ↓)", "top-1 accuracy", "positive_auc"),
        ("negative_correct", "negative perturbation (AUC ↑)", "top-1 accuracy", "negative_auc"),
        ("positive_prob", "deletion (AUC ↓)", "class probability", "deletion_auc"),
    ]
    ncols = grid.ncols
    for j, (key, name, ylabel, metric) in enumerate(panels):
        ax = fig.add_subplot(grid[0, j])
        for mth in methods:
            row = result["methods"][mth]
            ax.plot(x, row["curves"][key], marker="o", ms=3, label=f"{mth} ({row[metric]:.3f})")
        ax.set_title(name, fontsize=10)
        ax.set(xlabel="pixels removed (%)", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = fig.add_subplot(grid[0, 3:ncols])
    pos = np.arange(len(methods))
    bars = [("pointing", "pointing game"), ("pointing_top1", "pointing, model's top-1 class"), ("energy", "energy")]
    for j, (key, label) in enumerate(bars):
        values = [result["methods"][m].get(key) or 0 for m in methods]
        ax.bar(pos + (j - 1) * 0.27, values, 0.27, label=label)
    ax.set_xticks(pos, methods)
    ax.set_title(f"localisation: {result['pairs']} classes in {result['scenes']} det_demo scenes (↑)", fontsize=10)
    ax.set(ylim=(0, 1))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ex = result["examples"]
    if ex["scene"] is not None:
        scene = np.asarray(ex["scene"]).transpose(1, 2, 0)
        scene = (scene - scene.min()) / max(scene.max() - scene.min(), 1e-12)
        ax = fig.add_subplot(grid[1, 0])
        ax.imshow(scene)
        ax.set_title(f"scene, explaining class {ex['class']}")
        ax.axis("off")
        for j, mth in enumerate(methods[: ncols - 1]):
            ax = fig.add_subplot(grid[1, j + 1])
            ax.imshow(scene)
            m = np.asarray(ex["maps"][mth])
            ax.imshow((m - m.min()) / max(float(m.max() - m.min()), 1e-30), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_title(mth)
            ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
