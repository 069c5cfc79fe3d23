"""Official CrossFormer code and checkpoints: build the equivalent model, detect variants, load weights."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ._keys import HEAD_KEYS, extract_backbone_state_dict, state_mismatch, unwrap_state_dict
from .crossformer import VARIANT_ARGS, CrossFormer, CrossFormerBackbone

__all__ = [
    "FLAVOURS",
    "build_from_official",
    "build_from_state_dict",
    "detect_variant",
    "infer_architecture",
    "load_official_state_dict",
]

FLAVOURS = ("v1-classification", "pp-classification", "v1-dense", "pp-dense")

# research switches of the official constructors; no released model sets them, so only defaults are accepted
_FIXED_DEFAULTS = {
    "ape": False,
    "use_cpe": False,
    "pad_type": 0,
    "no_mask": False,
    "adaptive_interval": False,
    "group_type": "constant",
    "qk_scale": None,
}
_IGNORED = ("use_checkpoint", "init_cfg", "norm_layer", "pretrained", "frozen_stages", "out_indices")
_RENAMED = {
    "patch_size": "embed_kernel_sizes",
    "merge_size": "merge_kernel_sizes",
    "drop_rate": "proj_drop_rate",
}
_PASSED = (
    "img_size",
    "in_chans",
    "num_classes",
    "embed_dim",
    "depths",
    "num_heads",
    "group_size",
    "crs_interval",
    "mlp_ratio",
    "qkv_bias",
    "attn_drop_rate",
    "drop_path_rate",
    "patch_norm",
    "use_acl",
)


def _translate(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in _FIXED_DEFAULTS:
            if value != _FIXED_DEFAULTS[key]:
                raise ValueError(
                    f"official argument {key}={value!r} is not supported: no released CrossFormer uses it "
                    f"(expected {_FIXED_DEFAULTS[key]!r})"
                )
        elif key in _IGNORED:
            continue
        elif key in _RENAMED:
            out[_RENAMED[key]] = value
        elif key in _PASSED:
            out[key] = value
        else:
            raise ValueError(
                f"unknown official CrossFormer argument {key!r} (known: {sorted(_PASSED + tuple(_RENAMED))})"
            )
    return out


def build_from_official(kwargs: Mapping[str, Any], flavour: str) -> CrossFormer:
    """The model that computes what the official constructor with ``kwargs`` computes.

    Args:
        kwargs: Constructor arguments of the official class, exactly as the official ``build.py`` / mm
            config passes them (e.g. the ``config`` entry of the reference fixtures).
        flavour: Which official code path to reproduce:

            * ``"v1-classification"``: ``crossformer`` branch ``models/crossformer.py``;
            * ``"pp-classification"``: ``main`` branch ``models/crossformer.py`` (CrossFormer++; v1-sized models
              with ``use_acl=False``);
            * ``"v1-dense"``: ``crossformer`` branch ``models/crossformer_backbone.py`` (the fixed-interval LDA rule);
            * ``"pp-dense"``: ``main`` branch ``models/crossformer_backbone_{det,seg}.py`` (fixed-group LDA rule).

    Returns:
        A :class:`CrossFormer` (classification flavours) or a :class:`CrossFormerBackbone` whose forward returns
        the four NCHW stage maps (dense flavours), in eval mode.
    """
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown flavour {flavour!r}; expected one of {FLAVOURS}")
    args = _translate(kwargs)
    if flavour.startswith("v1") and args.pop("use_acl", False):
        raise ValueError(
            "the CrossFormer v1 code has no activation cooling layer; use a 'pp-*' flavour for use_acl=True"
        )
    args.setdefault("drop_path_rate", 0.1)
    depths = args.get("depths", (2, 2, 6, 2))
    num_stages = len(depths)
    if flavour == "v1-classification":
        # v1 classification: LDA interval = stage resolution / G (one group per offset covering the map)
        img = args.get("img_size", 224)
        img = img if isinstance(img, int) else img[0]
        stride = (args.get("embed_kernel_sizes") or (4,))[0]
        group = args.get("group_size", 7)
        group = [group] * num_stages if isinstance(group, int) else list(group)
        args["crs_interval"] = [max(1, math.ceil(img // stride // 2**i / g)) for i, g in enumerate(group)]
    if flavour.endswith("dense"):
        args.pop("num_classes", None)
        model: CrossFormer = CrossFormerBackbone(
            lda_rule="fixed_interval" if flavour == "v1-dense" else "fixed_group", **args
        )
    else:
        model = CrossFormer(lda_rule="fixed_group", **args)
    return model.eval()


def infer_architecture(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Architecture arguments of :class:`CrossFormer` read from the shapes of a (normalised) state dict."""
    sd = extract_backbone_state_dict(unwrap_state_dict(state_dict))
    if "patch_embed.norm.weight" not in sd:
        raise ValueError("not a CrossFormer state dict: 'patch_embed.norm.weight' is missing")
    embed_dim = sd["patch_embed.norm.weight"].shape[0]
    depths, heads, mlp_ratio = [], [], []
    stage = 0
    while f"layers.{stage}.blocks.0.norm1.weight" in sd:
        depth = 0
        while f"layers.{stage}.blocks.{depth}.norm1.weight" in sd:
            depth += 1
        depths.append(depth)
        heads.append(sd[f"layers.{stage}.blocks.0.attn.pos.pos3.2.weight"].shape[0])
        dim = sd[f"layers.{stage}.blocks.0.norm1.weight"].shape[0]
        mlp_ratio.append(sd[f"layers.{stage}.blocks.0.mlp.fc1.weight"].shape[0] / dim)
        stage += 1
    embed_kernels, i = [], 0
    while f"patch_embed.projs.{i}.weight" in sd:
        embed_kernels.append(sd[f"patch_embed.projs.{i}.weight"].shape[-1])
        i += 1
    merge_kernels = []
    for s in range(stage - 1):
        ks, j = [], 0
        while f"layers.{s}.downsample.reductions.{j}.weight" in sd:
            ks.append(sd[f"layers.{s}.downsample.reductions.{j}.weight"].shape[-1])
            j += 1
        merge_kernels.append(tuple(ks))
    arch: dict[str, Any] = dict(
        embed_dim=embed_dim,
        depths=tuple(depths),
        num_heads=tuple(heads),
        mlp_ratio=mlp_ratio[0] if len(set(mlp_ratio)) == 1 else tuple(mlp_ratio),
        use_acl=any(".ex_conv." in k for k in sd),
        embed_kernel_sizes=tuple(embed_kernels),
        in_chans=sd["patch_embed.projs.0.weight"].shape[1],
        qkv_bias="layers.0.blocks.0.attn.qkv.bias" in sd,
    )
    if len(set(merge_kernels)) == 1:
        arch["merge_kernel_sizes"] = merge_kernels
    if "head.weight" in sd:
        arch["num_classes"] = sd["head.weight"].shape[0]
    return arch


