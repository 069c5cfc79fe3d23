"""``crossformer explain eval``: every method through every faithfulness test on the embedded data, one table and
one picture.

Two tasks, one code path (:func:`evaluate_explanations`, ``task=``):

* ``"classification"`` (Fashion-MNIST classifiers): perturbation and deletion / insertion run on the Fashion-MNIST
  test set (the first ``limit`` images, class-balanced), preprocessed like the model's run, explaining the predicted
  class; localisation runs on the 100 ``det_demo`` val scenes (128 x 128, 2-5 items with exact boxes) at their own
  size, explaining every class present in a scene. A classifier trained on single items sees the scenes as they are
  (CrossFormer takes any size; a ViT's position embedding is resampled to the scene size).
* ``"multilabel"`` (models of ``crossformer multilabel`` trained on the demo scenes): every test runs on the same
  (scene, present class) pairs of the first ``limit`` validation scenes the model was trained on (their items' tight
  boxes, ``DemoScenes.boxes_of``), preprocessed as the run's config says. The perturbation tests follow the explained
  class's sigmoid probability and whether it is still among the scene's top-k logits, k = the number of classes
  present (:func:`.faithfulness.perturbation_curves` with ``topk``); the localisation maps are the same maps.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .faithfulness import FRACTIONS, localisation_scores, perturbation_curves, summarise
from .methods import METHODS, explain
from .tracing import family_of, network_of

__all__ = ["HIGHER_IS_BETTER", "MULTILABEL_HIGHER_IS_BETTER", "evaluate_explanations", "metrics_of", "plot_evaluation"]

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

#: The same for multi-label models: ``pointing_topk`` (the pointing game on the pairs whose class is among the
#: scene's top-k logits, k = the number of classes present) replaces ``pointing_top1``.
MULTILABEL_HIGHER_IS_BETTER: dict[str, bool] = {
    ("pointing_topk" if k == "pointing_top1" else k): v for k, v in HIGHER_IS_BETTER.items()
}

TASKS = ("classification", "multilabel")


def metrics_of(task: str) -> dict[str, bool]:
    """The metrics (in table order) of ``task``'s evaluation -> whether larger is better."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return HIGHER_IS_BETTER if task == "classification" else MULTILABEL_HIGHER_IS_BETTER


@dataclass
class _Setup:
    """What one task's tests run on.

    ``images [N, 3, H, W]`` / ``targets [N]`` (explained classes) / ``labels [N]`` (classification: true labels) /
    ``topk [N]`` (multi-label: classes present) feed the perturbation tests; ``pairs`` (normalised scene
    ``[3, S, S]``, class, its boxes ``[K, 4]`` xyxy) the localisation tests, explained on ``scene_model``; ``seen``
    [len(pairs)] marks the pairs whose class the model reports; ``shared``: the pairs are the perturbation images
    (their maps are reused); ``info``: the task's summary entries of the result.
    """

    images: torch.Tensor
    targets: torch.Tensor
    labels: torch.Tensor | None
    topk: torch.Tensor | None
    pairs: list[tuple[torch.Tensor, int, torch.Tensor]]
    scene_model: nn.Module
    seen: np.ndarray
    shared: bool
    info: dict[str, Any]


