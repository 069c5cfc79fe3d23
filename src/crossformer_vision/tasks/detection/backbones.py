"""Backbones for torchvision's detectors: a trunk (CrossFormer, timm Swin / ResNet, or a companion family: SOFT,
CMT, HRFormer) plus an mmdet-equivalent FPN.

A :class:`DetectionBackbone` takes an image batch and returns an ``OrderedDict`` of feature maps with
``out_channels`` set, which is what torchvision's ``RetinaNet`` / ``FasterRCNN`` / ``MaskRCNN`` expect. It has the
layout of torchvision's ``BackboneWithFPN`` (``body`` = the trunk, ``fpn`` = ``FeaturePyramidNetwork``), so the FPN
keys are ``backbone.fpn.*`` inside a detector, where :mod:`.mm_convert` puts the converted mmdet neck, and a
CrossFormer trunk's keys are ``backbone.body.<official key>``.

Two pyramids, as in the official configs:

* ``"retinanet"``: FPN over C3-C5, then P6 = conv(C5) and P7 = conv(P6) with no ReLU in between (mmdet
  ``start_level=1, add_extra_convs='on_input'``; :class:`MMLastLevelP6P7`). Levels ``0, 1, 2, p6, p7`` =
  strides 8..128.
* ``"rcnn"``: FPN over C2-C5 plus a stride-2 max-pool of P5 (``LastLevelMaxPool``). Levels ``0, 1, 2, 3, pool`` =
  strides 4..64.

``frozen_stages=k`` freezes the stem and the first ``k`` stages (no gradients, kept in eval mode: mmdet's
``frozen_stages``; ``0`` freezes only the stem, ``-1`` nothing). ``norm_eval=True`` keeps every BatchNorm of the trunk
in eval mode (running statistics frozen, affine parameters still trained), as mmdet's ResNet configs do.

Companion trunks (:data:`FAMILY_BACKBONES`) are built by the segmentation side's
:func:`~crossformer_vision.tasks.segmentation.backbones.build_family_backbone` (one builder for both tasks); their
stage layouts for ``frozen_stages`` are in :func:`trunk_stages`.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Literal

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ...models import CrossFormerBackbone, create_model, create_timm_model, list_variants, load_official_state_dict
from ...models.cmt import CMT, CMT_VARIANTS
from ...models.hrformer import HRFORMER_VARIANTS, HRFormerBackbone
from ...models.registry import DENSE_GROUP_SIZE, DENSE_INTERVAL
from ...models.registry import dense_lda_rule as default_lda_rule
from ...models.soft import SOFT, SOFT_VARIANTS
from ..segmentation.backbones import TimmBackbone, build_family_backbone
from .mm_convert import MMLastLevelP6P7

__all__ = [
    "BACKBONE_NAMES",
    "FAMILY_BACKBONES",
    "LISTED_FAMILY_BACKBONES",
    "PYRAMIDS",
    "TIMM_BACKBONES",
    "DetectionBackbone",
    "TimmTrunk",
    "build_detection_backbone",
    "build_trunk",
    "trunk_stages",
]

Pyramid = Literal["retinanet", "rcnn"]
PYRAMIDS: tuple[str, ...] = ("retinanet", "rcnn")


#: Comparison backbones (the hierarchical ones of the paper's detection tables): our short name -> timm model name.
TIMM_BACKBONES: dict[str, str] = {
    "swin_t": "swin_tiny_patch4_window7_224",
    "swin_s": "swin_small_patch4_window7_224",
    "swin_b": "swin_base_patch4_window7_224",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
}

#: Companion families usable as trunks (their four stage / branch maps at strides 4-32): every SOFT, CMT and HRFormer
#: variant by its timm name.
FAMILY_BACKBONES: tuple[str, ...] = (*SOFT_VARIANTS, *CMT_VARIANTS, *HRFORMER_VARIANTS)

#: The one variant per companion family that ``list_detectors()`` names (the others are accepted but not listed:
#: they differ only in widths and depths; see :func:`~crossformer_vision.tasks.detection.model.list_detectors`).
#: CMT-S is the CMT paper's detection backbone; SOFT-Small and HRFormer-S the families' usual dense choices.
LISTED_FAMILY_BACKBONES: tuple[str, ...] = ("soft_small", "cmt_s", "hrformer_s")

#: Every backbone name the detection builders accept.
BACKBONE_NAMES: tuple[str, ...] = (*list_variants(), *TIMM_BACKBONES, *FAMILY_BACKBONES)

#: Trunks with BatchNorm layers: ``norm_eval`` defaults to True for them (mmdet's ResNet / HRNet default).
_BATCHNORM_BACKBONES: tuple[str, ...] = ("resnet50", "resnet101", *FAMILY_BACKBONES)


# ---------------------------------------------------------------------------------------------------------------------
# Trunks: image -> list of NCHW maps at strides 4, 8, 16, 32
# ---------------------------------------------------------------------------------------------------------------------


class TimmTrunk(nn.Module):
    """A timm ``features_only`` model as a trunk: ``[B, 3, H, W]`` -> 4 NCHW maps at strides 4, 8, 16, 32.

    * Swin's features are NHWC in timm; they are permuted to NCHW. The model is created with
      ``strict_img_size=False`` so that any input size works (window attention masks are built per input), and the
      input is zero-padded at the bottom / right to a multiple of the patch size 4, as mmdet's Swin does (patch
      merging pads odd maps), so the maps are ``ceil(H / s) x ceil(W / s)``. (timm's ``PatchEmbed`` has a
      ``dynamic_img_pad`` option, but ``SwinTransformer`` does not pass it on, hence the padding here.)
    * ``out_norm=True`` adds a LayerNorm per output, like mmdet's ``SwinTransformer`` (``norm0..3``; new weights).

    Args:
        model_name: a timm model name, e.g. ``"swin_tiny_patch4_window7_224"`` or ``"resnet50"``.
        pretrained: load timm's default pretrained weights (needs the Hugging Face hub or its cache).
        pretrained_file: load weights from this local file instead (timm ``pretrained_cfg_overlay``).
        out_norm: add a LayerNorm after each output (default: True for Swin, False otherwise).
        normed_levels: the outputs (0..3 for strides 4..32) that get that LayerNorm: the ones the pyramid reads
            (RetinaNet reads C3-C5, as mmdet's ``out_indices=(1, 2, 3)``; an unread norm would never get a gradient
            and stall DDP). The others pass through.
        **kwargs: timm model arguments (``drop_path_rate``, ``depths``, ``layers``, ...).
    """

    def __init__(
        self,
        model_name: str,
        *,
        pretrained: bool = False,
        pretrained_file: str | os.PathLike | None = None,
        out_norm: bool | None = None,
        normed_levels: tuple[int, ...] = (0, 1, 2, 3),
        **kwargs: Any,
    ):
        super().__init__()
        self.is_swin = model_name.startswith("swin")
        if self.is_swin:
            kwargs.setdefault("strict_img_size", False)
        if pretrained_file is not None:
            pretrained = True
            kwargs["pretrained_cfg_overlay"] = dict(file=os.fspath(pretrained_file))
        # ResNet's feature index 0 is the stem (stride 2); the stages are 1..4. Swin has exactly 4 (strides 4..32).
        out_indices = (1, 2, 3, 4) if not self.is_swin else (0, 1, 2, 3)
        self.model = create_timm_model(
            model_name,
            pretrained=pretrained,
            local_file_hint="model.backbone_weights=/path/to/weights",
            features_only=True,
            out_indices=out_indices,
            **kwargs,
        )
        self.out_channels = list(self.model.feature_info.channels())
        self.out_strides = list(self.model.feature_info.reduction())
        if self.out_strides != [4, 8, 16, 32]:
            raise ValueError(f"{model_name}: expected feature strides [4, 8, 16, 32], got {self.out_strides}")
        self.nhwc = str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC")
        norms = [nn.LayerNorm(c) if i in normed_levels else nn.Identity() for i, c in enumerate(self.out_channels)]
        self.out_norms = nn.ModuleList(norms) if (self.is_swin if out_norm is None else out_norm) else None
        self.pad_multiple = 4 if self.is_swin else 1

    def stages(self) -> list[list[nn.Module | nn.Parameter]]:
        """``[stem, stage 1, ..., stage 4]`` as lists of modules (for ``frozen_stages``)."""
        children = dict(self.model.named_children())
        if self.is_swin:
            # timm puts the patch merging at the start of stages 2-4 (mmdet at the end of stages 1-3)
            groups = [[children["patch_embed"]]] + [[children[f"layers_{i}"]] for i in range(4)]
        else:
            groups = [[children[n] for n in ("conv1", "bn1") if n in children]]
            groups += [[children[f"layer{i}"]] for i in range(1, 5)]
        if self.out_norms is not None:
            for i, norm in enumerate(self.out_norms):
                groups[i + 1].append(norm)
        return groups

    def forward(self, x: Tensor) -> list[Tensor]:
        """``[B, 3, H, W]`` -> 4 maps ``[B, C_i, ceil(H / s_i), ceil(W / s_i)]`` for ``s_i`` = 4, 8, 16, 32."""
        h, w = x.shape[-2:]
        pad_h, pad_w = (-h) % self.pad_multiple, (-w) % self.pad_multiple
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        feats = self.model(x)
        if self.out_norms is not None:
            feats = [norm(f if self.nhwc else f.permute(0, 2, 3, 1)) for norm, f in zip(self.out_norms, feats)]
            return [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return [f.permute(0, 3, 1, 2).contiguous() for f in feats] if self.nhwc else list(feats)


#: A group of a trunk's stage layout: modules and (for position tables / tokens held by the model itself) parameters.
StageGroup = list[nn.Module | nn.Parameter]


def _family_stages(model: nn.Module) -> list[StageGroup]:
    """``[stem, stage 1, ..., stage 4]`` of a companion family's model, each family's own division:

    * SOFT: stem ``patch_embed1`` (its three conv-BN-ReLU) + ``pos_embed1``; stage 1 ``block1``; stage ``i`` = 2..4
      ``patch_embed{i}``, ``pos_embed{i}``, ``block{i}`` (stage 4 also ``cls_token``, which only its attention reads);
      as the official ``group_matcher`` except that the class token goes with the stage that uses it.
    * CMT: stem ``stem_conv1..3`` / ``stem_norm1..3``; stage ``i`` ``patch_embed_{a..d}``, ``relative_pos_{a..d}``,
      ``blocks_{a..d}`` (the official ``group_matcher``).
    * HRFormer: HRNet's stages, as mmdet's ``HRNet._freeze_stages``: stem ``conv1``, ``bn1``, ``conv2``, ``bn2``;
      stage 1 ``layer1`` + ``transition1``; stages 2, 3 ``stage{i}`` + ``transition{i}``; stage 4 ``stage4``.
    """
    if isinstance(model, SOFT):
        groups: list[StageGroup] = [[model.patch_embed1, model.pos_embed1], [model.block1]]
        groups += [[getattr(model, f"{n}{i}") for n in ("patch_embed", "pos_embed", "block")] for i in (2, 3, 4)]
        groups[4].append(model.cls_token)
        return groups
    if isinstance(model, CMT):
        stem = [m for n, m in model.named_children() if n.startswith("stem_")]
        parts = ("patch_embed", "relative_pos", "blocks")
        return [stem] + [[getattr(model, f"{n}_{s}") for n in parts] for s in "abcd"]
    if isinstance(model, HRFormerBackbone):
        return [
            [model.conv1, model.bn1, model.conv2, model.bn2],
            [model.layer1, model.transition1],
            [model.stage2, model.transition2],
            [model.stage3, model.transition3],
            [model.stage4],
        ]
    raise TypeError(f"no stage layout known for {type(model).__name__}")


def trunk_stages(body: nn.Module) -> list[StageGroup]:
    """``[stem, stage 1, stage 2, stage 3, stage 4]`` of a trunk, each a list of modules (and parameters)."""
    if isinstance(body, CrossFormerBackbone):
        return [[body.patch_embed]] + [[stage] for stage in body.layers]
    if isinstance(body, TimmTrunk):
        return body.stages()
    if isinstance(body, HRFormerBackbone):
        return _family_stages(body)
    if isinstance(body, TimmBackbone) and isinstance(getattr(body.body, "model", None), (SOFT, CMT)):
        return _family_stages(body.body.model)
    raise TypeError(
        f"no stage layout known for {type(body).__name__}; use a CrossFormerBackbone, a TimmTrunk or a SOFT / CMT / "
        "HRFormer trunk of build_trunk"
    )


def _unread_modules(body: nn.Module, levels: tuple[int, ...]) -> list[nn.Module]:
    """Trunk modules that only compute outputs the pyramid does not read (``levels``: the outputs it reads).

    HRFormer's last module fuses every branch into every output; with RetinaNet's C3-C5 its stride-4 output is
    unread, so the 1 x 1 convs that bring branches 2-4 into it would never get a gradient (and stall DDP). The
    other trunks compute each output from the previous one, so all their parameters are used.
    """
    if not isinstance(body, HRFormerBackbone):
        return []
    fuse = body.stage4[-1].fuse_layers
    read = {body.out_indices[i] for i in levels}
    return [m for i, row in enumerate(fuse) if i not in read for j, m in enumerate(row) if j != i]


def build_trunk(
    name: str,
    *,
    lda_rule: str | None = None,
    weights: str | os.PathLike | Mapping | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The trunk of a detection backbone: 4 NCHW maps at strides 4, 8, 16, 32.

    Companion trunks (SOFT, CMT, HRFormer; :data:`FAMILY_BACKBONES`) come from the segmentation side's
    :func:`~crossformer_vision.tasks.segmentation.backbones.build_family_backbone`: HRFormer's four branches
    (:class:`~crossformer_vision.models.hrformer.HRFormerBackbone`, official dense keys), SOFT's / CMT's four stage
    maps (timm ``features_only`` in a :class:`~crossformer_vision.tasks.segmentation.backbones.TimmBackbone`).
    HRFormer's and SOFT's maps are ``ceil(H / s) x ceil(W / s)``. CMT's 2 x 2 patch convs would drop odd rows, so
    its input is zero-padded at the bottom / right to a multiple of 32 (a no-op inside a detector, which pads to 32
    itself) and its maps are exactly ``1 / s`` of the padded input. Their stage layout is in :func:`trunk_stages`.

    Args:
        name: a CrossFormer variant (``crossformer_s``, ``crossformerpp_b``, ...), a comparison backbone
            (``swin_t`` / ``swin_s`` / ``swin_b``, ``resnet50`` / ``resnet101``; see :data:`TIMM_BACKBONES`), or a
            companion variant (``soft_tiny`` .. ``soft_huge``, ``cmt_ti`` / ``xs`` / ``s`` / ``b``,
            ``hrformer_t`` / ``s`` / ``b``).
        lda_rule: CrossFormer only; default :func:`default_lda_rule` (the rule of the official detection weights).
        weights: CrossFormer: a checkpoint path or object of any official layout (ImageNet classification, backbone
            only, or a full mmdet / mmseg checkpoint: its ``backbone.*`` entries), loaded with every key checked.
            timm: a local weights file, or ``"timm"`` for timm's default pretrained weights. Companion families: an
            official ImageNet file (path or read checkpoint) through the family's ``checkpoint_filter_fn``, the
            ImageNet head dropped, every other key checked.
        **kwargs: model arguments. CrossFormer: ``group_size`` / ``crs_interval`` (default: the official detection
            values ``(7, 7, 7, 7)`` / ``(8, 4, 2, 1)`` for every variant), ``drop_path_rate``, and architecture
            overrides (``embed_dim``, ``depths``, ``num_heads``) for tiny test models. timm and companion families:
            their model arguments (``drop_path_rate``; ``embed_dims`` / ``depths`` / ``width`` ... for tiny models).

    Raises:
        ValueError: unknown name (listing the known ones) or weights that do not fit.
    """
    if name in TIMM_BACKBONES:
        if lda_rule is not None:
            raise ValueError(f"lda_rule applies to CrossFormer backbones only, not to {name!r}")
        if weights is not None and not isinstance(weights, (str, os.PathLike)):
            raise TypeError(f"{name}: weights must be a file path or 'timm', got {type(weights).__name__}")
        if weights == "timm":
            return TimmTrunk(TIMM_BACKBONES[name], pretrained=True, **kwargs)
        return TimmTrunk(TIMM_BACKBONES[name], pretrained_file=weights, **kwargs)
    if name in FAMILY_BACKBONES:
        if lda_rule is not None:
            raise ValueError(f"lda_rule applies to CrossFormer backbones only, not to {name!r}")
        if isinstance(weights, str) and weights == "timm":
            raise ValueError(f"{name}: timm has no hub weights for it; pass a local official ImageNet file")
        if name in CMT_VARIANTS:
            kwargs.setdefault("pad_multiple", 32)
        return build_family_backbone(name, weights=weights, **kwargs)
    if name not in list_variants():
        raise ValueError(f"unknown detection backbone {name!r}; known backbones: {', '.join(BACKBONE_NAMES)}")
    kwargs.setdefault("group_size", DENSE_GROUP_SIZE)
    kwargs.setdefault("crs_interval", DENSE_INTERVAL)
    body = create_model(name, dense=True, lda_rule=lda_rule or default_lda_rule(name), **kwargs)
    if weights is not None:
        if isinstance(weights, (str, os.PathLike)):
            from ...models.io import read_checkpoint

            weights = read_checkpoint(weights)
        load_official_state_dict(body, weights)
    return body


