"""``crossformer demo``: the main job on the embedded data.

Prints the model table, then runs every variant once on the bundled image with the preprocessing of its
pretrained config (no weights are bundled, so the models are randomly initialised: the run shows shapes,
speed and the pipeline, not predictions).
"""

from __future__ import annotations

import argparse
import time
from importlib import resources

import timm
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from ..models import create_model, list_variants
from . import models as models_cmd


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", default=None, help="image to run (default: the bundled chelsea.jpg)")
    p.add_argument("--variants", nargs="+", default=None, help="subset of variants (default: all)")


def bundled_image() -> Image.Image:
    with resources.files("crossformer_vision.assets").joinpath("chelsea.jpg").open("rb") as f:
        return Image.open(f).convert("RGB")


def run(args: argparse.Namespace) -> int:
    console = Console(width=None if Console().is_terminal else 150)
    variants = args.variants or list_variants()
    models_cmd.run(argparse.Namespace(img_size=[224], variants=variants, json=False))
    image = Image.open(args.image).convert("RGB") if args.image else bundled_image()
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
        table.add_row(
            name,
            "x".join(map(str, x.shape[-2:])),
            str(tuple(feats.shape)),
            " ".join(f"{m.shape[1]}@{m.shape[2]}x{m.shape[3]}" for m in maps),
            str(tuple(logits.shape)),
            f"{ms:.0f}",
        )
        if not torch.isfinite(logits).all():
            raise RuntimeError(f"{name} produced non-finite logits")
    console.print(table)
    return 0
