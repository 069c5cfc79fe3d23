"""COCO evaluation of detectors (sharded over processes, gathered, scored once) and loading any detector checkpoint.

* :func:`detection_dataset` builds the training / validation set a run config describes.
* :func:`evaluate_detector` scores a model on a dataset: every process predicts its shard
  (:class:`~crossformer_vision.engine.EvalShardSampler`), :class:`CocoEvaluator` gathers the results and scores them
  with pycocotools. Metrics are COCO AP in percent (``-1``: the GT has no object of that size, the COCO convention).
* :func:`load_detector` opens a ``det train`` run (directory, ``final.safetensors``, ``best.safetensors`` or a
  training checkpoint), a ``det convert`` file, or an official mmdetection checkpoint (through
  :func:`build_detector_from_mmdet`, with a report of what transferred).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...data.coco import CocoDetection, det_demo, det_demo_dir, detection_collate, detection_transforms
from ...engine import (
    DistInfo,
    EvalShardSampler,
    all_gather_objects,
    apply_overrides,
    init_distributed,
    load_config,
    merge_config,
)
from ...engine.json_safe import strict_json_dumps
from ...engine.trainer import autocast_context
from .builders import parse_detector_name
from .coco_eval import COCO_METRIC_NAMES, CocoEvaluator
from .config import DEFAULTS, build_model, model_metadata

__all__ = [
    "COCO_CLASSES",
    "convert_mmdet_to_safetensors",
    "detection_dataset",
    "evaluate_checkpoint",
    "evaluate_detector",
    "iou_types_for",
    "load_detector",
    "predict_files",
    "save_detector",
]

#: The 80 COCO categories in id order (= mmdet's CLASSES, = labels 1..80).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def _split_files(cfg: Mapping[str, Any], split: str) -> tuple[Path, Path]:
    d = cfg["data"]
    if d["dataset"] == "det_demo":
        root = det_demo_dir()
        return root / split, root / f"instances_{split}.json"
    if d["dataset"] != "coco":
        raise ValueError(f"data.dataset must be 'coco' or 'det_demo', got {d['dataset']!r}")
    images = d["images"] if split == "train" else d["val_images"] or d["images"]
    ann = d["train_json"] if split == "train" else d["val_json"]
    if not images or not ann:
        need = "data.images, data.train_json" if split == "train" else "data.val_images (or data.images), data.val_json"
        raise ValueError(
            f"data.dataset=coco needs {need}, e.g. data.images=/data/coco/train2017 "
            "data.val_images=/data/coco/val2017 data.train_json=/data/coco/annotations/instances_train2017.json "
            "data.val_json=/data/coco/annotations/instances_val2017.json (or data.dataset=det_demo)"
        )
    return Path(images), Path(ann)


def detection_dataset(cfg: Mapping[str, Any], split: str, *, masks: bool) -> CocoDetection:
    """The ``"train"`` (flip augmentation, empty images skipped per ``data.skip_empty``) or ``"val"`` set of a run
    config, cut to ``data.{train,val}_limit`` images."""
    d = cfg["data"]
    train = split == "train"
    options: dict[str, Any] = dict(
        transforms=detection_transforms(train=train, flip_prob=cfg["aug"]["flip_prob"]),
        masks=masks,
        skip_empty=d["skip_empty"] if train else False,
    )
    if d["dataset"] == "det_demo":
        ds = det_demo(split, **options)
    else:
        images, ann = _split_files(cfg, split)
        ds = CocoDetection(images, ann, **options)
    limit = d["train_limit"] if train else d["val_limit"]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"data.{split}_limit must be >= 1 or null, got {limit}")
        ds.ids = ds.ids[:limit]
    if len(ds) == 0:
        raise ValueError(f"the {split} set {ds.ann_file} has no usable image")
    return ds


def _gt_for(dataset: CocoDetection) -> Any:
    """The GT of the images ``dataset`` holds: its json file, or the json cut to them when limited."""
    data = json.loads(Path(dataset.ann_file).read_text())
    if len(dataset.ids) == len(data["images"]):
        return dataset.ann_file
    keep = set(dataset.ids)
    data["images"] = [im for im in data["images"] if im["id"] in keep]
    data["annotations"] = [a for a in data.get("annotations", []) if a.get("image_id") in keep]
    return data


def iou_types_for(model_name: str, requested: Sequence[str] | None = None) -> tuple[str, ...]:
    """``bbox`` (+ ``segm`` for Mask R-CNN), or the requested types (``segm`` only for Mask R-CNN)."""
    det, _ = parse_detector_name(model_name)
    if requested:
        types = tuple(requested)
        if "segm" in types and det != "maskrcnn":
            raise ValueError(f"eval.iou_types: {model_name} predicts no masks, so 'segm' cannot be evaluated")
        return types
    return ("bbox", "segm") if det == "maskrcnn" else ("bbox",)


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate_detector(
    model: nn.Module,
    dataset: CocoDetection,
    dist: DistInfo | None = None,
    *,
    iou_types: Sequence[str] = ("bbox",),
    batch_size: int = 2,
    workers: int = 0,
    amp: str | None = None,
    backend: str = "pycocotools",
) -> tuple[dict[str, float], CocoEvaluator, dict[int, Any]]:
    """COCO AP of ``model`` on every image of ``dataset`` (each once over all processes).

    Returns:
        ``(metrics, evaluator, merged)``: ``{"bbox/AP": ..., "bbox/AP50": ..., ...}`` in percent (``-1``: no GT of
        that size), the evaluator (``per_class``, ``summaries``, ``stats``) and the gathered results of all
        processes by image id (write them with ``evaluator.results(iou_type, merged)``). Every process gets them.
    """
    dist = dist or DistInfo()
    gathered: dict[str, list[Any]] = {}

    def gather(obj: Any) -> list[Any]:
        gathered["parts"] = all_gather_objects(obj)
        return gathered["parts"]

    evaluator = CocoEvaluator(
        _gt_for(dataset),
        iou_types=iou_types,
        label_to_cat_id=dataset.label_to_cat_id,
        class_names=dataset.class_names,
        gather_fn=gather,
        backend=backend,
    )
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EvalShardSampler(len(dataset), dist.rank, dist.world_size),
        num_workers=workers,
        collate_fn=detection_collate,
        generator=torch.Generator(),
    )
    was_training = model.training
    model.eval()
    try:
        for images, targets in loader:
            images = [im.to(dist.device, non_blocking=True) for im in images]
            with autocast_context(dist.device, amp):
                outputs = model(images)
            outputs = [
                {k: v.float().cpu() if v.is_floating_point() else v.cpu() for k, v in o.items()} for o in outputs
            ]
            evaluator.update(outputs, targets)
    finally:
        model.train(was_training)
    raw = evaluator.evaluate()
    metrics = {k: (100.0 * v if v >= 0 else -1.0) for k, v in raw.items()}
    merged: dict[int, Any] = {}
    for part in gathered.get("parts", [evaluator._results]):
        for image_id, results in part.items():
            merged.setdefault(image_id, results)
    return metrics, evaluator, merged


def write_coco_results(evaluator: CocoEvaluator, merged: Mapping[int, Any], out_dir: str | Path) -> list[Path]:
    """``results_<iou_type>.json`` (the list the official COCO tools accept) for every evaluated IoU type."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for iou_type in evaluator.iou_types:
        path = out_dir / f"results_{iou_type}.json"
        path.write_text(json.dumps(evaluator.results(iou_type, dict(merged))))
        paths.append(path)
    return paths


