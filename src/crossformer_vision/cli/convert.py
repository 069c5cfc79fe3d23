"""``crossformer convert``: official checkpoint (classification / backbone / mmdet / mmseg) -> safetensors."""

from __future__ import annotations

import argparse

from ..models.io import convert_checkpoint


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="official .pth file (classification, backbone-only, mmdet or mmseg checkpoint)")
    p.add_argument("dst", help="output .safetensors file (a folder with --hub)")
    p.add_argument("--variant", default=None, help="expected variant (default: detected from the tensor shapes)")
    kind = p.add_mutually_exclusive_group()
    kind.add_argument("--dense", dest="dense", action="store_true", default=None, help="keep only the backbone")
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


def run(args: argparse.Namespace) -> int:
    if args.hub:
        if args.dense:
            raise ValueError("--hub writes a classification model; it cannot be combined with --dense")
        from ..models.hub import save_hub_folder

        info = save_hub_folder(args.src, args.dst, args.variant, args.lda_rule, args.trust_checkpoint)
        print(f"wrote {info['folder']}: {info['variant']} hub folder (config.json, model.safetensors)")
        return 0
    meta = convert_checkpoint(args.src, args.dst, args.variant, args.dense, args.lda_rule, args.trust_checkpoint)
    kind = "dense backbone" if meta["dense"] == "true" else "classification model"
    print(f"wrote {args.dst}: {meta['variant']} {kind} (from {meta['source']})")
    return 0
