"""OCRNet (object-contextual representations) on a multi-resolution backbone, as HRFormer trains it for ADE20K.

The official HRFormer segmentation model (``seg/lib/models/nets/hrt.py``, ``HRT_*_OCR_V2``):

1. the four branch maps are resized to the stride-4 branch (bilinear, ``align_corners=True``) and concatenated
   (480 channels for HRFormer-S, 1170 for B);
2. a soft object-region head (here :class:`~.heads.FCNHead`: 3x3 conv 512 + BN + ReLU, 1x1 classifier) predicts
   coarse logits, trained with plain cross-entropy at weight 0.4;
3. the OCR head (:class:`OCRHead`): 3x3 conv to 512, the class-weighted average of the pixel features per object
   region (softmax over pixels of the coarse logits), pixel-region attention (256 key channels), concatenation
   with the pixel features, 1x1 conv-BN-ReLU, dropout 0.05 and the classifier; trained with OHEM cross-entropy
   (:func:`ohem_cross_entropy`);
4. both outputs are resized to the input (bilinear, ``align_corners=True``).

State-dict keys follow mmseg's ``CascadeEncoderDecoder`` with ``FCNHead`` + ``OCRHead``: ``backbone.*``,
``decode_head.0.*`` (the object-region head), ``decode_head.1.*`` (OCR: ``bottleneck``,
``object_context_block.{query,key,value,out}_project``, ``object_context_block.bottleneck``, ``conv_seg``).
The official files name these ``aux_head``, ``conv3x3``, ``ocr_distri_head``, ``cls_head`` and give the convs in
front of BatchNorms a bias; :func:`convert_official_ocr` renames the keys and folds those biases into the
BatchNorms' running means (exact in eval mode, irrelevant in train mode where BN subtracts the batch mean).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .heads import ConvModule, FCNHead, _DecodeHead
from .model import IGNORE_INDEX, Segmentor, segmentation_loss

__all__ = [
    "OCR_KIND",
    "CascadeSegmentor",
    "OCRHead",
    "ObjectAttentionBlock",
    "SpatialGatherModule",
    "convert_official_ocr",
    "describe_ocr_state_dict",
    "ocr_layout",
    "ocrnet",
    "ohem_cross_entropy",
    "segmentor_from_ocr",
]


def ohem_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    thresh: float = 0.9,
    min_kept: int = 100_000,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Online hard example mining cross-entropy, as the HRFormer scripts' ``FSOhemCELoss``.

    Pixels whose predicted probability of the true class is below ``max(thresh, p_k)`` are kept, where ``p_k`` is
    the ``min_kept``-th smallest such probability (so at least ``min_kept`` pixels are kept when there are that
    many); the loss is the mean cross-entropy over the kept pixels.

    Args:
        logits: ``[B, K, H, W]`` at the target's size.
        target: ``[B, H, W]`` labels; ``ignore_index`` pixels are never kept.
        thresh: Probability threshold (0.9 in the HRFormer ADE20K scripts).
        min_kept: Pixels kept at least (100000 in the scripts, per process batch).
        ignore_index: Label to ignore.
    """
    target = target.long()
    valid = target != ignore_index
    if not valid.any():
        return logits.sum() * 0.0
    losses = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")[valid]
    with torch.no_grad():
        prob = F.softmax(logits.float(), dim=1).gather(1, target.clamp(min=0).where(valid, 0).unsqueeze(1))
        prob = prob.squeeze(1)[valid]
        sorted_prob = prob.sort().values
        threshold = max(float(sorted_prob[min(min_kept, sorted_prob.numel() - 1)]), thresh)
        keep = prob < threshold
    if not keep.any():
        return losses.sum() * 0.0
    return losses[keep].mean()


