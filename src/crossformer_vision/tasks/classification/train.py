"""``train(cfg)``: the classification run (the paper's recipe through timm's optimizer, scheduler and mixup)."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn

from ...engine import (
    LoopConfig,
    Trainer,
    config_diff,
    init_distributed,
    load_training_checkpoint,
    save_config,
    seed_everything,
    set_deterministic,
)
from ...engine.checkpoint import check_resume_target
from ...engine.json_safe import strict_json_dumps
from ...engine.plots import plot_confusion, plot_curves
from ...models.io import atomic_save_safetensors
from .config import DROP_PATH, resolved_lr
from .data import build_datasets, collate_for, data_config
from .evaluate import evaluate_classifier, per_class_accuracy
from .model import build_classifier

__all__ = ["RESUME_MUST_MATCH", "train"]

#: Config entries a resumed run must share with its checkpoint (anything else, e.g. sched.epochs, may change).
RESUME_MUST_MATCH = (
    "model.",
    "data.dataset",
    "data.img_size",
    "data.batch_transforms",
    "data.train_limit",
    "train.batch_size",
    "train.accum_steps",
    "train.seed",
    "aug.",
    "optim.",
)


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


def _check_resume(cfg: dict[str, Any], resume: str | Path, force: bool) -> None:
    ckpt_cfg = load_training_checkpoint(resume)["config"]
    diff = config_diff(ckpt_cfg, cfg, RESUME_MUST_MATCH)
    if diff and not force:
        raise ValueError(
            "the run configuration differs from the checkpoint's, so the resumed run would not continue the same "
            "training:\n  " + "\n  ".join(diff) + "\nUse the checkpoint's values (its config.yaml), or pass "
            "--force-resume to continue with the new ones."
        )


def train(cfg: dict[str, Any], resume: str | Path | None = None, force_resume: bool = False) -> dict[str, Any]:
    """Train, evaluate and report; returns the final metrics (every process returns them)."""
    t = cfg["train"]
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    dist = init_distributed(t["device"])
    seed_everything(t["seed"])  # the same initial weights on every process
    if t["deterministic"]:
        set_deterministic(True, dist.device)
    run_dir = Path(t["output_dir"])
    if resume is not None:
        check_resume_target(run_dir, resume)  # before anything is written into run_dir
        _check_resume(cfg, resume, force_resume)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")

    # class names first (they fix the head), then the model, then transforms from its pretrained config
    probe_cfg = data_config(cfg)
    _, _, classes = build_datasets(cfg, probe_cfg, train=False)
    model = build_classifier(cfg, num_classes=len(classes)).to(dist.device)
    dcfg = data_config(cfg, getattr(model, "pretrained_cfg", None))
    train_ds, val_ds, classes = build_datasets(cfg, dcfg, train=True)
    if t["batch_size"] < 1:
        raise ValueError(f"train.batch_size must be >= 1, got {t['batch_size']}")

    lr = resolved_lr(cfg["optim"]["lr"], cfg, dist.world_size)
    o = cfg["optim"]
    fused = {"fused": True} if o["fused"] and o["name"].lower() in ("adam", "adamw") else {}
    optimizer = create_optimizer_v2(
        model, opt=o["name"], lr=lr, weight_decay=o["weight_decay"], betas=tuple(o["betas"]), eps=o["eps"], **fused
    )
    s = cfg["sched"]

    def scheduler_fn(opt: torch.optim.Optimizer, steps_per_epoch: int):
        sched, _ = create_scheduler_v2(
            opt,
            sched=s["name"],
            num_epochs=s["epochs"],
            warmup_epochs=s["warmup_epochs"],
            warmup_lr=resolved_lr(s["warmup_lr"], cfg, dist.world_size),
            min_lr=resolved_lr(s["min_lr"], cfg, dist.world_size),
            step_on_epochs=False,
            updates_per_epoch=steps_per_epoch,
        )
        return sched

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
        last_confusion.setdefault("first", confusion)
        last_confusion["latest"] = confusion
        return metrics

    trainer = Trainer(
        model=train_model,
        optimizer=optimizer,
        scheduler_fn=scheduler_fn,
        train_dataset=train_ds,
        collate_fn=collate_for(train_ds),
        global_batch=t["batch_size"] * dist.world_size,
        step_fn=_step_fn(mixup, _criterion(cfg, mixup), dist.device, skipped),
        evaluate_fn=evaluate_fn,
        dist=dist,
        run_dir=run_dir,
        config=cfg,
        loop=LoopConfig(
            epochs=s["epochs"],
            accum_steps=t["accum_steps"],
            clip_grad=o["clip_grad"],
            amp=t["amp"],
            log_every=t["log_every"],
            eval_every=t["eval_every"],
            ckpt_every=t["ckpt_every"],
            keep_last=t["keep_last"],
            max_steps=t["max_steps"],
            progress=t["progress"],
        ),
        ema=ema,
        primary_metric="top1",
        num_workers=cfg["data"]["workers"],
        seed=t["seed"],
    )
    start = time.perf_counter()
    metrics = trainer.fit(resume)
    elapsed = time.perf_counter() - start
    if skipped:
        files = sorted({path for path, _ in skipped})
        warnings.warn(
            f"{len(files)} unreadable training image(s) were skipped ({len(skipped)} time(s) in all"
            f"{' on this process' if dist.distributed else ''}), e.g. {files[0]}: {skipped[0][1]}",
            stacklevel=2,
        )
    result = {
        "metrics": metrics,
        "train_seconds": elapsed,
        "steps": trainer.global_step,
        "classes": classes,
        "is_main": dist.is_main,
    }
    if dist.is_main:
        _report(run_dir, cfg, model, classes, dcfg, metrics, last_confusion.get("latest"), elapsed)
    return result


def _report(
    run_dir: Path,
    cfg: dict[str, Any],
    model: nn.Module,
    classes: list[str],
    dcfg: dict[str, Any],
    metrics: dict[str, float],
    confusion,
    elapsed: float,
) -> None:
    meta = {
        "format": "crossformer-vision",
        "task": "classification",
        "model": cfg["model"]["name"],
        "model_kwargs": json.dumps(cfg["model"]["kwargs"]),
        "num_classes": str(len(classes)),
        "classes": json.dumps(classes),
        "data_config": json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in dcfg.items()}),
    }
    atomic_save_safetensors(model.state_dict(), run_dir / "final.safetensors", meta)
    report: dict[str, Any] = {"metrics": metrics, "train_seconds": round(elapsed, 1)}
    if confusion is not None:
        report["per_class"] = per_class_accuracy(confusion, classes)
        plot_confusion(
            confusion,
            classes,
            run_dir / "confusion.png",
            title=f"{cfg['model']['name']}: top-1 {metrics.get('top1', 0):.2f}%",
        )
    (run_dir / "results.json").write_text(strict_json_dumps(report, indent=1))
    plot_curves(run_dir, run_dir / "curves.png", val_keys=("top1", "top5"))


def default_drop_path(name: str) -> float | None:
    return DROP_PATH.get(name)
