"""Official classification checkpoints (CrossFormer, and HRFormer / SOFT / CMT / AugViT by ``variant``) as Hugging
Face Hub folders that timm's own loaders read."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["save_hub_folder"]


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value))  # tuples become lists, as they will be read back from config.json


def save_hub_folder(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    variant: str | None = None,
    lda_rule: str | None = None,
    trusted: bool = False,
    model_args: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Convert an official classification checkpoint to ``dst/config.json`` + ``dst/model.safetensors``.

    A ``variant`` of HRFormer / SOFT / CMT / AugViT goes through
    :func:`~crossformer_vision.models.family_weights.save_family_hub_folder` (the family's checkpoint filter, every
    key and shape checked; ``model_args``: architecture arguments that differ from the variant's); CrossFormer
    files are recognised from their tensor shapes (``variant`` checks it, ``lda_rule`` is recorded).

    The folder is written by timm's ``save_for_hf``: ``config.json`` names the architecture (the detected variant)
    and holds its ``pretrained_cfg`` and the ``model_args`` that differ from the variant's (custom widths, the LDA
    rule), so ``timm.create_model("local-dir:DIR", pretrained=True)`` (after ``import crossformer_vision``) rebuilds
    the model and loads the weights; ``timm.models.push_to_hub`` uploads the same layout.

    Raises:
        ValueError: The file holds a dense backbone (no final norm and head: a hub folder holds a classifier), or
            not the given ``variant``.
    """
    from .family_weights import family_of, save_family_hub_folder

    if family_of(variant) is not None:
        if lda_rule is not None:
            raise ValueError(f"lda_rule is a CrossFormer setting; {variant} has no LDA")
        return save_family_hub_folder(src, dst, variant, model_args, trusted)
    if model_args:
        raise ValueError("model_args are for HRFormer / SOFT / CMT / AugViT files; CrossFormer's come from the shapes")
    import timm
    from timm.models import save_for_hf

    from ..utils.paths import output_dir
    from ._official import detect_variant, infer_architecture, load_official_state_dict
    from .crossformer import VARIANT_ARGS, CrossFormer
    from .io import read_state_dict

    sd = read_state_dict(src, trusted)
    if "head.weight" not in sd:
        raise ValueError(
            f"{src} holds a dense backbone (no final norm and head); a hub folder holds a classification model: "
            "convert it to a .safetensors file instead (crossformer convert SRC DST.safetensors --dense)"
        )
    found = detect_variant(sd)
    if variant is not None and found is not None and variant != found:
        raise ValueError(f"{src} holds a {found!r} checkpoint, not {variant!r}")
    arch = infer_architecture(sd)
    name = found or variant or ("crossformerpp_s" if arch["use_acl"] else "crossformer_s")
    defaults = {k: p.default for k, p in inspect.signature(CrossFormer).parameters.items()}
    defaults.update(VARIANT_ARGS[name])
    args = {k: v for k, v in arch.items() if _json_value(v) != _json_value(defaults.get(k))}
    if lda_rule is not None:
        args["lda_rule"] = lda_rule
    model = timm.create_model(name, pretrained=False, **args)
    load_official_state_dict(model, sd)
    folder = output_dir(dst, "the hub folder")
    save_for_hf(model, str(folder), safe_serialization=True)
    return {"variant": name, "folder": str(Path(folder)), "model_args": args}
