"""Model constructor arguments read from a file's metadata: an allow-list with bounded values.

A checkpoint is untrusted data. Its metadata names a timm model and the arguments that rebuild the architecture,
which the loader passes to ``timm.create_model(name, **kwargs)``. ``timm.create_model`` also takes arguments that
download (``pretrained``, ``pretrained_cfg``, ``pretrained_cfg_overlay``), read files (``checkpoint_path``,
``cache_dir``) or configure code (layers, callables); and an architecture argument with a huge value allocates
gigabytes. :func:`validate_model_arguments` lets through only architecture arguments of known type and bounded
range, and only for a registered model name; everything else is refused with one line naming the key.

:func:`estimate_parameters` and :func:`meta_state_shapes` build the model on the ``meta`` device (no memory), so a
loader can compare the architecture with the file (its size, its tensor shapes) before allocating real weights.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import timm
import torch

from ..layers.grouping import LDA_RULES
from .crossformer import GLOBAL_POOLS, VARIANT_ARGS

__all__ = [
    "MAX_PARAMETERS",
    "estimate_parameters",
    "meta_state_shapes",
    "validate_model_arguments",
    "validate_model_name",
]

#: The most parameters a model described by a file may have (4 GB of float32; CrossFormer++-H has 96 M).
MAX_PARAMETERS = 1_000_000_000

_MAX_NAME = 200
_MAX_STAGES = 8
_MAX_BLOCKS = 256  # all stages together

#: timm's pooling names (the generic ``global_pool`` choices of other timm models).
_TIMM_POOLS = ("", "avg", "max", "avgmax", "catavgmax", "token", "map", "fast", "avgmaxc")

_Check = Callable[[str, Any], Any]


class _Refused(ValueError):
    pass


def _refuse(key: str, why: str) -> _Refused:
    return _Refused(f"checkpoint metadata refused: model argument {key!r} {why}")


# ------------------------------------------------------------------------------------------------ value checks
def _int(low: int, high: int) -> _Check:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise _refuse(key, f"must be a whole number from {low} to {high}, got {_short(value)}")
        return value

    return check


def _float(low: float, high: float, *, allow_none: bool = False) -> _Check:
    def check(key: str, value: Any) -> float | None:
        if value is None and allow_none:
            return None
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if not ok or not low <= value <= high:
            raise _refuse(key, f"must be a number from {low} to {high}, got {_short(value)}")
        return float(value)

    return check


def _bool(*, allow_none: bool = False) -> _Check:
    def check(key: str, value: Any) -> bool | None:
        if value is None and allow_none:
            return None
        if not isinstance(value, bool):
            raise _refuse(key, f"must be true or false, got {_short(value)}")
        return value

    return check


def _choice(options: tuple[str, ...]) -> _Check:
    def check(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise _refuse(key, f"must be one of {', '.join(repr(o) for o in options)}, got {_short(value)}")
        return value

    return check


def _seq(item: _Check, low: int, high: int) -> _Check:
    def check(key: str, value: Any) -> tuple:
        if not isinstance(value, (list, tuple)) or not low <= len(value) <= high:
            raise _refuse(key, f"must be a list of {low} to {high} entries, got {_short(value)}")
        return tuple(item(f"{key}[{i}]", v) for i, v in enumerate(value))

    return check


def _one_or_seq(item: _Check, high: int) -> _Check:
    seq = _seq(item, 1, high)

    def check(key: str, value: Any) -> Any:
        return seq(key, value) if isinstance(value, (list, tuple)) else item(key, value)

    return check


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_RATE = _float(0.0, 1.0)
_IMG_SIZE = _one_or_seq(_int(1, 4096), 2)

#: Arguments any timm model may take from a file: regularisation, pooling, input size and channels.
GENERIC_ARGUMENTS: dict[str, _Check] = {
    "drop_rate": _RATE,
    "drop_path_rate": _RATE,
    "proj_drop_rate": _RATE,
    "attn_drop_rate": _RATE,
    "pos_drop_rate": _RATE,
    "patch_drop_rate": _RATE,
    "drop_block_rate": _RATE,
    "global_pool": _choice(_TIMM_POOLS),
    "img_size": _IMG_SIZE,
    "in_chans": _int(1, 64),
    # the widths and depths of timm's transformers (Swin, ViT / DeiT) that the demos and presets shrink; the loader
    # compares the model they build with the file's tensor shapes before allocating, so the file bounds them
    "embed_dim": _int(1, 4096),
    "depth": _int(1, 64),
    "depths": _seq(_int(1, 64), 1, 8),
    "num_heads": _one_or_seq(_int(1, 128), 8),
    "window_size": _one_or_seq(_int(1, 64), 2),
    "patch_size": _one_or_seq(_int(1, 64), 2),
}

_KERNEL = _int(1, 64)

#: The architecture arguments of :class:`~crossformer_vision.models.crossformer.CrossFormer` (not ``norm_layer``:
#: a callable; not ``num_classes``: the class count comes from the file's class names).
CROSSFORMER_ARGUMENTS: dict[str, _Check] = {
    **{k: GENERIC_ARGUMENTS[k] for k in ("drop_rate", "drop_path_rate", "proj_drop_rate", "attn_drop_rate")},
    "in_chans": GENERIC_ARGUMENTS["in_chans"],
    "img_size": _one_or_seq(_int(32, 4096), 2),
    "global_pool": _choice(GLOBAL_POOLS),
    "embed_dim": _int(1, 1024),
    "depths": _seq(_int(1, 64), 1, _MAX_STAGES),
    "num_heads": _one_or_seq(_int(1, 256), _MAX_STAGES),
    "group_size": _one_or_seq(_int(1, 256), _MAX_STAGES),
    "crs_interval": _one_or_seq(_int(1, 256), _MAX_STAGES),
    "mlp_ratio": _one_or_seq(_float(0.0625, 16.0), _MAX_STAGES),
    "qkv_bias": _bool(),
    "qk_scale": _float(1e-6, 100.0, allow_none=True),
    "embed_kernel_sizes": _seq(_KERNEL, 1, 8),
    "merge_kernel_sizes": _seq(_seq(_KERNEL, 1, 8), 0, _MAX_STAGES - 1),
    "use_acl": _bool(),
    "lda_rule": _choice(LDA_RULES),
    "patch_norm": _bool(),
    "fused_attn": _bool(allow_none=True),
}

_STAGE_INTS = _seq(_int(1, 4096), 4, 4)

#: Architecture arguments of the other families of this package (:mod:`.soft`, :mod:`.cmt`, :mod:`.augvit`).
FAMILY_ARGUMENTS: dict[str, dict[str, _Check]] = {
    "soft": {
        **{k: GENERIC_ARGUMENTS[k] for k in ("drop_rate", "drop_path_rate", "attn_drop_rate", "in_chans", "img_size")},
        "global_pool": _choice(("token", "avg")),
        "embed_dims": _STAGE_INTS,
        "num_heads": _seq(_int(1, 256), 4, 4),
        "mlp_ratios": _seq(_float(0.0625, 16.0), 4, 4),
        "depths": _seq(_int(1, 64), 4, 4),
        "sr_ratios": _seq(_int(1, 64), 4, 4),
        "conv_sizes": _seq(_int(0, 31), 3, 3),
        "qkv_bias": _bool(),
        "newton_max_iter": _int(1, 100),
    },
    "cmt": {
        **{k: GENERIC_ARGUMENTS[k] for k in ("drop_rate", "drop_path_rate", "attn_drop_rate", "in_chans")},
        "img_size": _one_or_seq(_int(32, 4096), 2),
        "global_pool": _choice(("avg",)),
        "embed_dims": _STAGE_INTS,
        "stem_channel": _int(1, 1024),
        "fc_dim": _int(1, 8192),
        "num_heads": _seq(_int(1, 256), 4, 4),
        "mlp_ratios": _seq(_float(0.0625, 16.0), 4, 4),
        "depths": _seq(_int(1, 64), 4, 4),
        "qk_ratio": _int(1, 64),
        "sr_ratios": _seq(_int(1, 64), 4, 4),
        "qkv_bias": _bool(),
        "head_drop_rate": _RATE,
    },
    "augvit": {
        **GENERIC_ARGUMENTS,
        "mode": _choice(("base", "linear", "circulant", "linear2", "circulant2")),
        "num_cir": _int(1, 64),
        "embed_dim": _int(1, 4096),
        "depth": _int(1, 64),
        "num_heads": _int(1, 256),
        "mlp_ratio": _float(0.0625, 16.0),
        "dynamic_img_size": _bool(),
    },
    "hrformer": {  # tiny widths for tests and the demo; window_size 13 / 15 of the official dense configs
        **{k: GENERIC_ARGUMENTS[k] for k in ("drop_rate", "drop_path_rate", "attn_drop_rate", "proj_drop_rate")},
        "in_chans": GENERIC_ARGUMENTS["in_chans"],
        "global_pool": _choice(GLOBAL_POOLS),
        "width": _int(1, 512),
        "num_heads": _seq(_int(1, 256), 4, 4),
        "num_modules": _seq(_int(1, 16), 3, 3),
        "num_blocks": _int(1, 16),
        "window_size": _int(1, 64),
        "mlp_ratio": _float(0.0625, 16.0),
    },
}


def _family(model_name: str) -> str | None:
    """``"soft"`` / ``"cmt"`` / ``"augvit"`` for their registered models (pretrained tags included), else None."""
    from .augvit import AUGVIT_VARIANTS
    from .cmt import CMT_VARIANTS
    from .soft import SOFT_VARIANTS

    arch = model_name.split(".")[0]
    from .hrformer import HRFORMER_VARIANTS

    families = (("soft", SOFT_VARIANTS), ("cmt", CMT_VARIANTS), ("augvit", AUGVIT_VARIANTS))
    for family, variants in (*families, ("hrformer", HRFORMER_VARIANTS)):
        if arch in variants:
            return family
    return None


#: Keys refused with the reason spelled out (everything outside the allow-list is refused as well).
_DANGEROUS = {
    "pretrained": "would make the loader download or read pretrained weights",
    "pretrained_cfg": "would make the loader download or read pretrained weights",
    "pretrained_cfg_overlay": "would make the loader download or read pretrained weights",
    "checkpoint_path": "would make the loader read another file",
    "cache_dir": "would make the loader write or read a cache folder",
    "num_classes": "is not taken from a file's model arguments (the class count comes from its class names)",
}


# ------------------------------------------------------------------------------------------------ the checks
@functools.lru_cache(maxsize=1)
def _registered_models() -> frozenset[str]:
    # architectures, and architectures with a pretrained tag (the tag only picks a pretrained config: nothing is
    # downloaded without ``pretrained``, which is refused)
    return frozenset(timm.list_models()) | frozenset(timm.list_pretrained())


def validate_model_name(model_name: Any) -> str:
    """``model_name`` if it is a registered timm model name (``resnet50`` or ``resnet50.a1_in1k``; never an
    ``hf-hub:`` / ``local-dir:`` name or a path)."""
    if not isinstance(model_name, str) or not model_name or len(model_name) > _MAX_NAME:
        raise ValueError(f"checkpoint metadata refused: the model name {_short(model_name)} is not a model name")
    if model_name not in _registered_models():
        raise ValueError(
            f"checkpoint metadata refused: {_short(model_name)} is not a registered timm model name "
            "(see timm.list_models())"
        )
    return model_name


def _is_crossformer(model_name: str) -> bool:
    return model_name in VARIANT_ARGS


def validate_model_arguments(model_name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Model arguments read from a file's metadata, checked against an allow-list with bounded values.

    CrossFormer variants take their architecture arguments (``embed_dim``, ``depths``, ``num_heads``,
    ``group_size``, ``crs_interval``, ``mlp_ratio``, kernel sizes, ``lda_rule``, drop rates, ``global_pool``,
    ``img_size``, ...), SOFT / CMT / AugViT theirs (:data:`FAMILY_ARGUMENTS`); other timm models only the generic
    ones (drop rates, ``global_pool``, ``img_size``, ``in_chans``). The CrossFormer / SOFT / CMT / AugViT
    architecture is then built on the ``meta`` device (no memory) and refused above :data:`MAX_PARAMETERS`
    parameters or when the arguments do not fit together.

    Args:
        model_name: A registered timm model name.
        kwargs: The arguments (JSON values: numbers, booleans, strings, lists).

    Returns:
        The checked arguments (lists as tuples), to pass to ``timm.create_model(model_name, **args)``.

    Raises:
        ValueError: One line naming the refused key (or the model name) and why.
    """
    model_name = validate_model_name(model_name)
    if not isinstance(kwargs, Mapping):
        raise ValueError(
            f"checkpoint metadata refused: the model arguments must be a JSON object, got {_short(kwargs)}"
        )
    family = _family(model_name)
    allowed = (
        CROSSFORMER_ARGUMENTS
        if _is_crossformer(model_name)
        else FAMILY_ARGUMENTS[family]
        if family
        else GENERIC_ARGUMENTS
    )
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if not isinstance(key, str) or len(key) > _MAX_NAME:
            raise ValueError(f"checkpoint metadata refused: model argument name {_short(key)} is not a name")
        if key in allowed:
            out[key] = allowed[key](key, value)
            continue
        if key in _DANGEROUS:
            raise _refuse(key, _DANGEROUS[key])
        if any(word in key.lower() for word in ("url", "file", "path", "dir", "cfg", "hub", "layer", "fn", "cls")):
            raise _refuse(key, "could make the loader read files, download or run code")
        raise _refuse(key, f"is not accepted for {model_name} (accepted: {', '.join(sorted(allowed))})")
    if _is_crossformer(model_name):
        _check_crossformer(model_name, out)
    elif family:
        _check_size(model_name, out)
    return out


