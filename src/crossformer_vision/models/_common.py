"""Plumbing every model family writes the same way: the pretrained-config dict, the ``build_model_with_cfg``
call behind each registered name, the weight init and the gradient-checkpointed block loop."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import trunc_normal_
from timm.models import build_model_with_cfg
from torch import nn
from torch.utils.checkpoint import checkpoint

from ._features import StageFeatures

__all__ = ["build_family_model", "imagenet_cfg", "init_weights", "run_blocks"]


def imagenet_cfg(**kwargs: Any) -> dict[str, Any]:
    """A timm pretrained config: ImageNet-1k at 224, bicubic, crop 0.875, ImageNet mean / std; ``kwargs`` override
    these and add the family's own entries (``first_conv``, ``classifier``, ``license``, ``origin_url`` ...)."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        **kwargs,
    }


def build_family_model(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    filter_fn: Any,
    feature_wrapper: Any = StageFeatures,
    out_indices: Any = (0, 1, 2, 3),
    **kwargs: Any,
) -> Any:
    """timm's ``build_model_with_cfg`` for ``variant`` with the family's checkpoint filter and default
    ``features_only`` wrapper / ``out_indices`` (a caller's ``feature_cls`` / ``out_indices`` still win)."""
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        pretrained_filter_fn=filter_fn,
        feature_cfg=dict(feature_cls=feature_wrapper, out_indices=out_indices),
        **kwargs,
    )


def init_weights(m: nn.Module, convs: bool = False) -> None:
    """The official init of the transformer families (``model.apply``): linears truncated normal (std 0.02) with zero
    bias, LayerNorms one / zero; with ``convs`` also convolutions Kaiming normal (fan out) and BatchNorms one / zero."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif convs and isinstance(m, nn.Conv2d):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm) or (convs and isinstance(m, nn.BatchNorm2d)):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, *args: Any, grad_checkpointing: bool = False) -> Any:
    """``x = block(x, *args)`` for each block; with ``grad_checkpointing`` (and autograd on, outside TorchScript) each
    block recomputes its activations in the backward pass instead of storing them."""
    ckpt = grad_checkpointing and torch.is_grad_enabled() and not torch.jit.is_scripting()
    for block in blocks:
        x = checkpoint(block, x, *args, use_reentrant=False) if ckpt else block(x, *args)
    return x