def _same_shapes(args: Mapping[str, Any], arch: Mapping[str, Any]) -> bool:
    return (
        args["embed_dim"] == arch["embed_dim"]
        and tuple(args["depths"]) == tuple(arch["depths"])
        and tuple(args["num_heads"]) == tuple(arch["num_heads"])
        and args.get("use_acl", False) == arch["use_acl"]
    )


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the registered variant whose shapes the state dict has (``None`` for custom sizes)."""
    arch = infer_architecture(state_dict)
    return next((name for name, args in VARIANT_ARGS.items() if _same_shapes(args, arch)), None)


def build_from_state_dict(state_dict: Mapping[str, torch.Tensor], dense: bool = False, **kwargs: Any) -> CrossFormer:
    """A model with the architecture found in ``state_dict`` (group sizes from the detected variant), loaded."""
    arch = infer_architecture(state_dict)
    variant = detect_variant(state_dict)
    if variant is not None:
        for key in ("group_size", "crs_interval"):
            if key in VARIANT_ARGS[variant]:
                arch[key] = VARIANT_ARGS[variant][key]
    arch.update(kwargs)
    if dense:
        arch.pop("num_classes", None)
        model: CrossFormer = CrossFormerBackbone(**arch)
    else:
        arch.setdefault("num_classes", 0)
        model = CrossFormer(**arch)
    load_official_state_dict(model, state_dict)
    return model


def load_official_state_dict(
    model: nn.Module, state_dict: Mapping[str, Any], strict: bool = True, skip_head: bool = False
) -> nn.Module:
    """Load weights of any official layout into ``model``; every key is checked.

    Accepts a classification checkpoint (``{'model': ...}``), a bare state dict, a backbone-only file, an
    mmdetection / mmsegmentation checkpoint (``{'state_dict': {'backbone.*': ..., 'neck.*': ...}}``) and
    DDP ``module.`` prefixes. v1 derived buffers are dropped; ``norm`` / ``head`` are dropped when ``model``
    is a dense backbone.

    Args:
        model: A :class:`CrossFormer` or :class:`CrossFormerBackbone`.
        state_dict: The checkpoint object or state dict.
        strict: Raise on missing or unexpected keys (shape mismatches always raise).
        skip_head: Do not load ``head.*`` (fine-tuning with another number of classes).

    Raises:
        ValueError: Missing / unexpected keys or shape mismatches, naming them and the detected variant.
    """
    sd = extract_backbone_state_dict(unwrap_state_dict(state_dict))
    own = model.state_dict()
    if skip_head:
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        own = {k: v for k, v in own.items() if not k.startswith("head.")}
    sd = {k: v for k, v in sd.items() if k in own or k not in HEAD_KEYS}
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    parts = state_mismatch({k: tuple(v.shape) for k, v in own.items()}, shapes, strict=strict)
    if parts:
        try:
            found = detect_variant(sd)
        except (ValueError, KeyError):
            found = None
        expected = getattr(getattr(model, "pretrained_cfg", None), "get", lambda *_: None)("architecture")
        hint = f"the checkpoint looks like {found!r}" if found else "the checkpoint matches no registered variant"
        if expected:
            hint += f", the model is {expected!r}"
        raise ValueError(
            f"checkpoint does not fit the model ({hint}): " + "; ".join(parts) + ". "
            "Create the model of the checkpoint's variant (see `crossformer convert --help`), or pass "
            "skip_head=True to fine-tune with another number of classes."
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    return model