# ---------------------------------------------------------------------------------------------------------------------
# Trunk + FPN
# ---------------------------------------------------------------------------------------------------------------------


class DetectionBackbone(nn.Module):
    """Trunk + FPN with torchvision's ``BackboneWithFPN`` layout (``body``, ``fpn``, ``out_channels``).

    Args:
        body: a trunk returning 4 NCHW maps (C2..C5) and exposing ``out_channels`` (see :func:`build_trunk`).
        pyramid: ``"retinanet"`` (C3-C5 + P6/P7 from C5) or ``"rcnn"`` (C2-C5 + max-pool P6).
        fpn_channels: FPN width (256 in every official config).
        frozen_stages: freeze the stem and the first ``k`` stages (``-1``: nothing).
        norm_eval: keep the trunk's BatchNorm layers in eval mode during training.

    Trunk modules that only compute an output the pyramid does not read (HRFormer's fusion into its stride-4 branch
    under RetinaNet) are frozen too: they could never get a gradient.

    Shapes:
        ``[B, 3, H, W]`` -> ``OrderedDict`` of ``[B, fpn_channels, H / s, W / s]`` (P6 / P7 rounded up) for ``H``, ``W``
        multiples of 32 (torchvision's detectors pad to 32), ``s`` = 8, 16, 32, 64, 128 (``retinanet``: keys ``0``,
        ``1``, ``2``, ``p6``, ``p7``) or 4, 8, 16, 32, 64 (``rcnn``: keys ``0``-``3``, ``pool``).
    """

    def __init__(
        self,
        body: nn.Module,
        pyramid: Pyramid,
        *,
        fpn_channels: int = 256,
        frozen_stages: int = -1,
        norm_eval: bool = False,
    ):
        super().__init__()
        if pyramid not in PYRAMIDS:
            raise ValueError(f"unknown pyramid {pyramid!r}; expected one of {PYRAMIDS}")
        channels = list(body.out_channels)
        if len(channels) != 4:
            raise ValueError(f"the trunk must return 4 maps (C2..C5), it has out_channels {channels}")
        self.body = body
        self.pyramid = pyramid
        if pyramid == "retinanet":
            self.in_indices = (1, 2, 3)
            extra = MMLastLevelP6P7(channels[-1], fpn_channels, on_input=True)
            self.strides = (8, 16, 32, 64, 128)
        else:
            self.in_indices = (0, 1, 2, 3)
            extra = LastLevelMaxPool()
            self.strides = (4, 8, 16, 32, 64)
        self.fpn = FeaturePyramidNetwork([channels[i] for i in self.in_indices], fpn_channels, extra_blocks=extra)
        self.out_channels = fpn_channels
        self.featmap_names = [str(i) for i in range(len(self.in_indices))]  # the FPN levels (not the extra ones)

        num_stages = len(trunk_stages(body)) - 1
        if not -1 <= frozen_stages <= num_stages:
            raise ValueError(f"frozen_stages must be in [-1, {num_stages}], got {frozen_stages}")
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        for item in self._frozen_items():
            for p in [item] if isinstance(item, nn.Parameter) else item.parameters():
                p.requires_grad_(False)
        for module in _unread_modules(body, self.in_indices):
            module.requires_grad_(False)
        self.train()

    def _frozen_items(self) -> list[nn.Module | nn.Parameter]:
        return [m for group in trunk_stages(self.body)[: self.frozen_stages + 1] for m in group]

    def _frozen_modules(self) -> list[nn.Module]:
        return [m for m in self._frozen_items() if isinstance(m, nn.Module)]

    def train(self, mode: bool = True) -> DetectionBackbone:
        """Train mode, except frozen stages (and BatchNorm layers when ``norm_eval``), which stay in eval mode."""
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.norm_eval:
                for module in self.body.modules():
                    if isinstance(module, nn.modules.batchnorm._BatchNorm):
                        module.eval()
        return self

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(j), feats[i]) for j, i in enumerate(self.in_indices)))


