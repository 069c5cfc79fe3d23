"""The paper's COCO detection schedules as plain data (YAML-able), with the mmcv learning-rate rule.

Official CrossFormer / CrossFormer++ RetinaNet and Mask R-CNN 1x configs (``detection/configs/...``):
AdamW (lr 1e-4, betas 0.9 / 0.999, weight decay 1e-4 on every parameter, no grad clipping), 12 epochs, lr x0.1
after epochs 8 and 11, 500 linear warm-up iterations from 0.001 x lr, 16 images per step (8 GPUs x 2), images
resized to 1333 x 800 (shorter side 800, longer side <= 1333), random horizontal flip 0.5, images without
annotations left out of training (mmdet ``filter_empty_gt``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = ["MULTI_SCALE_MIN_SIZES", "RECIPES", "DetectionRecipe", "get_recipe"]

#: mmdet's usual multi-scale list (shorter side 480..800 in steps of 32, longer side <= 1333).
MULTI_SCALE_MIN_SIZES: tuple[int, ...] = tuple(range(480, 801, 32))


@dataclass(frozen=True)
class DetectionRecipe:
    """A detection training schedule.

    Attributes:
        epochs: training epochs.
        batch_size: images per optimiser step over all processes.
        lr: peak learning rate (AdamW).
        betas: AdamW betas.
        weight_decay: AdamW weight decay (the official configs decay every parameter).
        lr_steps: epochs (0-based, mmcv ``step``) from which the lr is multiplied by ``lr_gamma`` once more.
        lr_gamma: step factor.
        warmup_iters: linear warm-up iterations (mmcv ``warmup='linear'``).
        warmup_ratio: lr factor at iteration 0.
        grad_clip: max gradient norm, or ``None``.
        min_size: shorter image side; several values = multi-scale training (one per image, the last at test time);
            pass to ``build_detector(min_size=...)``.
        max_size: cap of the longer side.
        flip_prob: horizontal flip probability (dataset transform).
        skip_empty: leave images without annotations out of training.
    """

    name: str = "1x"
    epochs: int = 12
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    lr_steps: tuple[int, ...] = (8, 11)
    lr_gamma: float = 0.1
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    grad_clip: float | None = None
    min_size: tuple[int, ...] = (800,)
    max_size: int = 1333
    flip_prob: float = 0.5
    skip_empty: bool = True
    notes: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (tuples as lists), for YAML / JSON and the engine's config."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DetectionRecipe:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f"unknown detection recipe keys {unknown}; known: {sorted(names)}")
        tuples = {"betas", "lr_steps", "min_size"}
        return cls(**{k: tuple(v) if k in tuples and v is not None else v for k, v in values.items()})

    def lr_factor(self, iteration: int, iters_per_epoch: int) -> float:
        """Multiplier of ``lr`` at a global iteration (0-based), exactly as mmcv's step + linear warm-up hooks.

        ``regular = lr_gamma ** #{s in lr_steps: epoch >= s}`` with ``epoch = iteration // iters_per_epoch``;
        during warm-up ``regular * (1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio))``.
        """
        if iters_per_epoch < 1:
            raise ValueError(f"iters_per_epoch must be >= 1, got {iters_per_epoch}")
        epoch = iteration // iters_per_epoch
        factor = self.lr_gamma ** sum(epoch >= s for s in self.lr_steps)
        if iteration < self.warmup_iters:
            factor *= 1 - (1 - iteration / self.warmup_iters) * (1 - self.warmup_ratio)
        return factor

    def lr_lambda(self, iters_per_epoch: int) -> Callable[[int], float]:
        """For ``torch.optim.lr_scheduler.LambdaLR``, stepped once per iteration."""
        return lambda iteration: self.lr_factor(iteration, iters_per_epoch)

    def build_optimizer(self, params: nn.Module | Iterable[Any]) -> torch.optim.Optimizer:
        """AdamW over the trainable parameters (frozen stages excluded), as the official configs."""
        if isinstance(params, nn.Module):
            params = [p for p in params.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.lr, betas=self.betas, weight_decay=self.weight_decay)


RECIPES: dict[str, DetectionRecipe] = {
    "1x": DetectionRecipe(notes="official CrossFormer / CrossFormer++ RetinaNet and Mask R-CNN 1x configs"),
    "1x_wd0.05": DetectionRecipe(name="1x_wd0.05", weight_decay=0.05, notes="1x with the weight decay 0.05 variant"),
    "1x_ms": DetectionRecipe(
        name="1x_ms", min_size=MULTI_SCALE_MIN_SIZES, notes="1x with multi-scale training, shorter side 480..800"
    ),
    "3x": DetectionRecipe(
        name="3x",
        epochs=36,
        lr_steps=(27, 33),
        weight_decay=0.05,
        min_size=MULTI_SCALE_MIN_SIZES,
        notes="Swin's 3x configs: 36 epochs, wd 0.05 (none on norms / position tables), aug.policy 3x crop policy",
    ),
}


def get_recipe(name: str = "1x", **overrides: Any) -> DetectionRecipe:
    """A preset by name, with optional field overrides (``get_recipe("1x", epochs=1)``).

    Raises:
        ValueError: unknown name (listing the presets) or unknown field.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown detection recipe {name!r}; presets: {', '.join(RECIPES)}")
    if overrides:
        return DetectionRecipe.from_dict({**RECIPES[name].to_dict(), **overrides})
    return RECIPES[name]
