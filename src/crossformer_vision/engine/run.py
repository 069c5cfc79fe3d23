"""One run lifecycle for every task: :func:`prepare_run` -> ``Run.trainer(...).fit`` -> ``Run.finish``.

``prepare_run`` does everything that comes before the task's own work, in an order that writes nothing until every
check has passed: CPU threads, the process group, seeds, determinism, the output-directory check (one rule: a folder
that holds a run is only written by resuming that run), the resume-compatibility check, then the resolved config.
``Run.finish`` writes the two files every run ends with, in one schema for every task: ``final.safetensors`` (weights
and :func:`~crossformer_vision.engine.loading.model_metadata`) and ``results.json`` (the keys of
:data:`RESULT_KEYS`, then the task's extras).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import check_output_dir, load_training_checkpoint
from .config import config_diff, save_config
from .distributed import DistInfo, init_distributed
from .json_safe import strict_json_dumps
from .loading import save_model
from .rng import seed_everything, set_deterministic
from .trainer import LoopConfig, Trainer

__all__ = ["RESULT_KEYS", "Run", "check_output_dir", "check_resume", "loop_config", "prepare_run", "write_results"]

#: The keys every ``results.json`` (and every task's ``train`` return value) starts with.
RESULT_KEYS = ("task", "model", "classes", "steps", "train_seconds", "metrics", "skipped")


def check_resume(cfg: Mapping[str, Any], resume: str | Path, must_match: Iterable[str], force: bool) -> None:
    """Refuse to resume ``resume`` with a configuration that would not continue the same training."""
    ckpt_cfg = load_training_checkpoint(resume)["config"]
    diff = config_diff(ckpt_cfg, cfg, must_match)
    if diff and not force:
        raise ValueError(
            "the run configuration differs from the checkpoint's, so the resumed run would not continue the same "
            "training: " + "; ".join(diff) + ". Use the checkpoint's values (its config.yaml), or pass "
            "--force-resume to continue with the new ones."
        )


def loop_config(cfg: Mapping[str, Any], **task_values: Any) -> LoopConfig:
    """The loop settings every task reads from ``train.*`` and ``optim.clip_grad``; ``task_values`` adds or replaces
    the task's own (``epochs``, ``eval_every``, ``max_steps``, ...)."""
    t = cfg["train"]
    values: dict[str, Any] = dict(
        epochs=cfg["sched"].get("epochs", 1),
        accum_steps=t["accum_steps"],
        clip_grad=cfg["optim"]["clip_grad"],
        amp=t["amp"],
        log_every=t["log_every"],
        eval_every=t.get("eval_every", 1),
        ckpt_every=t["ckpt_every"],
        keep_last=t["keep_last"],
        max_steps=t.get("max_steps"),
        progress=t["progress"],
    )
    values.update(task_values)
    return LoopConfig(**values)


def write_results(run_dir: Path, results: Mapping[str, Any]) -> Path:
    """``results.json``: :data:`RESULT_KEYS` first, then the task's extras."""
    missing = [k for k in RESULT_KEYS if k not in results]
    if missing:
        raise ValueError(f"results lack {missing}")
    ordered = {k: results[k] for k in RESULT_KEYS}
    ordered.update({k: v for k, v in results.items() if k not in RESULT_KEYS})
    path = run_dir / "results.json"
    path.write_text(strict_json_dumps(ordered, indent=1))
    return path


@dataclass
class Run:
    """A prepared run: its configuration, processes and folder; made by :func:`prepare_run`."""

    cfg: dict[str, Any]
    task: str
    dist: DistInfo
    run_dir: Path
    resume: str | Path | None
    started: float = field(default_factory=time.perf_counter)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def log(self, message: str) -> None:
        """Print on the main process only."""
        if self.dist.is_main:
            print(message, flush=True)

    def trainer(self, *, model_meta: Mapping[str, str], **kwargs: Any) -> Trainer:
        """The shared :class:`Trainer` with this run's processes, folder, config, workers and seed filled in."""
        kwargs.setdefault("num_workers", self.cfg["data"]["workers"])
        kwargs.setdefault("seed", self.cfg["train"]["seed"])
        return Trainer(dist=self.dist, run_dir=self.run_dir, config=self.cfg, model_meta=model_meta, **kwargs)

    def fit(self, trainer: Trainer) -> dict[str, float]:
        """``trainer.fit`` from this run's resume point; the clock of ``train_seconds`` starts here."""
        self.started = time.perf_counter()
        return trainer.fit(self.resume)

    def finish(
        self,
        model: nn.Module,
        model_meta: Mapping[str, str],
        *,
        steps: int,
        metrics: Mapping[str, Any],
        skipped: int = 0,
        **extras: Any,
    ) -> dict[str, Any]:
        """Write ``final.safetensors`` and ``results.json`` (main process) and return the results (every process).

        Returns:
            ``{task, model, classes, steps, train_seconds, metrics, skipped, **extras, run_dir, is_main}``.
        """
        import json

        elapsed = time.perf_counter() - self.started
        results: dict[str, Any] = {
            "task": self.task,
            "model": model_meta["model"],
            "classes": json.loads(model_meta["classes"]),
            "steps": int(steps),
            "train_seconds": round(elapsed, 1),
            "metrics": dict(metrics),
            "skipped": int(skipped),
            **extras,
        }
        if self.dist.is_main:
            save_model(model, self.run_dir / "final.safetensors", {**model_meta, "steps": str(int(steps))})
            write_results(self.run_dir, results)
        return {**results, "run_dir": str(self.run_dir), "is_main": self.dist.is_main}


def prepare_run(
    cfg: dict[str, Any],
    task: str,
    *,
    resume: str | Path | None = None,
    force_resume: bool = False,
    must_match: Iterable[str] = (),
) -> Run:
    """Threads, processes, seeds, the output-directory and resume checks, then ``config.yaml`` (nothing is written
    before every check has passed)."""
    t = cfg["train"]
    if t["threads"]:
        torch.set_num_threads(int(t["threads"]))
    dist = init_distributed(t["device"])
    seed_everything(t["seed"])  # the same initial weights on every process
    if t["deterministic"]:
        set_deterministic(True, dist.device)
    run_dir = Path(t["output_dir"])
    check_output_dir(run_dir, resume)
    if resume is not None:
        check_resume(cfg, resume, must_match, force_resume)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    return Run(cfg=cfg, task=task, dist=dist, run_dir=run_dir, resume=resume)
