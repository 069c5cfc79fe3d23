"""Shared training machinery: config, distributed set-up, sampling, checkpoints, metrics logging, the loop."""

from .checkpoint import CheckpointManager, CheckpointWriteError, load_training_checkpoint
from .config import apply_overrides, config_diff, load_config, merge_config, model_arguments_from, save_config
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, cleanup, init_distributed, is_main
from .metrics_logger import MetricsLogger, read_metrics
from .rng import get_rng_state, seed_everything, seed_step, set_deterministic, set_rng_state
from .sampling import EvalShardSampler, ResumableSampler, SeededDataset
from .trainer import LoopConfig, Trainer, TrainingDivergedError, TrainingInterrupted, autocast_context

__all__ = [
    "CheckpointManager",
    "CheckpointWriteError",
    "DistInfo",
    "EvalShardSampler",
    "LoopConfig",
    "MetricsLogger",
    "ResumableSampler",
    "SeededDataset",
    "Trainer",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "all_gather_objects",
    "all_reduce_sum",
    "apply_overrides",
    "autocast_context",
    "barrier",
    "cleanup",
    "config_diff",
    "get_rng_state",
    "init_distributed",
    "is_main",
    "load_config",
    "load_training_checkpoint",
    "merge_config",
    "model_arguments_from",
    "read_metrics",
    "save_config",
    "seed_everything",
    "seed_step",
    "set_deterministic",
    "set_rng_state",
]
