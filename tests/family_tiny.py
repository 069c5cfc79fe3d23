"""Tiny configurations of the companion families (HRFormer, SOFT, CMT, AugViT), shared by their tests.

Widths and depths are cut so that a model builds and runs in milliseconds; everything else stays the variant's own
(AugViT's shortcut mode, CMT's MLP ratios and head dropout, SOFT's landmark ratios, ...), so every registered name
keeps its architecture logic.
"""

from __future__ import annotations

from typing import Any

from crossformer_vision.models.augvit import AUGVIT_VARIANTS
from crossformer_vision.models.cmt import CMT_VARIANTS
from crossformer_vision.models.hrformer import HRFORMER_VARIANTS
from crossformer_vision.models.soft import SOFT_VARIANTS

FAMILY_TINY: dict[str, dict[str, Any]] = {
    "hrformer": dict(width=4, num_heads=(1, 1, 2, 2), num_modules=(1, 1, 1), num_blocks=1, window_size=3),
    "soft": dict(embed_dims=(16, 32, 48, 64), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1)),
    "cmt": dict(embed_dims=(16, 32, 48, 64), stem_channel=8, depths=(1, 1, 1, 1), fc_dim=32, img_size=64),
    # three blocks: timm's default ViT feature indices are the last three blocks
    "augvit": dict(embed_dim=32, num_heads=2, depth=3),
}

#: The registered names of each family.
FAMILIES: dict[str, list[str]] = {
    "hrformer": list(HRFORMER_VARIANTS),
    "soft": list(SOFT_VARIANTS),
    "cmt": list(CMT_VARIANTS),
    "augvit": list(AUGVIT_VARIANTS),
}
#: Every registered name of the four families.
FAMILY_NAMES = [name for names in FAMILIES.values() for name in names]


def family_tiny(name: str) -> dict[str, Any]:
    """Keyword arguments that make the registered model ``name`` (e.g. ``"cmt_b"``) tiny."""
    return dict(FAMILY_TINY[name.split("_")[0]])
