"""Official HRFormer / SOFT / CMT / AugViT checkpoints: the one reader of their weights, and their conversion to this
package's model files and Hub folders.

:func:`family_state_dict` is the only place these files are read, for every caller: ``crossformer convert --variant
NAME SRC DST`` / ``--hub``, ``crossformer eval / predict --checkpoint`` of an official file
(:func:`~crossformer_vision.tasks.classification.model.load_foreign`) and the segmentation / detection trunks'
``weights=`` (:func:`~crossformer_vision.tasks.segmentation.backbones.load_family_weights`). The file is read without
running pickled code (:func:`~crossformer_vision.models.io.read_checkpoint`), the family's own ``checkpoint_filter_fn``
maps it (wrappers, ``module.`` / ``backbone.`` prefixes, derived buffers, HRFormer bias tables of another window,
CMT position biases of another size), the model is built on the ``meta`` device (no memory; or the caller's model
is taken) and every key and shape is compared with it (:func:`~crossformer_vision.models._keys.state_mismatch`);
only then is anything written:

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
from typing import Any, NamedTuple

import torch
from torch.overrides import TorchFunctionMode

from ._keys import state_mismatch

__all__ = [
    "FAMILIES",
    "HEAD_PREFIXES",
    "FamilyState",
    "convert_family_checkpoint",
    "family_of",
    "family_state_dict",
    "family_variant_of",
    "save_family_hub_folder",
]

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


#: In-place tensor ops of weight initialisation (``trunc_normal_``'s ``uniform_`` / ``erfinv_`` / ``clamp_`` ...,
#: ``zeros_``' ``zero_``) that a model built on the ``meta`` device skips: in-place, they change no shape.
_INIT_OPS = frozenset(
    ("uniform_", "normal_", "erfinv_", "mul_", "add_", "sub_", "div_", "clamp_", "clamp_min_", "clamp_max_", "zero_",
     "fill_", "copy_", "exponential_", "bernoulli_", "random_")
)  # fmt: skip


class _SkipMetaInit(TorchFunctionMode):
    """Skip weight initialisation on ``meta`` tensors: they hold no data, and the meta kernels of the init ops cost
    seconds per full-size model (a ``meta`` build is only read for its tensor names and shapes)."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        first = args[0] if args else None
        if getattr(func, "__name__", "") in _INIT_OPS and isinstance(first, torch.Tensor) and first.is_meta:
            return first
        return func(*args, **(kwargs or {}))


def _meta_model(variant: str, args: Mapping[str, Any], num_classes: int, dense: bool) -> torch.nn.Module:
    import timm

    with _SkipMetaInit(), torch.device("meta"):
        if dense:
            from .hrformer import create_hrformer_backbone

            return create_hrformer_backbone(variant, **args)
        return timm.create_model(variant, pretrained=False, num_classes=num_classes, **args)


#: The ImageNet-head entries of each family's classification files: a dense trunk (HRFormer's backbone, timm's
#: ``features_only`` SOFT / CMT, which prune SOFT's head and final norm, CMT's conv head) or a head-less classifier
#: lacks them, so they are dropped when the model does not have them. HRFormer's filter drops its own.
HEAD_PREFIXES: dict[str, tuple[str, ...]] = {
    "hrformer": ("incre_modules.", "downsamp_modules.", "final_layer.", "classifier."),
    "soft": ("head.", "norm."),
    "cmt": ("head.", "_fc.", "_bn."),
    "augvit": ("head.", "norm.", "fc_norm."),
}

#: How each caller names the variant and the architecture arguments in its refusal messages:
#: ``(option naming the variant, how to pass other widths, what a CrossFormer file needs instead)``.
USAGES: dict[str, tuple[str, str, str]] = {
    "convert": ("--variant", "--model-arg KEY=VALUE", "drop --variant (crossformer convert detects CrossFormer "
                "variants)"),
    "eval": ("--model", "model.kwargs.KEY=VALUE", "drop --model (CrossFormer variants are read from the shapes)"),
    "backbone": ("the backbone name", "the backbone's model arguments (model.backbone.kwargs / backbone_kwargs)",
                 "use its CrossFormer variant as the backbone name"),
}  # fmt: skip


