"""Dense backbones for segmentation: the CrossFormer family and timm models for the paper's comparisons.

Every backbone maps an image ``[B, 3, H, W]`` to a list of NCHW feature maps and exposes ``out_channels`` and
``out_strides``. CrossFormer variants are :class:`~crossformer_vision.models.CrossFormerBackbone` (official key
layout, so ``backbone.*`` of an official mmseg checkpoint loads unchanged). timm models are wrapped by
:class:`TimmBackbone`, which takes any input size (it pads to the patch size), converts NHWC features (Swin) to
NCHW and can add mmseg-style per-output LayerNorms.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from ...models import CrossFormerBackbone, create_model, create_timm_model, list_variants, load_official_state_dict
from ...models.hrformer import HRFORMER_VARIANTS
from ...models.registry import DENSE_GROUP_SIZE, DENSE_INTERVAL
from ...models.registry import dense_lda_rule as default_lda_rule

__all__ = [
    "TIMM_ALIASES",
    "TimmBackbone",
    "build_backbone",
    "build_crossformer_backbone",
    "build_family_backbone",
    "companion_family",
    "is_crossformer",
    "load_family_weights",
    "resolve_timm_name",
]


#: Short names of the timm backbones of the paper's comparisons -> (timm name, default timm kwargs).
#: Drop-path rates are those of mmseg's UPerNet configs (Swin 0.3, ViT-B / DeiT-S / DeiT-B 0.1).
TIMM_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "swin_t": ("swin_tiny_patch4_window7_224", dict(drop_path_rate=0.3)),
    "swin_s": ("swin_small_patch4_window7_224", dict(drop_path_rate=0.3)),
    "swin_b": ("swin_base_patch4_window7_224", dict(drop_path_rate=0.3)),
    "resnet101": ("resnet101", {}),
    "vit_b16": ("vit_base_patch16_224", dict(drop_path_rate=0.1)),
    "deit_s16": ("deit_small_patch16_224", dict(drop_path_rate=0.1)),
    "deit_b16": ("deit_base_patch16_224", dict(drop_path_rate=0.1)),
}


def is_crossformer(name: str) -> bool:
    """Whether ``name`` is a registered CrossFormer / CrossFormer++ variant."""
    return name in list_variants()


def resolve_timm_name(name: str) -> tuple[str, dict[str, Any]]:
    """``(timm model name, default kwargs)`` of an alias (``swin_t``) or a timm model name.

    Raises:
        ValueError: ``name`` is neither an alias nor a timm model.
    """
    if name in TIMM_ALIASES:
        timm_name, defaults = TIMM_ALIASES[name]
        return timm_name, dict(defaults)
    if timm.is_model(name):
        return name, {}
    raise ValueError(
        f"unknown backbone {name!r}: expected a CrossFormer variant ({', '.join(list_variants())}), "
        f"an alias ({', '.join(TIMM_ALIASES)}) or a timm model name"
    )


def build_crossformer_backbone(
    name: str,
    *,
    group_size: Sequence[int] = DENSE_GROUP_SIZE,
    crs_interval: Sequence[int] = DENSE_INTERVAL,
    lda_rule: str | None = None,
    weights: str | None = None,
    trusted: bool = False,
    **kwargs: Any,
) -> CrossFormerBackbone:
    """A CrossFormer dense backbone with the official segmentation settings.

    Args:
        name: Variant (``crossformer_s``, ``crossformerpp_b``, ...).
        group_size: G per stage (official dense configs: 7, 7, 7, 7).
        crs_interval: LDA interval I per stage (official dense configs: 8, 4, 2, 1).
        lda_rule: ``"fixed_interval"`` / ``"fixed_group"``; default: the family's official rule
            (:func:`default_lda_rule`).
        weights: Path of an official or converted checkpoint (classification weights give the ImageNet
            initialisation; ``norm`` / ``head`` are dropped).
        trusted: Unpickle ``weights`` without the allow-list (only for files you trust).
        **kwargs: Further :class:`~crossformer_vision.models.CrossFormer` arguments (``drop_path_rate``,
            ``embed_dim`` ... for tiny test models).
    """
    backbone = create_model(
        name,
        dense=True,
        group_size=tuple(group_size),
        crs_interval=tuple(crs_interval),
        lda_rule=lda_rule or default_lda_rule(name),
        **kwargs,
    )
    if weights is not None:
        from ...models.io import read_checkpoint

        load_official_state_dict(backbone, read_checkpoint(weights, trusted=trusted))
    return backbone


class TimmBackbone(nn.Module):
    """A timm ``features_only`` model as a dense backbone: any input size, NCHW outputs.

    * The input is zero-padded at the bottom / right to a multiple of ``pad_multiple`` (the patch size of Swin /
      ViT; their patch embeddings refuse other sizes). Output maps are those of the padded input.
    * NHWC features (timm's Swin) are permuted to NCHW.
    * ``out_norm`` adds one LayerNorm per output, over channels, as mmseg's Swin does (``out_norms.{i}``).

    Args:
        model_name: timm model name.
        out_indices: Feature indices passed to timm (stages; blocks for plain ViTs).
        pretrained: timm ``pretrained`` (needs the weights cached locally or a hub connection).
        pad_multiple: Pad the input to a multiple of this; default: the first feature's stride for patch models
            (Swin 4, ViT 16), else 1.
        out_norm: Add mmseg-style per-output LayerNorms.
        final_norm: mmseg ViT's ``final_norm``: a LayerNorm on the last output only.
        **kwargs: Further ``timm.create_model`` arguments (``drop_path_rate``, ``embed_dim`` ...).

    Attributes:
        out_channels: Channels of each output.
        out_strides: Stride of each output relative to the input.
    """

    def __init__(
        self,
        model_name: str,
        *,
        out_indices: Sequence[int] | None = None,
        pretrained: bool = False,
        pad_multiple: int | None = None,
        out_norm: bool = False,
        final_norm: bool = False,
        **kwargs: Any,
    ):
        super().__init__()
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        self.body = create_timm_model(
            model_name,
            pretrained=pretrained,
            local_file_hint="model.backbone.kwargs.pretrained_cfg_overlay={file: /path/to/weights}",
            features_only=True,
            **kwargs,
        )
        info = self.body.feature_info
        self.model_name = model_name
        self.out_channels: list[int] = list(info.channels())
        self.out_strides: list[int] = list(info.reduction())
        self.channels_last = str(getattr(self.body, "output_fmt", "NCHW")) in ("NHWC", "Format.NHWC")
        if pad_multiple is None:
            pad_multiple = self.out_strides[0] if _is_patch_model(self.body) else 1
        self.pad_multiple = int(pad_multiple)
        self.out_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.out_channels) if out_norm else None
        # mmseg ViT final_norm=True: a LayerNorm over channels on the last output only (the "+ LN" rows)
        self.final_norm = nn.LayerNorm(self.out_channels[-1], eps=1e-6) if final_norm else None

    @property
    def is_plain(self) -> bool:
        """All outputs share one stride (plain ViT): a multi-level neck must build the pyramid."""
        return len(set(self.out_strides)) == 1

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.body, "set_grad_checkpointing"):
            self.body.set_grad_checkpointing(enable)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, H, W] -> list of [B, C_i, ceil(H / s_i), ceil(W / s_i)] maps (sizes of the padded input)."""
        h, w = x.shape[-2:]
        m = self.pad_multiple
        if m > 1 and (h % m or w % m):
            x = F.pad(x, (0, -w % m, 0, -h % m))
        feats = self.body(x)
        outs = []
        for i, feat in enumerate(feats):
            if self.channels_last:
                if self.out_norms is not None:
                    feat = self.out_norms[i](feat)
                feat = feat.permute(0, 3, 1, 2).contiguous()
            elif self.out_norms is not None:
                feat = self.out_norms[i](feat.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
            outs.append(feat)
        if self.final_norm is not None:
            outs[-1] = self.final_norm(outs[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
        return outs


def companion_family(name: str) -> str | None:
    """``"hrformer"`` / ``"soft"`` / ``"cmt"`` when ``name`` is a variant of a companion family that gives a pyramid
    (AugViT, a plain ViT, does not), else None."""
    from ...models.family_weights import family_of

    family = family_of(name)
    return family if family in ("hrformer", "soft", "cmt") else None


def load_family_weights(
    model: nn.Module,
    weights: str | os.PathLike | Mapping[str, Any],
    variant: str,
    *,
    trusted: bool = False,
) -> None:
    """Load an official file of a companion family into ``model``, its dense trunk (the family's model class).

    The reading, unwrapping, renaming by the family's ``checkpoint_filter_fn`` (CMT's position biases resized to
    ``model``'s construction size, HRFormer's bias tables to its window), dropping of the ImageNet head's entries and
    the check of every key and shape are :func:`~crossformer_vision.models.family_weights.family_state_dict`'s (the
    one reader of these files, shared with ``crossformer convert`` and ``crossformer eval / predict``).

    Args:
        model: The trunk: :class:`~crossformer_vision.models.hrformer.HRFormerBackbone`, or the SOFT / CMT model
            inside timm's ``features_only`` wrapper.
        weights: A path (untrusted: read with the allow-list) or an already read checkpoint.
        variant: The variant ``model`` was built as (``soft_tiny``, ``cmt_s``, ``hrformer_b`` ...), named in errors.
        trusted: Unpickle ``weights`` without the allow-list (only for files you trust).

    Raises:
        ValueError: one line: the missing, unexpected or mis-shaped keys (a few named) and which family the file
            looks like.
    """
    from ...models.family_weights import family_state_dict

    state = family_state_dict(weights, variant, trusted=trusted, model=model, usage="backbone").state
    model.load_state_dict(state, strict=True)


def build_family_backbone(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | os.PathLike | Mapping[str, Any] | None = None,
    trusted: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """A companion family's variant (HRFormer, SOFT, CMT) as a dense trunk, for segmentation and detection alike.

    ``[B, 3, H, W]`` -> 4 NCHW maps ``[B, C_i, H_i, W_i]`` at strides 4, 8, 16, 32, with ``out_channels`` /
    ``out_strides``:

    * HRFormer: :class:`~crossformer_vision.models.hrformer.HRFormerBackbone` (the four branches of the last module;
      official dense key layout ``conv1...``, ``stage4...`` as in the official segmentation checkpoints);
      ``H_i = ceil(H / s_i)`` for any input size.
    * SOFT / CMT: :class:`TimmBackbone` over timm's ``features_only`` model (the stage maps of
      ``forward_intermediates``; keys ``body.model.<official key>``). Inputs of at least 32 x 32. SOFT's maps are
      ``ceil(H / s_i)``; CMT's 2 x 2 patch convs floor odd sizes, unless ``pad_multiple=32`` pads the input first.

    Args:
        name: a variant: ``hrformer_{t,s,b}``, ``soft_{tiny,small,medium,large,huge}``, ``cmt_{ti,xs,s,b}``.
        pretrained: refused: these weights are not on a hub; pass ``weights``.
        weights: an official ImageNet classification file (or one of the family's dense layout), a path or a read
            state dict, read, mapped and checked by :func:`load_family_weights`.
        trusted: unpickle ``weights`` without the allow-list (only for files you trust).
        **kwargs: model arguments: ``drop_path_rate``, architecture overrides for tiny test models (``width``,
            ``embed_dims``, ``depths`` ...), and for SOFT / CMT :class:`TimmBackbone`'s ``pad_multiple``.

    Raises:
        ValueError: ``name`` is not a companion variant (the message lists them), ``pretrained``, bad weights.
    """
    family = companion_family(name)
    if family is None:
        from ...models.cmt import CMT_VARIANTS
        from ...models.soft import SOFT_VARIANTS

        known = [*HRFORMER_VARIANTS, *SOFT_VARIANTS, *CMT_VARIANTS]
        raise ValueError(f"unknown companion backbone {name!r}; known: {', '.join(known)}")
    if pretrained:
        raise ValueError(f"{name}: its weights are not downloaded; pass weights=<official checkpoint path>")
    if family == "hrformer":
        from ...models.hrformer import create_hrformer_backbone

        backbone = create_hrformer_backbone(name, **kwargs)
        model = backbone
    else:
        backbone = TimmBackbone(name, **kwargs)
        model = backbone.body.model  # the family model inside timm's feature wrapper
    if weights is not None:
        load_family_weights(model, weights, name, trusted=trusted)
    return backbone


#: Strides of the four levels UPerNet / Semantic FPN take (C2..C5).
PYRAMID_STRIDES = (4, 8, 16, 32)


def _is_patch_model(model: nn.Module) -> bool:
    return any(name.endswith("patch_embed") for name, _ in model.named_modules())


def _plain_vit_indices(model_name: str, kwargs: dict[str, Any]) -> tuple[int, ...] | None:
    """Blocks at the end of each quarter of a plain ViT (mmseg's (2, 5, 8, 11) for depth 12), else None."""
    if not model_name.startswith(("vit_", "deit_")) or "out_indices" in kwargs:
        return None
    depth = kwargs.get("depth", 12)
    if depth < 4:
        raise ValueError(f"a plain ViT backbone needs depth >= 4 for four feature levels, got depth={depth}")
    return tuple(math.ceil(depth * q / 4) - 1 for q in (1, 2, 3, 4))


def build_backbone(
    name: str,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    norm: str | None = "bn",
    **kwargs: Any,
) -> nn.Module:
    """A dense backbone by name: a CrossFormer variant, an alias of :data:`TIMM_ALIASES` or a timm model name.

    Args:
        name: ``crossformer_s``, ``crossformerpp_b``, ``swin_t``, ``resnet101``, ``vit_b16``,
            ``swin_tiny_patch4_window7_224`` ...
        pretrained: timm backbones: load timm's pretrained weights (they must be cached locally: this machine
            has no hub access).
        weights: CrossFormer backbones: official / converted checkpoint file to initialise from; HRFormer / SOFT /
            CMT: an official ImageNet file (:func:`build_family_backbone`).
        norm: ``"syncbn"`` converts BatchNorm layers of convolutional timm backbones (ResNet) to SyncBatchNorm,
            as mmseg's configs do.
        **kwargs: Backbone arguments: CrossFormer (``lda_rule``, ``group_size``, ``crs_interval``,
            ``drop_path_rate``, ...) or timm (``drop_path_rate``, ``out_indices``, ``out_norm``, ...).
    """
    if is_crossformer(name):
        if pretrained:
            raise ValueError(
                f"{name}: CrossFormer weights are not downloaded; pass weights=<official checkpoint path> instead"
            )
        return build_crossformer_backbone(name, weights=weights, **kwargs)
    family = companion_family(name)
    if family == "hrformer":  # official dense layout (backbone.conv1 ..., not a timm features_only wrapper)
        return build_family_backbone(name, pretrained=pretrained, weights=weights, **kwargs)
    if family is not None:  # SOFT / CMT: timm features_only, the checkpoint filter of the family for weights=
        backbone = build_family_backbone(name, pretrained=pretrained, weights=weights, **kwargs)
        if norm is not None and str(norm).lower() == "syncbn":
            backbone = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
        return backbone
    if weights is not None:
        raise ValueError(f"{name}: weights= is for CrossFormer backbones; use pretrained= / timm's pretrained_cfg")
    timm_name, defaults = resolve_timm_name(name)
    kwargs = {**defaults, **kwargs}
    kwargs.setdefault("out_norm", timm_name.startswith("swin"))
    if timm_name.startswith(("swin", "vit_", "deit_")):
        # Build attention masks / position embeddings for each input size instead of the 224 construction size.
        kwargs.setdefault("dynamic_img_size", True)
    indices = _plain_vit_indices(timm_name, kwargs)
    if indices is not None:
        kwargs["out_indices"] = indices
    if timm_name.startswith("resnet") and "out_indices" not in kwargs:
        kwargs["out_indices"] = (1, 2, 3, 4)  # strides 4..32; index 0 is the stride-2 stem
    backbone = TimmBackbone(timm_name, pretrained=pretrained, **kwargs)
    strides = backbone.out_strides
    if not backbone.is_plain and strides != list(PYRAMID_STRIDES):
        # timm's feature indices of the pyramid levels, e.g. EfficientNet's (1, 2, 3, 4) after its stride-2 level
        levels = [backbone.body.feature_info.out_indices[strides.index(s)] for s in PYRAMID_STRIDES if s in strides]
        if "out_indices" not in kwargs and len(levels) == len(PYRAMID_STRIDES):
            # take the four pyramid levels, as mmseg configs do with out_indices
            kwargs["out_indices"] = tuple(levels)
            backbone = TimmBackbone(timm_name, pretrained=pretrained, **kwargs)
        else:
            if "out_indices" in kwargs:
                hint = f"model.backbone.kwargs.out_indices={list(kwargs['out_indices'])} must select those levels"
            else:
                hint = "this model cannot serve as a UPerNet / Semantic FPN backbone"
            raise ValueError(
                f"{name}: UPerNet / Semantic FPN need four feature maps at strides {list(PYRAMID_STRIDES)} (or a plain "
                f"ViT's single stride); {timm_name} gives strides {strides}: {hint}"
            )
    if norm is not None and str(norm).lower() == "syncbn":
        backbone = nn.SyncBatchNorm.convert_sync_batchnorm(backbone)
    return backbone
