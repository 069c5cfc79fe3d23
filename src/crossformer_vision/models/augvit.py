"""Augmented Shortcuts for Vision Transformers (AugViT, NeurIPS 2021): timm's ViT with augmented shortcuts.

Each block adds learnt projections of its normalised input parallel to the identity shortcut (``T`` = attention
or MLP, ``N`` = its LayerNorm)::

    base:        x = x + T(N(x))
    linear:      x = x + T(N(x)) + Aug(N(x))                           (Aug: a dense C x C linear)
    linear2:     x = (x + T(N(x)) + Aug1(N(x)) + Aug2(N(x))) * 3 / 4   (Aug_i: linear + GELU)
    circulant2:  as linear2 with block-circulant linears (4 x 4 blocks of circulant (C/4) x (C/4) matrices:
                 4C parameters instead of C^2)

Everything else is timm's :class:`~timm.models.vision_transformer.VisionTransformer` (not re-implemented);
keys equal the official code's (``huawei-noah/Efficient-AI-Backbones``, ``augvit_pytorch/models/augvit.py``).
The official files carry each circulant layer's ``index_matrix``, a buffer derived from the shape; here it is
rebuilt (not saved) and :func:`checkpoint_filter_fn` drops it.
"""

# No ``from __future__ import annotations``: torch.fx copies ``forward``'s annotations into the code it generates,
# and TorchScript cannot resolve them there as strings (FX-traced-then-scripted models).
import math
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import Block, VisionTransformer
from timm.models.vision_transformer import checkpoint_filter_fn as _vit_filter
from torch import nn

from ._common import build_family_model, imagenet_cfg

__all__ = ["AUGVIT_MODES", "AUGVIT_VARIANTS", "AugViT", "AugViTBlock", "CirculantLinear"]

AUGVIT_MODES = ("base", "linear", "circulant", "linear2", "circulant2")


def circulant_index(features: int, num_cir: int) -> torch.Tensor:
    """Indices [features, features] into the flat weight of a square block-circulant matrix.

    Block (I, J) of size ``n = features / num_cir`` reads ``weight[(I * num_cir + J) * n + (i - j) mod n]``
    (a circulant matrix whose first column is that block's n weights).
    """
    n = features // num_cir
    circ = (torch.arange(n)[:, None] - torch.arange(n)[None, :]) % n
    blocks = torch.arange(num_cir * num_cir).reshape(num_cir, num_cir) * n
    return (blocks[:, None, :, None] + circ[None, :, None, :]).reshape(features, features)


class CirculantLinear(nn.Module):
    """Square block-circulant linear layer [..., C] -> [..., C] (official ``Circulant_Linear``, in == out)."""

    def __init__(self, features: int, bias: bool = True, num_cir: int = 4):
        super().__init__()
        if features % num_cir:
            raise ValueError(f"features ({features}) must be a multiple of num_cir ({num_cir})")
        self.features = features
        self.num_cir = num_cir
        self.weight_list = nn.Parameter(torch.empty(num_cir * features))
        self.register_buffer("index_matrix", circulant_index(features, num_cir), persistent=False)
        self.bias = nn.Parameter(torch.empty(features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        n = self.features // self.num_cir
        nn.init.kaiming_uniform_(self.weight_list.view(self.num_cir, self.num_cir, n), a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.features)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_list[self.index_matrix], self.bias)


class AugViTBlock(Block):
    """timm's ViT block with augmented shortcuts (``mode``: see the module docstring).

    Official keys: ``augs_attn`` / ``augs`` (and ``augs_attn2`` / ``augs2`` for the two-path modes).
    """

    def __init__(self, dim: int, num_heads: int, *, mode: str = "base", num_cir: int = 4, **kwargs: Any):
        super().__init__(dim, num_heads, **kwargs)
        if mode not in AUGVIT_MODES:
            raise ValueError(f"unknown AugViT mode {mode!r}; expected one of {AUGVIT_MODES}")
        self.mode = mode
        act = kwargs.get("act_layer") or nn.GELU

        def aug() -> nn.Module:
            if mode == "linear":
                return nn.Linear(dim, dim)
            if mode == "circulant":
                return CirculantLinear(dim, num_cir=num_cir)
            if mode == "linear2":
                return nn.Sequential(nn.Linear(dim, dim), act())
            return nn.Sequential(CirculantLinear(dim, num_cir=num_cir), act())

        # absent paths are None (not missing attributes): TorchScript compiles the forward against them
        two_paths = mode in ("linear2", "circulant2")
        self.augs_attn = aug() if mode != "base" else None
        self.augs = aug() if mode != "base" else None
        self.augs_attn2 = aug() if two_paths else None
        self.augs2 = aug() if two_paths else None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """[B, N, C] -> [B, N, C]."""
        n1 = self.norm1(x)
        y = self.drop_path1(self.ls1(self.attn(n1, attn_mask=attn_mask, is_causal=is_causal)))
        if self.augs_attn is None or self.augs is None:  # base: timm's Block
            x = x + y
            return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))
        if self.augs_attn2 is None or self.augs2 is None:  # linear, circulant
            x = x + y + self.augs_attn(n1)
            n2 = self.norm2(x)
            return x + self.drop_path2(self.ls2(self.mlp(n2))) + self.augs(n2)
        x = (x + y + self.augs_attn(n1) + self.augs_attn2(n1)) * 3.0 / 4
        n2 = self.norm2(x)
        return (x + self.drop_path2(self.ls2(self.mlp(n2))) + self.augs(n2) + self.augs2(n2)) * 3.0 / 4


