"""The command-line vocabulary every task shares: the same option names for the same meaning.

``--config`` / ``--resume`` / ``--force-resume`` / ``--output-dir`` / ``KEY=VALUE`` for training, ``--checkpoint`` /
``--trust-checkpoint`` / ``--json`` for evaluation and prediction, ``--output-dir`` wherever a folder of results is
written, and one exit rule for predictions (:func:`require_some_readable`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "add_checkpoint",
    "add_json",
    "add_output_dir",
    "add_task_commands",
    "add_train",
    "console",
    "positive_int",
    "require_some_readable",
    "run_task_command",
    "train_overrides",
]


_TRUST = "unpickle arbitrary objects from .pth files (only for files whose origin you trust)"


def add_train(p: argparse.ArgumentParser, example: str) -> None:
    """``--config``, ``--resume``, ``--force-resume``, ``--output-dir`` and ``KEY=VALUE`` overrides."""
    p.add_argument("--config", default=None, help="YAML file or bundled preset name")
    p.add_argument("--resume", default=None, help="run directory (its latest checkpoint) or a checkpoints/step-* dir")
    p.add_argument(
        "--force-resume", action="store_true", help="resume even if the config differs from the checkpoint's"
    )
    p.add_argument("--output-dir", default=None, help="run directory (the same as train.output_dir=DIR)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=f"config overrides, e.g. {example}")


def train_overrides(args: argparse.Namespace) -> list[str]:
    """The command line's overrides, with ``--output-dir`` as ``train.output_dir``."""
    out = list(args.overrides or [])
    if getattr(args, "output_dir", None):
        out.append(f"train.output_dir={args.output_dir}")
    return out


def add_checkpoint(p: argparse.ArgumentParser, what: str) -> None:
    """``--checkpoint`` (required) and ``--trust-checkpoint``."""
    p.add_argument("--checkpoint", required=True, help=what)
    p.add_argument("--trust-checkpoint", action="store_true", help=_TRUST)


def add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def add_output_dir(p: argparse.ArgumentParser, default: str | None, what: str) -> None:
    """``--output-dir`` (``--out`` is kept as an alias)."""
    p.add_argument("--output-dir", "--out", dest="output_dir", default=default, required=default is None, help=what)


def add_task_commands(
    p: argparse.ArgumentParser, dest: str, handlers: Sequence[Callable], *, checkpoint: str, train_example: str
) -> dict[str, argparse.ArgumentParser]:
    """The subcommands of a task command (``seg``, ``det``), one per handler ``_<name>`` (its docstring's first line
    is the help), each with the options every task shares: ``train`` the training options, ``eval`` / ``predict``
    ``--checkpoint`` / ``--trust-checkpoint`` / ``--json`` (``predict`` also its inputs and ``--device``),
    ``convert`` ``SRC DST`` and ``--trust-checkpoint``. Returns the parsers by name for the task's own options."""
    sub = p.add_subparsers(dest=dest, metavar="ACTION", required=True)
    parsers = {}
    for handler in handlers:
        name = handler.__name__.lstrip("_")
        help_text = (handler.__doc__ or "").strip().splitlines()[0]
        q = sub.add_parser(name, help=help_text, description=help_text)
        q.set_defaults(_task_run=handler)
        if name == "train":
            add_train(q, train_example)
        elif name in ("eval", "predict"):
            if name == "predict":
                q.add_argument("inputs", nargs="+", help="image files and/or folders")
                q.add_argument("--device", default=None, help="cpu / cuda (default: CUDA when available)")
            add_checkpoint(q, checkpoint)
            add_json(q)
        elif name == "convert":
            q.add_argument("src", help="official checkpoint (.pth)")
            q.add_argument("dst", help="output .safetensors")
            q.add_argument("--trust-checkpoint", action="store_true", help=_TRUST)
        parsers[name] = q
    return parsers


def run_task_command(args: argparse.Namespace) -> int:
    """Run the subcommand :func:`add_task_commands` chose."""
    return int(args._task_run(args) or 0)


def console() -> Any:
    from rich.console import Console

    return Console(width=None if Console().is_terminal else 120)


def require_some_readable(results: Sequence[dict[str, Any]]) -> None:
    """The exit rule of every ``predict``: unreadable inputs are reported and skipped, but a call in which no input
    could be read is an error (exit 2)."""
    failed = [r for r in results if "error" in r]
    if results and len(failed) == len(results):
        raise ValueError(
            f"none of the {len(results)} input image(s) could be read (e.g. {failed[0]['image']}: {failed[0]['error']})"
        )


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--topk``, ``--batch-size``, ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
