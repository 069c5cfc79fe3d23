"""COCO box / mask AP with the official protocol (pycocotools, or faster-coco-eval), for single and multi-process runs.

Usage in an evaluation loop::

    evaluator = CocoEvaluator.from_dataset(val_set, iou_types=("bbox", "segm"), gather_fn=all_gather_objects)
    for images, targets in loader:
        evaluator.update(model(images), targets)
    metrics = evaluator.evaluate()          # {"bbox/AP": ..., "bbox/AP50": ..., "segm/AP": ..., ...}
    print(evaluator.per_class_table("bbox"))
    evaluator.write_results("results_bbox.json", "bbox")   # accepted by the official COCO tools / server

* Predictions are the torchvision detectors' output (labels ``1..K``, boxes ``x1, y1, x2, y2`` in input pixels, soft
  masks ``[N, 1, H, W]``). Results carry the original category ids, ``x, y, w, h`` boxes and RLE masks (mask
  threshold 0.5). If the dataset resized the image (``target["size"] != target["orig_size"]``), boxes and masks are
  mapped back to the original image first.
* Distributed: each process calls ``update`` on its share; ``evaluate`` gathers all results through ``gather_fn``
  before scoring (every process gets the same numbers). ``gather_fn`` is either ``f(obj) -> list`` (one entry per
  process) or ``torch.distributed.all_gather_object`` itself. An image seen by several processes (a padding
  sampler) is counted once.
* Only the images that were evaluated are scored (``params.imgIds``), with a warning when that is fewer than the GT
  holds, so a partial run never reads as a low AP.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["COCO_METRIC_NAMES", "CocoEvaluator", "masks_to_rle", "predictions_to_coco"]

#: The first six numbers of COCOeval.stats, in order.
COCO_METRIC_NAMES: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_ALL_STATS = (*COCO_METRIC_NAMES, "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_TYPES = ("bbox", "segm")
BACKENDS = ("pycocotools", "faster_coco_eval")


def _coco_classes(backend: str) -> tuple[type, type]:
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        return COCO, COCOeval_faster
    raise ValueError(f"unknown COCO backend {backend!r}; expected one of {BACKENDS}")


def masks_to_rle(masks: Tensor) -> list[dict[str, Any]]:
    """``[N, H, W]`` bool -> compressed RLEs with ``counts`` as str (JSON-serialisable)."""
    from pycocotools import mask as mask_utils

    array = np.asfortranarray(masks.permute(1, 2, 0).to(torch.uint8).cpu().numpy())
    rles = mask_utils.encode(array)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def predictions_to_coco(
    prediction: Mapping[str, Tensor],
    image_id: int,
    label_to_cat_id: Mapping[int, int],
    *,
    iou_types: Sequence[str] = ("bbox",),
    scale: tuple[float, float] | None = None,
    orig_size: tuple[int, int] | None = None,
    mask_threshold: float = 0.5,
) -> dict[str, list[dict[str, Any]]]:
    """One image's detections as COCO results, per IoU type.

    Args:
        prediction: ``boxes [N, 4]`` (x1, y1, x2, y2), ``scores [N]``, ``labels [N]`` (1..K), and for ``segm``
            ``masks [N, 1, H, W]`` (soft or binary).
        image_id: the GT image id.
        label_to_cat_id: label -> original category id.
        iou_types: ``"bbox"`` and / or ``"segm"``.
        scale: ``(sy, sx)`` from the prediction's pixels to the original image's (None: no rescaling).
        orig_size: ``(H, W)`` of the original image; masks are resized to it when they differ.
        mask_threshold: binarisation threshold of soft masks (mmdet's ``mask_thr_binary`` 0.5).

    Returns:
        ``{"bbox": [{"image_id", "category_id", "bbox": [x, y, w, h], "score"}], "segm": [... "segmentation": RLE]}``.
    """
    labels = prediction["labels"].tolist()
    unknown = sorted({label for label in labels if label not in label_to_cat_id})
    if unknown:
        raise ValueError(f"image {image_id}: predicted labels {unknown} have no category id in {dict(label_to_cat_id)}")
    cat_ids = [label_to_cat_id[label] for label in labels]
    scores = prediction["scores"].tolist()
    out: dict[str, list[dict[str, Any]]] = {}
    if "bbox" in iou_types:
        boxes = prediction["boxes"].detach().float().cpu().clone()
        if scale is not None:
            boxes[:, 0::2] *= scale[1]
            boxes[:, 1::2] *= scale[0]
        boxes[:, 2:] -= boxes[:, :2]
        out["bbox"] = [
            {"image_id": image_id, "category_id": c, "bbox": b, "score": s}
            for c, b, s in zip(cat_ids, boxes.tolist(), scores)
        ]
    if "segm" in iou_types:
        if "masks" not in prediction:
            raise ValueError(f"image {image_id}: 'segm' evaluation needs 'masks' in the predictions (Mask R-CNN)")
        masks = prediction["masks"].detach().float().cpu()
        masks = masks[:, 0] if masks.ndim == 4 else masks
        if orig_size is not None and tuple(masks.shape[-2:]) != tuple(orig_size) and len(masks):
            masks = F.interpolate(masks[:, None], size=tuple(orig_size), mode="bilinear", align_corners=False)[:, 0]
        rles = masks_to_rle(masks >= mask_threshold) if len(masks) else []
        out["segm"] = [
            {"image_id": image_id, "category_id": c, "segmentation": r, "score": s}
            for c, r, s in zip(cat_ids, rles, scores)
        ]
    return out


def _gather(gather_fn: Callable[..., Any] | None, obj: Any, world_size: int | None) -> list[Any]:
    if gather_fn is None:
        return [obj]
    try:
        params = inspect.signature(gather_fn).parameters.values()
        required = sum(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)
    except (TypeError, ValueError):
        required = 1
    if required >= 2:  # torch.distributed.all_gather_object(object_list, obj) style: fills the list in place
        if world_size is None:
            import torch.distributed as dist

            world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        out: list[Any] = [None] * world_size
        gather_fn(out, obj)
        return out
    return list(gather_fn(obj))


class CocoEvaluator:
    """Accumulates detections and scores them with the COCO protocol.

    Args:
        coco_gt: the GT instances json (path), its parsed dict, or a ``COCO`` object.
        iou_types: ``("bbox",)``, ``("segm",)`` or both.
        label_to_cat_id: label -> category id (the dataset's); default: sorted GT category ids get labels 1..K.
        class_names: names by label - 1 (default: the GT categories' names).
        gather_fn: collects a picklable object from every process (see the module docstring); None = one process.
        world_size: for ``all_gather_object``-style ``gather_fn`` (default: ``torch.distributed``'s).
        backend: ``"pycocotools"`` (the reference) or ``"faster_coco_eval"`` (same numbers, faster).
        mask_threshold: binarisation threshold for soft masks.
    """

    def __init__(
        self,
        coco_gt: str | os.PathLike | Mapping | Any,
        *,
        iou_types: Sequence[str] = ("bbox",),
        label_to_cat_id: Mapping[int, int] | None = None,
        class_names: Sequence[str] | None = None,
        gather_fn: Callable[..., Any] | None = None,
        world_size: int | None = None,
        backend: str = "pycocotools",
        mask_threshold: float = 0.5,
    ):
        iou_types = tuple(iou_types)
        if not iou_types or any(t not in IOU_TYPES for t in iou_types):
            raise ValueError(f"iou_types must be a non-empty subset of {IOU_TYPES}, got {iou_types}")
        self._coco_cls, self._eval_cls = _coco_classes(backend)
        self.backend = backend
        self.iou_types = iou_types
        self.coco_gt = self._load_gt(coco_gt)
        cats = sorted(self.coco_gt.getCatIds())
        self.label_to_cat_id = dict(label_to_cat_id) if label_to_cat_id else {i + 1: c for i, c in enumerate(cats)}
        stray = sorted(set(self.label_to_cat_id.values()) - set(cats))
        if stray:
            raise ValueError(f"label_to_cat_id maps to category ids {stray} that the GT does not have ({cats})")
        cat_names = {c["id"]: c.get("name", str(c["id"])) for c in self.coco_gt.loadCats(cats)}
        self.class_names = (
            list(class_names)
            if class_names
            else [cat_names[self.label_to_cat_id[k]] for k in sorted(self.label_to_cat_id)]
        )
        self.gather_fn = gather_fn
        self.world_size = world_size
        self.mask_threshold = mask_threshold
        self.stats: dict[str, list[float]] = {}
        self.per_class: dict[str, dict[str, float]] = {}
        self.summaries: dict[str, str] = {}
        self.reset()

    @classmethod
    def from_dataset(cls, dataset: Any, **kwargs: Any) -> CocoEvaluator:
        """An evaluator for a :class:`crossformer_vision.data.CocoDetection` (its json, category mapping, names)."""
        kwargs.setdefault("label_to_cat_id", dataset.label_to_cat_id)
        kwargs.setdefault("class_names", dataset.class_names)
        return cls(dataset.ann_file, **kwargs)

    def _load_gt(self, coco_gt: Any) -> Any:
        if isinstance(coco_gt, (str, os.PathLike)):
            path = Path(coco_gt)
            if not path.is_file():
                raise FileNotFoundError(f"COCO GT file {str(path)!r} not found")
            coco_gt = json.loads(path.read_text())
        if isinstance(coco_gt, Mapping):
            gt = self._coco_cls()
            gt.dataset = copy.deepcopy(dict(coco_gt))
            gt.dataset.setdefault("annotations", [])
            with contextlib.redirect_stdout(io.StringIO()):
                gt.createIndex()
            return gt
        if hasattr(coco_gt, "getCatIds") and hasattr(coco_gt, "dataset"):
            return coco_gt
        raise TypeError(f"coco_gt must be a path, a COCO dict or a COCO object, got {type(coco_gt).__name__}")

    def reset(self) -> None:
        """Forget the accumulated detections."""
        self._results: dict[int, dict[str, list[dict[str, Any]]]] = {}

    @property
    def image_ids(self) -> list[int]:
        """Images this process has evaluated."""
        return list(self._results)

    def update(self, predictions: Sequence[Mapping[str, Tensor]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add a batch: the detector's outputs and the dataset's targets (for ``image_id``, ``size``, ``orig_size``).

        ``targets`` may also be plain image ids.
        """
        if len(predictions) != len(targets):
            raise ValueError(f"got {len(predictions)} predictions for {len(targets)} targets")
        for prediction, target in zip(predictions, targets):
            if isinstance(target, Mapping):
                image_id = int(target["image_id"])
                size = tuple(int(v) for v in target["size"]) if "size" in target else None
                orig = tuple(int(v) for v in target["orig_size"]) if "orig_size" in target else None
            else:
                image_id, size, orig = int(target), None, None
            if image_id not in self.coco_gt.imgs:
                raise ValueError(f"image id {image_id} is not in the GT annotations")
            scale = None
            if size is not None and orig is not None and size != orig:
                scale = (orig[0] / size[0], orig[1] / size[1])
            self._results[image_id] = predictions_to_coco(
                prediction,
                image_id,
                self.label_to_cat_id,
                iou_types=self.iou_types,
                scale=scale,
                orig_size=orig,
                mask_threshold=self.mask_threshold,
            )

    def gather(self) -> dict[int, dict[str, list[dict[str, Any]]]]:
        """Results of all processes, image by image (an image evaluated twice counts once)."""
        merged: dict[int, dict[str, list[dict[str, Any]]]] = {}
        for part in _gather(self.gather_fn, self._results, self.world_size):
            for image_id, results in part.items():
                merged.setdefault(image_id, results)
        return merged

    def results(self, iou_type: str = "bbox", merged: Mapping[int, Any] | None = None) -> list[dict[str, Any]]:
        """COCO results list for one IoU type (all processes' results if ``merged`` is given)."""
        if iou_type not in self.iou_types:
            raise ValueError(f"iou_type {iou_type!r} was not evaluated; this evaluator has {self.iou_types}")
        source = self._results if merged is None else merged
        return [r for image_id in sorted(source) for r in source[image_id][iou_type]]

    def write_results(self, path: str | os.PathLike, iou_type: str = "bbox") -> Path:
        """Write this process's results as the JSON list the official COCO tools accept (``loadRes``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.results(iou_type)))
        return path

    def _load_results(self, results: list[dict[str, Any]]) -> Any:
        if results:
            with contextlib.redirect_stdout(io.StringIO()):
                return self.coco_gt.loadRes(copy.deepcopy(results))
        dt = self._coco_cls()  # loadRes refuses an empty list; no detections is a valid (zero) result
        dt.dataset = {"images": list(self.coco_gt.dataset["images"]), "categories": self.coco_gt.dataset["categories"]}
        dt.dataset["annotations"] = []
        with contextlib.redirect_stdout(io.StringIO()):
            dt.createIndex()
        return dt

    def evaluate(self) -> dict[str, float]:
        """Gather, score and return ``{"<iou_type>/<metric>": value}`` for AP, AP50, AP75, APs, APm, APl.

        Values are in ``[0, 1]``; ``-1`` where the GT has no object of that size (the COCO convention). The full
        12 COCO numbers are kept in ``stats``, per-class AP in ``per_class``, the printed summary in ``summaries``.
        """
        merged = self.gather()
        image_ids = sorted(merged)
        if not image_ids:
            raise ValueError("no images were evaluated: call update() with predictions first")
        total = len(self.coco_gt.getImgIds())
        if len(image_ids) < total:
            warnings.warn(
                f"COCO evaluation on {len(image_ids)} of the {total} GT images (the ones given to update())",
                stacklevel=2,
            )
        metrics: dict[str, float] = {}
        for iou_type in self.iou_types:
            coco_dt = self._load_results(self.results(iou_type, merged))
            coco_eval = self._eval_cls(self.coco_gt, coco_dt, iou_type)
            coco_eval.params.imgIds = image_ids
            buffer = io.StringIO()
            with contextlib.redirect_stdout(buffer):
                coco_eval.evaluate()
                coco_eval.accumulate()
                coco_eval.summarize()
            self.summaries[iou_type] = buffer.getvalue()
            stats = [float(v) for v in coco_eval.stats[: len(_ALL_STATS)]]
            self.stats[iou_type] = stats
            self.per_class[iou_type] = self._per_class_ap(coco_eval)
            metrics.update({f"{iou_type}/{name}": value for name, value in zip(COCO_METRIC_NAMES, stats)})
        return metrics

    def _per_class_ap(self, coco_eval: Any) -> dict[str, float]:
        """AP (IoU 0.50:0.95, all areas, 100 detections) per class; NaN for classes without GT."""
        precision = np.asarray(coco_eval.eval["precision"])  # [T, R, K, A, M]
        cat_ids = list(coco_eval.params.catIds)
        out = {}
        for label in sorted(self.label_to_cat_id):
            k = cat_ids.index(self.label_to_cat_id[label])
            p = precision[:, :, k, 0, -1]
            p = p[p > -1]
            out[self.class_names[label - 1]] = float(p.mean()) if p.size else float("nan")
        return out

    def per_class_table(self, iou_type: str = "bbox") -> str:
        """The per-class AP of the last :meth:`evaluate` as a Markdown table (AP in percent)."""
        if iou_type not in self.per_class:
            raise ValueError(f"no {iou_type!r} results yet: call evaluate() first")
        rows = [f"| class | {iou_type} AP |", "|---|---|"]
        for name, ap in self.per_class[iou_type].items():
            rows.append(f"| {name} | {'n/a' if np.isnan(ap) else f'{100 * ap:.1f}'} |")
        return "\n".join(rows)
