"""Official HRFormer / SOFT / CMT / AugViT checkpoints converted to this package's model files and Hub folders.

One path serves the four families (``crossformer convert --variant NAME SRC DST``): the file is read without running
pickled code (:func:`~crossformer_vision.models.io.read_checkpoint`), the family's own ``checkpoint_filter_fn``
maps it (wrappers, ``module.`` / ``backbone.`` prefixes, derived buffers, HRFormer bias tables of another window,
CMT position biases of another size), the model is built on the ``meta`` device (no memory) and every key and shape
is compared with it (:func:`~crossformer_vision.models._keys.state_mismatch`); only then is anything written:

* a classifier: a ``.safetensors`` model file with the metadata every run's ``final.safetensors`` carries
  (:func:`~crossformer_vision.engine.loading.model_metadata`: task ``classification``, model name, the model
  arguments that differ from the variant's, class names), which ``crossformer eval / predict --checkpoint`` and
  ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))`` load;
* an HRFormer dense trunk (``dense``, or a file without the ImageNet head): the backbone tensors, for
  ``model.backbone.weights=`` of the segmentation presets;
* a Hub folder (``config.json`` + ``model.safetensors``) written by timm's ``save_for_hf``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ._keys import state_mismatch

__all__ = ["FAMILIES", "convert_family_checkpoint", "family_of", "family_state_dict", "save_family_hub_folder"]

#: Family name -> module (each has ``<FAMILY>_VARIANTS`` and ``checkpoint_filter_fn``).
FAMILIES = ("hrformer", "soft", "cmt", "augvit")
_TITLES = {"hrformer": "HRFormer", "soft": "SOFT", "cmt": "CMT", "augvit": "AugViT", "crossformer": "CrossFormer"}
#: A key only each family's files have (official names), to say what a refused file looks like.
_MARKERS = {
    "hrformer": ("transition1.0.0.weight", "stage2.0.fuse_layers.0.1.0.weight"),
    "soft": ("patch_embed1.proj.0.weight", "pos_embed1"),
    "cmt": ("relative_pos_a", "stem_conv1.weight"),
    "augvit": ("blocks.0.augs_attn.weight", "blocks.0.augs_attn.weight_list", "blocks.0.attn.qkv.weight"),
    "crossformer": ("patch_embed.norm.weight", "layers.0.blocks.0.attn.pos.pos3.2.weight"),
}


def _module(family: str) -> ModuleType:
    from . import augvit, cmt, hrformer, soft

    return {"hrformer": hrformer, "soft": soft, "cmt": cmt, "augvit": augvit}[family]


def _variants(family: str) -> dict[str, dict[str, Any]]:
    return getattr(_module(family), f"{family.upper()}_VARIANTS")


def family_of(variant: str | None) -> str | None:
    """``"hrformer"`` / ``"soft"`` / ``"cmt"`` / ``"augvit"`` for a registered variant of these families, else None."""
    if not isinstance(variant, str):
        return None
    return next((f for f in FAMILIES if variant in _variants(f)), None)


def family_variants() -> list[str]:
    """Every variant ``crossformer convert --variant`` takes for the four families."""
    return [v for f in FAMILIES for v in _variants(f)]


def _looks_like(keys: set[str]) -> str | None:
    stripped = {k.removeprefix("module.").removeprefix("backbone.") for k in keys}
    return next((f for f, marks in _MARKERS.items() if any(m in stripped for m in marks)), None)


def _tensors(obj: Any, src: str | os.PathLike) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{src} is not a checkpoint: it holds a {type(obj).__name__}, not a dict of tensors")
    out = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not out:
        raise ValueError(
            f"{src} holds no state dict: top-level keys {sorted(map(str, obj))[:8]}, expected tensors or a 'model' / "
            "'state_dict' entry holding them"
        )
    return out


def _meta_model(variant: str, args: Mapping[str, Any], num_classes: int, dense: bool) -> torch.nn.Module:
    import timm

    with torch.device("meta"):
        if dense:
            from .hrformer import create_hrformer_backbone

            return create_hrformer_backbone(variant, **args)
        return timm.create_model(variant, pretrained=False, num_classes=num_classes, **args)


def family_state_dict(
    src: str | os.PathLike,
    variant: str,
    model_args: Mapping[str, Any] | None = None,
    dense: bool | None = None,
    trusted: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], int, bool]:
    """The weights of an official file of ``variant``, mapped by its family's filter and checked key by key.

    Args:
        src: The official file (``.pth`` / ``.pt`` / ``.safetensors``; untrusted: read with the allow-list).
        variant: A registered name (``hrformer_b``, ``soft_tiny``, ``cmt_s``, ``augvit_small_circulant2``, ...).
        model_args: Architecture arguments that differ from the variant's (``window_size=13`` for the dense
            HRFormer-B models, tiny widths), checked against the allow-list a model file's metadata is read with.
        dense: HRFormer only: keep the dense trunk (no ImageNet head). None: dense when the file has no head.
        trusted: Unpickle arbitrary objects (files whose origin you trust).

    Returns:
        ``(state_dict, model_args, num_classes, dense)``: the tensors exactly as the model's ``state_dict`` names
        and shapes them (missing BatchNorm ``num_batches_tracked`` counters added as 0), the validated arguments,
        the class count read from the file's head (0 for a dense trunk) and whether it is a dense trunk.

    Raises:
        ValueError: One line: an unknown variant or refused argument, an unreadable file, or a file that is not
            ``variant`` (the keys / shapes that differ, and which family the file looks like).
    """
    from .arguments import validate_model_arguments
    from .io import read_checkpoint

    family = family_of(variant)
    if family is None:
        raise ValueError(f"unknown variant {variant!r} for conversion; expected one of {family_variants()}")
    args = validate_model_arguments(variant, dict(model_args or {}))
    if dense and family != "hrformer":
        raise ValueError(
            f"--dense keeps the backbone of CrossFormer and HRFormer files; a {_TITLES[family]} file converts as a "
            "classifier (drop --dense)"
        )
    raw = read_checkpoint(src, trusted)
    if not isinstance(raw, Mapping):
        raise ValueError(f"{src} is not a checkpoint: it holds a {type(raw).__name__}, not a dict of tensors")
    family_filter = _module(family).checkpoint_filter_fn

    def filt(obj: dict, model: torch.nn.Module) -> Any:
        try:
            return family_filter(obj, model)
        except (RuntimeError, IndexError, KeyError, AttributeError, TypeError, ZeroDivisionError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"{src} is not a {variant} checkpoint: its tensors do not map onto it ({first})") from None

    model = _meta_model(variant, args, 1000, dense=bool(dense))
    head_key = f"{model.pretrained_cfg.get('classifier', 'head')}.weight"
    state = _tensors(filt(dict(raw), model), src)
    if dense is None and family == "hrformer" and head_key not in state:
        dense = True  # an official dense trunk (segmentation backbone file): keep it as one
        model = _meta_model(variant, args, 0, dense=True)
        state = _tensors(filt(dict(raw), model), src)
    num_classes = 0
    if not dense:
        head = state.get(head_key)
        num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 and head.shape[0] > 0 else 1000
        if num_classes != 1000:
            with torch.device("meta"):
                model.reset_classifier(num_classes)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, shape in expected.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros(shape, dtype=torch.long)
    parts = state_mismatch(expected, {k: tuple(v.shape) for k, v in state.items()})
    if parts:
        looks = _looks_like(set(state))
        if looks == "crossformer":
            hint = "it looks like a CrossFormer file: drop --variant (crossformer convert detects CrossFormer variants)"
        elif looks not in (None, family):
            hint = f"it looks like a {_TITLES[looks]} file: pass its variant ({', '.join(_variants(looks))})"
        else:
            hint = (
                f"pass the {_TITLES[family]} variant it was trained as ({', '.join(_variants(family))}) and "
                "--model-arg KEY=VALUE for other widths"
            )
        raise ValueError(f"{src} is not a {variant} checkpoint: {hint} ({'; '.join(parts)})")
    return {k: state[k] for k in expected}, args, num_classes, bool(dense)


def _class_names(num_classes: int) -> list[str]:
    if num_classes == 1000:
        import timm.data

        return list(timm.data.ImageNetInfo().label_descriptions())
    return [f"class_{i}" for i in range(num_classes)]


def _json_args(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in args.items()}


def convert_family_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    variant: str,
    model_args: Mapping[str, Any] | None = None,
    dense: bool | None = None,
    trusted: bool = False,
) -> dict[str, str]:
    """Convert an official HRFormer / SOFT / CMT / AugViT file to a ``.safetensors`` model file.

    A classifier gets the model-file metadata of :func:`~crossformer_vision.engine.loading.model_metadata` (task
    ``classification``, ``model`` = ``variant``, ``model_args``, ``classes``: ImageNet's names for a 1000-class
    head, ``class_<i>`` otherwise) plus ``source`` (the file name) and ``dense`` = ``"false"``; an HRFormer dense
    trunk gets ``format``, ``variant``, ``model_args``, ``dense`` = ``"true"`` and ``source``. See
    :func:`family_state_dict` for the arguments and errors.

    Returns:
        The metadata written.
    """
    from ..engine.loading import model_metadata
    from ..utils.paths import output_file
    from .io import atomic_save_safetensors

    dst = output_file(dst)
    state, args, num_classes, dense = family_state_dict(src, variant, model_args, dense, trusted)
    if dense:
        import json

        meta = {
            "format": "crossformer-vision",
            "variant": variant,
            "model_args": json.dumps(_json_args(args), sort_keys=True),
            "dense": "true",
            "source": Path(src).name,
        }
    else:
        meta = model_metadata(
            "classification", variant, _json_args(args), _class_names(num_classes), source=Path(src).name, dense="false"
        )
    atomic_save_safetensors(state, dst, meta)
    return meta


def save_family_hub_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    variant: str,
    model_args: Mapping[str, Any] | None = None,
    trusted: bool = False,
) -> dict[str, Any]:
    """Convert an official HRFormer / SOFT / CMT / AugViT classifier to ``dst/config.json`` + ``model.safetensors``.

    The model is built with the validated arguments, the checked weights are loaded strictly, and timm's
    ``save_for_hf`` writes the folder (``config.json``: architecture ``variant``, its ``model_args``, the pretrained
    config with the official preprocessing), so ``timm.create_model("local-dir:DST", pretrained=True)`` rebuilds it
    after ``import crossformer_vision``.

    Raises:
        ValueError: The file holds a dense trunk (a hub folder holds a classifier), or see :func:`family_state_dict`.
    """
    import timm
    from timm.models import save_for_hf

    from ..utils.paths import output_dir

    state, args, num_classes, dense = family_state_dict(src, variant, model_args, None, trusted)
    if dense:
        raise ValueError(
            f"{src} holds a dense {variant} trunk (no classifier head); a hub folder holds a classification model: "
            "convert it to a .safetensors file instead (crossformer convert --variant NAME SRC DST.safetensors --dense)"
        )
    model = timm.create_model(variant, pretrained=False, num_classes=num_classes, **args)
    model.load_state_dict(state, strict=True)
    folder = output_dir(dst, "the hub folder")
    save_for_hf(model.eval(), str(folder), safe_serialization=True)
    return {"variant": variant, "folder": str(Path(folder)), "model_args": _json_args(args)}
