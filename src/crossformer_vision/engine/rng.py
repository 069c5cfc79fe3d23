"""Capturing and restoring every random number generator a training run touches."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "seed_everything", "seed_step", "set_deterministic", "set_rng_state"]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_step(seed: int, step: int, micro: int = 0, rank: int = 0) -> None:
    """Seed every RNG for one micro-step of training (drop path, dropout, mixup draw from them).

    Counter-based: the streams depend only on ``(seed, step, micro, rank)``, so a resumed run draws exactly what
    an uninterrupted one does, and data loading (in the main process or in workers) cannot shift them.
    """
    s = (seed * 1_000_003 + step * 10_007 + micro * 101 + rank * 7_919 + 12_345) % (2**31 - 1)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)


def set_deterministic(enabled: bool = True, device: torch.device | str = "cpu") -> None:
    """Deterministic kernels: bitwise-reproducible runs (and exact resume) on CPU; on CUDA, slower.

    On CUDA some kernels the segmentation and detection models need have no deterministic version (bilinear
    upsampling's and torchvision's RoIAlign backward, for example): there PyTorch warns, naming the op, instead of
    stopping the run, and every other op runs its deterministic kernel.
    """
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled, warn_only=enabled and torch.device(device).type == "cuda")
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cudnn.deterministic = enabled


def get_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        # as tensors and ints, so the state loads with torch.load(weights_only=True)
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
