"""``train(cfg)``: iteration-based segmentation training (mmseg's ADE20K recipes) through the shared engine.

The recipe is mmseg's: AdamW with parameters named ``*norm*`` (and position tables) excluded from weight decay
(``paramwise_cfg=dict(custom_keys={'norm': dict(decay_mult=0.)})``), a poly schedule per iteration whose first
iterations are scaled by a linear warm-up (mmcv's ``PolyLrUpdaterHook``), the auxiliary FCN loss weighted 0.4,
SyncBatchNorm under DDP on GPUs. Evaluation (mIoU / mAcc / aAcc over the validation set, sharded over processes)
runs every ``eval.every`` iterations and at the end.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...data.segmentation import check_pairs, collate
from ...engine.loading import model_metadata
from ...engine.plots import plot_curves
from ...engine.run import loop_config, prepare_run
from .config import PATH_KEYS, RESUME_MUST_MATCH, build_datasets, build_model, inference_settings
from .evaluate import evaluate_segmentor
from .model import Segmentor, palette_of
from .visualize import save_overlays

__all__ = ["build_optimizer", "param_groups", "poly_warmup_factor", "train"]


def poly_warmup_factor(
    iters: int, *, power: float = 1.0, min_lr_ratio: float = 0.0, warmup_iters: int = 0, warmup_ratio: float = 1e-6
) -> Callable[[int], float]:
    """mmcv's ``poly`` policy with ``warmup='linear'``, as a factor of the base lr for ``LambdaLR``.

    Iteration ``i`` (0-based) trains with ``base_lr * f(i)``, where the poly value is
    ``p(i) = (1 - r) * (1 - i / iters) ** power + r`` (``r = min_lr / base_lr``) and, during the warm-up,
    ``f(i) = p(i) * (1 - (1 - i / warmup_iters) * (1 - warmup_ratio))`` (the warm-up scales the poly value, it does
    not replace it), else ``f(i) = p(i)``.
    """
    if iters < 1:
        raise ValueError(f"sched.iters must be >= 1, got {iters}")
    if warmup_iters < 0 or not 0 < warmup_ratio <= 1:
        raise ValueError(f"need warmup_iters >= 0 and 0 < warmup_ratio <= 1, got {warmup_iters}, {warmup_ratio}")

    def factor(i: int) -> float:
        value = (1.0 - min_lr_ratio) * (1.0 - min(i, iters) / iters) ** power + min_lr_ratio
        if i < warmup_iters:
            value *= 1.0 - (1.0 - i / warmup_iters) * (1.0 - warmup_ratio)
        return value

    return factor


def param_groups(model: Segmentor, weight_decay: float, norm_decay_mult: float = 0.0) -> list[dict[str, Any]]:
    """Two AdamW groups: the parameters of ``model.no_weight_decay()`` (names containing ``norm``, position tables)
    get ``weight_decay * norm_decay_mult``, all others (biases and head BatchNorms included, as in mmseg)
    ``weight_decay``."""
    no_decay = model.no_weight_decay()
    decay, other = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (other if name in no_decay else decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": other, "weight_decay": weight_decay * norm_decay_mult},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(model: Segmentor, cfg: dict[str, Any], device: torch.device) -> torch.optim.Optimizer:
    o = cfg["optim"]
    fused = {"fused": True} if o["fused"] and device.type in ("cpu", "cuda") else {}
    return torch.optim.AdamW(
        param_groups(model, o["weight_decay"], o["norm_decay_mult"]),
        lr=o["lr"],
        betas=tuple(o["betas"]),
        eps=o["eps"],
        **fused,
    )


def _micro_batch(cfg: dict[str, Any], world_size: int) -> int:
    t = cfg["train"]
    total, accum = t["global_batch_size"], t["accum_steps"]
    if total < 1 or accum < 1 or total % (world_size * accum):
        raise ValueError(
            f"train.global_batch_size={total} must be a positive multiple of processes x accum_steps = "
            f"{world_size} x {accum}"
        )
    return total // (world_size * accum)


def _sync_batchnorm(model: Segmentor, cfg: dict[str, Any], distributed: bool, device: torch.device) -> Segmentor:
    if cfg["model"]["norm"] != "syncbn" or not distributed:
        return model  # one process: BatchNorm computes the same statistics
    if device.type != "cuda":
        warnings.warn(
            "model.norm=syncbn: SyncBatchNorm needs GPUs; on CPU every process normalises its own batch (BatchNorm)",
            stacklevel=2,
        )
        return model
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def _broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's BatchNorm statistics everywhere (what DDP's next forward does anyway), so that a sharded evaluation
    scores one model, the one rank 0 saves, also where per-process BatchNorm let the statistics drift apart."""
    for buffer in model.buffers():
        torch.distributed.broadcast(buffer, src=0)


