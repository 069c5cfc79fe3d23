"""The shared training loop: accumulation, AMP, clipping, EMA, DDP, exact resume, progress, NaN guard.

Tasks (classification, segmentation, detection) provide a ``step_fn(model, batch) -> (loss, num_images)`` and an
``evaluate_fn(model) -> {metric: value}``; everything else is here.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import CheckpointManager, check_output_dir, load_training_checkpoint
from .distributed import DistInfo, all_reduce_sum
from .metrics_logger import MetricsLogger
from .rng import get_rng_state, seed_step, set_rng_state
from .sampling import ResumableSampler, SeededDataset

#: What every checkpoint's ``state.pt`` holds (:meth:`Trainer._train_state`).
_STATE_KEYS = ("optimizer", "scheduler", "scaler", "rng", "epoch", "step_in_epoch", "global_step", "global_batch")

__all__ = ["LoopConfig", "Trainer", "TrainingDivergedError", "TrainingInterrupted", "autocast_context"]


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left as it was."""


class TrainingInterrupted(Exception):
    """Training was stopped with Ctrl-C (SIGINT); the message names the last complete checkpoint and how to resume."""


#: Mixed-precision names and their autocast dtypes.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoopConfig:
    """How the loop runs (the task's recipe decides the values).

    Attributes:
        epochs: Passes over the training set.
        accum_steps: Micro-batches per optimizer step.
        clip_grad: Max global gradient norm (None: no clipping).
        amp: ``"bf16"``, ``"fp16"`` or None (float32).
        log_every: Optimizer steps between train log records.
        eval_every: Epochs between evaluations (the last epoch is always evaluated; 0: only the last).
        eval_every_steps: Optimizer steps between evaluations, for iteration-based schedules (0: off). Adds to
            ``eval_every``; the end of training is always evaluated, and a step is never evaluated twice.
        ckpt_every: Optimizer steps between checkpoints (0: at the end of every epoch only).
        keep_last: Checkpoints kept.
        max_steps: Stop after this many optimizer steps in all (None: run all epochs).
        progress: Show a progress bar (main process).
        length_keys: The config keys that set the run's length, named when a resumed run has nothing left to train.
    """

    epochs: int = 1
    accum_steps: int = 1
    clip_grad: float | None = None
    amp: str | None = None
    log_every: int = 10
    eval_every: int = 1
    eval_every_steps: int = 0
    ckpt_every: int = 0
    keep_last: int = 3
    max_steps: int | None = None
    progress: bool = True
    length_keys: tuple[str, ...] = ("sched.epochs", "train.max_steps")

    #: The run-config key behind each field, for error messages.
    CONFIG_KEYS: ClassVar[dict[str, str]] = {
        "epochs": "sched.epochs",
        "accum_steps": "train.accum_steps",
        "log_every": "train.log_every",
        "eval_every": "train.eval_every",
        "eval_every_steps": "eval.every (segmentation)",
        "ckpt_every": "train.ckpt_every",
        "keep_last": "train.keep_last",
        "max_steps": "train.max_steps (sched.iters for segmentation)",
    }

    def __post_init__(self) -> None:
        """Refuse values the loop cannot run with, naming the config key."""
        lowest = {"max_steps": 1, "epochs": 1, "accum_steps": 1, "log_every": 1, "keep_last": 1}
        lowest.update(eval_every=0, eval_every_steps=0, ckpt_every=0)
        for name, low in lowest.items():
            value = getattr(self, name)
            if value is None and name == "max_steps":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                what = "a whole number" + (f" >= {low}" if low else " >= 0")
                raise ValueError(f"{self.CONFIG_KEYS[name]} must be {what}, got {value!r}")
        keys = self.length_keys
        if isinstance(keys, str) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise ValueError(f"LoopConfig.length_keys must be a non-empty tuple of config keys, got {keys!r}")
        self.length_keys = tuple(keys)
        if self.amp is not None and self.amp not in AMP_DTYPES:
            raise ValueError(f"train.amp must be 'bf16', 'fp16' or null, got {self.amp!r}")


def autocast_context(device: torch.device, amp: str | None) -> contextlib.AbstractContextManager:
    if amp is None:
        return contextlib.nullcontext()
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be 'bf16', 'fp16' or null, got {amp!r}")
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[amp])


