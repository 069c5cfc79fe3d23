"""``train(cfg)``: a detection run (RetinaNet / Faster R-CNN / Mask R-CNN) through the shared engine.

The engine does the loop (DDP, AMP, accumulation, checkpoints, exact resume, NaN guard, JSONL metrics); this module
supplies the data, the detector, AdamW with mmcv's step + linear warm-up schedule (``LambdaLR`` stepped per
optimizer update), a ``step_fn`` that sums torchvision's loss dict and an ``evaluate_fn`` that runs the sharded COCO
evaluation. A finished run directory holds::

    config.yaml               the resolved configuration
    checkpoints/step-*/       the engine's training checkpoints (resume with --resume RUN_DIR)
    metrics.jsonl             training loss / lr / images per second, and COCO AP after every evaluation
    final.safetensors         the trained detector with the metadata that rebuilds it (det eval / det predict)
    best.safetensors          the weights of the best evaluation (box AP)
    results.json              final metrics, the 12 COCO numbers and per-class AP per IoU type
    results_bbox.json         detections of the last evaluation in the official COCO results format
    results_segm.json         (Mask R-CNN) the same for masks
    curves.png                loss, learning rate and AP curves
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...data.coco import detection_collate
from ...engine.loading import load_model, model_metadata
from ...engine.plots import plot_curves
from ...engine.run import loop_config, prepare_run
from .config import PATH_KEYS, RESUME_MUST_MATCH, architecture, build_model, recipe_from_config, resolved_lr
from .data import detection_dataset
from .evaluate import evaluate_detector, iou_types_for, metrics_report, write_coco_results
from .model import parse_detector_name, predicts_masks

__all__ = ["train"]

_TARGET_KEYS = ("boxes", "labels", "masks")


def param_groups(model: nn.Module, weight_decay: float, no_decay_keys: Any = ()) -> list[dict[str, Any]]:
    """The trainable parameters (frozen stages excluded) as AdamW groups: names containing one of ``no_decay_keys``
    (mmdet ``paramwise_cfg=dict(custom_keys={key: dict(decay_mult=0.)})``) without weight decay, the rest with."""
    keys = tuple(no_decay_keys or ())
    decay, other = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (other if any(k in name for k in keys) else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    return groups + [{"params": other, "weight_decay": 0.0}] if other else groups


def _step_fn(device: torch.device, loss_sums: dict[str, Tensor]):
    def step(model: nn.Module, batch: tuple[list[Tensor], list[dict[str, Any]]]) -> tuple[Tensor, int]:
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{k: t[k].to(device, non_blocking=True) for k in _TARGET_KEYS if k in t} for t in targets]
        losses = model(images, targets)
        for name, value in losses.items():  # summed without a device sync; read at evaluation time
            loss_sums[name] = loss_sums.get(name, 0.0) + value.detach().float()
        loss_sums["_count"] = loss_sums.get("_count", 0) + 1
        return sum(losses.values()), len(images)

    return step


def _load_init(model: nn.Module, init: str, log) -> None:
    """Start from whole-detector weights: an official mmdet checkpoint, or a ``det train`` run / file. Entries whose
    shape differs (another class count) keep their initialisation."""
    path = Path(init)
    if path.suffix in (".pth", ".pt", ".ckpt"):
        from ...models.io import read_checkpoint
        from .weights import load_mmdet_checkpoint

        report = load_mmdet_checkpoint(model, read_checkpoint(path), strict=False)
        log(f"model.init {path}:\n{report}")
        return
    source = load_model(path, "detection").model
    own = model.state_dict()
    state = {k: v for k, v in source.state_dict().items() if k in own and v.shape == own[k].shape}
    skipped = sorted(set(own) - set(state))
    model.load_state_dict(state, strict=False)
    log(f"model.init {path}: {len(state)} entries loaded" + (f", kept initialised: {skipped}" if skipped else ""))


def train(cfg: dict[str, Any], resume: str | Path | None = None, force_resume: bool = False) -> dict[str, Any]:
    """Train, evaluate and report; returns the run's results with ``per_class_AP`` (every process returns them)."""
    t, m = cfg["train"], cfg["model"]
    if t["batch_size"] < 1:
        raise ValueError(f"train.batch_size must be >= 1, got {t['batch_size']}")
    run = prepare_run(cfg, "detection", resume=resume, force_resume=force_resume, must_match=RESUME_MUST_MATCH)
    dist, log = run.dist, run.log

    det, _ = parse_detector_name(m["name"])
    masks = cfg["data"]["masks"] if cfg["data"]["masks"] is not None else predicts_masks(m["name"])
    if predicts_masks(m["name"]) and not masks:
        raise ValueError(f"{det} trains on instance masks: data.masks must be true (or null)")
    train_ds = detection_dataset(cfg, "train", masks=masks)
    val_ds = detection_dataset(cfg, "val", masks=False)
    classes = train_ds.class_names
    if val_ds.class_names != classes:
        raise ValueError(
            f"the training and validation sets have different categories ({len(classes)} vs "
            f"{len(val_ds.class_names)}): {train_ds.ann_file} / {val_ds.ann_file}"
        )
    iou_types = iou_types_for(m["name"], cfg["eval"]["iou_types"])

    model = build_model(m, len(classes), backbone_weights=resume is None)
    if resume is None and m["init"]:
        _load_init(model, m["init"], log)
    elif resume is None and not m["backbone_weights"] and cfg["data"]["dataset"] == "coco":
        warnings.warn(
            f"{m['name']}: no model.backbone_weights, so the backbone starts from random weights; the paper's "
            "recipe starts from ImageNet weights (model.backbone_weights=crossformer-s.pth, or 'timm' for "
            "the Swin / ResNet backbones)",
            stacklevel=2,
        )
    model.to(dist.device)
    meta = model_metadata("detection", m["name"], architecture(m), classes, cfg, path_keys=PATH_KEYS)

    lr = resolved_lr(cfg, dist.world_size)
    o = cfg["optim"]
    optimizer = torch.optim.AdamW(
        param_groups(model, o["weight_decay"], o["no_decay_keys"]),
        lr=lr,
        betas=tuple(o["betas"]),
        eps=o["eps"],
        weight_decay=o["weight_decay"],
        **({"fused": True} if o["fused"] else {}),
    )
    recipe = recipe_from_config(cfg)

    def scheduler_fn(opt: torch.optim.Optimizer, steps_per_epoch: int):
        return torch.optim.lr_scheduler.LambdaLR(opt, recipe.lr_lambda(steps_per_epoch))

    loss_sums: dict[str, Any] = {}
    last_eval: dict[str, Any] = {}

    def evaluate_fn(model_: nn.Module) -> dict[str, float]:
        metrics, evaluator, merged = evaluate_detector(
            model_,
            val_ds,
            dist,
            iou_types=iou_types,
            batch_size=cfg["eval"]["batch_size"],
            workers=cfg["data"]["workers"],
            amp=t["amp"],
            backend=cfg["eval"]["backend"],
        )
        last_eval.update(metrics=metrics, evaluator=evaluator, merged=merged)
        count = loss_sums.pop("_count", 0)
        for name in sorted(k for k in loss_sums if not k.startswith("_")):  # this process's mean since last time
            metrics[f"train_{name}"] = float(loss_sums[name]) / max(count, 1)
        loss_sums.clear()
        return metrics

    global_batch = t["batch_size"] * dist.world_size
    trainer = run.trainer(
        model=model,
        optimizer=optimizer,
        scheduler_fn=scheduler_fn,
        train_dataset=train_ds,
        collate_fn=detection_collate,
        global_batch=global_batch,
        step_fn=_step_fn(dist.device, loss_sums),
        evaluate_fn=evaluate_fn,
        loop=loop_config(cfg),
        primary_metric="bbox/AP",
        model_meta=meta,
    )
    log(
        f"{m['name']}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, {len(classes)} classes, "
        f"{len(train_ds)} training / {len(val_ds)} validation images, {trainer.steps_per_epoch} steps per epoch of "
        f"{global_batch * t['accum_steps']} images, lr {lr:.3g}"
    )
    metrics = run.fit(trainer)
    if not last_eval:  # resumed a finished run: nothing was trained, evaluate the weights anyway
        metrics = evaluate_fn(model)
    report = metrics_report(last_eval["metrics"], last_eval["evaluator"])
    skipped = sum(v for k, v in train_ds.stats.items() if k not in ("empty_images_skipped", "crowd_ignored"))
    result = run.finish(
        model,
        meta,
        steps=trainer.global_step,
        metrics={k: round(v, 4) for k, v in metrics.items()},
        skipped=skipped,
        coco_stats=report["coco_stats"],
        per_class_AP=report["per_class_AP"],
    )
    if dist.is_main:
        write_coco_results(last_eval["evaluator"], last_eval["merged"], run.run_dir)
        plot_curves(run.run_dir, run.run_dir / "curves.png", val_keys=tuple(f"{k}/AP" for k in iou_types))
    return result
