"""State-dict key handling shared by every official layout (pure dict manipulation, no model code)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = [
    "DERIVED_BUFFER_SUFFIXES",
    "HEAD_KEYS",
    "extract_backbone_state_dict",
    "state_mismatch",
    "unwrap_state_dict",
]

#: Buffers the v1 code stored per block; they are recomputed from the group shape, so they are dropped.
DERIVED_BUFFER_SUFFIXES = (".attn.biases", ".attn.relative_position_index", ".attn_mask")
#: Classification-only entries that the dense backbones do not have.
HEAD_KEYS = ("norm.weight", "norm.bias", "head.weight", "head.bias")
_CONTAINER_KEYS = ("model", "state_dict", "model_ema", "state_dict_ema", "module")
_PREFIXES = ("module.", "backbone.", "model.", "encoder.")


def unwrap_state_dict(obj: Mapping) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint: ``{'model': sd}``, ``{'state_dict': sd}`` or ``sd``."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a checkpoint dict or a state dict, got {type(obj).__name__}")
    for key in _CONTAINER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(
            f"no state dict found in the checkpoint: top-level keys are {sorted(map(str, obj))[:12]}; "
            f"expected tensors, or one of {_CONTAINER_KEYS} holding them"
        )
    return tensors


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def extract_backbone_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CrossFormer keys of any official layout, without wrappers, prefixes or derived buffers.

    * DDP ``module.`` and mmdet / mmseg ``backbone.`` prefixes are stripped (in any order);
    * when a ``backbone.`` prefix is present, the other entries (``neck.*``, ``decode_head.*``, ...) are
      heads of a detector / segmentor and are left out;
    * v1 buffers (``attn.biases``, ``attn.relative_position_index``) are dropped.
    """
    keys = list(state_dict)
    has_backbone = any(k.startswith("backbone.") or k.startswith("module.backbone.") for k in keys)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if has_backbone and not (key.startswith("backbone.") or key.startswith("module.backbone.")):
            continue
        key = _strip(key)
        if key.endswith(DERIVED_BUFFER_SUFFIXES):
            continue
        out[key] = value
    return out


def _listed(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return f"{shown}, ... ({len(keys)} in all)" if len(keys) > limit else shown


def state_mismatch(
    expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], *, strict: bool = True
) -> list[str]:
    """How a state dict's tensor shapes ``found`` differ from a model's ``expected`` ones, as message parts (empty
    when they fit): shape mismatches always, missing / unexpected keys when ``strict``."""
    wrong = [f"{k}: checkpoint {tuple(v)} vs model {tuple(expected[k])}" for k, v in found.items()
             if k in expected and tuple(v) != tuple(expected[k])]  # fmt: skip
    parts = [f"shape mismatch for {_listed(wrong, 4)}"] if wrong else []
    if strict:
        missing = [k for k in expected if k not in found]
        unexpected = [k for k in found if k not in expected]
        parts += [f"missing keys: {_listed(missing)}"] if missing else []
        parts += [f"unexpected keys: {_listed(unexpected)}"] if unexpected else []
    return parts
