"""``crossformer``: the project's single console script."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Transformer activations are large, short-lived buffers: backing them with 2 MiB transparent huge pages
# cuts page faults about tenfold and speeds CPU inference and training up by 30-60 % on the machines we
# measured (benchmarks/speed.py). PyTorch reads this lazily, at its first large allocation; a value the
# user set wins.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# subcommand -> (module, one-line help)
COMMANDS = {
    "demo": ("crossformer_vision.cli.demo", "the main job on the embedded data (see the README)"),
    "models": ("crossformer_vision.cli.models", "parameters and GFLOPs of every variant next to the paper's numbers"),
    "flops": ("crossformer_vision.cli.flops", "parameters and GFLOPs of any classifier, segmentor or detector"),
    "convert": ("crossformer_vision.cli.convert", "convert an official checkpoint to safetensors"),
    "train": ("crossformer_vision.cli.train", "train an image classifier (also under torchrun)"),
    "eval": ("crossformer_vision.cli.evaluate", "evaluate a classifier: top-1/top-5/loss/per-class accuracy"),
    "predict": ("crossformer_vision.cli.predict", "classify images: top-k labels with probabilities"),
    "seg": ("crossformer_vision.cli.seg", "semantic segmentation: train / eval / predict / demo / convert"),
    "det": (
        "crossformer_vision.cli.det",
        "detection and instance segmentation: train / eval / predict / demo / convert",
    ),
    "multilabel": ("crossformer_vision.cli.multilabel", "multi-label recognition (CSRA head): train/eval/predict/demo"),
    "explain": ("crossformer_vision.cli.explain", "class relevance maps, and their faithfulness tests (explain eval)"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crossformer", description="CrossFormer / CrossFormer++ vision models.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
            continue  # a task whose command is not written yet
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_args(p)
        p.set_defaults(_run=mod.run)
    return parser


def _command_of(argv: list[str]) -> tuple[str | None, str | None]:
    """(command, subcommand) from a raw command line, before parsing (options before them are skipped)."""
    words = [a for a in argv if not a.startswith("-")]
    command = words[0] if words else None
    return command, (words[1] if command in ("seg", "det", "multilabel") and len(words) > 1 else None)


def _is_process_entry_point() -> bool:
    """Whether this process was started as the CLI (console script or ``python -m``), so restarting it is safe."""
    main_module = sys.modules.get("__main__")
    spec = getattr(main_module, "__spec__", None)
    if spec is not None and spec.name == "crossformer_vision.cli.main":
        return True
    return os.path.basename(getattr(main_module, "__file__", None) or "") in ("crossformer", "crossformer-script.py")


def main(argv: list[str] | None = None) -> int:
    from ..utils.allocator import keep_freed_memory, keep_freed_memory_wanted, preload_tcmalloc, tcmalloc_notice

    if argv is None and _is_process_entry_point():  # training commands restart once with tcmalloc when installed
        try:
            preload_tcmalloc(*_command_of(sys.argv[1:]))
        except ValueError as err:
            print(f"crossformer: error: {err}", file=sys.stderr)
            return 2
        notice = tcmalloc_notice()
        if notice and os.environ.get("RANK", "0") == "0":
            print(notice, file=sys.stderr, flush=True)
    from ..engine.checkpoint import CheckpointWriteError
    from ..engine.distributed import cleanup
    from ..engine.trainer import TrainingDivergedError, TrainingInterrupted

    args, extra = build_parser().parse_known_args(argv)
    if extra:
        # KEY=VALUE overrides on both sides of an option (``... a=1 --resume RUN b=2``): argparse takes one run of a
        # positional list only, so the later ones come back here
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*(args.overrides or []), *extra]
        else:
            where = " ".join(w for w in (args.command, getattr(args, f"{args.command}_command", None)) if w)
            print(
                f"crossformer {where}: error: unrecognized arguments: {' '.join(extra)} "
                f"(see crossformer {where} --help)",
                file=sys.stderr,
            )
            return 2
    try:
        # a process-wide allocator setting, so only when this is the process's entry point (the console script), not
        # when main() is called as a function: on for inference commands, CROSSFORMER_KEEP_FREED_MEMORY=0/1 overrides
        # (utils/allocator.py)
        subcommand = getattr(args, f"{args.command}_command", None)
        if argv is None and keep_freed_memory_wanted(args.command, subcommand):
            keep_freed_memory()
        return int(args._run(args) or 0)
    except TrainingInterrupted as err:  # Ctrl-C during training: the message says how to resume
        if _debug():
            raise
        print(f"crossformer {args.command}: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        if _debug():
            raise
        print(f"crossformer {args.command}: interrupted", file=sys.stderr)
        return 130
    except MemoryError as err:
        if _debug():
            raise
        detail = f" ({_one_line(err)})" if str(err) else ""
        print(
            f"crossformer {args.command}: error: out of memory{detail}; use smaller batches or images, or a machine "
            "with more memory",
            file=sys.stderr,
        )
        return 2
    except (
        ValueError,
        TypeError,
        OSError,  # FileNotFoundError, PermissionError, IsADirectoryError, a full disk (models.io.FileWriteError), ...
        CheckpointWriteError,
        TrainingDivergedError,
    ) as err:
        if _debug():
            raise
        hint = " (CROSSFORMER_DEBUG=1 shows where it came from)" if isinstance(err, TypeError) else ""
        print(f"crossformer {args.command}: error: {_one_line(err)}{hint}", file=sys.stderr)
        return 2
    finally:
        # a process group left to interpreter exit can abort there (gloo's worker threads: "terminate called without
        # an active exception", seen in about one 2-process run in ten)
        cleanup()


def _debug() -> bool:
    """CROSSFORMER_DEBUG=1: let errors propagate with their traceback."""
    return os.environ.get("CROSSFORMER_DEBUG", "0") != "0"


def _one_line(err: BaseException) -> str:
    """The error's message on one line (library messages can span several)."""
    text = str(err).strip()
    return " ".join(part.strip() for part in text.splitlines() if part.strip()) if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
