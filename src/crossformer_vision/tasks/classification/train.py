"""``train(cfg)``: the classification run (the paper's recipe through timm's optimizer, scheduler and mixup)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from ...engine.loading import model_metadata
from ...engine.plots import plot_confusion, plot_curves
from ...engine.run import loop_config, prepare_run
from .config import PATH_KEYS, RESUME_MUST_MATCH, resolved_lr
from .data import build_datasets, collate_for, data_config
from .evaluate import evaluate_classifier, per_class_accuracy
from .model import build_classifier

__all__ = ["train"]


def _criterion(cfg: dict[str, Any], mixup: Mixup | None) -> nn.Module:
    smoothing = cfg["aug"]["label_smoothing"]
    if mixup is not None:
        return SoftTargetCrossEntropy()
    if smoothing:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def _mixup(cfg: dict[str, Any], num_classes: int) -> Mixup | None:
    a = cfg["aug"]
    if not (a["mixup"] > 0 or a["cutmix"] > 0) or a["mixup_prob"] <= 0:
        return None
    return Mixup(
        mixup_alpha=a["mixup"],
        cutmix_alpha=a["cutmix"],
        prob=a["mixup_prob"],
        switch_prob=a["mixup_switch_prob"],
        mode=a["mixup_mode"],
        label_smoothing=a["label_smoothing"],
        num_classes=num_classes,
    )


def _step_fn(mixup: Mixup | None, criterion: nn.Module, device: torch.device, skipped: list):
    def step(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        skipped.extend(batch["skipped"])
        x, y = batch["images"], batch["labels"]
        if mixup is not None and x.shape[0] % 2:  # timm's mixup pairs samples: drop one after a skipped image
            x, y = x[:-1], y[:-1]
        if x.shape[0] == 0:  # every image of the batch was unreadable: keep DDP in step with a zero loss
            return sum(p.sum() * 0.0 for p in model.parameters()), 0
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if mixup is not None:
            x, y = mixup(x, y)
        return criterion(model(x), y), x.shape[0]

    return step


def scheduler_factory(cfg: dict[str, Any], world_size: int, **extra: Any) -> Callable:
    """The Trainer's ``scheduler_fn(optimizer, steps_per_epoch)``: timm's scheduler of ``cfg["sched"]`` (name,
    epochs, warm-up), stepped every update, its warm-up start and floor scaled like the learning rate
    (:func:`resolved_lr`); ``extra``: further ``create_scheduler_v2`` arguments (``decay_epochs``, ...)."""
    s = cfg["sched"]

    def scheduler_fn(opt: torch.optim.Optimizer, steps_per_epoch: int):
        sched, _ = create_scheduler_v2(
            opt,
            sched=s["name"],
            num_epochs=s["epochs"],
            warmup_epochs=s["warmup_epochs"],
            warmup_lr=resolved_lr(s["warmup_lr"], cfg, world_size),
            min_lr=resolved_lr(s["min_lr"], cfg, world_size),
            step_on_epochs=False,
            updates_per_epoch=steps_per_epoch,
            **extra,
        )
        return sched

    return scheduler_fn


def train(cfg: dict[str, Any], resume: str | Path | None = None, force_resume: bool = False) -> dict[str, Any]:
    """Train, evaluate and report; returns the run's results (every process returns them).

    Writes into ``train.output_dir``: ``config.yaml``, ``checkpoints/step-*`` (exact resume), ``metrics.jsonl``,
    ``best.safetensors`` (best top-1), ``final.safetensors``, ``results.json`` (with per-class accuracy),
    ``confusion.png`` and ``curves.png``.
    """
    t = cfg["train"]
    if t["batch_size"] < 1:
        raise ValueError(f"train.batch_size must be >= 1, got {t['batch_size']}")
    run = prepare_run(cfg, "classification", resume=resume, force_resume=force_resume, must_match=RESUME_MUST_MATCH)
    dist = run.dist

    # class names first (they fix the head), then the model, then transforms from its pretrained config
    probe_cfg = data_config(cfg)
    _, _, classes = build_datasets(cfg, probe_cfg, train=False)
    model = build_classifier(cfg, num_classes=len(classes)).to(dist.device)
    dcfg = data_config(cfg, getattr(model, "pretrained_cfg", None))
    train_ds, val_ds, classes = build_datasets(cfg, dcfg, train=True)
    meta = model_metadata(
        "classification",
        cfg["model"]["name"],
        _architecture_args(cfg),
        classes,
        cfg,
        path_keys=PATH_KEYS,
        data_config={k: list(v) if isinstance(v, tuple) else v for k, v in dcfg.items()},
    )

    lr = resolved_lr(cfg["optim"]["lr"], cfg, dist.world_size)
    o = cfg["optim"]
    fused = {"fused": True} if o["fused"] and o["name"].lower() in ("adam", "adamw") else {}
    optimizer = create_optimizer_v2(
        model, opt=o["name"], lr=lr, weight_decay=o["weight_decay"], betas=tuple(o["betas"]), eps=o["eps"], **fused
    )
    scheduler_fn = scheduler_factory(cfg, dist.world_size)

    ema = None
    if t["ema"]:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=t["ema_decay"])
    mixup = _mixup(cfg, len(classes))
    skipped: list = []
    train_model: nn.Module = torch.compile(model) if cfg["model"]["compile"] else model
    last_confusion: dict[str, Any] = {}

    def evaluate_fn(m: nn.Module) -> dict[str, float]:
        metrics, confusion = evaluate_classifier(
            m, val_ds, len(classes), dist, batch_size=t["batch_size"], workers=cfg["data"]["workers"], amp=t["amp"]
        )
        last_confusion["latest"] = confusion
        return metrics

    trainer = run.trainer(
        model=train_model,
        optimizer=optimizer,
        scheduler_fn=scheduler_fn,
        train_dataset=train_ds,
        collate_fn=collate_for(train_ds),
        global_batch=t["batch_size"] * dist.world_size,
        step_fn=_step_fn(mixup, _criterion(cfg, mixup), dist.device, skipped),
        evaluate_fn=evaluate_fn,
        loop=loop_config(cfg),
        ema=ema,
        primary_metric="top1",
        model_meta=meta,
    )
    metrics = run.fit(trainer)
    if "latest" not in last_confusion:  # resumed a finished run: nothing was trained, evaluate the weights anyway
        metrics = evaluate_fn(model)
    files = _warn_skipped(skipped, dist.distributed)
    confusion = last_confusion["latest"]
    result = run.finish(
        model, meta, steps=trainer.global_step, metrics=metrics, skipped=files,
        per_class=per_class_accuracy(confusion, classes),
    )  # fmt: skip
    if dist.is_main:
        plot_confusion(
            confusion, classes, run.run_dir / "confusion.png",
            title=f"{cfg['model']['name']}: top-1 {metrics.get('top1', 0):.2f}%",
        )  # fmt: skip
        plot_curves(run.run_dir, run.run_dir / "curves.png", val_keys=("top1", "top5"))
    return result


def _architecture_args(cfg: dict[str, Any]) -> dict[str, Any]:
    """The model arguments that shape the network (``model.kwargs``; drop path only changes training)."""
    return {k: v for k, v in (cfg["model"]["kwargs"] or {}).items() if "drop" not in k}


def _warn_skipped(skipped: list[tuple[str, str]], distributed: bool) -> int:
    """Warn once about unreadable training images (each file with its own reason); returns how many files."""
    if not skipped:
        return 0
    reasons: dict[str, str] = {}
    for path, reason in skipped:
        reasons.setdefault(str(path), str(reason))
    first = sorted(reasons)[0]
    warnings.warn(
        f"{len(reasons)} unreadable training image(s) were skipped ({len(skipped)} time(s) in all"
        f"{' on this process' if distributed else ''}), e.g. {first}: {reasons[first]}",
        stacklevel=3,
    )
    return len(reasons)