def _check_size(model_name: str, args: Mapping[str, Any]) -> None:
    """Block count and parameters (counted on the meta device) of a SOFT / CMT / AugViT model."""
    blocks = args.get("depths", args.get("depth", 0))
    if (sum(blocks) if isinstance(blocks, tuple) else blocks) > _MAX_BLOCKS:
        raise _refuse("depths", f"describes more than {_MAX_BLOCKS} blocks")
    count = _count_on_meta(model_name, args)
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"checkpoint metadata refused: the model arguments describe {count:,} parameters, more than the "
            f"{MAX_PARAMETERS:,} accepted"
        )


def _check_crossformer(model_name: str, args: Mapping[str, Any]) -> None:
    merged = {**VARIANT_ARGS[model_name], **args}
    if sum(merged["depths"]) > _MAX_BLOCKS:
        raise _refuse("depths", f"has {sum(merged['depths'])} blocks in all, more than {_MAX_BLOCKS}")
    count = _count_on_meta(model_name, args)
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"checkpoint metadata refused: the model arguments describe {count:,} parameters, more than the "
            f"{MAX_PARAMETERS:,} accepted (embed_dim={merged['embed_dim']}, depths={list(merged['depths'])})"
        )


def _count_on_meta(model_name: str, args: Mapping[str, Any], num_classes: int | None = None) -> int:
    return sum(math.prod(shape) for shape in _meta_shapes(model_name, args, num_classes, parameters=True).values())