class Trainer:
    """Runs ``LoopConfig.epochs`` epochs of ``step_fn`` over ``train_dataset`` with everything around it.

    Args:
        model: The model (wrapped in DDP here when the run is distributed).
        optimizer: Its optimizer.
        scheduler_fn: ``(optimizer, steps_per_epoch) -> scheduler``: a timm scheduler (``step_update(num_updates)``)
            or a ``torch.optim.lr_scheduler`` stepped after every optimizer update.
        train_dataset: Map-style dataset; samples are drawn by :class:`ResumableSampler`.
        collate_fn: Batch collation.
        global_batch: Images per optimizer micro-step over all processes (per-process batch x world size).
        step_fn: ``(model, batch) -> (mean loss, number of images)``.
        evaluate_fn: ``(model) -> metrics``; run by every process (it shards and reduces itself).
        dist: Process placement.
        run_dir: Output directory (checkpoints in ``run_dir/checkpoints``).
        config: The resolved run config (saved with every checkpoint).
        loop: Loop settings.
        ema: Optional ``timm.utils.ModelEmaV3``; evaluation then also reports the EMA model.
        primary_metric: Metric whose best value saves ``best.safetensors`` (higher is better).
        num_workers: Data-loader workers.
        seed: Seed of the data order and augmentations.
        on_epoch_end: Optional callback ``(epoch, metrics)``.
        model_meta: The model file metadata (:func:`~crossformer_vision.engine.loading.model_metadata`), written
            with every checkpoint and into ``best.safetensors`` so that each file of the run rebuilds its model.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler_fn: Callable[[torch.optim.Optimizer, int], Any],
        train_dataset: Dataset,
        collate_fn: Callable | None,
        global_batch: int,
        step_fn: Callable[[nn.Module, Any], tuple[torch.Tensor, int]],
        evaluate_fn: Callable[[nn.Module], Mapping[str, float]] | None,
        dist: DistInfo,
        run_dir: str | Path,
        config: Mapping[str, Any],
        loop: LoopConfig,
        ema: Any | None = None,
        primary_metric: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
        on_epoch_end: Callable[[int, Mapping[str, float]], None] | None = None,
        model_meta: Mapping[str, str] | None = None,
    ):
        self.model_meta = dict(model_meta or {})
        self.model = model
        self.optimizer = optimizer
        self.dist = dist
        self.loop = loop
        self.config = dict(config)
        self.step_fn = step_fn
        self.evaluate_fn = evaluate_fn
        self.ema = ema
        self.primary_metric = primary_metric
        self.on_epoch_end = on_epoch_end
        self.run_dir = Path(run_dir)
        self.seed = seed
        self.sampler = ResumableSampler(
            len(train_dataset), global_batch, dist.rank, dist.world_size, shuffle=True, seed=seed
        )
        self.loader = DataLoader(
            SeededDataset(train_dataset),
            batch_size=self.sampler.local_batch,
            sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=collate_fn,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(seed),  # the loader never touches the global RNG
            drop_last=False,
        )
        self.steps_per_epoch = self.sampler.batches_per_epoch // loop.accum_steps
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"one epoch has {self.sampler.batches_per_epoch} micro-batches, fewer than accum_steps="
                f"{loop.accum_steps}; lower the batch size or accumulation"
            )
        self.scheduler = scheduler_fn(optimizer, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(dist.device.type, enabled=loop.amp == "fp16")
        self.ddp = model
        if dist.distributed:
            self.ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None
            )
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", loop.keep_last)
        self.logger = MetricsLogger(self.run_dir, enabled=dist.is_main)
        self.global_step = 0
        self.epoch = 0
        self.step_in_epoch = 0
        self.best: float | None = None
        self.last_metrics: dict[str, float] = {}
        self._evaluated_step: int | None = None

    # ------------------------------------------------------------------ state
    def _train_state(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": get_rng_state(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "best": self.best,
            "evaluated_step": self._evaluated_step,
            "world_size": self.dist.world_size,
            "global_batch": self.sampler.global_batch,
        }

    def save_checkpoint(self) -> Path | None:
        if not self.dist.is_main:
            return None
        return self.ckpt.save(
            self.global_step,
            self.model.state_dict(),
            self._train_state(),
            self.config,
            ema_state=self.ema.module.state_dict() if self.ema is not None else None,
            meta={"epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "model_meta": self.model_meta},
        )

    def resume(self, path: str | Path) -> None:
        """Restore everything from a checkpoint directory (or a run directory: its latest checkpoint)."""
        ckpt = load_training_checkpoint(path)
        state = ckpt["state"]
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(
                f"cannot resume from {ckpt['path']}: its state.pt lacks {', '.join(missing)} (not a checkpoint of this "
                "training loop); resume from another checkpoint or start a fresh run"
            )
        if state["global_batch"] != self.sampler.global_batch:
            raise ValueError(
                f"cannot resume {ckpt['path']} exactly: it was trained with a global batch of {state['global_batch']} "
                f"images per micro-step, this run has {self.sampler.global_batch} (batch size x processes must match)"
            )
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None and "ema" in ckpt:
            self.ema.module.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.global_step, self.best = state["global_step"], state["best"]
        self._evaluated_step = state.get("evaluated_step")
        self.logger.truncate_after(self.global_step)

    # ------------------------------------------------------------------ loop
    def _global_loss(self, loss: torch.Tensor, n: int) -> tuple[float, float]:
        """The loss over every process's images, and the factor that weights this process's share of the gradient.

        Each process's ``loss`` is a mean over its own ``n`` images and DDP averages the gradients over processes,
        which weights every process alike. When the counts differ (an unreadable image was skipped on one of them),
        ``loss * n * world_size / N`` (N: the images of all processes) gives the gradient of the mean over all N
        images, as one process with the whole global batch computes it. The counts travel with the all-reduce of
        the loss that the divergence check makes anyway.
        """
        scale = 1.0
        if self.dist.distributed:
            sums = torch.stack([loss.detach().float() * n, loss.new_tensor(float(n), dtype=torch.float32)])
            all_reduce_sum(sums)
            weighted, total = sums.tolist()  # one device-to-host copy per micro-step, as before
            value = weighted / total if total > 0 else weighted
            if total > 0 and n * self.dist.world_size != total:
                scale = n * self.dist.world_size / total
        else:
            value = loss.detach().float().item()
        if not math.isfinite(value):
            last = self.ckpt.latest()
            kept = f"the last good checkpoint {last} is intact" if last else "no checkpoint was written yet"
            raise TrainingDivergedError(
                f"the loss became {value} at epoch {self.epoch}, step {self.global_step}: training stopped and {kept}. "
                "Lower the learning rate, enable gradient clipping (optim.clip_grad) or use bf16 instead of fp16."
            )
        return value, scale

    def _optimizer_step(self) -> None:
        if self.loop.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.loop.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.global_step += 1
        self.step_in_epoch += 1
        if hasattr(self.scheduler, "step_update"):  # timm schedulers
            self.scheduler.step_update(num_updates=self.global_step)
        else:  # torch.optim.lr_scheduler, stepped once per optimizer update
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def evaluate(self) -> dict[str, float]:
        if self.evaluate_fn is None:
            return {}
        metrics = dict(self.evaluate_fn(self.model))
        if self.ema is not None:
            metrics.update({f"ema_{k}": v for k, v in self.evaluate_fn(self.ema.module).items()})
        return metrics

    def _evaluate_and_log(self) -> None:
        self.last_metrics = self.evaluate()
        self._evaluated_step = self.global_step
        if self.last_metrics:
            self.logger.log({"split": "val", "epoch": self.epoch, "step": self.global_step, **self.last_metrics})
            self._track_best()

    def fit(self, resume: str | Path | None = None) -> dict[str, float]:
        """Train (from scratch or from ``resume``) and return the last evaluation's metrics."""
        check_output_dir(self.run_dir, resume)
        if resume is not None:
            self.resume(resume)
        else:
            self.logger.truncate_after(-1)  # a fresh run: forget records of a run that never checkpointed
        loop = self.loop
        total = loop.epochs * self.steps_per_epoch
        if loop.max_steps is not None:
            total = min(total, loop.max_steps)
        if resume is not None and (self.global_step >= total or self.epoch >= loop.epochs):
            return self._resume_at_the_end(total)
        try:
            return self._fit(total)
        except KeyboardInterrupt:
            raise self._interrupted() from None

    def _resume_at_the_end(self, total: int) -> dict[str, float]:
        """A resumed checkpoint with no step left to train.

        A run that finished (``final.safetensors`` written) or a checkpoint beyond this run's end is a mistake: the
        run length was not raised. A checkpoint at the end of a run that did not finish (it stopped in the final
        evaluation, or after it) goes on to the final evaluation: here when the checkpoint was taken before it (a
        periodic checkpoint on the last step), else by the task (``fit`` returns no metrics when it trained nothing).
        """
        loop = self.loop
        finished = (self.run_dir / "final.safetensors").is_file()
        if finished or self.global_step > total or self.epoch > loop.epochs:
            keys = loop.length_keys
            raise ValueError(
                f"nothing left to train: the checkpoint is at step {self.global_step} (epoch {self.epoch}), and this "
                f"run ends at step {total} ({loop.epochs} epochs of {self.steps_per_epoch} steps"
                + (f", max_steps {loop.max_steps}" if loop.max_steps is not None else "")
                + f"){' and has finished' if finished else ''}; raise {' (or '.join(keys)}{')' * (len(keys) - 1)} "
                "to train further"
            )
        try:
            if self._evaluated_step != self.global_step:
                self._evaluate_and_log()
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self.epoch, self.last_metrics)
                self.save_checkpoint()
        except KeyboardInterrupt:
            raise self._interrupted() from None
        finally:
            self.logger.close()
        return self.last_metrics

    def _interrupted(self) -> TrainingInterrupted:
        last = self.ckpt.latest()
        if last is None:
            return TrainingInterrupted(
                f"training interrupted at step {self.global_step}: no checkpoint was written yet; run the same "
                "command again to start over"
            )
        return TrainingInterrupted(
            f"training interrupted at step {self.global_step}: the last complete checkpoint is {last}; continue "
            f"with the same command and --resume {self.run_dir}"
        )

    def _fit(self, total: int) -> dict[str, float]:
        loop = self.loop
        bar = None
        if loop.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, initial=self.global_step, unit="step", dynamic_ncols=True)
        window_images, window_time, window_loss, window_n = 0, time.perf_counter(), 0.0, 0
        try:
            while self.epoch < loop.epochs and self.global_step < total:
                self.model.train()
                self.sampler.set_epoch(self.epoch, start_batch=self.step_in_epoch * loop.accum_steps)
                micro = 0
                # a checkpoint taken on the epoch's last step resumes with nothing left to run in that epoch
                batches = self.loader if self.step_in_epoch < self.steps_per_epoch else ()
                for batch in batches:
                    last_micro = micro % loop.accum_steps == loop.accum_steps - 1
                    sync = contextlib.nullcontext() if last_micro or not self.dist.distributed else self.ddp.no_sync()
                    seed_step(self.seed, self.global_step, micro % loop.accum_steps, self.dist.rank)
                    with sync:
                        with autocast_context(self.dist.device, loop.amp):
                            loss, n = self.step_fn(self.ddp, batch)
                        value, share = self._global_loss(loss, n)
                        if share != 1.0:
                            loss = loss * share
                        self.scaler.scale(loss / loop.accum_steps).backward()
                    window_loss += value
                    window_n += 1
                    window_images += n * self.dist.world_size
                    micro += 1
                    if not last_micro:
                        continue
                    self._optimizer_step()
                    if bar is not None:
                        bar.update(1)
                    if self.global_step % loop.log_every == 0 or self.step_in_epoch == self.steps_per_epoch:
                        elapsed = time.perf_counter() - window_time
                        record = {
                            "split": "train",
                            "epoch": self.epoch,
                            "step": self.global_step,
                            "loss": window_loss / max(window_n, 1),
                            "lr": self.optimizer.param_groups[0]["lr"],
                            "img_per_s": window_images / max(elapsed, 1e-9),
                        }
                        self.logger.log(record)
                        if bar is not None:
                            bar.set_description(f"epoch {self.epoch + 1}/{loop.epochs}")
                            bar.set_postfix(
                                loss=f"{record['loss']:.4f}",
                                lr=f"{record['lr']:.2e}",
                                img_s=f"{record['img_per_s']:.0f}",
                            )
                        window_images, window_time, window_loss, window_n = 0, time.perf_counter(), 0.0, 0
                    every = loop.eval_every_steps
                    if every and self.global_step % every == 0 and self.global_step < total:  # the end: below
                        eval_start = time.perf_counter()
                        self._evaluate_and_log()  # before the checkpoint, so that it records the best metric
                        self.model.train()
                        window_time += time.perf_counter() - eval_start  # not part of the training throughput
                    if loop.ckpt_every and self.global_step % loop.ckpt_every == 0:
                        self.save_checkpoint()
                    if self.step_in_epoch >= self.steps_per_epoch or self.global_step >= total:
                        break
                finished_epoch = self.step_in_epoch >= self.steps_per_epoch
                if finished_epoch:
                    self.epoch += 1
                    self.step_in_epoch = 0
                last = self.epoch >= loop.epochs or self.global_step >= total
                due = finished_epoch and loop.eval_every and self.epoch % loop.eval_every == 0
                if last or due:
                    if self._evaluated_step != self.global_step:  # not already evaluated by eval_every_steps
                        self._evaluate_and_log()
                    if self.on_epoch_end is not None:
                        self.on_epoch_end(self.epoch, self.last_metrics)
                if finished_epoch or last:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
            self.logger.close()
        return self.last_metrics

    def _track_best(self) -> None:
        if self.primary_metric is None or self.primary_metric not in self.last_metrics:
            return
        value = self.last_metrics[self.primary_metric]
        if self.best is None or value > self.best:
            self.best = value
            if self.dist.is_main:
                from ..models.io import atomic_save_safetensors

                atomic_save_safetensors(
                    self.model.state_dict(),
                    self.run_dir / "best.safetensors",
                    {
                        **self.model_meta,
                        "metric": self.primary_metric,
                        "value": str(value),
                        "steps": str(self.global_step),
                    },
                )