class FamilyState(NamedTuple):
    """What :func:`family_state_dict` returns (unpacks as a 4-tuple)."""

    state: dict[str, torch.Tensor]  #: named and shaped exactly as the model's ``state_dict``
    model_args: dict[str, Any]  #: the validated architecture arguments (``{}`` for a given model)
    num_classes: int  #: the classifier's classes (0: a dense trunk or a head-less model)
    dense: bool  #: whether the weights are a trunk without the ImageNet head (a given model: it has no head)


def _hint(family: str, looks: str | None, usage: str) -> str:
    flag, widths, crossformer = USAGES[usage]
    if looks == "crossformer":
        return f"it looks like a CrossFormer file: {crossformer}"
    if looks not in (None, family):
        return f"it looks like a {_TITLES[looks]} file: pass its variant as {flag} ({', '.join(_variants(looks))})"
    return (
        f"pass the {_TITLES[family]} variant it was trained as ({', '.join(_variants(family))}) as {flag} and "
        f"{widths} for other widths"
    )


def family_state_dict(
    src: str | os.PathLike | Mapping[str, Any],
    variant: str,
    model_args: Mapping[str, Any] | None = None,
    dense: bool | None = None,
    trusted: bool = False,
    *,
    model: torch.nn.Module | None = None,
    where: str | None = None,
    usage: str = "convert",
) -> FamilyState:
    """The weights of an official file of ``variant``, mapped by its family's filter and checked key by key.

    The one reader of official HRFormer / SOFT / CMT / AugViT weights (``crossformer convert --variant``, ``--hub``,
    ``crossformer eval / predict --model NAME``, the segmentation / detection trunks' ``weights=``): the file is
    read without running pickled code (unless ``trusted``), unwrapped and renamed by the family's
    ``checkpoint_filter_fn`` (``model`` / ``state_dict`` / EMA wrappers, ``module.`` / ``backbone.`` prefixes,
    derived buffers, HRFormer bias tables of another window, CMT position biases of another size), the ImageNet
    head's entries the model does not have are dropped (:data:`HEAD_PREFIXES`), missing BatchNorm
    ``num_batches_tracked`` counters are added as 0, and every remaining key and shape must equal the model's
    (:func:`~crossformer_vision.models._keys.state_mismatch`).

    Args:
        src: The official file (``.pth`` / ``.pt`` / ``.safetensors``; untrusted: read with the allow-list), or a
            checkpoint already read (a state dict or ``{'model': state dict, ...}``).
        variant: A registered name (``hrformer_b``, ``soft_tiny``, ``cmt_s``, ``augvit_small_circulant2``, ...).
        model_args: Without ``model``: architecture arguments that differ from the variant's (``window_size=13``
            for the dense HRFormer-B models, tiny widths), checked against the allow-list a model file's metadata
            is read with.
        dense: Without ``model``, HRFormer only: keep the dense trunk (no ImageNet head). None: dense when the file
            has no head.
        trusted: Unpickle arbitrary objects (files whose origin you trust).
        model: The model to check against instead of one built on the ``meta`` device from ``variant`` and
            ``model_args``: a live model (a dense trunk, a classifier) or a meta one; only its tensor names and
            shapes are read. Without it, a classifier's head size is taken from the file.
        where: How messages name the source (default: the path, or ``"weights"`` for a mapping).
        usage: ``"convert"`` / ``"eval"`` / ``"backbone"``: which options the refusal messages suggest
            (:data:`USAGES`).

    Returns:
        :class:`FamilyState` ``(state, model_args, num_classes, dense)``: the tensors exactly as the model's
        ``state_dict`` names and shapes them, the validated arguments, the class count (read from the file's head
        without ``model``, 1000 for a file without one; 0 for a dense trunk) and whether it is a dense trunk.

    Raises:
        ValueError: One line: an unknown variant or refused argument, an unreadable file, or a file that is not
            ``variant`` (the keys / shapes that differ, and which family the file looks like).
        TypeError: ``src`` is neither a path nor a mapping, or ``model`` with ``model_args`` / ``dense``.
    """
    from .arguments import validate_model_arguments
    from .io import read_checkpoint

    family = family_of(variant)
    if family is None:
        raise ValueError(f"unknown variant {variant!r} for conversion; expected one of {family_variants()}")
    if usage not in USAGES:
        raise ValueError(f"unknown usage {usage!r}; expected one of {sorted(USAGES)}")
    if model is not None and (model_args or dense is not None):
        raise TypeError("family_state_dict: model_args / dense describe the model to build; a given model has its own")
    args = {}
    if model is None and model_args:  # a registered variant's own arguments need no check
        with _SkipMetaInit():  # the check builds the model on the meta device
            args = validate_model_arguments(variant, dict(model_args))
    if dense and family != "hrformer":
        raise ValueError(
            f"--dense keeps the backbone of CrossFormer and HRFormer files; a {_TITLES[family]} file converts as a "
            "classifier (drop --dense)"
        )
    if isinstance(src, (str, os.PathLike)):
        where = where or os.fspath(src)
        raw = read_checkpoint(src, trusted)
    elif isinstance(src, Mapping):
        where, raw = where or "weights", src
    else:
        raise TypeError(f"weights must be a file path or a state dict, got {type(src).__name__}")
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} is not a checkpoint: it holds a {type(raw).__name__}, not a dict of tensors")
    family_filter = _module(family).checkpoint_filter_fn
    heads = HEAD_PREFIXES[family]

    def mapped(target: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]]]:
        """The file's tensors for ``target`` (filtered, head entries it lacks dropped) and ``target``'s shapes."""
        try:
            out = family_filter(dict(raw), target)
        except (RuntimeError, IndexError, KeyError, AttributeError, TypeError, ValueError, ZeroDivisionError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"{where} is not a {variant} checkpoint: its tensors do not map onto it ({first})"
            ) from None
        expected = {k: tuple(v.shape) for k, v in target.state_dict().items()}
        state = {k: v for k, v in _tensors(out, where).items() if k in expected or not k.startswith(heads)}
        return state, expected

    head_key = f"{(getattr(model, 'pretrained_cfg', None) or {}).get('classifier', 'head')}.weight"
    if model is None:
        model = _meta_model(variant, args, 1000, dense=bool(dense))
        head_key = f"{model.pretrained_cfg.get('classifier', 'head')}.weight"
        state, expected = mapped(model)
        if dense is None and family == "hrformer" and head_key not in state:
            dense = True  # an official dense trunk (segmentation backbone file): keep it as one
            model = _meta_model(variant, args, 0, dense=True)
            state, expected = mapped(model)
        num_classes = 0
        if not dense:
            head = state.get(head_key)
            num_classes = int(head.shape[0]) if head is not None and head.ndim == 2 and head.shape[0] > 0 else 1000
            if num_classes != 1000:
                with torch.device("meta"):
                    model.reset_classifier(num_classes)
                expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    else:
        state, expected = mapped(model)
        num_classes = expected[head_key][0] if len(expected.get(head_key, ())) == 2 else 0
        dense = head_key not in expected  # a trunk (or a head-less classifier): the file's head was dropped
    for k, shape in expected.items():
        if k.endswith("num_batches_tracked") and k not in state:
            state[k] = torch.zeros(shape, dtype=torch.long)
    parts = state_mismatch(expected, {k: tuple(v.shape) for k, v in state.items()})
    if parts:
        hint = _hint(family, _looks_like(set(state)), usage)
        raise ValueError(f"{where} is not a {variant} checkpoint: {hint} ({'; '.join(parts)})")
    return FamilyState({k: state[k] for k in expected}, args, num_classes, bool(dense))


def family_variant_of(checkpoint: Mapping[str, Any], where: str = "weights", usage: str = "eval") -> str | None:
    """The registered variant an already read official checkpoint of the four families holds, or None when its keys
    look like no family's file (a CrossFormer or timm file: read it as such).

    The family is told by its marker keys; each of its variants (full-size widths) is then tried with
    :func:`family_state_dict`, the first whose every key and shape fits is returned.

    Raises:
        ValueError: One line: the file looks like a family's but fits none of its variants (custom widths: name the
            variant and its arguments).
    """
    from ._keys import unwrap_state_dict

    try:
        keys = set(unwrap_state_dict(checkpoint))
    except (TypeError, ValueError):
        return None
    family = _looks_like(keys)
    if family is None or family == "crossformer":
        return None
    for variant in _variants(family):
        try:
            family_state_dict(checkpoint, variant, where=where)
        except ValueError:
            continue
        return variant
    raise ValueError(
        f"{where} looks like a {_TITLES[family]} file but fits none of its variants at their own widths: "
        f"{_hint(family, family, usage)}"
    )


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
