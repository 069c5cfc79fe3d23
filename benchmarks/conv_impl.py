"""Forward + backward time of the cross-scale convolutions, computed directly or as stride-1 convolutions on
``pixel_unshuffle``-d blocks (``conv_impl`` of :class:`CrossScaleEmbedding` / :class:`CrossScalePatchMerging`).

Prints one table: per layer and input size, milliseconds per forward+backward for both forms and the form that the
default ``conv_impl="auto"`` picks in training. The demo's sizes (32 pixels, width 48, batch 128) and the paper's
(224 pixels, CrossFormer-S width 96, batch 16) are measured.

Usage:
    python benchmarks/conv_impl.py [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

from crossformer_vision.layers.embed import _concat, _use_unshuffle, cross_scale_convs


def _time(fn, runs: int) -> float:
    for _ in range(2):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    table = Table(title=f"cross-scale convolutions, forward + backward, {args.threads} threads (ms, median)")
    for col in ("setting", "layer", "input", "direct", "unshuffled", "auto picks"):
        table.add_column(col, justify="left" if col in ("setting", "layer", "auto picks") else "right")
    settings = [("demo: 32 px, D=48, batch 128", 128, 32, 48, 15), ("224 px, D=96, batch 16", 16, 224, 96, 5)]
    for label, batch, size, dim, runs in settings:
        layers = [
            ("stem 4/8/16/32", 3, dim, (4, 8, 16, 32), 4, size, False),
            ("merge 1", dim, 2 * dim, (2, 4), 2, size // 4, True),
            ("merge 2", 2 * dim, 4 * dim, (2, 4), 2, size // 8, True),
            ("merge 3", 4 * dim, 8 * dim, (2, 4), 2, size // 16, True),
        ]
        for name, cin, cout, kernels, stride, hw, input_grad in layers:
            convs = cross_scale_convs(cin, cout, kernels, stride)
            x = torch.randn(batch, cin, hw, hw, requires_grad=input_grad)
            ms = {}
            for unshuffle in (False, True):

                def step(convs=convs, x=x, unshuffle=unshuffle):
                    _concat(convs, x, unshuffle).sum().backward()

                ms[unshuffle] = _time(step, runs)
            with torch.enable_grad():
                picks = "unshuffled" if _use_unshuffle(convs, "auto") else "direct"
            table.add_row(label, name, f"{cin}x{hw}x{hw}", f"{ms[False]:.1f}", f"{ms[True]:.1f}", picks)
    Console(width=140).print(table)


if __name__ == "__main__":
    main()
