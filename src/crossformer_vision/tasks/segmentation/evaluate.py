"""Evaluate and run segmentors: dataset mIoU (sharded over processes), a trivial baseline, loading our runs and
official mmseg checkpoints, label / overlay PNGs.

* :func:`evaluate_segmentor`: mIoU / mAcc / aAcc and per-class IoU over a dataset, every image exactly once over all
  processes, areas summed over processes before any division;
* :func:`load_segmentor`: a run directory, a checkpoint, ``final.safetensors``, a converted or an official mmseg file;
* :func:`evaluate_checkpoint`, :func:`predict_images`, :func:`convert_mmseg`: ``crossformer seg eval / predict /
  convert``.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from ...data.folder import image_paths
from ...data.segmentation import IGNORE_INDEX, read_image
from ...engine import DistInfo, all_reduce_sum, apply_overrides, init_distributed, merge_config
from ...engine.checkpoint import load_training_checkpoint
from ...engine.sampling import EvalShardSampler
from ...engine.trainer import autocast_context
from ...models.io import atomic_save_safetensors
from .config import DEFAULTS, InferenceSettings, build_datasets, build_model, inference_settings
from .convert import load_mmseg_checkpoint
from .inference import MS_RATIOS, inference, rescale_size
from .metrics import SegmentationMetric
from .model import Segmentor
from .visualize import make_palette, save_overlays

__all__ = [
    "align_size",
    "convert_mmseg",
    "evaluate_checkpoint",
    "evaluate_segmentor",
    "load_segmentor",
    "majority_baseline",
    "predict_images",
    "predict_probs",
    "save_label_png",
    "scaled_sizes",
]

#: ``safetensors`` metadata ``kind`` of a training run's weights and of a converted mmseg checkpoint.
RUN_KIND, MMSEG_KIND = "run", "mmseg"


# ---------------------------------------------------------------------- test-time resizing and prediction
def align_size(size: Sequence[int], divisor: int | None) -> tuple[int, int]:
    """``(h, w)`` rounded up to multiples of ``divisor`` (the official ``AlignResize``; None: unchanged)."""
    h, w = int(size[0]), int(size[1])
    if not divisor or divisor <= 1:
        return h, w
    return -(-h // divisor) * divisor, -(-w // divisor) * divisor


def scaled_sizes(size: Sequence[int], settings: InferenceSettings) -> list[tuple[int, int]]:
    """The network input size ``(h, w)`` of an image of ``size`` for each test ratio (mmseg's MultiScaleFlipAug)."""
    h, w = int(size[0]), int(size[1])
    sizes = []
    for ratio in settings.ratios:
        if settings.scale is not None:
            target = rescale_size((h, w), (int(settings.scale[0] * ratio), int(settings.scale[1] * ratio)))
        else:
            target = (int(h * ratio + 0.5), int(w * ratio + 0.5))
        sizes.append(align_size((max(target[0], 1), max(target[1], 1)), settings.size_divisor))
    return sizes


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: torch.Tensor,
    settings: InferenceSettings,
    *,
    device: torch.device | str | None = None,
    amp: str | None = None,
) -> torch.Tensor:
    """Class probabilities of one image, averaged over the test scales and flips of ``settings``.

    Args:
        model: A segmentor (it is put in eval mode for the call).
        image: ``[3, H, W]`` uint8 RGB at its original size (resized here per scale, in uint8 like mmseg's cv2).
        settings: Test-time settings.
        device: Where to run (default: the model's device).
        amp: ``"bf16"`` / ``"fp16"`` autocast, or None.

    Returns:
        ``[1, K, H, W]`` float32 probabilities at the original size.
    """
    if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
        raise ValueError(f"expected a uint8 [3, H, W] image, got {image.dtype} {tuple(image.shape)}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    size = tuple(image.shape[-2:])
    mean = torch.tensor(settings.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(settings.std, device=device).view(1, -1, 1, 1)
    image = image.to(device)[None]
    total = None
    for target in scaled_sizes(size, settings):
        x = image if target == size else TF.resize(image, list(target), InterpolationMode.BILINEAR, antialias=False)
        x = (x.float() - mean) / std
        with autocast_context(device, amp):
            probs = inference(
                model,
                x,
                mode=settings.mode,
                crop_size=settings.crop_size,
                stride=settings.stride,
                flip=settings.flip,
                out_size=size,
            ).float()
        total = probs if total is None else total + probs
    assert total is not None
    return total / len(settings.ratios)


# ---------------------------------------------------------------------- dataset evaluation
def _single(batch: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    image, mask = batch[0]
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


def _percent(result: dict[str, Any], class_names: Sequence[str]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    metrics = {key: 100.0 * float(result[key]) for key in ("mIoU", "mAcc", "aAcc")}
    per_class = [
        {"class": name, "IoU": 100.0 * iou, "Acc": 100.0 * acc}
        for name, iou, acc in zip(class_names, result["IoU"].tolist(), result["Acc"].tolist())
    ]
    return metrics, per_class


@torch.no_grad()
def evaluate_segmentor(
    model: nn.Module,
    dataset: Dataset,
    settings: InferenceSettings,
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    dist: DistInfo | None = None,
    amp: str | None = None,
    workers: int = 0,
    ignore_index: int = IGNORE_INDEX,
    keep_examples: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """mIoU / mAcc / aAcc (percent) and per-class IoU / Acc of ``model`` on ``dataset``.

    Every process evaluates its shard (:class:`~crossformer_vision.engine.EvalShardSampler`: every image exactly once
    over all processes); the ``[4, K]`` intersection / union / prediction / label areas are summed over processes
    before any division, so the result does not depend on the number of processes.

    Args:
        model: The segmentor (restored to its previous train / eval mode afterwards).
        dataset: Yields ``(uint8 [3, H, W] image, [H, W] mask)`` at the original size (no transforms).
        settings: Test-time settings.
        num_classes: K.
        class_names: Names for the per-class results (default ``"0" ... "K-1"``).
        dist: Process placement (default: one CPU process).
        amp: Autocast dtype, or None.
        workers: Data-loader workers.
        ignore_index: Label excluded from the metrics.
        keep_examples: Also return this process's first N ``(image [H, W, 3] uint8, prediction, ground truth)``.
        progress: Show a progress bar (main process).

    Returns:
        ``{"metrics": {"mIoU", "mAcc", "aAcc", "num_images"}, "per_class": [{"class", "IoU", "Acc"}], "table": str,
        "areas": [4, K] tensor, "examples": [...]}``.
    """
    dist = dist or DistInfo()
    loader = DataLoader(
        dataset,
        batch_size=1,
        sampler=EvalShardSampler(len(dataset), dist.rank, dist.world_size),  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=_single,
    )
    metric = SegmentationMetric(num_classes, ignore_index, class_names)
    examples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    was_training = model.training
    model.eval()
    bar = None
    if progress and dist.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(loader), desc="evaluating", unit="img", dynamic_ncols=True, leave=False)
    try:
        for image, mask in loader:
            pred = predict_probs(model, image, settings, device=dist.device, amp=amp).argmax(dim=1)[0]
            metric.update(pred, mask.to(pred.device).long())
            if len(examples) < keep_examples:
                examples.append((image.permute(1, 2, 0).numpy(), pred.cpu().numpy(), mask.numpy()))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    count = torch.tensor([metric.num_images], dtype=torch.int64, device=dist.device)
    result = metric.compute(reduce_fn=all_reduce_sum, device=dist.device)
    num_images = int(all_reduce_sum(count).item())
    metrics, per_class = _percent(result, metric.class_names)
    metrics["num_images"] = num_images
    areas = metric.areas.clone()
    return {
        "metrics": metrics,
        "per_class": per_class,
        "table": metric.table(result),
        "areas": areas,
        "examples": examples,
    }


def majority_baseline(
    train_set: Dataset, val_set: Dataset, num_classes: int, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """The trivial baseline: the class with the most training pixels, predicted everywhere on ``val_set``.

    Both sets must be :class:`~crossformer_vision.data.SegmentationDataset` s (their ``load`` gives raw masks).

    Returns:
        ``{"class": name, "index": k, "metrics": {"mIoU", "mAcc", "aAcc"} (percent), "table": str}``.
    """
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for i in range(len(train_set)):
        labels = train_set.load(i)[1].as_subclass(torch.Tensor).reshape(-1).long()
        labels = labels[labels != train_set.ignore_index]
        counts += torch.bincount(labels, minlength=num_classes)[:num_classes]
    majority = int(counts.argmax())
    metric = SegmentationMetric(num_classes, val_set.ignore_index, class_names)
    for i in range(len(val_set)):
        mask = val_set.load(i)[1].as_subclass(torch.Tensor).long()
        metric.update(torch.full_like(mask, majority), mask)
    result = metric.compute()
    metrics, _ = _percent(result, metric.class_names)
    return {"class": metric.class_names[majority], "index": majority, "metrics": metrics, "table": metric.table(result)}


# ---------------------------------------------------------------------- loading models
def _run_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A saved run config on top of today's defaults (runs from before a new option still load)."""
    return merge_config(DEFAULTS, raw, "the run's config")


def _strip_compile_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    prefix = "_orig_mod."
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}


def _read_classes(run_dir: Path) -> list[str] | None:
    path = run_dir / "classes.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _meta_json(meta: dict[str, str], key: str) -> Any:
    """A JSON metadata entry; None when absent, empty or ``null`` (files converted without class names)."""
    text = meta.get(key)
    return json.loads(text) if text else None


def _meta_classes(meta: dict[str, str]) -> list[str] | None:
    names = _meta_json(meta, "classes")
    return list(names) if isinstance(names, list) and all(isinstance(n, str) for n in names) else None


def _model_from_run(
    cfg: dict[str, Any],
    state: dict[str, torch.Tensor],
    class_names: Sequence[str] | None,
    palette: Sequence[Sequence[int]] | None = None,
) -> Segmentor:
    state = _strip_compile_prefix(state)
    if "decode_head.conv_seg.weight" not in state:
        raise ValueError("not segmentation weights: decode_head.conv_seg.weight is missing")
    num_classes = state["decode_head.conv_seg.weight"].shape[0]
    if class_names is not None and len(class_names) != num_classes:
        class_names = None
    model = build_model(cfg, num_classes, class_names=class_names, palette=palette, load_backbone_weights=False)
    model.load_state_dict(state)
    return model.eval()


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"cannot read {path}: the safetensors file is corrupted or truncated ({err})") from None


def load_segmentor(
    checkpoint: str | os.PathLike, *, lda_rule: str | None = None, trusted: bool = False
) -> tuple[Segmentor, dict[str, Any]]:
    """A segmentor in eval mode from any of:

    * a run directory of ``crossformer seg train`` (its ``final.safetensors``, else its latest checkpoint), a
      ``checkpoints/step-*`` directory, its ``final.safetensors`` or ``best.safetensors``;
    * a file written by ``crossformer seg convert`` (safetensors with the mmseg key layout and metadata);
    * an official mmseg checkpoint (``.pth``; the LDA rule follows the family unless ``lda_rule`` is given).

    Returns:
        ``(model, info)``: ``info`` has ``kind`` (``"run"`` / ``"mmseg"``), ``name``, ``class_names`` (None when
        unknown), ``palette`` and ``config`` (the run's config, None for mmseg files).
    """
    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint file or run directory: {path}")
    if path.is_dir() and (path / "final.safetensors").is_file():
        path = path / "final.safetensors"
    if path.is_dir():
        ckpt = load_training_checkpoint(path)
        run_dir = Path(ckpt["path"]).parent.parent
        cfg = _run_config(ckpt["config"])
        model = _model_from_run(cfg, ckpt["model"], _read_classes(run_dir))
        return _run_info(model, cfg, str(ckpt["path"]), lda_rule)
    meta = _metadata(path) if path.suffix == ".safetensors" else {}
    if meta.get("task") == "segmentation" and meta.get("kind") == RUN_KIND:
        cfg = _run_config(json.loads(meta["config"]))
        palette = _meta_json(meta, "palette")
        model = _model_from_run(cfg, load_file(str(path)), _meta_classes(meta), palette)
        return _run_info(model, cfg, str(path), lda_rule)
    if path.suffix == ".safetensors" and (path.parent / "config.yaml").is_file() and meta.get("task") != "segmentation":
        cfg = _run_config(yaml.safe_load((path.parent / "config.yaml").read_text()))
        model = _model_from_run(cfg, load_file(str(path)), _read_classes(path.parent))
        return _run_info(model, cfg, str(path), lda_rule)
    rule = lda_rule or meta.get("lda_rule") or None
    model = load_mmseg_checkpoint(path, lda_rule=rule, trusted=trusted)
    names = _meta_classes(meta)  # None (absent, or ``null`` in older files): unknown, numbered where shown
    if names is not None and len(names) == model.num_classes:
        model.class_names = names
    palette = _meta_json(meta, "palette")
    if palette and len(palette) == model.num_classes:
        model.palette = [tuple(c) for c in palette]
    return model, _info(model, MMSEG_KIND, None, source=str(path))


def _run_info(
    model: Segmentor, cfg: dict[str, Any], source: str, lda_rule: str | None
) -> tuple[Segmentor, dict[str, Any]]:
    """A trained run's model keeps the LDA rule it was trained with: another ``lda_rule`` is refused, not ignored."""
    own = getattr(model, "lda_rule", None)
    if lda_rule is not None and lda_rule != own:
        raise ValueError(
            f"--lda-rule {lda_rule} applies to official mmseg checkpoints; {source} is a trained run whose model uses "
            + (f"the rule it was trained with ({own})" if own else "a backbone without LDA")
            + ": leave --lda-rule out"
        )
    return model, _info(model, RUN_KIND, cfg, source=source)


def _info(model: Segmentor, kind: str, cfg: dict[str, Any] | None, source: str) -> dict[str, Any]:
    return {
        "kind": kind,
        "name": getattr(model, "name", type(model).__name__),
        "class_names": model.class_names,
        "palette": model.palette,
        "config": cfg,
        "source": source,
        "lda_rule": getattr(model, "lda_rule", None),
    }


def convert_mmseg(
    src: str | os.PathLike, dst: str | os.PathLike, *, lda_rule: str | None = None, trusted: bool = False
) -> dict[str, str]:
    """An official mmseg checkpoint -> a safetensors file that ``crossformer seg eval / predict`` load.

    The model is built and loaded first (every key checked), so a file that is written also loads. Keys keep the
    mmseg layout; the metadata records the model, the LDA rule, the class names and palette.

    Returns:
        The metadata written.
    """
    model = load_mmseg_checkpoint(src, lda_rule=lda_rule, trusted=trusted)
    meta = {
        "format": "crossformer-vision",
        "task": "segmentation",
        "kind": MMSEG_KIND,
        "model": model.name,
        "lda_rule": model.lda_rule,
        "num_classes": str(model.num_classes),
        "source": Path(src).name,
    }
    if model.class_names is not None:  # no entry when the checkpoint has no class names (never "null")
        meta["classes"] = json.dumps(model.class_names)
    if model.palette:
        meta["palette"] = json.dumps([list(c) for c in model.palette])
    atomic_save_safetensors(model.state_dict(), dst, meta)
    return meta


# ---------------------------------------------------------------------- eval / predict entry points
def _settings(
    cfg: dict[str, Any], mode: str | None, multi_scale: bool, flip: bool
) -> tuple[dict[str, Any], InferenceSettings]:
    cfg = copy.deepcopy(cfg)
    if mode is not None:
        cfg["eval"]["mode"] = mode
    if multi_scale:
        cfg["eval"]["ratios"] = list(MS_RATIOS)
    if flip:
        cfg["eval"]["flip"] = True
    return cfg, inference_settings(cfg)


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    overrides: Sequence[str] = (),
    *,
    mode: str | None = None,
    multi_scale: bool = False,
    flip: bool = False,
    lda_rule: str | None = None,
    trusted: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """mIoU / mAcc / aAcc and per-class IoU of a run or an official checkpoint on a dataset.

    The dataset and test settings are the run's (its ``data.*`` / ``eval.*``), or ADE20K validation with the official
    test pipeline for mmseg checkpoints; ``overrides`` (``data.root=... eval.mode=slide``) and the keyword arguments
    change them. Runs under ``torchrun`` (images sharded, areas summed).
    """
    model, info = load_segmentor(checkpoint, lda_rule=lda_rule, trusted=trusted)
    cfg = apply_overrides(info["config"] or DEFAULTS, overrides)
    cfg, settings = _settings(cfg, mode, multi_scale, flip)
    dist = init_distributed(cfg["train"]["device"])
    model.to(dist.device)
    _, val_set, classes = build_datasets(cfg, train=False)
    if len(classes) != model.num_classes:
        raise ValueError(
            f"the model predicts {model.num_classes} classes but the dataset has {len(classes)}; "
            "evaluate it on the dataset it was trained for (data.dataset=..., data.root=...)"
        )
    result = evaluate_segmentor(
        model,
        val_set,
        settings,
        num_classes=model.num_classes,
        class_names=model.class_names or classes,
        dist=dist,
        amp=cfg["train"]["amp"],
        workers=cfg["data"]["workers"],
        progress=progress,
    )
    result.pop("examples")
    result.pop("areas")
    return {
        **result,
        "checkpoint": str(checkpoint),
        "model": info["name"],
        "kind": info["kind"],
        "lda_rule": info["lda_rule"],
        "settings": asdict(settings),
        "is_main": dist.is_main,
    }


def save_label_png(labels: np.ndarray, path: str | os.PathLike, palette: np.ndarray) -> Path:
    """``[H, W]`` class indices as an indexed PNG (pixel value = class index, coloured by ``palette``)."""
    path = Path(path)
    if labels.max(initial=0) < 256:
        image = Image.fromarray(labels.astype(np.uint8), mode="P")
        flat = np.zeros((256, 3), dtype=np.uint8)
        flat[: min(len(palette), 256)] = palette[:256]
        image.putpalette(flat.reshape(-1).tolist())
    else:  # more than 256 classes: 16-bit grey indices
        image = Image.fromarray(labels.astype(np.uint16))
    image.save(path)
    return path


def predict_images(
    checkpoint: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    mode: str | None = None,
    multi_scale: bool = False,
    flip: bool = False,
    overrides: Sequence[str] = (),
    lda_rule: str | None = None,
    trusted: bool = False,
    device: str | None = None,
) -> list[dict[str, Any]]:
    """Segment images: for each, ``<stem>_labels.png`` (indexed PNG of class indices) and ``<stem>_overlay.png``
    (the image next to the coloured prediction) in ``output_dir``.

    Test settings are the run's ``eval.*`` (mmseg checkpoints: ADE20K's (2048, 512) keep-ratio scale, whole image).

    Returns:
        Per image: ``{"image", "labels", "overlay", "classes": {name: pixel fraction}}`` (largest first) or
        ``{"image", "error"}`` for an unreadable file.
    """
    model, info = load_segmentor(checkpoint, lda_rule=lda_rule, trusted=trusted)
    cfg = apply_overrides(info["config"] or DEFAULTS, overrides)
    cfg, settings = _settings(cfg, mode, multi_scale, flip)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    names = model.class_names or [str(i) for i in range(model.num_classes)]
    palette = np.asarray(model.palette if model.palette else make_palette(model.num_classes), dtype=np.uint8)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    results = []
    for path in image_paths(inputs):
        try:
            array = read_image(path)
        except ValueError as err:
            results.append({"image": str(path), "error": str(err)})
            continue
        image = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        labels = predict_probs(model, image, settings, device=dev).argmax(dim=1)[0].cpu().numpy()
        stem = path.stem
        while stem in used:
            stem += "_"
        used.add(stem)
        label_path = save_label_png(labels, out / f"{stem}_labels.png", palette)
        overlay_path = save_overlays([array], [labels], None, out / f"{stem}_overlay.png", palette, mean=None, std=None)
        counts = np.bincount(labels.reshape(-1), minlength=len(names))
        order = np.argsort(-counts)
        fractions = {names[k]: round(float(counts[k] / labels.size), 4) for k in order if counts[k]}
        results.append(
            {"image": str(path), "labels": str(label_path), "overlay": str(overlay_path), "classes": fractions}
        )
    return results
