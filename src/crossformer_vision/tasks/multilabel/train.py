"""``train(cfg)``: a multi-label run (the CSRA paper's recipe through timm's optimizer and scheduler, on the shared
engine: DDP, exact resume, AMP)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from timm.loss import AsymmetricLossMultiLabel
from timm.optim import create_optimizer_v2
from torch import nn

from ...engine.loading import model_metadata
from ...engine.plots import plot_curves
from ...engine.run import loop_config, prepare_run
from ..classification.config import resolved_lr
from ..classification.train import _architecture_args, _warn_skipped, scheduler_factory
from .config import PATH_KEYS, RESUME_MUST_MATCH
from .data import build_datasets, collate_for, data_config
from .evaluate import evaluate_multilabel, masked_bce
from .metrics import IGNORE
from .model import build_multilabel, head_args

__all__ = ["criterion", "param_groups", "train"]


def criterion(cfg: dict[str, Any]):
    """``loss(logits [B, K], targets [B, K] in {1, 0, -1})``: BCE (the paper) or timm's asymmetric loss; ignored
    entries count in neither."""
    c = cfg["loss"]
    if c["name"] == "bce":
        return masked_bce
    if c["name"] != "asl":
        raise ValueError(f"loss.name must be 'bce' or 'asl', got {c['name']!r}")
    asl = AsymmetricLossMultiLabel(gamma_neg=c["gamma_neg"], gamma_pos=c["gamma_pos"], clip=c["clip"])

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # timm's ASL sums independent per-entry terms: the kept entries as one row give the masked sum exactly, and
        # dividing by their count keeps the scale (and the learning rate) of a mean BCE
        keep = targets != IGNORE
        return asl(logits[keep][None], targets[keep][None]) / keep.sum().clamp_min(1)

    return loss


def param_groups(model: nn.Module, cfg: dict[str, Any], lr: float) -> list[dict[str, Any]]:
    """Backbone and head parameter groups, the head at ``lr x optim.head_lr_scale`` (the paper: 10)."""
    head = [p for n, p in model.named_parameters() if n.startswith("head.") and p.requires_grad]
    body = [p for n, p in model.named_parameters() if not n.startswith("head.") and p.requires_grad]
    return [{"params": body, "lr": lr}, {"params": head, "lr": lr * cfg["optim"]["head_lr_scale"]}]


def _step_fn(loss_fn, device: torch.device, skipped: list):
    def step(model: nn.Module, batch: dict[str, Any]) -> tuple[torch.Tensor, int]:
        skipped.extend(batch["skipped"])
        labels = batch["labels"]
        if not isinstance(labels, dict) or batch["images"].shape[0] == 0:  # every image unreadable: keep DDP in step
            return sum(p.sum() * 0.0 for p in model.parameters()), 0
        x = batch["images"].to(device, non_blocking=True)
        y = labels["target"].to(device, non_blocking=True)
        return loss_fn(model(x).float(), y), x.shape[0]

    return step


def train(cfg: dict[str, Any], resume: str | Path | None = None, force_resume: bool = False) -> dict[str, Any]:
    """Train, evaluate and report; returns the run's results (every process returns them).

    Writes into ``train.output_dir``: ``config.yaml``, ``checkpoints/step-*``, ``metrics.jsonl``, ``best.safetensors``
    (best mAP), ``final.safetensors``, ``results.json`` (metrics with mAP, CP / CR / CF1, OP / OR / OF1 and their
    top-3 versions; per-class AP) and ``curves.png``.
    """
    t, o, s = cfg["train"], cfg["optim"], cfg["sched"]
    if t["batch_size"] < 1:
        raise ValueError(f"train.batch_size must be >= 1, got {t['batch_size']}")
    loss_fn = criterion(cfg)
    run = prepare_run(cfg, "multilabel", resume=resume, force_resume=force_resume, must_match=RESUME_MUST_MATCH)
    dist = run.dist
    _, _, classes = build_datasets(cfg, data_config(cfg), train=False)
    model = build_multilabel(cfg, num_classes=len(classes)).to(dist.device)
    dcfg = data_config(cfg, getattr(model, "pretrained_cfg", None))
    train_ds, val_ds, classes = build_datasets(cfg, dcfg, train=True)
    meta = model_metadata(
        "multilabel",
        cfg["model"]["name"],
        {"backbone": _architecture_args(cfg), "head": head_args(cfg)},
        classes,
        cfg,
        path_keys=PATH_KEYS,
        data_config={k: list(v) if isinstance(v, tuple) else v for k, v in dcfg.items()},
    )
    lr = resolved_lr(o["lr"], cfg, dist.world_size)
    extra = {"momentum": o["momentum"]} if o["name"].lower() in ("sgd", "momentum") else {"betas": tuple(o["betas"])}
    if o["name"].lower() in ("adam", "adamw"):
        extra["eps"] = o["eps"]
        if o["fused"]:
            extra["fused"] = True
    optimizer = create_optimizer_v2(
        param_groups(model, cfg, lr), opt=o["name"], lr=lr, weight_decay=o["weight_decay"], **extra
    )

    scheduler_fn = scheduler_factory(cfg, dist.world_size, decay_epochs=s["decay_epochs"], decay_rate=s["decay_rate"])

    skipped: list = []
    train_model: nn.Module = torch.compile(model) if cfg["model"]["compile"] else model
    latest: dict[str, Any] = {}
    e = cfg["eval"]

    def evaluate_fn(m: nn.Module) -> dict[str, float]:
        metrics, per_class = evaluate_multilabel(
            m, val_ds, classes, dist, batch_size=t["batch_size"], workers=cfg["data"]["workers"], amp=t["amp"],
            threshold=e["threshold"], topk=e["topk"],
        )  # fmt: skip
        latest["per_class"] = per_class
        return metrics

    trainer = run.trainer(
        model=train_model,
        optimizer=optimizer,
        scheduler_fn=scheduler_fn,
        train_dataset=train_ds,
        collate_fn=collate_for(train_ds),
        global_batch=t["batch_size"] * dist.world_size,
        step_fn=_step_fn(loss_fn, dist.device, skipped),
        evaluate_fn=evaluate_fn,
        loop=loop_config(cfg),
        primary_metric="mAP",
        model_meta=meta,
    )
    metrics = run.fit(trainer)
    if "per_class" not in latest or "mAP" not in metrics:  # resumed a finished run / evaluation switched off
        metrics = evaluate_fn(model)
    files = _warn_skipped(skipped, dist.distributed)
    result = run.finish(
        model, meta, steps=trainer.global_step, metrics=metrics, skipped=files,
        head=head_args(cfg), per_class=latest["per_class"],
    )  # fmt: skip
    if dist.is_main:
        plot_curves(run.run_dir, run.run_dir / "curves.png", val_keys=("mAP", "CF1", "OF1"))
    return result
