"""The CrossFormer / CrossFormer++ model family."""

from . import augvit, cmt, hrformer, soft  # noqa: F401  (register SOFT / CMT / AugViT / HRFormer with timm)
from ._official import (
    FLAVOURS,
    build_from_official,
    build_from_state_dict,
    detect_variant,
    infer_architecture,
    load_official_state_dict,
)
from .crossformer import (
    MIN_INPUT_SIZE,
    VARIANT_ARGS,
    CrossFormer,
    CrossFormerBackbone,
    CrossFormerBlock,
    CrossFormerStage,
    checkpoint_filter_fn,
)
from .registry import DENSE_GROUP_SIZE, DENSE_INTERVAL, create_model, create_timm_model, dense_lda_rule, list_variants

__all__ = [
    "DENSE_GROUP_SIZE",
    "DENSE_INTERVAL",
    "FLAVOURS",
    "MIN_INPUT_SIZE",
    "VARIANT_ARGS",
    "CrossFormer",
    "CrossFormerBackbone",
    "CrossFormerBlock",
    "CrossFormerStage",
    "build_from_official",
    "build_from_state_dict",
    "checkpoint_filter_fn",
    "create_model",
    "create_timm_model",
    "dense_lda_rule",
    "detect_variant",
    "infer_architecture",
    "list_variants",
    "load_official_state_dict",
]