class SpatialGatherModule(nn.Module):
    """Object-region representations: ``softmax_over_pixels(scale * probs) @ feats``.

    ``forward(feats [B, C, H, W], probs [B, K, H, W])`` -> ``[B, C, K, 1]`` (mmseg ``SpatialGatherModule``).
    """

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.scale * probs.flatten(2), dim=2)  # [B, K, HW]
        context = torch.matmul(probs, feats.flatten(2).transpose(1, 2))  # [B, K, C]
        return context.permute(0, 2, 1).unsqueeze(3).contiguous()


class ObjectAttentionBlock(nn.Module):
    """Pixel-region relation (mmseg ``ObjectAttentionBlock``): each pixel attends over the K region vectors.

    query = 2 x (1x1 conv-BN-ReLU) of the pixels, key = 2 x (1x1 conv-BN-ReLU) of the regions, value = 1x1
    conv-BN-ReLU of the regions, attention scaled by ``key_channels^-0.5``, ``out_project`` back to ``channels``,
    then ``bottleneck`` (1x1 conv-BN-ReLU) of ``cat([context, pixels])``.

    ``forward(pixels [B, C, H, W], regions [B, C, K, 1])`` -> ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, key_channels: int, norm: str | None = "bn"):
        super().__init__()
        self.key_channels = key_channels

        def two(cin: int) -> nn.Sequential:
            return nn.Sequential(
                ConvModule(cin, key_channels, 1, norm=norm), ConvModule(key_channels, key_channels, 1, norm=norm)
            )

        self.key_project = two(channels)
        self.query_project = two(channels)
        self.value_project = ConvModule(channels, key_channels, 1, norm=norm)
        self.out_project = ConvModule(key_channels, channels, 1, norm=norm)
        self.bottleneck = ConvModule(channels * 2, channels, 1, norm=norm)

    def forward(self, pixels: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixels.shape
        query = self.query_project(pixels).flatten(2).transpose(1, 2)  # [B, HW, Ck]
        key = self.key_project(regions).flatten(2)  # [B, Ck, K]
        value = self.value_project(regions).flatten(2).transpose(1, 2)  # [B, K, Ck]
        sim = F.softmax(torch.matmul(query, key) * self.key_channels**-0.5, dim=-1)
        context = torch.matmul(sim, value).transpose(1, 2).reshape(b, self.key_channels, h, w)
        context = self.out_project(context)
        return self.bottleneck(torch.cat([context, pixels], dim=1))


class OCRHead(_DecodeHead):
    """OCR decode head (mmseg ``OCRHead`` keys): ``bottleneck`` 3x3 conv, gather, object attention, classifier.

    ``forward(inputs, prev_logits)``: ``inputs[in_index]`` ``[B, in_channels, h, w]`` and the object-region head's
    logits ``[B, K, h, w]`` -> ``[B, K, h, w]``.

    Args:
        in_channels: Channels of the (concatenated) input.
        channels: Width (512).
        ocr_channels: Key channels of the attention (256).
        num_classes: Classes.
        dropout_ratio: Dropout before ``conv_seg`` (HRFormer: 0.05).
        in_index: Input level read.
        norm: ``"bn"`` / ``"syncbn"`` / None.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        ocr_channels: int,
        num_classes: int,
        *,
        dropout_ratio: float = 0.05,
        in_index: int = 0,
        norm: str | None = "bn",
    ):
        super().__init__([in_channels], channels, num_classes, dropout_ratio, [in_index])
        self.bottleneck = ConvModule(in_channels, channels, 3, padding=1, norm=norm)
        self.spatial_gather_module = SpatialGatherModule(1.0)
        self.object_context_block = ObjectAttentionBlock(channels, ocr_channels, norm=norm)

    def forward(self, inputs: Sequence[torch.Tensor], prev_logits: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = self._inputs(inputs)
        feats = self.bottleneck(x)
        context = self.spatial_gather_module(feats, prev_logits)
        return self.cls_seg(self.object_context_block(feats, context))


class ResizeConcat(nn.Module):
    """mmseg's ``resize_concat`` input transform with HRFormer's ``align_corners=True``: every map resized to the
    first one's size and concatenated. list of ``[B, C_i, H_i, W_i]`` -> ``[[B, sum C_i, H_0, W_0]]``."""

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        size = feats[0].shape[-2:]
        up = [feats[0]] + [F.interpolate(f, size=size, mode="bilinear", align_corners=True) for f in feats[1:]]
        return [torch.cat(up, dim=1)]


class CascadeSegmentor(Segmentor):
    """mmseg's ``CascadeEncoderDecoder`` for OCRNet: ``decode_head = [object-region FCN, OCR]``.

    The FCN's logits feed the OCR head; in training both are supervised: the OCR output with
    :func:`ohem_cross_entropy` (or plain cross-entropy with ``ohem_thresh=None``), the FCN output with
    cross-entropy at ``aux_weight`` (0.4). Logits are resized to the (padded) input with ``align_corners``
    (True: HRFormer's official code).
    """

    def __init__(
        self,
        backbone: nn.Module,
        heads: Sequence[nn.Module],
        neck: nn.Module | None = None,
        *,
        ohem_thresh: float | None = 0.9,
        ohem_min_kept: int = 100_000,
        align_corners: bool = True,
        **kwargs: Any,
    ):
        super().__init__(backbone, heads[-1], None, neck, **kwargs)
        self.decode_head = nn.ModuleList(heads)
        self.ohem_thresh = ohem_thresh
        self.ohem_min_kept = int(ohem_min_kept)
        self.align_corners = align_corners

    def _to_size(self, logits: torch.Tensor, padded: Sequence[int], size: Sequence[int]) -> torch.Tensor:  # type: ignore[override]
        logits = F.interpolate(logits, size=tuple(padded), mode="bilinear", align_corners=self.align_corners)
        return logits[..., : size[0], : size[1]]

    def _heads(self, feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        coarse = self.decode_head[0](feats)
        return coarse, self.decode_head[1](feats, coarse)

    def encode_decode(self, images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-2:]
        padded = self._pad(images)
        return self._to_size(self._heads(self.extract_feat(padded))[1], padded.shape[-2:], size)

    def forward_both(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(object-region logits, OCR logits)``, both ``[B, K, H, W]`` at the input size (the official order)."""
        size = images.shape[-2:]
        padded = self._pad(images)
        coarse, fine = self._heads(self.extract_feat(padded))
        return self._to_size(coarse, padded.shape[-2:], size), self._to_size(fine, padded.shape[-2:], size)

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        if targets.dim() == 4 and targets.shape[1] == 1:
            targets = targets[:, 0]
        if targets.dim() != 3 or targets.shape[0] != images.shape[0] or targets.is_floating_point():
            raise ValueError(
                f"targets must be [B, H, W] integer labels for images {tuple(images.shape)}, "
                f"got {tuple(targets.shape)} {targets.dtype}"
            )
        size = targets.shape[-2:]
        padded = self._pad(images)
        coarse, fine = self._heads(self.extract_feat(padded))
        coarse, fine = self._to_size(coarse, padded.shape[-2:], size), self._to_size(fine, padded.shape[-2:], size)
        if self.ohem_thresh is None:
            loss_decode = segmentation_loss(
                fine, targets, ignore_index=self.ignore_index, avg_non_ignore=self.avg_non_ignore
            )
        else:
            loss_decode = ohem_cross_entropy(
                fine, targets, thresh=self.ohem_thresh, min_kept=self.ohem_min_kept, ignore_index=self.ignore_index
            )
        loss_aux = self.aux_weight * segmentation_loss(
            coarse, targets, ignore_index=self.ignore_index, avg_non_ignore=True
        )
        return {"loss": loss_decode + loss_aux, "loss_decode": loss_decode.detach(), "loss_aux": loss_aux.detach()}


def ocrnet(
    backbone: nn.Module,
    *,
    num_classes: int = 150,
    channels: int = 512,
    ocr_channels: int = 256,
    aux_channels: int = 512,
    dropout_ratio: float = 0.05,
    norm: str | None = "bn",
    ohem_thresh: float | None = 0.9,
    ohem_min_kept: int = 100_000,
    **segmentor_kwargs: Any,
) -> CascadeSegmentor:
    """OCRNet as HRFormer's ``HRT_*_OCR_V2``: resize-concat neck, object-region FCN head, OCR head.

    Args:
        backbone: Module with ``out_channels`` (the concatenation's width is their sum).
        num_classes: Classes.
        channels: OCR width (512).
        ocr_channels: OCR key channels (256).
        aux_channels: Object-region head width (512).
        dropout_ratio: Dropout before the OCR classifier (0.05).
        norm: ``"bn"`` or ``"syncbn"``.
        ohem_thresh: OHEM probability threshold (0.9); None: plain cross-entropy on the OCR output.
        ohem_min_kept: OHEM minimum kept pixels (100000).
        **segmentor_kwargs: :class:`~.model.Segmentor` options (``aux_weight``, ``size_divisor``, ...).
    """
    in_channels = sum(backbone.out_channels)
    fcn = FCNHead(
        in_channels,
        aux_channels,
        num_classes,
        num_convs=1,
        kernel_size=3,
        concat_input=False,
        dropout_ratio=0.0,
        in_index=0,
        norm=norm,
    )
    ocr = OCRHead(in_channels, channels, ocr_channels, num_classes, dropout_ratio=dropout_ratio, norm=norm)
    return CascadeSegmentor(
        backbone, [fcn, ocr], ResizeConcat(), ohem_thresh=ohem_thresh, ohem_min_kept=ohem_min_kept, **segmentor_kwargs
    )


# ---------------------------------------------------------------------- official files
_RENAMES = (  # official prefix -> ours (conv, bn) pairs; the BN sits at <prefix>.<n+1>.0
    ("aux_head.0", "decode_head.0.convs.0.conv", "aux_head.1.0", "decode_head.0.convs.0.bn"),
    ("conv3x3.0", "decode_head.1.bottleneck.conv", "conv3x3.1.0", "decode_head.1.bottleneck.bn"),
)
_OCR = "ocr_distri_head.object_context_block"
_OCR_RENAMES = (
    (f"{_OCR}.f_pixel.0", "query_project.0.conv", f"{_OCR}.f_pixel.1.0", "query_project.0.bn"),
    (f"{_OCR}.f_pixel.2", "query_project.1.conv", f"{_OCR}.f_pixel.3.0", "query_project.1.bn"),
    (f"{_OCR}.f_object.0", "key_project.0.conv", f"{_OCR}.f_object.1.0", "key_project.0.bn"),
    (f"{_OCR}.f_object.2", "key_project.1.conv", f"{_OCR}.f_object.3.0", "key_project.1.bn"),
    (f"{_OCR}.f_down.0", "value_project.conv", f"{_OCR}.f_down.1.0", "value_project.bn"),
    (f"{_OCR}.f_up.0", "out_project.conv", f"{_OCR}.f_up.1.0", "out_project.bn"),
    ("ocr_distri_head.conv_bn_dropout.0", "bottleneck.conv", "ocr_distri_head.conv_bn_dropout.1.0", "bottleneck.bn"),
)


def convert_official_ocr(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official HRFormer OCR checkpoint (``HRT_*_OCR_V2``) in this package's (mmseg) layout.

    ``module.`` prefixes and ``relative_position_index`` buffers are dropped; a conv bias ``b`` in front of a
    BatchNorm is folded into it (``running_mean -= b``), which leaves eval outputs unchanged.
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items() if not k.endswith("relative_position_index")}
    out: dict[str, torch.Tensor] = {k: v for k, v in sd.items() if k.startswith("backbone.")}
    pairs = [
        *_RENAMES,
        *(
            (a, f"decode_head.1.object_context_block.{b}", c, f"decode_head.1.object_context_block.{d}")
            for a, b, c, d in _OCR_RENAMES
        ),
    ]
    for conv, new_conv, bn, new_bn in pairs:
        if f"{conv}.weight" not in sd:
            raise KeyError(f"not an official HRFormer OCR checkpoint: {conv}.weight is missing")
        out[f"{new_conv}.weight"] = sd[f"{conv}.weight"]
        for field in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            if f"{bn}.{field}" in sd:
                out[f"{new_bn}.{field}"] = sd[f"{bn}.{field}"]
        if f"{conv}.bias" in sd:
            out[f"{new_bn}.running_mean"] = out[f"{new_bn}.running_mean"] - sd[f"{conv}.bias"]
    for key in ("aux_head.2.weight", "aux_head.2.bias", "cls_head.weight", "cls_head.bias"):
        if key not in sd:
            raise KeyError(f"not an official HRFormer OCR checkpoint: {key} is missing")
    out["decode_head.0.conv_seg.weight"] = sd["aux_head.2.weight"]
    out["decode_head.0.conv_seg.bias"] = sd["aux_head.2.bias"]
    out["decode_head.1.conv_seg.weight"] = sd["cls_head.weight"]
    out["decode_head.1.conv_seg.bias"] = sd["cls_head.bias"]
    return out


#: ``safetensors`` metadata ``kind`` of a converted official HRFormer OCR checkpoint (this package's OCR layout).
OCR_KIND = "hrformer_ocr"
_OURS_MARKER = "decode_head.1.object_context_block."
_BIAS_TABLE = re.compile(r"backbone\.stage(\d)\.(\d+)\.branches\.(\d+)\.\d+\.attn\.attn\.relative_position_bias_table$")


def ocr_layout(state_dict: Mapping[str, Any]) -> str | None:
    """Which OCR layout a (``module.``-stripped) state dict has: ``"official"`` (openseg ``HRT_*_OCR_V2``: top-level
    ``ocr_distri_head.*`` / ``cls_head.*``), ``"ours"`` (``decode_head.1.object_context_block.*``) or None."""
    if any(k.startswith("ocr_distri_head.") for k in state_dict):
        return "official"
    if any(k.startswith(_OURS_MARKER) for k in state_dict):
        return "ours"
    return None


def describe_ocr_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """The ``ocr_hrformer_*`` model an OCR state dict in this package's layout holds, read from the tensor shapes.

    * variant: the stride-4 branch width ``C`` (``backbone.transition1.0.0.weight`` ``[C, 256, 3, 3]``), then the
      heads per branch (bias tables ``[(2w-1)^2, heads]``) and modules per stage (``backbone.stage{2,3,4}.<m>.*``)
      checked against :data:`~crossformer_vision.models.hrformer.HRFORMER_VARIANTS`;
    * window size ``w``: every bias table has ``(2w-1)^2`` rows (one ``w`` for the whole backbone);
    * classes: rows of ``decode_head.1.conv_seg.weight`` ``[K, 512, 1, 1]``.

    Returns:
        ``{"name": "ocr_hrformer_s", "variant", "window_size", "num_classes"}``.

    Raises:
        ValueError: One line naming the missing key or the shape that fits no variant.
    """
    from ...models.hrformer import HRFORMER_VARIANTS

    for key in ("backbone.transition1.0.0.weight", "decode_head.1.conv_seg.weight"):
        if key not in state_dict:
            raise ValueError(f"not an HRFormer OCR checkpoint: {key} is missing")
    width = int(state_dict["backbone.transition1.0.0.weight"].shape[0])
    rows: set[int] = set()
    heads: dict[int, int] = {}
    modules = {2: set(), 3: set(), 4: set()}
    for key, value in state_dict.items():
        if match := _BIAS_TABLE.match(key):
            stage, module, branch = (int(g) for g in match.groups())
            rows.add(int(value.shape[0]))
            heads[branch] = int(value.shape[-1])
            modules.setdefault(stage, set()).add(module)
    if not rows:
        raise ValueError(
            "an OCR checkpoint without relative_position_bias_table tensors: only HRFormer OCR models are read"
        )
    if len(rows) != 1:
        raise ValueError(f"HRFormer OCR checkpoint: expected one bias table size, got {sorted(rows) or 'no'} rows")
    (n,) = rows
    side = math.isqrt(n)
    if side * side != n or side % 2 == 0:
        raise ValueError(f"HRFormer OCR checkpoint: bias tables of {n} rows are not (2w-1)^2 for a window w")
    found = dict(width=width, num_heads=tuple(heads[i] for i in sorted(heads)),
                 num_modules=tuple(len(modules[s]) for s in (2, 3, 4)))  # fmt: skip
    variant = next((v for v, a in HRFORMER_VARIANTS.items() if a["width"] == width), None)
    if variant is None:
        widths = {v: a["width"] for v, a in HRFORMER_VARIANTS.items()}
        raise ValueError(f"HRFormer OCR checkpoint: stride-4 branch width {width} fits no variant {widths}")
    want = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in HRFORMER_VARIANTS[variant].items()}
    differ = [f"{k} {found[k]} (expected {want[k]})" for k in found if found[k] != want[k]]
    if differ:
        raise ValueError(f"HRFormer OCR checkpoint of width {width} is not {variant}: {', '.join(differ)}")
    return dict(
        name=f"ocr_{variant}",
        variant=variant,
        window_size=(side + 1) // 2,
        num_classes=int(state_dict["decode_head.1.conv_seg.weight"].shape[0]),
    )


def segmentor_from_ocr(
    state_dict: Mapping[str, Any],
    *,
    class_names: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
) -> CascadeSegmentor:
    """An ``ocr_hrformer_{t,s,b}`` built from and loaded with an OCR state dict, official or converted layout.

    Args:
        state_dict: ``module.``-stripped tensors: an official openseg ``HRT_*_OCR_V2`` state dict (mapped with
            :func:`convert_official_ocr`) or this package's OCR layout (a ``crossformer seg convert`` file).
        class_names: ``K`` names or None (official files carry none).
        palette: ``[K, 3]`` colours or None.

    Returns:
        The model in eval mode, ``model.window_size`` set. Every key is checked: shape mismatches, missing or
        unexpected keys raise one ``ValueError`` line (only ``num_batches_tracked``, which official files may lack,
        is taken from the model).
    """
    sd = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if ocr_layout(sd) == "official":
        try:
            sd = convert_official_ocr(sd)
        except KeyError as err:
            raise ValueError(err.args[0]) from None
    sd = {k: v for k, v in sd.items() if not k.endswith("relative_position_index")}
    info = describe_ocr_state_dict(sd)
    from .model import build_segmentor

    model = build_segmentor(
        info["name"], num_classes=info["num_classes"], backbone_kwargs={"window_size": info["window_size"]},
        class_names=class_names, palette=palette,
    )  # fmt: skip
    own = model.state_dict()
    mismatched = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in sd.items() if k in own and v.shape != own[k].shape]  # fmt: skip
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if mismatched or missing or unexpected:
        raise ValueError(
            f"the HRFormer OCR checkpoint does not fit {info['name']} (window {info['window_size']}): "
            + "; ".join(
                f"{label}: {items[:4]}{f' ... ({len(items)} in all)' if len(items) > 4 else ''}"
                for label, items in (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected))
                if items
            )
        )
    model.load_state_dict({**{k: v for k, v in own.items() if k.endswith("num_batches_tracked")}, **sd})
    model.window_size = info["window_size"]
    return model.eval()
