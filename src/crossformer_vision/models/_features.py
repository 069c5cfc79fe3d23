"""timm's ``features_only`` wrapper shared by the model families (stage maps from ``forward_intermediates``)."""

from __future__ import annotations

from typing import Any

import torch
from timm.models._features import FeatureGetterNet

__all__ = ["StageFeatures"]


class StageFeatures(FeatureGetterNet):
    """Stage maps from the model's ``forward_intermediates``; forwards ``set_grad_checkpointing`` to the model, so
    feature extractors (segmentation / detection backbones) train with checkpointing too."""

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True, **kwargs: Any) -> None:
        self.model.set_grad_checkpointing(enable, **kwargs)
