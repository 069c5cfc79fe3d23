"""``crossformer``: the project's single console script."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS = {
    "demo": ("crossformer_vision.cli.demo", "the main job on the embedded data (see the README)"),
    "models": ("crossformer_vision.cli.models", "parameters and GFLOPs of every variant next to the paper's numbers"),
    "convert": ("crossformer_vision.cli.convert", "convert an official checkpoint to safetensors"),
    "train": ("crossformer_vision.cli.train", "train an image classifier (also under torchrun)"),
    "eval": ("crossformer_vision.cli.evaluate", "evaluate a classifier: top-1/top-5/loss/per-class accuracy"),
    "predict": ("crossformer_vision.cli.predict", "classify images: top-k labels with probabilities"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossformer", description="CrossFormer / CrossFormer++ vision models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod = importlib.import_module(module)
        mod.add_args(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except (ValueError, TypeError, FileNotFoundError, PermissionError) as err:
        print(f"crossformer {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