class AugViT(VisionTransformer):
    """timm's :class:`VisionTransformer` whose blocks are :class:`AugViTBlock`.

    Args:
        mode: Shortcut augmentation (``"base"``, ``"linear"``, ``"circulant"``, ``"linear2"``, ``"circulant2"``).
        num_cir: Circulant blocks per side.
        **kwargs: :class:`VisionTransformer` arguments. The official ``drop_rate`` (dropout after the position
            embedding and in every block) is timm's ``pos_drop_rate`` + ``proj_drop_rate``.
    """

    def __init__(self, mode: str = "base", num_cir: int = 4, **kwargs: Any):
        super().__init__(block_fn=partial(AugViTBlock, mode=mode, num_cir=num_cir), **kwargs)
        self.mode = mode


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: AugViT) -> dict[str, torch.Tensor]:
    """Official AugViT checkpoints: unwrap, drop the derived ``index_matrix`` buffers, then timm's ViT filter
    (position embeddings resized to the model's grid)."""
    for key in ("model_ema", "state_dict_ema", "model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
            break
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items() if not k.endswith("index_matrix")}
    return _vit_filter(state_dict, model)


_SMALL = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4, qkv_bias=True)
_LN = partial(nn.LayerNorm, eps=1e-6)
#: The official registered models.
AUGVIT_VARIANTS: dict[str, dict[str, Any]] = {
    "augvit_small": dict(**_SMALL, mode="base"),
    "augvit_small_linear": dict(**_SMALL, mode="linear"),
    "augvit_small_circulant2": dict(**_SMALL, mode="circulant2"),
    "augvit_small_linear2": dict(**_SMALL, mode="linear2"),
    "augvit_base_circulant2": dict(
        patch_size=16, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4, qkv_bias=True, mode="circulant2"
    ),
}


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # the official models carry timm 0.3's vit_base_patch16_224 config: mean / std 0.5, bicubic, crop 0.9
    return imagenet_cfg(
        pool_size=None,
        crop_pct=0.9,
        fixed_input_size=True,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        first_conv="patch_embed.proj",
        classifier="head",
        license="apache-2.0",
        origin_url="https://github.com/huawei-noah/Efficient-AI-Backbones/tree/master/augvit_pytorch",
        paper_ids="arXiv:2106.15941",
        **kwargs,
    )


default_cfgs = generate_default_cfgs({f"{n}.in1k": _cfg() for n in AUGVIT_VARIANTS})


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> AugViT:
    return build_family_model(
        AugViT,
        variant,
        pretrained,
        checkpoint_filter_fn,
        feature_wrapper="getter",
        out_indices=kwargs.pop("out_indices", 3),
        **{**AUGVIT_VARIANTS[variant], "norm_layer": _LN, **kwargs},
    )


@register_model
def augvit_small(pretrained: bool = False, **kwargs: Any) -> AugViT:
    """AugViT-S without augmented shortcuts (DeiT-S as the official code builds it): 22.05 M params."""
    return _create("augvit_small", pretrained, **kwargs)


@register_model
def augvit_small_linear(pretrained: bool = False, **kwargs: Any) -> AugViT:
    """AugViT-S with one dense augmented shortcut per branch: 25.60 M params."""
    return _create("augvit_small_linear", pretrained, **kwargs)


@register_model
def augvit_small_circulant2(pretrained: bool = False, **kwargs: Any) -> AugViT:
    """Aug-ViT-S (the official training command's model): two block-circulant shortcuts per branch, 22.14 M."""
    return _create("augvit_small_circulant2", pretrained, **kwargs)


@register_model
def augvit_small_linear2(pretrained: bool = False, **kwargs: Any) -> AugViT:
    """AugViT-S with two dense augmented shortcuts per branch: 29.15 M params."""
    return _create("augvit_small_linear2", pretrained, **kwargs)


@register_model
def augvit_base_circulant2(pretrained: bool = False, **kwargs: Any) -> AugViT:
    """Aug-ViT-B: two block-circulant shortcuts per branch, 86.75 M params."""
    return _create("augvit_base_circulant2", pretrained, **kwargs)
