"""Building blocks of CrossFormer / CrossFormer++."""

from .attention import MASK_VALUE, GroupAttention
from .embed import CrossScaleEmbedding, CrossScalePatchMerging, split_channels
from .grouping import LDA_RULES, GroupLayout, LdaRule, group_geometry, plan_group_layout
from .linear import fused_linear, set_fused_linear
from .mlp import Mlp
from .position_bias import DynamicPositionBias, relative_offsets, relative_position_index
from .recompute import gelu_linear, norm_linear, plain_linear, set_recompute

__all__ = [
    "LDA_RULES",
    "MASK_VALUE",
    "CrossScaleEmbedding",
    "CrossScalePatchMerging",
    "DynamicPositionBias",
    "GroupAttention",
    "GroupLayout",
    "LdaRule",
    "Mlp",
    "fused_linear",
    "gelu_linear",
    "group_geometry",
    "norm_linear",
    "plain_linear",
    "plan_group_layout",
    "relative_offsets",
    "relative_position_index",
    "set_fused_linear",
    "set_recompute",
    "split_channels",
]
