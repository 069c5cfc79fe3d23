"""``crossformer convert``: official checkpoint (CrossFormer classification / backbone / mmdet / mmseg, or an HRFormer,
SOFT, CMT or AugViT file with ``--variant``) -> safetensors file or Hub folder."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..models.io import convert_checkpoint


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "src",
        help="official file: CrossFormer (classification, backbone-only, mmdet or mmseg checkpoint), or HRFormer / "
        "SOFT / CMT / AugViT (with --variant)",
    )
    p.add_argument("dst", help="output .safetensors file (a folder with --hub)")
    p.add_argument(
        "--variant",
        default=None,
        help="expected variant (CrossFormer: default detected from the tensor shapes); required for HRFormer / SOFT / "
        "CMT / AugViT files, e.g. hrformer_b, soft_tiny, cmt_s, augvit_small_circulant2",
    )
    p.add_argument(
        "--model-arg",
        dest="model_args",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="HRFormer / SOFT / CMT / AugViT: an architecture argument that differs from the variant's (VALUE is JSON "
        "or a word), e.g. window_size=13 for HRFormer-B's 13 x 13-window dense model from hrt_base.pth; repeatable",
    )
    kind = p.add_mutually_exclusive_group()
    kind.add_argument(
        "--dense",
        dest="dense",
        action="store_true",
        default=None,
        help="keep only the backbone (CrossFormer, HRFormer)",
    )
    kind.add_argument("--classification", dest="dense", action="store_false", help="require norm and head")
    p.add_argument(
        "--lda-rule",
        choices=["fixed_group", "fixed_interval"],
        default=None,
        help="record the LDA rule the weights were trained with (fixed_interval for the v1 det/seg releases)",
    )
    p.add_argument(
        "--hub",
        action="store_true",
        help="write a Hugging Face Hub folder (config.json + model.safetensors) that "
        "timm.create_model('local-dir:DST', pretrained=True) loads (classification checkpoints)",
    )
    p.add_argument(
        "--trust-checkpoint", action="store_true", help="allow arbitrary pickled objects (trusted files only)"
    )


def parse_model_args(items: list[str]) -> dict[str, Any]:
    """``["window_size=13", "num_heads=[1,1,2,2]", "mode=circulant2"]`` -> ``{"window_size": 13, ...}`` (JSON values,
    else the word as a string); the converter validates them against the model-argument allow-list."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--model-arg {item!r}: expected KEY=VALUE, e.g. --model-arg window_size=13")
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out[key.strip()] = value
    return out


def _with_variant_hint(err: ValueError, src: str) -> ValueError:
    """A CrossFormer reader's refusal of a file of another family, with how to convert that file instead."""
    from ..models.family_weights import family_variants

    if "not a CrossFormer state dict" not in str(err):
        return err
    return ValueError(
        f"{src} is {err}; for an HRFormer / SOFT / CMT / AugViT file pass --variant NAME "
        f"({', '.join(family_variants())})"
    )


def run(args: argparse.Namespace) -> int:
    from ..models.crossformer import VARIANT_ARGS
    from ..models.family_weights import convert_family_checkpoint, family_of, family_variants

    model_args = parse_model_args(args.model_args)
    family = family_of(args.variant)
    if args.variant is not None and family is None and args.variant not in VARIANT_ARGS:
        raise ValueError(
            f"unknown --variant {args.variant!r}: expected a CrossFormer variant ({', '.join(VARIANT_ARGS)}) or one of "
            f"{', '.join(family_variants())}"
        )
    if args.hub and args.dense:
        raise ValueError("--hub writes a classification model; it cannot be combined with --dense")
    if args.hub:
        from ..models.hub import save_hub_folder

        try:
            info = save_hub_folder(
                args.src, args.dst, args.variant, args.lda_rule, args.trust_checkpoint, model_args or None
            )
        except ValueError as err:
            raise _with_variant_hint(err, args.src) from None
        print(f"wrote {info['folder']}: {info['variant']} hub folder (config.json, model.safetensors)")
        return 0
    if family is not None:
        if args.lda_rule is not None:
            raise ValueError(f"--lda-rule is a CrossFormer setting; {args.variant} has no LDA")
        meta = convert_family_checkpoint(
            args.src, args.dst, args.variant, model_args, args.dense, args.trust_checkpoint
        )
        kind = "dense backbone" if meta["dense"] == "true" else "classification model"
        print(f"wrote {args.dst}: {args.variant} {kind} (from {meta['source']})")
        return 0
    if model_args:
        raise ValueError(
            "--model-arg is for HRFormer / SOFT / CMT / AugViT files (with --variant); CrossFormer architectures are "
            "read from the tensor shapes"
        )
    try:
        meta = convert_checkpoint(args.src, args.dst, args.variant, args.dense, args.lda_rule, args.trust_checkpoint)
    except ValueError as err:
        raise _with_variant_hint(err, args.src) from None
    kind = "dense backbone" if meta["dense"] == "true" else "classification model"
    print(f"wrote {args.dst}: {meta['variant']} {kind} (from {meta['source']})")
    return 0