def metrics_report(metrics: Mapping[str, float], evaluator: CocoEvaluator) -> dict[str, Any]:
    """Metrics, the full 12 COCO numbers and per-class AP (percent) as plain JSON values."""
    per_class = {
        t: {name: (None if ap != ap else round(100 * ap, 2)) for name, ap in evaluator.per_class[t].items()}
        for t in evaluator.iou_types
    }
    return {
        "metrics": {k: round(v, 3) for k, v in metrics.items()},
        "coco_stats": {t: [round(v, 4) for v in evaluator.stats[t]] for t in evaluator.iou_types},
        "per_class_AP": per_class,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------------------------


def save_detector(
    model: nn.Module,
    path: str | Path,
    model_cfg: Mapping[str, Any],
    class_names: Sequence[str],
    source: str = "",
) -> Path:
    """Weights plus what rebuilds the detector (``model`` config, classes) in one safetensors file."""
    from ...models.io import atomic_save_safetensors

    meta = {
        "format": "crossformer-vision",
        "task": "detection",
        "model": json.dumps(model_metadata(model_cfg)),
        "num_classes": str(len(class_names)),
        "class_names": json.dumps(list(class_names)),
        "source": source,
    }
    return atomic_save_safetensors(model.state_dict(), path, meta)


def _class_names_from_config(cfg: Mapping[str, Any]) -> list[str]:
    _, ann = _split_files(cfg, "val")
    cats = json.loads(Path(ann).read_text()).get("categories") or []
    return [str(c.get("name", c["id"])) for c in sorted(cats, key=lambda c: c["id"])]


def _find_run_config(path: Path) -> Path | None:
    """The ``config.yaml`` of a run or training-checkpoint directory, or next to a weights file."""
    folder = path if path.is_dir() else path.parent
    return folder / "config.yaml" if (folder / "config.yaml").is_file() else None


def _model_cfg(meta_model: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """The stored architecture with the command line's ``model.*`` test-time overrides (``model.min_size=...``)."""
    base = {**model_metadata(DEFAULTS["model"]), **meta_model, "backbone_weights": None, "init": None}
    return apply_overrides({"model": base}, [o for o in overrides if o.startswith("model.")])["model"]


def load_detector(
    checkpoint: str | Path,
    overrides: Sequence[str] = (),
    *,
    trusted: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """Any detector checkpoint, in eval mode on the CPU.

    Args:
        checkpoint: a ``det train`` run directory (its ``final.safetensors``, else its latest training checkpoint),
            a ``.safetensors`` from ``det train`` / ``det convert`` (or ``best.safetensors`` next to its run's
            ``config.yaml``), a training checkpoint directory, or an official mmdetection ``.pth``.
        overrides: ``model.*`` entries change test-time settings (``model.min_size=[600]``,
            ``model.detector.kwargs.box_score_thresh=0.3``); others are ignored here.
        trusted: unpickle arbitrary objects from ``.pth`` files (trusted files only).

    Returns:
        ``(model, info)`` with ``info``: ``class_names``, ``model_cfg``, ``run_config`` (None unless a run),
        ``report`` (the :class:`TransferReport` of an mmdet checkpoint, else None) and ``source``.
    """
    from safetensors import safe_open

    path = Path(checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"no such checkpoint: {path}")
    if path.is_dir() and (path / "final.safetensors").is_file():
        path = path / "final.safetensors"
    info: dict[str, Any] = {"run_config": None, "report": None, "source": str(path)}
    if not path.is_dir() and path.suffix != ".safetensors":
        return _load_mmdet(path, overrides, trusted, info)
    run_cfg_path = _find_run_config(path)
    run_cfg = info["run_config"] = load_config(DEFAULTS, run_cfg_path) if run_cfg_path is not None else None
    if path.is_dir():  # a training checkpoint (or a run whose final model is not written yet)
        from ...engine import load_training_checkpoint

        ckpt = load_training_checkpoint(path)
        run_cfg = info["run_config"] = merge_config(DEFAULTS, ckpt["config"], str(ckpt["path"]))
        state, names = ckpt["model"], _class_names_from_config(run_cfg)
        model_cfg = _model_cfg(run_cfg["model"], overrides)
        info["source"] = str(ckpt["path"])
    else:
        from safetensors.torch import load_file

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("task") == "detection":
            names = json.loads(meta["class_names"])
            model_cfg = _model_cfg(json.loads(meta["model"]), overrides)
        elif run_cfg is not None:  # best.safetensors / a checkpoint's model.safetensors: the run says what it is
            names = _class_names_from_config(run_cfg)
            model_cfg = _model_cfg(run_cfg["model"], overrides)
        else:
            raise ValueError(
                f"{path} holds no detector metadata (task={meta.get('task')!r}) and no run config.yaml is next to it; "
                "use a file written by `crossformer det train` / `det convert`, or an official mmdet .pth"
            )
        state = load_file(str(path))
    model = build_model(model_cfg, len(names), backbone_weights=False)
    model.load_state_dict(state)
    info.update(class_names=list(names), model_cfg=model_cfg)
    return model.eval(), info


def _load_mmdet(
    path: Path, overrides: Sequence[str], trusted: bool, info: dict[str, Any]
) -> tuple[nn.Module, dict[str, Any]]:
    from ...models.io import read_checkpoint
    from .weights import build_detector_from_mmdet, inspect_mmdet_checkpoint

    container = read_checkpoint(path, trusted)
    found = inspect_mmdet_checkpoint(container)
    model_cfg = _model_cfg(
        {"name": f"{found['detector']}_{found['backbone']}", "lda_rule": found["lda_rule"]}, overrides
    )
    sizes = model_cfg["min_size"]
    kwargs = dict(
        min_size=sizes if isinstance(sizes, int) else (sizes[0] if len(sizes) == 1 else tuple(sizes)),
        max_size=model_cfg["max_size"],
        mm_compat=model_cfg["mm_compat"],
        lda_rule=model_cfg["lda_rule"],
        **(model_cfg["detector"]["kwargs"] or {}),
    )
    if model_cfg["lda_rule"] != found["lda_rule"]:
        warnings.warn(
            f"model.lda_rule={model_cfg['lda_rule']!r} overrides the rule these weights were trained with "
            f"({found['lda_rule']!r}); results will differ from the official model",
            stacklevel=2,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the lda_rule warning of load_mmdet_checkpoint: given above
        model, report = build_detector_from_mmdet(container, **kwargs)
    names = report.class_names or (list(COCO_CLASSES) if found["num_classes"] == 80 else None)
    if names is None or len(names) != found["num_classes"]:
        names = [str(i) for i in range(1, found["num_classes"] + 1)]
    info.update(class_names=list(names), model_cfg=model_cfg, report=report)
    return model.eval(), info


def convert_mmdet_to_safetensors(
    src: str | Path, dst: str | Path, overrides: Sequence[str] = (), trusted: bool = False
) -> dict[str, Any]:
    """An official mmdet checkpoint as a self-describing detector ``.safetensors`` (``det eval`` / ``det predict``
    read it without mmdet); returns ``load_detector``'s info (``report`` says what transferred)."""
    if Path(src).suffix == ".safetensors":
        raise ValueError(f"{src} is already a safetensors file; convert expects an official mmdet .pth")
    model, info = load_detector(src, overrides, trusted=trusted)
    info["path"] = save_detector(model, dst, info["model_cfg"], info["class_names"], source=Path(src).name)
    return info


# ---------------------------------------------------------------------------------------------------------------------
# Command-line entry points
# ---------------------------------------------------------------------------------------------------------------------


def evaluate_checkpoint(
    checkpoint: str | Path,
    overrides: Sequence[str] = (),
    config: str | Path | None = None,
    out_dir: str | Path | None = None,
    trusted: bool = False,
) -> dict[str, Any]:
    """``det eval``: COCO AP of a checkpoint (also under ``torchrun``: the images are split over the processes).

    The data come from the run's config, else from ``config`` / the defaults, with ``overrides`` on top
    (``data.dataset=coco data.val_json=... data.val_images=...``).

    Returns:
        :func:`metrics_report`'s dict plus ``num_images``, ``report`` (what an mmdet checkpoint transferred),
        ``model`` and ``results_files``.
    """
    model, info = load_detector(checkpoint, overrides, trusted=trusted)
    base = info["run_config"] or DEFAULTS
    if config is not None:
        base = load_config(DEFAULTS, config)
    cfg = apply_overrides(copy.deepcopy(base), [o for o in overrides if not o.startswith("model.")])
    t = cfg["train"]
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    dist = init_distributed(t["device"])
    model.to(dist.device)
    dataset = detection_dataset(cfg, "val", masks=False)
    if len(dataset.class_names) != len(info["class_names"]):
        raise ValueError(
            f"the model predicts {len(info['class_names'])} classes but {dataset.ann_file} has "
            f"{len(dataset.class_names)}; evaluate it on the data it was trained for"
        )
    _warn_renamed_classes(info["class_names"], dataset.class_names, dataset.ann_file)
    metrics, evaluator, merged = evaluate_detector(
        model,
        dataset,
        dist,
        iou_types=iou_types_for(info["model_cfg"]["name"], cfg["eval"]["iou_types"]),
        batch_size=cfg["eval"]["batch_size"],
        workers=cfg["data"]["workers"],
        amp=t["amp"],
        backend=cfg["eval"]["backend"],
    )
    out = metrics_report(metrics, evaluator)
    out.update(
        num_images=len(merged),
        model=info["model_cfg"]["name"],
        checkpoint=info["source"],
        report=str(info["report"]) if info["report"] is not None else None,
        results_files=[],
    )
    if out_dir is not None and dist.is_main:
        out["results_files"] = [str(p) for p in write_coco_results(evaluator, merged, out_dir)]
        (Path(out_dir) / "metrics.json").write_text(strict_json_dumps(out, indent=1))
    out["summaries"] = dict(evaluator.summaries)
    out["is_main"] = dist.is_main
    return out


def _warn_renamed_classes(model_names: Sequence[str], data_names: Sequence[str], ann_file: Any) -> None:
    """Classes are matched by position (the k-th category of the file is the model's k-th class): say so when the
    names disagree, which usually means another label set in the same number of classes. Placeholder names
    (``"1"``, ``"2"``, ... of a checkpoint without class names) are not compared."""
    if all(str(n) == str(i + 1) for i, n in enumerate(model_names)):
        return
    differ = [(i, a, b) for i, (a, b) in enumerate(zip(model_names, data_names, strict=True)) if a != b]
    if differ:
        i, a, b = differ[0]
        warnings.warn(
            f"{len(differ)} of {len(model_names)} class names of {ann_file} differ from the model's (class {i + 1}: "
            f"{b!r} in the file, {a!r} in the model); classes are matched by position, so AP is computed as if they "
            "were the same classes",
            stacklevel=3,
        )


def predict_files(
    checkpoint: str | Path,
    inputs: Sequence[str],
    out_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    score_thresh: float = 0.3,
    device: str | None = None,
    trusted: bool = False,
) -> tuple[Path, list[Path], dict[str, str]]:
    """``det predict``: ``<out_dir>/<image>.png`` with boxes, labels, scores (and masks) plus ``predictions.json``.

    Folders are searched recursively; a file named twice is predicted once. Pictures share a base name: the later
    ones get ``_`` appended (``x.png``, ``x_.png``), as in ``seg predict``. Unreadable images are skipped (not in
    ``predictions.json``); a :class:`ValueError` when none can be read.

    Returns:
        ``(json path, image paths predicted, {unreadable image path: error message})``.
    """
    from ...data.folder import image_paths
    from .visualize import predict_and_save

    paths = image_paths(inputs)
    model, info = load_detector(checkpoint, overrides, trusted=trusted)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)
    unreadable: dict[str, str] = {}
    json_path = predict_and_save(
        model,
        paths,
        out_dir,
        class_names=info["class_names"],
        score_thresh=score_thresh,
        device=dev,
        unreadable=unreadable,
    )
    return json_path, [p for p in paths if str(p) not in unreadable], unreadable


def format_metrics_line(metrics: Mapping[str, float], iou_type: str) -> str:
    """``box AP 41.2 (AP50 62.0, AP75 44.1, APs 24.3, APm 45.0, APl 55.1)``."""
    label = {"bbox": "box", "segm": "mask"}[iou_type]

    def fmt(name: str) -> str:
        v = metrics[f"{iou_type}/{name}"]
        return "n/a" if v < 0 else f"{v:.1f}"

    rest = ", ".join(f"{n} {fmt(n)}" for n in COCO_METRIC_NAMES[1:])
    return f"{label} AP {fmt('AP')} ({rest})"