def build_detection_backbone(
    name: str,
    pyramid: Pyramid,
    *,
    fpn_channels: int = 256,
    frozen_stages: int | None = None,
    norm_eval: bool | None = None,
    lda_rule: str | None = None,
    weights: str | os.PathLike | Mapping | None = None,
    **kwargs: Any,
) -> DetectionBackbone:
    """:func:`build_trunk` + :class:`DetectionBackbone`, with the official defaults per backbone.

    Defaults: ResNets ``frozen_stages=1, norm_eval=True`` (mmdet's R-50 / R-101 configs); CrossFormer and Swin
    ``frozen_stages=-1`` (nothing frozen) and ``norm_eval=False`` (they have no BatchNorm); SOFT, CMT and HRFormer
    ``frozen_stages=-1`` and ``norm_eval=True``: they hold BatchNorm layers (HRFormer throughout, CMT in its stem and
    FFNs, SOFT in its patch embeddings), whose statistics mmdet keeps frozen for its BatchNorm trunks (ResNet,
    HRNet) at 2 images per GPU. Pass ``norm_eval=False`` to train them, e.g. for a trunk trained from scratch.
    """
    is_resnet = name.startswith("resnet")
    if frozen_stages is None:
        frozen_stages = 1 if is_resnet else -1
    if norm_eval is None:
        norm_eval = name in _BATCHNORM_BACKBONES
    if name in TIMM_BACKBONES and pyramid == "retinanet":
        kwargs.setdefault("normed_levels", (1, 2, 3))  # C2 is not read
    body = build_trunk(name, lda_rule=lda_rule, weights=weights, **kwargs)
    return DetectionBackbone(body, pyramid, fpn_channels=fpn_channels, frozen_stages=frozen_stages, norm_eval=norm_eval)
