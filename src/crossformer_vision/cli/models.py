"""``crossformer models``: parameters and GFLOPs of every variant, next to the published numbers."""

from __future__ import annotations

import argparse
import json
import time
from importlib import resources

import timm
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from ..models import create_model, list_variants
from ..models.flops import model_facts

NOTE_PP_S = (
    "CrossFormer++-S: the published 4.9 GFLOPs is not reproducible from the official code, whose own counter "
    "gives 4.39 G (4.43 G counting the padded LDA tokens and ACL convs it executes, 4.45 G by fvcore)."
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--img-size", type=int, nargs="+", default=[224], metavar="N", help="H [W] (default 224)")
    p.add_argument("--variants", nargs="+", default=None, help="subset of variants (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--forward",
        action="store_true",
        help="also run each variant once on the bundled image (random weights, preprocessed at 224)",
    )
    p.add_argument("--image", default=None, help="image for --forward (default: the bundled chelsea.jpg)")
    p.add_argument(
        "--family",
        choices=("crossformer", "soft", "cmt", "augvit"),
        default="crossformer",
        help="model family (soft / cmt / augvit: this package vs the official code vs the paper)",
    )


def facts_table(rows: list[dict], img_size: tuple[int, int]) -> Table:
    table = Table(title=f"CrossFormer family at {img_size[0]}x{img_size[1]} (1 FLOP = 1 multiply-add)")
    for col in (
        "variant",
        "params",
        "paper",
        "GFLOPs official counter",
        "GFLOPs executed",
        "GFLOPs this impl.",
        "paper",
    ):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        table.add_row(
            r["variant"],
            f"{r['params']:,}",
            f"{r['paper_params_M']} M",
            f"{r['gflops_official']:.2f}",
            f"{r['gflops_executed']:.2f}",
            f"{r['gflops_implementation']:.2f}",
            f"{r['paper_gflops']}" if img_size == (224, 224) else "-",
        )
    return table


def run(args: argparse.Namespace) -> int:
    if len(args.img_size) > 2 or min(args.img_size) < 32:
        raise ValueError(
            f"--img-size takes H or H W, each at least 32 (the models need a 32x32 input), got {args.img_size}"
        )
    size = tuple(args.img_size) * 2 if len(args.img_size) == 1 else tuple(args.img_size)
    if args.family != "crossformer":
        return family_run(args)
    rows = [model_facts(v, size) for v in (args.variants or list_variants())]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    console = Console(width=None if Console().is_terminal else 150)
    console.print(facts_table(rows, size))
    console.print(
        "official counter = the official model.flops() (the published numbers); executed = what the official code "
        "computes, incl. padded LDA groups and ACL convs; this impl. = matmul/conv work of this package "
        "(no padded-token projections, no norms)."
    )
    if size == (224, 224):
        console.print(NOTE_PP_S)
    if args.forward:
        forward_table(console, args.variants or list_variants(), args.image)
    return 0


def bundled_image() -> Image.Image:
    with resources.files("crossformer_vision.assets").joinpath("chelsea.jpg").open("rb") as f:
        return Image.open(f).convert("RGB")


def forward_table(console: Console, variants: list[str], image_path: str | None) -> None:
    """One forward pass per variant on an image with its pretrained-config preprocessing (random weights)."""
    from ..data.images import read_rgb

    image = read_rgb(image_path) if image_path else bundled_image()
    table = Table(title=f"one forward pass per variant on a {image.width}x{image.height} image (random weights)")
    for col in ("variant", "input", "features [B,H,W,C]", "stage maps C@HxW", "logits", "ms"):
        table.add_column(col)
    for name in variants:
        torch.manual_seed(0)
        model = create_model(name).eval()
        cfg = timm.data.resolve_model_data_config(model)
        x = timm.data.create_transform(**cfg)(image).unsqueeze(0)
        with torch.inference_mode():
            start = time.perf_counter()
            feats = model.forward_features(x)
            logits = model.forward_head(feats)
            ms = (time.perf_counter() - start) * 1e3
            maps = model.forward_intermediates(x, intermediates_only=True)
        if not torch.isfinite(logits).all():
            raise RuntimeError(f"{name} produced non-finite logits")
        table.add_row(
            name,
            "x".join(map(str, x.shape[-2:])),
            str(tuple(feats.shape)),
            " ".join(f"{m.shape[1]}@{m.shape[2]}x{m.shape[3]}" for m in maps),
            str(tuple(logits.shape)),
            f"{ms:.0f}",
        )
    console.print(table)


def family_run(args: argparse.Namespace) -> int:
    """``--family soft|cmt|augvit``: parameters and GMACs at each model's official size (or ``--img-size``)."""
    from ..models.family_facts import FAMILY_NOTES, family_facts, family_variants

    names = args.variants or [n for n in family_variants() if n.startswith(args.family + "_")]
    size = None if args.img_size == [224] else args.img_size[0]
    rows = [family_facts(n, size) for n in names]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = Table(title=f"{args.family} (1 FLOP = 1 multiply-add; official code measured with the same counter)")
    for col in ("variant", "input", "params", "official code", "paper", "GFLOPs", "official code", "paper"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for r in rows:
        table.add_row(
            r["variant"],
            str(r["img_size"]),
            f"{r['params']:,}",
            f"{r['official_params']:,}" if r["official_params"] else "-",
            f"{r['paper_params_M']} M ({r['paper_row']})" if r["paper_row"] else "-",
            f"{r['gmacs']:.2f}",
            f"{r['official_gmacs']:.2f}" if r["official_gmacs"] else "-",
            f"{r['paper_gflops']}" if r["paper_row"] else "-",
        )
    console = Console(width=None if Console().is_terminal else 150)
    console.print(table)
    for note in FAMILY_NOTES:
        if note.lower().startswith(args.family):
            console.print(note)
    if args.forward:
        forward_table(console, names, args.image)
    return 0