def _classification_data(dcfg: dict[str, Any], limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    from ..data.fashion_mnist import FashionMNIST
    from ..tasks.classification.data import eval_transform

    transform = eval_transform(dcfg)
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


def _multilabel_pairs(
    scenes: Any, dcfg: dict[str, Any], limit: int | None
) -> tuple[list[tuple[torch.Tensor, int, torch.Tensor]], list[int], torch.Tensor, torch.Tensor]:
    """The (scene, present class) pairs of the first ``limit`` multi-label demo scenes.

    ``scenes`` has ``images [N, S, S]`` uint8 grey, ``targets [N, K]`` and ``boxes_of(i)`` -> ``[(class, (x, y, w,
    h))]`` (:class:`~crossformer_vision.data.multilabel.DemoScenes`). Scenes are preprocessed as the multi-label run's
    evaluation does (grey / 255 to 3 channels, bilinear resize to the input size when it differs, normalised); boxes
    are scaled with them. Returns ``(pairs (scene [3, H, W], class, boxes [K, 4] xyxy), scene index per pair, the
    normalised scenes [n, 3, H, W], their targets [n, K])``.
    """
    n = len(scenes.images) if limit is None else min(limit, len(scenes.images))
    size = tuple(dcfg["input_size"][1:])
    x = torch.from_numpy(np.asarray(scenes.images[:n])).float().div(255)[:, None]
    native = tuple(x.shape[-2:])
    if native != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    sy, sx = size[0] / native[0], size[1] / native[1]
    mean = torch.tensor(dcfg["mean"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(dcfg["std"], dtype=torch.float32).view(1, 3, 1, 1)
    x = (x.expand(-1, 3, -1, -1) - mean) / std
    pairs, owner = [], []
    for i in range(n):
        by_class: dict[int, list[list[float]]] = {}
        for c, (bx, by, bw, bh) in scenes.boxes_of(i):
            by_class.setdefault(int(c), []).append([bx * sx, by * sy, (bx + bw) * sx, (by + bh) * sy])
        for c in sorted(by_class):
            pairs.append((x[i], c, torch.tensor(by_class[c], dtype=torch.float32)))
            owner.append(i)
    return pairs, owner, x, torch.from_numpy(np.asarray(scenes.targets[:n])).float()


def _batched_logits(model: nn.Module, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(images[i : i + batch_size]).float() for i in range(0, len(images), batch_size)])


def _classification_setup(
    model: nn.Module, dcfg: dict[str, Any], limit: int, scene_limit: int | None, batch_size: int
) -> _Setup:
    images, labels = _classification_data(dcfg, limit)
    pairs = _scenes(dcfg, scene_limit)
    scene_model = _at_size(model, tuple(pairs[0][0].shape[-2:])) if pairs else model
    predicted = _batched_logits(model, images, batch_size).argmax(-1)
    with torch.no_grad():  # the scene classifier's top-1: localisation of the classes it actually reports
        scene_top1 = [int(scene_model(p[0][None]).argmax()) for p in pairs]
    seen = np.array([top == p[1] for top, p in zip(scene_top1, pairs)], dtype=bool)
    info = {
        "top1": float((predicted == labels).float().mean()),
        "images": len(images),
        "scenes": len({id(p[0]) for p in pairs}),
        "pairs": len(pairs),
        "pairs_top1": int(seen.sum()),
    }
    return _Setup(images, predicted, labels, None, pairs, scene_model, seen, False, info)


def _multilabel_setup(model: nn.Module, dcfg: dict[str, Any], scenes: Any, limit: int, batch_size: int) -> _Setup:
    from ..tasks.multilabel.metrics import multilabel_metrics

    pairs, owner, x, targets = _multilabel_pairs(scenes, dcfg, limit)
    if not pairs:
        raise ValueError("no (scene, class) pair to explain: the scenes hold no boxes")
    logits = _batched_logits(model, x, batch_size)
    present = targets.clamp(min=0).sum(1).long()  # k per scene: the classes present
    owner_t = torch.tensor(owner)
    classes = torch.tensor([p[1] for p in pairs])
    topk = present[owner_t]
    rank = (logits[owner_t] > logits[owner_t, classes][:, None]).sum(1)  # 0: the scene's highest logit
    seen = (rank < topk).numpy()
    metrics, _ = multilabel_metrics(logits.sigmoid(), targets)
    info = {
        "mAP": round(float(metrics["mAP"]), 4),
        "scenes": len(x),
        "pairs": len(pairs),
        "pairs_topk": int(seen.sum()),
    }
    images = torch.stack([p[0] for p in pairs])
    return _Setup(images, classes, None, topk, pairs, model, seen, True, info)


def evaluate_explanations(
    model: nn.Module,
    dcfg: dict[str, Any],
    methods: tuple[str, ...] = METHODS,
    limit: int = 500,
    scene_limit: int | None = None,
    batch_size: int = 50,
    seed: int = 0,
    fill: str = "black",
    task: str = "classification",
    scenes: Any = None,
) -> dict[str, Any]:
    """All faithfulness tests of :mod:`.faithfulness` for every method.

    Args:
        model: A classifier of the Fashion-MNIST labels, or a multi-label model of the demo scenes (eval mode).
        dcfg: Its preprocessing (``input_size``, ``mean``, ``std``; classification also ``crop_pct``,
            ``interpolation``).
        methods: The methods to compare.
        limit: Classification: Fashion-MNIST test images for the perturbation tests. Multi-label: validation scenes
            (every test runs on their (scene, present class) pairs).
        scene_limit: Classification: ``det_demo`` val scenes for localisation (None: all 100). Unused for
            multi-label.
        batch_size: Images per explanation batch.
        seed: Seed of the ``random`` maps and of the tie-breaking.
        fill: Removed pixels become ``"black"`` (pixel value 0, the embedded data's background) or ``"mean"`` (the
            normalisation mean, the papers' choice).
        task: ``"classification"`` or ``"multilabel"`` (module docstring).
        scenes: Multi-label only: the validation scenes (``DemoScenes``: ``images``, ``targets``, ``boxes_of``).

    Returns:
        ``{"task", "methods": {method: {metric: value, "curves": ...}}, "scenes", "pairs", "fractions", "fill",
        "seconds_per_image": {method: seconds}, "examples", ...}``, the metrics being :func:`metrics_of` ``(task)``.
        Classification adds ``"top1", "images", "pairs_top1"``: ``pointing_top1`` is the pointing game on the
        (scene, class) pairs whose class is the model's top-1 on the scene (the classes it actually reports there).
        Multi-label adds ``"mAP"`` (on the scenes used) and ``"pairs_topk"``: ``pointing_topk`` is the pointing game
        on the pairs whose class is among the scene's top-k logits (k = the classes present); ``positive_auc`` /
        ``negative_auc`` follow whether the explained class stays among them, and ``seconds_per_image`` is per pair.
    """
    metrics = metrics_of(task)
    if fill not in ("black", "mean"):
        raise ValueError(f"fill must be 'black' or 'mean', got {fill!r}")
    if task == "multilabel" and scenes is None:
        raise ValueError("the multi-label tests need the scenes the model was trained on (scenes=DemoScenes)")
    model.eval()
    blank = [0.0] * 3 if fill == "mean" else [-m / s for m, s in zip(dcfg["mean"], dcfg["std"])]
    if task == "classification":
        setup = _classification_setup(model, dcfg, limit, scene_limit, batch_size)
    else:
        setup = _multilabel_setup(model, dcfg, scenes, limit, batch_size)
    images, targets, pairs = setup.images, setup.targets, setup.pairs
    seen_key = "pointing_top1" if task == "classification" else "pointing_topk"
    for method in methods:  # warm-up (lazy initialisation, kernel selection) outside the timed calls
        explain(model, images[:2], targets[:2], method)
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    examples: dict[str, Any] = {"scene": pairs[0][0].tolist() if pairs else None, "class": None, "maps": {}}
    examples["boxes"] = pairs[0][2].tolist() if pairs else []
    for m, method in enumerate(methods):
        gen = torch.Generator().manual_seed(seed)
        per_image: dict[str, list[np.ndarray]] = {}
        kept: list[torch.Tensor] = []  # multi-label: the pairs' maps, reused by localisation
        spent = 0.0
        for i in range(0, len(images), batch_size):
            sl = slice(i, i + batch_size)
            x, t = images[sl], targets[sl]
            start = time.perf_counter()
            maps = explain(model, x, t, method, seed=seed + m * 100003 + i)
            spent += time.perf_counter() - start
            y = None if setup.labels is None else setup.labels[sl]
            k = None if setup.topk is None else setup.topk[sl]
            for key, v in perturbation_curves(model, x, y, t, maps, gen, fill=blank, topk=k).items():
                per_image.setdefault(key, []).append(v)
            if setup.shared:
                kept.append(maps)
        row = summarise({k: np.concatenate(v) for k, v in per_image.items()})
        hits, energy = [], []
        for j, i in enumerate(range(0, len(pairs), batch_size)):
            chunk = pairs[i : i + batch_size]
            if setup.shared:
                maps = kept[j]
            else:
                x = torch.stack([p[0] for p in chunk])
                maps = explain(setup.scene_model, x, [p[1] for p in chunk], method, seed=seed + m * 100003 + 7 + i)
            h, e = localisation_scores(maps, [p[2] for p in chunk], gen)
            hits.append(h)
            energy.append(e)
            if i == 0:
                examples["class"] = int(chunk[0][1])
                examples["maps"][method] = maps[0].tolist()
        hits_all = np.concatenate(hits) if hits else np.zeros(0)
        row["pointing"] = float(hits_all.mean()) if hits else None
        row[seen_key] = float(hits_all[setup.seen].mean()) if setup.seen.any() else None
        row["energy"] = float(np.concatenate(energy).mean()) if energy else None
        results[method] = {k: row[k] for k in metrics} | {"curves": row["curves"]}
        seconds[method] = round(spent / max(1, len(images)), 5)
    return {
        "task": task,
        "methods": results,
        **setup.info,
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
    if result.get("task") == "multilabel":
        panels = [(k, name, "class in top-k" if "correct" in k else "sigmoid probability", metric)
                  for k, name, _, metric in panels]  # fmt: skip
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
    multilabel = result.get("task") == "multilabel"
    seen = ("pointing_topk", "pointing, class in the model's top-k") if multilabel else (
        "pointing_top1", "pointing, model's top-1 class")  # fmt: skip
    bars = [("pointing", "pointing game"), seen, ("energy", "energy")]
    for j, (key, label) in enumerate(bars):
        values = [result["methods"][m].get(key) or 0 for m in methods]
        ax.bar(pos + (j - 1) * 0.27, values, 0.27, label=label)
    ax.set_xticks(pos, methods)
    where = "multi-label val scenes" if multilabel else "det_demo scenes"
    ax.set_title(f"localisation: {result['pairs']} classes in {result['scenes']} {where} (↑)", fontsize=10)
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
        boxes = ex.get("boxes") or []
        for j, mth in enumerate(methods[: ncols - 1]):
            ax = fig.add_subplot(grid[1, j + 1])
            ax.imshow(scene)
            m = np.asarray(ex["maps"][mth])
            ax.imshow((m - m.min()) / max(float(m.max() - m.min()), 1e-30), cmap="jet", alpha=0.5, vmin=0, vmax=1)
            y, x_ = np.unravel_index(int(np.argmax(m)), m.shape)
            ax.plot([x_], [y], marker="x", color="white", ms=8, mew=2)  # the map's maximum (pointing game)
            for x1, y1, x2, y2 in boxes:  # the explained class's boxes
                ax.add_patch(plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color="lime", lw=1))
            ax.set_title(mth)
            ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
