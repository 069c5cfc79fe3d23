"""Class relevance maps for CrossFormer and timm's ViT / DeiT / Swin, and their faithfulness tests.

``explain(model, images, target=None, method="relevance")`` gives one map per image at input resolution
(:mod:`.methods`); :mod:`.propagation` places group attention in token space and composes stages;
:mod:`.faithfulness` runs the papers' perturbation, deletion / insertion and localisation tests. See docs/explain.md.
"""

from .methods import METHODS, explain, resolve_targets
from .propagation import apply_groups, dense_from_groups, layout_token_index, window_token_index
from .tracing import family_of, trace

__all__ = [
    "METHODS",
    "apply_groups",
    "dense_from_groups",
    "explain",
    "family_of",
    "layout_token_index",
    "resolve_targets",
    "trace",
    "window_token_index",
]
