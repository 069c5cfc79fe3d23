"""Build a :class:`~.model.Segmentor` from an official mmseg checkpoint of a CrossFormer model.

Everything is read from the tensors: the backbone variant (:func:`crossformer_vision.detect_variant`), UPerNet vs
Semantic FPN, head widths, number of classes, the auxiliary head's input width. Nothing of mmcv / mmseg is needed::

    model = load_mmseg_checkpoint("upernet_crossformer_s_ade20k.pth")   # eval mode, weights loaded
    convert_mmseg("upernet_crossformer_s_ade20k.pth", "upernet_s.safetensors")   # ``crossformer seg convert``

**LDA rule.** The released CrossFormer v1 (T/S/B/L) segmentation weights were trained with the v1 dense code
(``lda_rule="fixed_interval"``), CrossFormer++ ones with the main-branch code (``"fixed_group"``); the rule is chosen
from the weights (CrossFormer++ has activation cooling layers) unless ``lda_rule=`` overrides it.

**Auxiliary head.** Its input width is read from ``auxiliary_head.convs.0.conv.weight.shape[1]``. One official
config (main-branch ``upernet_crossformer_s_ade20k.py``) declares 256 where CrossFormer-S's stage 3 has 384, so a
checkpoint whose aux weights do not fit the backbone's stage-3 width may exist. Such an aux head cannot run on this
backbone. The auxiliary head is only used by the training loss, so by default (``aux="auto"``) it is **dropped with a
warning** and the model is fully usable for inference and fine-tuning of the decode head; ``aux="strict"`` raises a
``ValueError`` instead, ``aux="drop"`` always drops it silently.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...models import (
    DENSE_GROUP_SIZE,
    DENSE_INTERVAL,
    VARIANT_ARGS,
    CrossFormerBackbone,
    detect_variant,
    infer_architecture,
)
from ...models._keys import DERIVED_BUFFER_SUFFIXES
from ...models.io import atomic_save_safetensors
from ...utils.paths import output_file
from .heads import FCNHead, FPNHead, UPerHead
from .model import Segmentor
from .necks import FPN

__all__ = [
    "AUX_POLICIES",
    "MMSEG_KIND",
    "convert_mmseg",
    "describe_mmseg_state_dict",
    "load_mmseg_checkpoint",
    "segmentor_from_mmseg",
]

#: ``safetensors`` metadata ``kind`` of a converted mmseg checkpoint (mmseg's key layout).
MMSEG_KIND = "mmseg"

AUX_POLICIES = ("auto", "strict", "drop")
_COMPONENTS = ("backbone", "neck", "decode_head", "auxiliary_head")
_DEFAULT_POOL_SCALES = (1, 2, 3, 6)


def _split_checkpoint(obj: Mapping[str, Any]) -> tuple[dict[str, dict[str, torch.Tensor]], Mapping[str, Any]]:
    """``{'meta': ..., 'state_dict': ...}`` (or a bare state dict) -> per-component state dicts and the meta."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected an mmseg checkpoint dict or a state dict, got {type(obj).__name__}")
    meta = obj.get("meta") if isinstance(obj.get("meta"), Mapping) else {}
    state_dict = obj.get("state_dict", obj)
    if not isinstance(state_dict, Mapping) or not state_dict:
        raise ValueError("no state dict in the checkpoint: expected {'state_dict': {...}} or a bare state dict")
    parts: dict[str, dict[str, torch.Tensor]] = {c: {} for c in _COMPONENTS}
    unknown = []
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        name = key[len("module.") :] if key.startswith("module.") else key
        prefix, _, rest = name.partition(".")
        if prefix in parts and rest:
            parts[prefix][rest] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"not an mmseg EncoderDecoder state dict: keys outside {_COMPONENTS}: {unknown[:6]}"
            + (f" ... ({len(unknown)} in all)" if len(unknown) > 6 else "")
        )
    if not parts["backbone"] or not parts["decode_head"]:
        raise ValueError("the checkpoint needs backbone.* and decode_head.* weights (an mmseg segmentor checkpoint)")
    return parts, meta


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := regex.match(k))})


def _norm_of(sd: Mapping[str, torch.Tensor]) -> str | None:
    return "bn" if any(".bn." in k for k in sd) else None