def train(cfg: dict[str, Any], resume: str | Path | None = None, force_resume: bool = False) -> dict[str, Any]:
    """Train, evaluate and report; returns the run's results (every process returns them).

    Writes into ``train.output_dir``: ``config.yaml``, ``checkpoints/step-*`` (exact resume), ``metrics.jsonl``,
    ``best.safetensors`` (best mIoU), ``final.safetensors`` (weights + metadata to rebuild the model),
    ``results.json``, ``per_class.txt``, ``curves.png`` and ``overlays.png``.
    """
    t, s, e = cfg["train"], cfg["sched"], cfg["eval"]
    run = prepare_run(cfg, "segmentation", resume=resume, force_resume=force_resume, must_match=RESUME_MUST_MATCH)
    dist = run.dist
    micro = _micro_batch(cfg, dist.world_size)
    settings = inference_settings(cfg)
    train_set, val_set, classes = build_datasets(cfg)
    assert train_set is not None
    check_pairs(val_set, what="validation set")  # before training, not at the final evaluation
    check_pairs(train_set, what="training set", drop=True)

    model = build_model(cfg, len(classes), class_names=classes)
    palette = palette_of(model)
    architecture = {**cfg["model"], "backbone": {**cfg["model"]["backbone"], "weights": None, "pretrained": False}}
    meta = model_metadata(
        "segmentation", cfg["model"]["name"], architecture, classes, cfg, path_keys=PATH_KEYS, palette=palette.tolist()
    )
    model = _sync_batchnorm(model, cfg, dist.distributed, dist.device).to(dist.device)
    optimizer = build_optimizer(model, cfg, dist.device)
    factor = poly_warmup_factor(
        s["iters"],
        power=s["power"],
        min_lr_ratio=s["min_lr"] / cfg["optim"]["lr"] if cfg["optim"]["lr"] else 0.0,
        warmup_iters=s["warmup_iters"],
        warmup_ratio=s["warmup_ratio"],
    )

    def scheduler_fn(opt: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    device = dist.device

    def step_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        images, masks = (x.to(device, non_blocking=True) for x in batch)
        return m(images, masks)["loss"], images.shape[0]

    last_eval: dict[str, Any] = {}

    def evaluate_fn(m: nn.Module) -> dict[str, float]:
        if dist.distributed:
            _broadcast_buffers(m)
        result = evaluate_segmentor(
            m,
            val_set,
            settings,
            num_classes=len(classes),
            class_names=classes,
            dist=dist,
            amp=t["amp"],
            workers=cfg["data"]["workers"],
            keep_examples=e["overlays"],
            progress=t["progress"],
        )
        last_eval.update(result)
        return result["metrics"]

    # iteration-based: enough passes over the data for sched.iters iterations; max_steps stops mid-pass
    steps_per_epoch = len(train_set) // (micro * dist.world_size) // t["accum_steps"]
    epochs = math.ceil(s["iters"] / steps_per_epoch) if steps_per_epoch else 1
    train_model: nn.Module = torch.compile(model) if cfg["model"]["compile"] else model
    trainer = run.trainer(
        model=train_model,
        optimizer=optimizer,
        scheduler_fn=scheduler_fn,
        train_dataset=train_set,
        collate_fn=collate,
        global_batch=micro * dist.world_size,
        step_fn=step_fn,
        evaluate_fn=evaluate_fn,
        loop=loop_config(
            cfg,
            epochs=epochs,
            eval_every=0,
            eval_every_steps=e["every"],
            max_steps=s["iters"],
            length_keys=("sched.iters",),
        ),
        primary_metric="mIoU",
        model_meta=meta,
    )
    metrics = run.fit(trainer)
    if not last_eval:  # resumed a finished run: nothing was trained, evaluate the weights anyway
        metrics = evaluate_fn(model)
    result = run.finish(model, meta, steps=trainer.global_step, metrics=metrics, per_class=last_eval["per_class"])
    if dist.is_main:
        (run.run_dir / "per_class.txt").write_text(last_eval["table"] + "\n")
        plot_curves(run.run_dir, run.run_dir / "curves.png", val_keys=("mIoU", "mAcc", "aAcc"))
        if last_eval["examples"]:
            images, preds, gts = zip(*last_eval["examples"])
            save_overlays(images, preds, gts, run.run_dir / "overlays.png", palette, mean=None, std=None)
    return {**result, "table": last_eval["table"]}