def _meta_shapes(
    model_name: str, args: Mapping[str, Any], num_classes: int | None, parameters: bool = False
) -> dict[str, tuple[int, ...]]:
    extra = {} if num_classes is None else {"num_classes": num_classes}
    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, **args, **extra)
    except (ValueError, TypeError, AssertionError, RuntimeError, IndexError, ZeroDivisionError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"checkpoint metadata refused: the model arguments do not describe a valid {model_name} ({reason})"
        ) from None
    items = model.named_parameters() if parameters else model.state_dict().items()
    return {name: tuple(t.shape) for name, t in items}


def estimate_parameters(model_name: str, kwargs: Mapping[str, Any]) -> int:
    """The number of parameters of ``timm.create_model(model_name, **kwargs)``, counted on the ``meta`` device.

    ``kwargs`` is validated first (:func:`validate_model_arguments`); nothing is allocated.
    """
    args = validate_model_arguments(model_name, kwargs)
    return _count_on_meta(model_name, args)


def meta_state_shapes(model_name: str, num_classes: int, kwargs: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """The state-dict tensor shapes of ``timm.create_model(model_name, num_classes=num_classes, **kwargs)``.

    Built on the ``meta`` device after :func:`validate_model_arguments`, so a loader can compare them with a
    safetensors header (:func:`~crossformer_vision.models.io.read_safetensors_header`) before allocating.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not 0 <= num_classes <= 100_000:
        raise ValueError(f"checkpoint metadata refused: {_short(num_classes)} classes (expected 0 to 100000)")
    args = validate_model_arguments(model_name, kwargs)
    return _meta_shapes(model_name, args, num_classes)