def describe_mmseg_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What an mmseg checkpoint holds, read from its tensor shapes.

    Returns:
        ``{"head": "upernet" | "semfpn", "variant": name or None, "architecture": {...}, "num_classes": K,
        "decode_head": {...kwargs}, "neck": {...} or None, "auxiliary_head": {...} or None, "class_names",
        "palette"}``; the head entries are constructor kwargs of :mod:`.heads`.
    """
    parts, meta = _split_checkpoint(checkpoint)
    backbone_sd = {k: v for k, v in parts["backbone"].items() if not k.endswith(DERIVED_BUFFER_SUFFIXES)}
    arch = infer_architecture(backbone_sd)
    arch.pop("num_classes", None)
    variant = detect_variant(backbone_sd)
    dec = parts["decode_head"]
    info: dict[str, Any] = {"variant": variant, "architecture": arch, "neck": None, "auxiliary_head": None}
    num_classes = dec["conv_seg.weight"].shape[0]
    if "psp_modules.0.1.conv.weight" in dec:
        info["head"] = "upernet"
        num_laterals = _count(dec, r"lateral_convs\.(\d+)\.")
        info["decode_head"] = dict(
            in_channels=[dec[f"lateral_convs.{i}.conv.weight"].shape[1] for i in range(num_laterals)]
            + [dec["psp_modules.0.1.conv.weight"].shape[1]],
            channels=dec["bottleneck.conv.weight"].shape[0],
            num_classes=num_classes,
            num_pool_scales=_count(dec, r"psp_modules\.(\d+)\."),
            norm=_norm_of(dec),
        )
    elif "scale_heads.0.0.conv.weight" in dec:
        info["head"] = "semfpn"
        neck = parts["neck"]
        if "lateral_convs.0.conv.weight" not in neck:
            raise ValueError("Semantic FPN checkpoint without neck.lateral_convs.*: expected an mmseg FPN neck")
        num_levels = _count(neck, r"lateral_convs\.(\d+)\.")
        info["neck"] = dict(
            in_channels=[neck[f"lateral_convs.{i}.conv.weight"].shape[1] for i in range(num_levels)],
            out_channels=neck["lateral_convs.0.conv.weight"].shape[0],
            num_outs=_count(neck, r"fpn_convs\.(\d+)\."),
        )
        num_heads = _count(dec, r"scale_heads\.(\d+)\.")
        convs = [_count(dec, rf"scale_heads\.{i}\.(\d+)\.conv\.weight") for i in range(num_heads)]
        info["decode_head"] = dict(
            in_channels=[dec[f"scale_heads.{i}.0.conv.weight"].shape[1] for i in range(num_heads)],
            channels=dec["scale_heads.0.0.conv.weight"].shape[0],
            num_classes=num_classes,
            # FPNHead gives level i max(1, log2(s_i / s_0)) convs, so the stride ratio follows from the count.
            stride_ratios=[1] + [2**n for n in convs[1:]],
            norm=_norm_of(dec),
        )
    else:
        raise ValueError(
            "unknown decode head: expected UPerHead (decode_head.psp_modules.*) or FPNHead (decode_head.scale_heads.*)"
        )
    aux = parts["auxiliary_head"]
    if aux:
        if "convs.0.conv.weight" not in aux:
            raise ValueError("auxiliary_head.* is not an mmseg FCNHead (auxiliary_head.convs.0.conv.weight missing)")
        weight = aux["convs.0.conv.weight"]
        info["auxiliary_head"] = dict(
            in_channels=weight.shape[1],
            channels=weight.shape[0],
            num_classes=aux["conv_seg.weight"].shape[0],
            num_convs=_count(aux, r"convs\.(\d+)\.conv\.weight"),
            kernel_size=weight.shape[-1],
            concat_input="conv_cat.conv.weight" in aux,
            norm=_norm_of(aux),
        )
    classes, palette = _meta_classes(meta)
    if classes is not None and len(classes) != num_classes:
        classes = None  # meta of another dataset (e.g. a fine-tuned model): the weights decide
    info.update(num_classes=num_classes, class_names=classes, palette=palette if classes is not None else None)
    return info


def _meta_classes(meta: Mapping[str, Any]) -> tuple[list[str] | None, list | None]:
    """Class names / palette from mmcv (``meta['CLASSES']``) or mmengine (``meta['dataset_meta']``) metadata."""
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), Mapping) else {}
    classes = meta.get("CLASSES") or dataset_meta.get("classes")
    palette = meta.get("PALETTE") or dataset_meta.get("palette")
    if classes is None or not all(isinstance(c, str) for c in classes):
        return None, None
    if palette is not None:
        try:
            palette = [[int(v) for v in colour] for colour in palette]
        except (TypeError, ValueError):
            palette = None
        if palette is not None and (len(palette) != len(classes) or any(len(c) != 3 for c in palette)):
            palette = None
    return list(classes), palette


def segmentor_from_mmseg(
    checkpoint: Mapping[str, Any],
    *,
    lda_rule: str | None = None,
    aux: str = "auto",
    pool_scales: tuple[int, ...] | None = None,
    size_divisor: int | None = 32,
) -> Segmentor:
    """A :class:`Segmentor` built and loaded from an mmseg checkpoint object (``{'meta', 'state_dict'}``).

    Args:
        checkpoint: The loaded checkpoint, or its state dict (``module.`` prefixes are accepted).
        lda_rule: Override of the LDA rule (default: ``"fixed_interval"`` for CrossFormer v1 weights,
            ``"fixed_group"`` for CrossFormer++ weights).
        aux: What to do with auxiliary-head weights that do not fit the backbone's stage 3: ``"auto"`` drop them
            with a warning, ``"strict"`` raise, ``"drop"`` always drop the auxiliary head.
        pool_scales: UPerHead pool scales (default (1, 2, 3, 6); they are not recorded in the weights).
        size_divisor: Pad inputs to a multiple of this (see :class:`Segmentor`).

    Returns:
        The model in eval mode.

    Raises:
        ValueError: Not an mmseg CrossFormer segmentor checkpoint, widths that do not fit the backbone, or
            (``aux="strict"``) an auxiliary head that does not fit stage 3.
    """
    if aux not in AUX_POLICIES:
        raise ValueError(f"aux must be one of {AUX_POLICIES}, got {aux!r}")
    info = describe_mmseg_state_dict(checkpoint)
    parts, _ = _split_checkpoint(checkpoint)
    arch = dict(info["architecture"])
    variant = info["variant"]
    if lda_rule is None:
        lda_rule = "fixed_group" if arch.get("use_acl") else "fixed_interval"
    if variant is not None:
        arch.setdefault("drop_path_rate", VARIANT_ARGS[variant].get("drop_path_rate", 0.1))
    backbone = CrossFormerBackbone(group_size=DENSE_GROUP_SIZE, crs_interval=DENSE_INTERVAL, lda_rule=lda_rule, **arch)
    backbone.pretrained_cfg = dict(architecture=variant or "custom")
    levels = list(backbone.out_channels)

    dec = info["decode_head"]
    neck = None
    aux_head = None
    if info["head"] == "upernet":
        if dec["in_channels"] != levels:
            raise ValueError(
                f"decode_head in_channels {dec['in_channels']} do not fit the backbone's stage widths {levels}"
            )
        scales = tuple(pool_scales) if pool_scales is not None else _DEFAULT_POOL_SCALES
        if len(scales) != dec["num_pool_scales"]:
            raise ValueError(
                f"the checkpoint has {dec['num_pool_scales']} PPM branches; pass pool_scales= with that many sizes "
                f"(the official value {_DEFAULT_POOL_SCALES} has {len(_DEFAULT_POOL_SCALES)})"
            )
        decode_head = UPerHead(
            dec["in_channels"], dec["channels"], dec["num_classes"], pool_scales=scales, norm=dec["norm"]
        )
    else:
        neck_info = info["neck"]
        if neck_info["in_channels"] != levels:
            raise ValueError(f"neck in_channels {neck_info['in_channels']} do not fit the backbone widths {levels}")
        neck = FPN(neck_info["in_channels"], neck_info["out_channels"], num_outs=neck_info["num_outs"])
        strides = [backbone.out_strides[0] * r for r in dec["stride_ratios"]]
        decode_head = FPNHead(
            dec["in_channels"], dec["channels"], dec["num_classes"], feature_strides=strides, norm=dec["norm"]
        )

    aux_info = info["auxiliary_head"]
    aux_keys_dropped = False
    if aux_info is not None and aux != "drop":
        stage3 = levels[2] if len(levels) > 2 else None
        if aux_info["in_channels"] != stage3:
            message = (
                f"auxiliary_head.convs.0.conv.weight takes {aux_info['in_channels']} input channels but the backbone's "
                f"stage 3 (in_index 2) has {stage3} (stage widths {levels}); this aux head cannot run on this "
                "backbone (cf. the official upernet_crossformer_s config's in_channels=256)."
            )
            if aux == "strict":
                raise ValueError(message + " Pass aux='auto' or 'drop' to load the model without it.")
            warnings.warn(message + " It is dropped: inference does not use it.", stacklevel=2)
            aux_keys_dropped = True
        else:
            aux_head = FCNHead(
                aux_info["in_channels"],
                aux_info["channels"],
                aux_info["num_classes"],
                num_convs=aux_info["num_convs"],
                kernel_size=aux_info["kernel_size"],
                concat_input=aux_info["concat_input"],
                in_index=2,
                norm=aux_info["norm"],
            )
    elif aux_info is not None:
        aux_keys_dropped = True

    model = Segmentor(
        backbone,
        decode_head,
        aux_head,
        neck,
        size_divisor=size_divisor,
        class_names=info["class_names"],
        palette=info["palette"],
    )
    state = {}
    for component, sd in parts.items():
        if component == "auxiliary_head" and aux_keys_dropped:
            continue
        for key, value in sd.items():
            if component == "backbone" and key.endswith(DERIVED_BUFFER_SUFFIXES):
                continue
            state[f"{component}.{key}"] = value
    own = model.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if mismatched or missing or unexpected:
        raise ValueError(
            "the mmseg checkpoint does not fit the model built from its shapes: "
            + "; ".join(
                f"{label}: {items[:5]}{' ...' if len(items) > 5 else ''}"
                for label, items in (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected))
                if items
            )
        )
    model.load_state_dict(state)
    model.name = f"{info['head']}_{variant or 'custom'}"
    model.lda_rule = lda_rule
    return model.eval()


def _ocr_state_dict(checkpoint: Any) -> dict[str, torch.Tensor] | None:
    """The ``module.``-stripped tensors of ``checkpoint`` (``{'state_dict': ...}`` or bare) if they are an HRFormer
    OCR state dict (official openseg or converted layout, see :func:`~.ocr.ocr_layout`), else None."""
    from .ocr import ocr_layout

    if not isinstance(checkpoint, Mapping):
        return None
    inner = checkpoint.get("state_dict", checkpoint)
    if not isinstance(inner, Mapping):
        return None
    sd = {k.removeprefix("module."): v for k, v in inner.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return sd if ocr_layout(sd) is not None else None


def load_mmseg_checkpoint(
    path: str | os.PathLike,
    *,
    lda_rule: str | None = None,
    aux: str = "auto",
    trusted: bool = False,
    **kwargs: Any,
) -> Segmentor:
    """Read an official segmentation checkpoint file (no pickled code runs unless ``trusted``) and build the model.

    mmseg CrossFormer layouts go to :func:`segmentor_from_mmseg`; an HRFormer OCR state dict (the official openseg
    ``HRT_*_OCR_V2`` files, or a ``crossformer seg convert`` file of one) to :func:`~.ocr.segmentor_from_ocr`.

    Args:
        path: ``.pth`` file (mmcv / mmengine / openseg checkpoint) or ``.safetensors`` state dict.
        lda_rule: Override of the LDA rule (see :func:`segmentor_from_mmseg`; refused for HRFormer files).
        aux: Auxiliary-head policy (see :func:`segmentor_from_mmseg`).
        trusted: Unpickle without the allow-list (only for files whose origin you trust).
        **kwargs: :func:`segmentor_from_mmseg` options (``pool_scales``, ``size_divisor``).
    """
    from ...models.io import read_checkpoint
    from .ocr import segmentor_from_ocr

    checkpoint = read_checkpoint(path, trusted=trusted)
    ocr = _ocr_state_dict(checkpoint)
    if ocr is None:
        return segmentor_from_mmseg(checkpoint, lda_rule=lda_rule, aux=aux, **kwargs)
    if lda_rule is not None:
        raise ValueError(f"--lda-rule applies to CrossFormer checkpoints; {Path(path).name} is an HRFormer OCR model")
    classes, palette = _meta_classes(checkpoint.get("meta") if isinstance(checkpoint.get("meta"), Mapping) else {})
    model = segmentor_from_ocr(ocr)
    if classes is not None and len(classes) == model.num_classes:
        model.class_names, model.palette = classes, palette
    model.lda_rule = None
    return model


def convert_mmseg(
    src: str | os.PathLike, dst: str | os.PathLike, *, lda_rule: str | None = None, trusted: bool = False
) -> dict[str, str]:
    """An official mmseg or HRFormer OCR checkpoint -> a safetensors file that ``crossformer seg eval / predict`` load.

    The model is built and loaded first (every key checked), so a file that is written also loads. Keys keep the
    mmseg layout (HRFormer OCR: this package's ``ocr_hrformer_*`` layout, ``kind`` :data:`~.ocr.OCR_KIND`, plus the
    ``window_size``); the metadata records the model, the LDA rule, the class names and palette.

    Returns:
        The metadata written.
    """
    from .ocr import OCR_KIND

    dst = output_file(dst)
    model = load_mmseg_checkpoint(src, lda_rule=lda_rule, trusted=trusted)
    meta = {
        "format": "crossformer-vision",
        "task": "segmentation",
        "kind": MMSEG_KIND,
        "model": model.name,
        "lda_rule": model.lda_rule,
        "num_classes": str(model.num_classes),
        "source": Path(src).name,
    }
    if getattr(model, "window_size", None) is not None:  # HRFormer OCR: no LDA; the window its bias tables give
        del meta["lda_rule"]
        meta.update(kind=OCR_KIND, window_size=str(model.window_size))
    if model.class_names is not None:  # no entry when the checkpoint has no class names (never "null")
        meta["classes"] = json.dumps(model.class_names)
    if model.palette:
        meta["palette"] = json.dumps([list(c) for c in model.palette])
    atomic_save_safetensors(model.state_dict(), dst, meta)
    return meta
