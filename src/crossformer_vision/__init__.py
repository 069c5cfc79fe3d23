"""CrossFormer and CrossFormer++ vision transformers, exact to the official code, timm-native.

Importing the package registers the eight variants in timm's registry::

    import crossformer_vision
    import timm

    model = timm.create_model("crossformer_s", num_classes=10)
"""

from .models import (
    FLAVOURS,
    MIN_INPUT_SIZE,
    CrossFormer,
    CrossFormerBackbone,
    build_from_official,
    build_from_state_dict,
    create_model,
    detect_variant,
    list_variants,
    load_official_state_dict,
)

__version__ = "0.1.0"

__all__ = [
    "FLAVOURS",
    "MIN_INPUT_SIZE",
    "CrossFormer",
    "CrossFormerBackbone",
    "__version__",
    "build_from_official",
    "build_from_state_dict",
    "create_model",
    "detect_variant",
    "list_variants",
    "load_official_state_dict",
]
