"""The segmentor (mmseg's ``EncoderDecoder``) and the UPerNet / Semantic FPN builders.

State-dict keys are ``backbone.*``, ``neck.*``, ``decode_head.*`` and ``auxiliary_head.*`` in mmseg's order, so an
official mmseg checkpoint of a CrossFormer model loads key for key (see :mod:`.convert`)::

    model = build_segmentor("upernet_crossformer_s", num_classes=150)
    losses = model(images, masks)          # train mode: {"loss", "loss_decode", "loss_aux"}
    losses["loss"].backward()
    logits = model.eval()(images)          # eval mode: [B, 150, H, W] at the input size
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import TIMM_ALIASES, TimmBackbone, build_backbone, is_crossformer
from .heads import FCNHead, FPNHead, UPerHead
from .necks import FPN, MultiLevelNeck

__all__ = [
    "HEAD_TYPES",
    "IGNORE_INDEX",
    "Segmentor",
    "build_segmentor",
    "list_segmentors",
    "load_foreign",
    "model_from_metadata",
    "palette_of",
    "segmentation_loss",
    "semantic_fpn",
    "upernet",
    "validate_model_args",
]

IGNORE_INDEX = 255
HEAD_TYPES = ("upernet", "semfpn", "ocr")  # ocr: OCRNet as HRFormer trains it (.ocr)
#: Names of parameters that mmseg's CrossFormer / Swin / ViT recipes exclude from weight decay (substring match).
_NO_DECAY_SUBSTRINGS = ("norm", "absolute_pos_embed", "relative_position_bias_table", "pos_embed", "cls_token")


def segmentation_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    avg_non_ignore: bool = False,
) -> torch.Tensor:
    """mmseg's ``CrossEntropyLoss`` on logits already at the target's size.

    Args:
        logits: ``[B, K, H, W]``.
        target: ``[B, H, W]`` integer labels; ``ignore_index`` pixels contribute nothing.
        ignore_index: Label to ignore.
        avg_non_ignore: Average over labelled pixels only. mmseg's default (``False``, kept here) divides the summed
            loss by *all* pixels, ignored ones included.
    """
    loss = F.cross_entropy(logits, target.long(), ignore_index=ignore_index, reduction="none")
    if avg_non_ignore:
        return loss.sum() / (target != ignore_index).sum().clamp(min=1)
    return loss.mean()


class Segmentor(nn.Module):
    """Backbone, optional neck, decode head and optional auxiliary head: mmseg's ``EncoderDecoder``.

    ``forward(images, targets=None)``: in train mode returns the loss dict (``targets`` required); in eval mode
    returns logits ``[B, K, H, W]`` at the input size.

    Images are zero-padded at the bottom / right to a multiple of ``size_divisor`` before the backbone, and the
    logits are resized (bilinear, ``align_corners=False``) to the padded size and cropped back, as mmseg does with
    padded inputs; so any image size works.

    Args:
        backbone: Module mapping ``[B, 3, H, W]`` to a list of NCHW maps.
        decode_head: Head mapping the (neck's) maps to ``[B, K, h, w]`` logits.
        auxiliary_head: Training-only head (mmseg's FCN on stage 3); its loss is weighted by ``aux_weight``.
        neck: Optional module between backbone and heads (FPN, MultiLevelNeck).
        aux_weight: Weight of the auxiliary loss (0.4 in the UPerNet configs).
        ignore_index: Label ignored by the losses.
        size_divisor: Pad inputs to a multiple of this (``None`` or 1: no padding).
        avg_non_ignore: See :func:`segmentation_loss` (mmseg default ``False``).
        class_names: Optional class names (metadata, used by tables and overlays).
        palette: Optional ``[K, 3]`` colours (metadata).
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        auxiliary_head: nn.Module | None = None,
        neck: nn.Module | None = None,
        *,
        aux_weight: float = 0.4,
        ignore_index: int = IGNORE_INDEX,
        size_divisor: int | None = 32,
        avg_non_ignore: bool = False,
        class_names: Sequence[str] | None = None,
        palette: Sequence[Sequence[int]] | None = None,
    ):
        super().__init__()
        if size_divisor is not None and (not isinstance(size_divisor, int) or size_divisor < 1):
            raise ValueError(f"size_divisor must be a positive int or None, got {size_divisor!r}")
        # Registration order = mmseg's state-dict order: backbone, neck, decode_head, auxiliary_head.
        self.backbone = backbone
        self.neck = neck
        self.decode_head = decode_head
        self.auxiliary_head = auxiliary_head
        self.aux_weight = float(aux_weight)
        self.ignore_index = ignore_index
        self.size_divisor = size_divisor or 1
        self.avg_non_ignore = avg_non_ignore
        self.num_classes: int = decode_head.num_classes
        if class_names is not None and len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
        self.class_names = list(class_names) if class_names is not None else None
        self.palette = [tuple(int(v) for v in c) for c in palette] if palette is not None else None

    # ------------------------------------------------------------------ features and logits
    def extract_feat(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[B, 3, H, W] -> the heads' input maps (backbone, then neck)."""
        feats = self.backbone(images)
        if self.neck is not None:
            feats = self.neck(feats)
        return list(feats)

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        m = self.size_divisor
        if m > 1 and (h % m or w % m):
            images = F.pad(images, (0, -w % m, 0, -h % m))
        return images

    @staticmethod
    def _to_size(logits: torch.Tensor, padded: Sequence[int], size: Sequence[int]) -> torch.Tensor:
        logits = F.interpolate(logits, size=tuple(padded), mode="bilinear", align_corners=False)
        return logits[..., : size[0], : size[1]]

    def encode_decode(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised images -> decode-head logits [B, K, H, W] at the input size."""
        size = images.shape[-2:]
        padded = self._pad(images)
        logits = self.decode_head(self.extract_feat(padded))
        return self._to_size(logits, padded.shape[-2:], size)

    # ------------------------------------------------------------------ training
    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Losses of a batch.

        Args:
            images: ``[B, 3, H, W]`` normalised images.
            targets: ``[B, H, W]`` (or ``[B, 1, H, W]``) integer labels, ``ignore_index`` for unlabelled pixels.

        Returns:
            ``{"loss": decode + aux_weight * aux, "loss_decode": ..., "loss_aux": aux_weight * aux}``. Only
            ``"loss"`` carries gradients: back-propagate it; the others are detached, for logging.
        """
        if targets.dim() == 4 and targets.shape[1] == 1:
            targets = targets[:, 0]
        if targets.dim() != 3 or targets.shape[0] != images.shape[0]:
            raise ValueError(
                f"targets must be [B, H, W] labels for images {tuple(images.shape)}, got {tuple(targets.shape)}"
            )
        if targets.is_floating_point():
            raise TypeError(f"targets must hold integer labels, got dtype {targets.dtype}")
        size = targets.shape[-2:]
        padded = self._pad(images)
        feats = self.extract_feat(padded)

        def head_loss(head: nn.Module) -> torch.Tensor:
            logits = self._to_size(head(feats), padded.shape[-2:], size)
            return segmentation_loss(
                logits, targets, ignore_index=self.ignore_index, avg_non_ignore=self.avg_non_ignore
            )

        loss_decode = head_loss(self.decode_head)
        total = loss_decode
        out = {"loss_decode": loss_decode.detach()}
        if self.auxiliary_head is not None and self.aux_weight:
            loss_aux = self.aux_weight * head_loss(self.auxiliary_head)
            total = total + loss_aux
            out["loss_aux"] = loss_aux.detach()
        return {"loss": total, **out}

    def forward(
        self, images: torch.Tensor, targets: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor] | torch.Tensor:
        """Train mode: :meth:`loss` (``targets`` required). Eval mode: logits ``[B, K, H, W]`` (targets ignored)."""
        if self.training:
            if targets is None:
                raise ValueError(
                    "Segmentor in train mode needs targets ([B, H, W] labels) and returns losses; "
                    "call model.eval() for logits"
                )
            return self.loss(images, targets)
        return self.encode_decode(images)

    # ------------------------------------------------------------------ engine helpers
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameters mmseg's transformer recipes do not decay: names containing ``norm`` (the configs'
        ``paramwise_cfg`` custom key; heads' ``bn`` layers do not match it) and position embeddings."""
        return {name for name, _ in self.named_parameters() if any(s in name for s in _NO_DECAY_SUBSTRINGS)}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if hasattr(self.backbone, "set_grad_checkpointing"):
            self.backbone.set_grad_checkpointing(enable)


# ---------------------------------------------------------------------- builders
def _backbone_levels(backbone: nn.Module) -> tuple[list[int], list[int]]:
    channels = list(getattr(backbone, "out_channels", []))
    strides = list(getattr(backbone, "out_strides", []))
    if not channels or len(channels) != len(strides):
        raise ValueError(f"backbone {type(backbone).__name__} must expose out_channels and out_strides")
    return channels, strides


def _pyramid_neck(backbone: nn.Module) -> MultiLevelNeck | None:
    """mmseg's MLN for plain (single-stride) backbones: rescale to strides 4, 8, 16, 32."""
    if not (isinstance(backbone, TimmBackbone) and backbone.is_plain):
        return None
    stride = backbone.out_strides[0]
    channels = backbone.out_channels
    if len(channels) != 4:
        raise ValueError(f"a plain backbone needs 4 feature levels for the multi-level neck, got {len(channels)}")
    return MultiLevelNeck(channels, channels[0], scales=[stride / s for s in (4, 8, 16, 32)])


def upernet(
    backbone: nn.Module,
    *,
    num_classes: int = 150,
    channels: int = 512,
    aux_channels: int = 256,
    aux: bool = True,
    aux_index: int | None = None,
    pool_scales: Sequence[int] = (1, 2, 3, 6),
    dropout_ratio: float = 0.1,
    norm: str | None = "bn",
    mln: bool = True,
    **segmentor_kwargs: Any,
) -> Segmentor:
    """UPerNet as in the official configs: UPerHead (512, pool scales 1/2/3/6, dropout 0.1) + FCN aux head.

    Plain backbones (ViT / DeiT) get mmseg's MultiLevelNeck (scales 4, 2, 1, 0.5) as ``neck``, unless ``mln=False``
    (mmseg's ``neck=None`` ViT / DeiT rows: the heads read the four stride-16 maps as they are).

    Args:
        backbone: Module with ``out_channels`` / ``out_strides`` (see :func:`~.backbones.build_backbone`).
        num_classes: Classes (150 for ADE20K).
        channels: UPerHead width.
        aux_channels: FCN auxiliary head width (256).
        aux: Add the auxiliary head (training only; weight 0.4).
        aux_index: Level read by the aux head; default 2 (stage 3), 3 for plain ViTs as in mmseg's ViT configs.
        pool_scales: PPM output sizes.
        dropout_ratio: Dropout before the classifiers.
        norm: ``"bn"`` or ``"syncbn"`` (DDP; same keys).
        mln: Give plain backbones the multi-level neck (no effect on pyramid backbones).
        **segmentor_kwargs: :class:`Segmentor` options (``size_divisor``, ``aux_weight``, ``class_names``, ...).
    """
    neck = _pyramid_neck(backbone) if mln else None
    channels_in, _ = _backbone_levels(backbone)
    if neck is None and isinstance(backbone, TimmBackbone) and backbone.is_plain:
        aux_index = 3 if aux_index is None else aux_index  # mmseg's ViT configs: the aux head reads the last map
    if neck is not None:
        channels_in = [neck.out_channels] * len(neck.scales)
        aux_index = 3 if aux_index is None else aux_index
    aux_index = 2 if aux_index is None else aux_index
    decode_head = UPerHead(
        channels_in, channels, num_classes, pool_scales=pool_scales, dropout_ratio=dropout_ratio, norm=norm
    )
    auxiliary_head = None
    if aux:
        auxiliary_head = FCNHead(
            channels_in[aux_index],
            aux_channels,
            num_classes,
            num_convs=1,
            concat_input=False,
            dropout_ratio=dropout_ratio,
            in_index=aux_index,
            norm=norm,
        )
    return Segmentor(backbone, decode_head, auxiliary_head, neck, **segmentor_kwargs)


def semantic_fpn(
    backbone: nn.Module,
    *,
    num_classes: int = 150,
    channels: int = 128,
    neck_channels: int = 256,
    dropout_ratio: float = 0.1,
    norm: str | None = "bn",
    **segmentor_kwargs: Any,
) -> Segmentor:
    """Semantic FPN as in the official configs: FPN neck (256 channels, 4 outputs) + FPNHead (128).

    Plain backbones get ``neck = Sequential(MultiLevelNeck, FPN)`` (keys ``neck.0.*`` / ``neck.1.*``; mmseg has no
    such config).

    Args:
        backbone: Module with ``out_channels`` / ``out_strides``.
        num_classes: Classes.
        channels: FPNHead width.
        neck_channels: FPN output channels.
        dropout_ratio: Dropout before the classifier.
        norm: Norm of the head (the FPN neck has none, as in mmseg).
        **segmentor_kwargs: :class:`Segmentor` options.
    """
    mln = _pyramid_neck(backbone)
    channels_in, strides = _backbone_levels(backbone)
    if mln is not None:
        channels_in, strides = [mln.out_channels] * 4, [4, 8, 16, 32]
    fpn = FPN(channels_in, neck_channels, num_outs=len(channels_in))
    neck: nn.Module = fpn if mln is None else nn.Sequential(mln, fpn)
    decode_head = FPNHead(
        [neck_channels] * len(channels_in),
        channels,
        num_classes,
        feature_strides=strides,
        dropout_ratio=dropout_ratio,
        norm=norm,
    )
    return Segmentor(backbone, decode_head, None, neck, **segmentor_kwargs)


def list_segmentors() -> list[str]:
    """Names accepted by :func:`build_segmentor`: every head on every CrossFormer variant, comparison alias and
    companion pyramid backbone (HRFormer, SOFT, CMT); any other timm model name also works as ``<head>_<timm name>``."""
    from ...models import list_variants
    from ...models.cmt import CMT_VARIANTS
    from ...models.hrformer import HRFORMER_VARIANTS
    from ...models.soft import SOFT_VARIANTS

    backbones = [*list_variants(), *TIMM_ALIASES, *HRFORMER_VARIANTS, *SOFT_VARIANTS, *CMT_VARIANTS]
    return [f"{head}_{name}" for head in HEAD_TYPES for name in backbones]


def build_segmentor(
    name: str,
    *,
    num_classes: int = 150,
    norm: str | None = "bn",
    pretrained: bool = False,
    backbone_weights: str | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Segmentor:
    """Build ``upernet_<backbone>`` or ``semfpn_<backbone>``.

    ``<backbone>`` is a CrossFormer variant (``crossformer_s``, ``crossformerpp_b``, ...; G [7,7,7,7],
    I [8,4,2,1] and the family's official LDA rule unless ``backbone_kwargs`` says otherwise), an alias
    (``swin_t/s/b``, ``resnet101``, ``vit_b16``, ``deit_s16``) or any timm model name.

    Args:
        name: e.g. ``"upernet_crossformer_s"``, ``"semfpn_crossformerpp_s"``, ``"upernet_swin_t"``.
        num_classes: Classes (150 for ADE20K).
        norm: ``"bn"`` (default) or ``"syncbn"`` for DDP training (heads, and BatchNorm backbones).
        pretrained: timm backbones: timm's pretrained weights (must be cached locally).
        backbone_weights: CrossFormer backbones: official / converted checkpoint to initialise from (ImageNet).
        backbone_kwargs: Backbone arguments (``lda_rule``, ``drop_path_rate``, tiny test widths, ...).
        **kwargs: :func:`upernet` / :func:`semantic_fpn` options (``channels``, ``aux``, ``size_divisor``, ...).

    Raises:
        ValueError: Unknown head type or backbone.
    """
    head, sep, backbone_name = name.partition("_")
    if not sep or head not in HEAD_TYPES or not backbone_name:
        raise ValueError(
            f"unknown segmentor {name!r}: expected '<head>_<backbone>' with head in {HEAD_TYPES}, "
            f"e.g. 'upernet_crossformer_s' (see list_segmentors())"
        )
    backbone = build_backbone(
        backbone_name, pretrained=pretrained, weights=backbone_weights, norm=norm, **(backbone_kwargs or {})
    )
    if head == "ocr":
        from .ocr import ocrnet as builder
    else:
        builder = upernet if head == "upernet" else semantic_fpn
    model = builder(backbone, num_classes=num_classes, norm=norm, **kwargs)
    model.name = name
    model.backbone_name = backbone_name
    model.is_crossformer = is_crossformer(backbone_name)
    return model


# ---------------------------------------------------------------------- model files (engine.loading)
def validate_model_args(name: str, args: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The ``model`` config section stored in a file: known keys only (refused otherwise), no weights to fetch or
    read, the backbone arguments through the allow-list of :mod:`crossformer_vision.models.arguments`."""
    from ...engine.config import merge_config
    from ...models.arguments import validate_model_arguments
    from .config import DEFAULTS

    try:
        section = merge_config(DEFAULTS["model"], args, "model")
        if section["name"] != name:
            raise ValueError(f"model.name {section['name']!r} differs from the file's model {name!r}")
        head, _, backbone = name.partition("_")
        if head not in HEAD_TYPES or not backbone:
            raise ValueError(f"{name!r} is not a segmentor name ('<upernet|semfpn>_<backbone>')")
        from .backbones import resolve_timm_name

        timm_name = backbone if is_crossformer(backbone) else resolve_timm_name(backbone)[0]
        b = section["backbone"]
        b["kwargs"] = validate_model_arguments(timm_name, b["kwargs"] or {})
        b["weights"], b["pretrained"] = None, False
        if not isinstance(section["kwargs"], dict) or any(
            not isinstance(v, (int, float, bool, str, list, type(None))) for v in section["kwargs"].values()
        ):
            raise ValueError("model.kwargs must hold plain values")
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None
    return section


def model_from_metadata(meta: Mapping[str, Any], *, lda_rule: str | None = None, **_: Any) -> Segmentor:
    """The segmentor a model file describes, without weights. A trained model keeps the LDA rule it was trained
    with: another ``lda_rule`` is refused, not silently ignored."""
    from .config import build_model

    classes = meta["classes"]
    palette = meta.get("palette")
    palette = _palette(palette, len(classes)) if palette is not None else None
    model = build_model({"model": meta["model_args"]}, len(classes), class_names=classes, palette=palette,
                        load_backbone_weights=False)  # fmt: skip
    own = getattr(model, "lda_rule", None) or meta["model_args"]["backbone"].get("lda_rule")
    if lda_rule is not None and lda_rule != own:
        raise ValueError(
            f"--lda-rule {lda_rule} applies to official mmseg checkpoints; this is a trained run whose model uses "
            + (f"the rule it was trained with ({own})" if own else "a backbone without LDA")
            + ": leave --lda-rule out"
        )
    return model


def _palette(value: Any, num_classes: int) -> list[tuple[int, int, int]] | None:
    import json

    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, list) or len(value) != num_classes:
        return None
    if not all(isinstance(c, list) and len(c) == 3 and all(isinstance(v, int) and 0 <= v < 256 for v in c)
               for c in value):  # fmt: skip
        return None
    return [tuple(c) for c in value]


def palette_of(model: Segmentor) -> Any:
    """``[K, 3]`` uint8 colours of ``model``: its own palette, else a fixed random one."""
    import numpy as np

    from .visualize import make_palette

    return np.asarray(model.palette if model.palette else make_palette(model.num_classes), dtype=np.uint8)


def load_foreign(path: Any, *, trusted: bool = False, lda_rule: str | None = None, **_: Any) -> Any:
    """An official checkpoint (``.pth``: mmseg UPerNet / Semantic FPN, or HRFormer's openseg OCR) or a ``crossformer
    seg convert`` file of one. A converted HRFormer OCR file (``kind`` ``hrformer_ocr``) is rebuilt from its tensors
    and must agree with its metadata's ``model`` and ``window_size``."""
    from pathlib import Path

    from ...engine.loading import LoadedModel
    from ...models.io import read_safetensors_header
    from .convert import load_mmseg_checkpoint
    from .ocr import OCR_KIND

    path = Path(path)
    meta = read_safetensors_header(path)[0] if path.suffix == ".safetensors" else {}
    model = load_mmseg_checkpoint(path, lda_rule=lda_rule or meta.get("lda_rule") or None, trusted=trusted)
    if meta.get("kind") == OCR_KIND:
        said = (meta.get("model"), meta.get("window_size"))
        found = (getattr(model, "name", None), str(getattr(model, "window_size", None)))
        if said != found:
            raise ValueError(
                f"{path}: metadata says model {said[0]} with window {said[1]} but the weights are "
                f"{found[0]} with window {found[1]} (the file was edited); convert the official file again"
            )
    import json

    try:
        names = json.loads(meta["classes"]) if meta.get("classes") else None
    except ValueError:
        names = None
    if isinstance(names, list) and len(names) == model.num_classes and all(isinstance(n, str) for n in names):
        model.class_names = names
    palette = _palette(meta.get("palette"), model.num_classes) if meta.get("palette") else None
    if palette:
        model.palette = palette
    return LoadedModel(
        model=model.eval(),
        task="segmentation",
        name=getattr(model, "name", type(model).__name__),
        classes=model.class_names,
        config=None,
        source=str(path),
        kind="converted" if path.suffix == ".safetensors" else "official",
    )
