"""Multi-label models by name: any timm backbone with a final feature map under a CSRA or a plain average-pool head,
and rebuilding them from a model file (:mod:`crossformer_vision.engine.loading`).

A model file stores the backbone's timm name as ``model`` and ``model_args = {"backbone": {...timm kwargs},
"head": {"name": "csra" | "avg", "num_heads": H, "lam": lambda}}``; both parts are validated before anything is
built (the backbone's by the shared allow-list of :mod:`crossformer_vision.models.arguments`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from ...engine.config import model_arguments_from
from ...engine.loading import LoadedModel
from ..classification.model import load_classifier_weights
from .heads import TEMPERATURES, AvgPoolHead, CSRAHead, to_nchw

__all__ = [
    "HEADS",
    "MultiLabelNet",
    "build_multilabel",
    "head_args",
    "load_foreign",
    "model_from_metadata",
    "validate_model_args",
]

#: ``model.head`` choices.
HEADS = ("csra", "avg")


class MultiLabelNet(nn.Module):
    """A timm backbone (its classifier removed) and a multi-label head, with the classifiers' timm-style API.

    Args:
        backbone: A timm model built with ``num_classes=0``; its ``forward_features`` gives ``[B, C, H, W]``
            (ResNet, ConvNeXt, ...), ``[B, H, W, C]`` (``output_fmt="NHWC"``: CrossFormer, Swin) or tokens
            ``[B, prefix + H*W, C]`` (ViT / DeiT: the prefix tokens are dropped, the rest reshaped to the grid).
        num_classes: Labels ``K``.
        head: ``"csra"`` (:class:`~.heads.CSRAHead`) or ``"avg"`` (:class:`~.heads.AvgPoolHead`).
        num_heads, lam: CSRA's number of heads (temperatures) and lambda.
        drop_rate: Dropout before the classifier.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        head: str = "csra",
        num_heads: int = 1,
        lam: float = 0.1,
        drop_rate: float = 0.0,
    ):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"model.head must be one of {HEADS}, got {head!r}")
        self.backbone = backbone
        self.head_name, self.num_heads, self.lam, self.drop_rate = head, num_heads, float(lam), drop_rate
        self.num_features = int(backbone.num_features)
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})
        self.head = self._make_head(num_classes)
        self.num_classes = num_classes

    def _make_head(self, num_classes: int) -> nn.Module:
        if self.head_name == "csra":
            return CSRAHead(self.num_features, num_classes, self.num_heads, self.lam, self.drop_rate)
        return AvgPoolHead(self.num_features, num_classes, self.drop_rate)

    # ------------------------------------------------------------------ timm-style API
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` -> the backbone's final map ``[B, C, h, w]`` (NCHW whatever the backbone)."""
        feats = self.backbone.forward_features(x)
        if feats.ndim == 3:
            patch = getattr(getattr(self.backbone, "patch_embed", None), "patch_size", None)
            grid = (x.shape[2] // patch[0], x.shape[3] // patch[1]) if patch else None
            return to_nchw(feats, "NLC", int(getattr(self.backbone, "num_prefix_tokens", 0)), grid)
        return to_nchw(feats, getattr(self.backbone, "output_fmt", "NCHW"))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``[B, C, h, w]`` -> logits ``[B, K]`` (``pre_logits``: the average-pooled features ``[B, C]``)."""
        if pre_logits:
            return x.mean(dim=(2, 3))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` -> logits ``[B, K]`` (sigmoid gives each label's probability)."""
        return self.forward_head(self.forward_features(x))

    def class_maps(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> per-class score maps ``[B, K, h, w]``: what CSRA's attention pools (the first head's scores),
        or the class activation map of the plain head."""
        return self.head.attention(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new head (new weights) for ``num_classes`` labels; ``global_pool`` is accepted for timm's API only."""
        self.num_classes = num_classes
        self.head = self._make_head(num_classes)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{k}" for k in inner}


def head_args(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The head part of a model's arguments from the run config (``model.head / num_heads / lam``)."""
    m = cfg["model"]
    return {"name": m["head"], "num_heads": int(m["num_heads"]), "lam": float(m["lam"])}


def _create_backbone(name: str, kwargs: Mapping[str, Any], pretrained: str | Path | None = None) -> nn.Module:
    try:
        with model_arguments_from(name, {"model.kwargs": kwargs}):
            # with weights to load, a 1-class head first: the classifier loader then drops a head of another size
            backbone = timm.create_model(name, num_classes=1 if pretrained else 0, **kwargs)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise ValueError(f"unknown model {name!r}: use a CrossFormer variant or any timm model name") from None
        raise
    if pretrained:
        load_classifier_weights(backbone, pretrained, new_head=True)
        backbone.reset_classifier(0)
    return backbone


def build_multilabel(cfg: dict[str, Any], num_classes: int) -> MultiLabelNet:
    """The run's model: ``model.name`` (any timm backbone) with ``model.kwargs`` and ``model.drop_path_rate``, its
    weights from ``model.pretrained`` (a classifier run, one of our files, or an official checkpoint: the backbone is
    loaded, its classifier dropped), under the head ``model.head``."""
    m = cfg["model"]
    kwargs = dict(m["kwargs"] or {})
    if m["drop_path_rate"] is not None:
        kwargs["drop_path_rate"] = m["drop_path_rate"]
    h = head_args(cfg)
    _check_head(h, "model")
    backbone = _create_backbone(m["name"], kwargs, m["pretrained"])
    model = MultiLabelNet(backbone, num_classes, h["name"], h["num_heads"], h["lam"], m["head_drop"])
    if m["grad_checkpointing"]:
        model.set_grad_checkpointing(True)
    return model


def _check_head(head: Any, where: str) -> dict[str, Any]:
    if not isinstance(head, Mapping) or set(head) != {"name", "num_heads", "lam"}:
        raise ValueError(f"{where}: the head arguments must be {{name, num_heads, lam}}, got {str(head)[:200]}")
    name, heads, lam = head["name"], head["num_heads"], head["lam"]
    if name not in HEADS:
        raise ValueError(f"{where}: head {str(name)[:50]!r} is not one of {HEADS}")
    if isinstance(heads, bool) or heads not in TEMPERATURES:
        raise ValueError(f"{where}: CSRA takes {sorted(TEMPERATURES)} heads (the paper's temperatures), got {heads}")
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not (math.isfinite(lam) and 0 <= lam <= 100):
        raise ValueError(f"{where}: lambda must be a number from 0 to 100, got {str(lam)[:50]}")
    return {"name": name, "num_heads": int(heads), "lam": float(lam)}


def validate_model_args(name: str, args: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``{"backbone": timm kwargs, "head": {name, num_heads, lam}}`` from a file, checked: the backbone's against the
    allow-list of :mod:`crossformer_vision.models.arguments` (no downloads, no paths, bounded sizes), the head's
    against the known heads and temperature sets."""
    from ...models.arguments import validate_model_arguments

    if not isinstance(args, Mapping) or set(args) != {"backbone", "head"}:
        raise ValueError(f"{where}: the model arguments of a multi-label model must be {{backbone, head}}")
    try:
        backbone = validate_model_arguments(name, args["backbone"])
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    return {"backbone": backbone, "head": _check_head(args["head"], where)}


def model_from_metadata(meta: Mapping[str, Any], **_: Any) -> nn.Module:
    """The multi-label model a model file describes, without its weights."""
    args, classes = meta["model_args"], meta["classes"] or []
    backbone = timm.create_model(meta["model"], num_classes=0, **args["backbone"])
    h = args["head"]
    return MultiLabelNet(backbone, len(classes), h["name"], h["num_heads"], h["lam"])


def load_foreign(path: Path, **_: Any) -> LoadedModel:
    """No foreign multi-label files are read (the official CSRA checkpoints are ResNet-101 / ViT pickles of another
    layout): use a run of ``crossformer multilabel train``."""
    raise ValueError(
        f"{path} is not a multi-label model of this project: evaluate a run directory or its final.safetensors "
        "(crossformer multilabel train writes them); an ImageNet backbone goes to training as model.pretrained"
    )
