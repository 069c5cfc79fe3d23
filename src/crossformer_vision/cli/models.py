"""``crossformer models``: parameters and GFLOPs of every variant, next to the published numbers."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from ..models import list_variants
from ..models.flops import model_facts

NOTE_PP_S = (
    "CrossFormer++-S: the published 4.9 GFLOPs is not reproducible from the official code, whose own counter "
    "gives 4.39 G (4.43 G counting the padded LDA tokens and ACL convs it executes, 4.45 G by fvcore)."
)


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--img-size", type=int, nargs="+", default=[224], metavar="N", help="H [W] (default 224)")
    p.add_argument("--variants", nargs="+", default=None, help="subset of variants (default: all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


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
    size = tuple(args.img_size) * 2 if len(args.img_size) == 1 else tuple(args.img_size[:2])
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
    return 0
