"""Create variants by name, with clear errors for unknown names."""

from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import nn

from .crossformer import VARIANT_ARGS, CrossFormerBackbone

__all__ = ["DENSE_GROUP_SIZE", "DENSE_INTERVAL", "create_model", "create_timm_model", "dense_lda_rule", "list_variants"]

#: Group size G and LDA interval I of every official CrossFormer / CrossFormer++ detection and segmentation config.
DENSE_GROUP_SIZE = (7, 7, 7, 7)
DENSE_INTERVAL = (8, 4, 2, 1)


def list_variants() -> list[str]:
    """Registered CrossFormer / CrossFormer++ variant names, in paper order."""
    return list(VARIANT_ARGS)


def dense_lda_rule(name: str) -> str:
    """The LDA rule the official dense (detection / segmentation) weights of variant ``name`` were trained with.

    CrossFormer v1 (``crossformer_*``) dense weights use the v1 dense code's rule (``"fixed_interval"``),
    CrossFormer++ (``crossformerpp_*``) ones the main-branch rule (``"fixed_group"``).
    """
    if name not in VARIANT_ARGS:
        raise ValueError(f"{name!r} is not a CrossFormer variant; expected one of {list(VARIANT_ARGS)}")
    return "fixed_group" if name.startswith("crossformerpp_") else "fixed_interval"


def create_model(name: str, *, dense: bool = False, **kwargs: Any) -> nn.Module:
    """Create a registered variant (``crossformer_s``, ``crossformerpp_b``, ...).

    Args:
        name: Variant name; see :func:`list_variants`.
        dense: Return the dense-prediction :class:`CrossFormerBackbone` (forward gives NCHW stage maps).
        **kwargs: Model arguments (``num_classes``, ``group_size``, ``crs_interval``, ``lda_rule``,
            ``drop_path_rate``, ``img_size``, ...), passed to timm for classification models.

    Raises:
        ValueError: Unknown name (the message lists the closest ones).
    """
    if name not in VARIANT_ARGS:
        close = difflib.get_close_matches(name, VARIANT_ARGS, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown CrossFormer variant {name!r}{hint} Available: {', '.join(VARIANT_ARGS)}")
    if dense:
        for key in ("num_classes", "global_pool", "pretrained"):
            kwargs.pop(key, None)
        model = CrossFormerBackbone(**{**VARIANT_ARGS[name], **kwargs})
        model.pretrained_cfg = dict(architecture=name)
        return model
    return timm.create_model(name, **kwargs)


def create_timm_model(name: str, *, pretrained: bool = False, local_file_hint: str = "", **kwargs: Any) -> nn.Module:
    """``timm.create_model`` whose missing pretrained weights (no cache, no connection) are a clear error.

    Args:
        name: timm model name.
        pretrained: timm's pretrained weights: from the local Hugging Face cache, or downloaded.
        local_file_hint: how the caller's config passes a local weights file instead (added to the message).
        **kwargs: ``timm.create_model`` arguments (a ``pretrained_cfg_overlay`` with a ``file`` reads that file).
    """
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except OSError as err:
        if not pretrained or "file" in (kwargs.get("pretrained_cfg_overlay") or {}):
            raise
        from huggingface_hub.constants import HF_HUB_CACHE

        hint = f", or use a local weights file: {local_file_hint}" if local_file_hint else ""
        raise FileNotFoundError(
            f"timm's pretrained weights for {name} are not in the local Hugging Face cache ({HF_HUB_CACHE}) and "
            f"could not be downloaded ({type(err).__name__}). Where there is a connection, run "
            f"python -c \"import timm; timm.create_model('{name}', pretrained=True)\" and copy that cache here"
            f"{hint}"
        ) from None
