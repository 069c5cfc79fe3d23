"""Speed and memory of this CrossFormer against the faithful reference path and timm models, in one run.

Every measurement runs in a fresh subprocess (so peak RSS belongs to that measurement alone). Printed: one
table with img/s, % of the measured matmul peak, training s/step and peak RSS, for fp32 and bf16, then the
large-input scaling table. Results are also written as JSON (``--out``).

* ``ours``: the package's product path (``timm.create_model(name)``).
* ``reference``: ``tests/reference_crossformer.py``, the straightforward math of the official code (explicit
  padding, masks and reshapes; position bias recomputed in every call) on the same weights.
* ``timm``: swin_tiny / deit_small / resnet50 from timm.
* Every row runs with the process settings of the ``crossformer`` CLI, whatever the model: PyTorch's CPU allocator
  on transparent huge pages (``THP_MEM_ALLOC_ENABLE=1``) everywhere, and for inference also glibc's ``malloc``
  keeping freed memory (what the CLI's ``eval`` / ``predict`` commands set: far fewer page faults for some more peak
  RSS; ``crossformer_vision.utils.allocator``). Extra rows show CrossFormer-S inference with huge pages only and
  with the default allocator (4 KiB pages), as a plain script gets it, and training with the opt-in
  ``CROSSFORMER_KEEP_FREED_MEMORY=1``. Where gperftools' tcmalloc is installed (Debian: ``libtcmalloc-minimal4``),
  CrossFormer-S inference and training also run with it preloaded (``LD_PRELOAD``, as
  ``python -m torch.backends.xeon.run_cpu --enable-tcmalloc`` does): an allocator that caches freed memory itself.
* ``official``: numbers measured with the unmodified official code on this machine type (not re-run here;
  ``benchmarks/official_baseline.json``).

bf16 against fp32: top-1 agreement on the bundled Fashion-MNIST test images, for CrossFormer-S with random weights at
224 (a worst case: 1000 nearly tied logits) and for a CrossFormer-S the script trains on the bundled images first
(10 classes, 100 AdamW steps at 64 px, about 5 minutes).

Each row runs ``--rounds`` times (default 2), the rows taking turns, and keeps its fastest process (each process
reports the median of its timed runs): this machine's speed drifts by 10-15 % over minutes, and every row gets the
same chances. Peak RSS is the largest of the rounds.

% of peak = img/s x 2 x (multiply-adds per image) / fp32 matmul GFLOP/s (the larger of two measurements, at the start
and after the rounds, of ``torch.mm`` into a preallocated output)
(the bf16 rows are also given against the fp32 peak, so they compare across rows). Multiply-adds: this
package's analytic count for CrossFormers (equal to torch's flop counter), torch's flop counter for timm models.

Usage:
    python benchmarks/speed.py                 # the full table (about 30 minutes on 2 cores)
    python benchmarks/speed.py --quick         # a smaller subset, one round (writes results/speed_cpu_quick.json)
    python benchmarks/speed.py --training-only # the training rows alone (about 10 minutes with 2 rounds)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # the reference path lives with the tests


# ---------------------------------------------------------------------------------------------- worker side
def _build(spec: dict):
    import timm
    import torch

    import crossformer_vision  # noqa: F401  (registers the variants)

    kind, name = spec["kind"], spec["name"]
    kwargs = dict(spec.get("kwargs", {}))
    if kind == "ours":
        return timm.create_model(name, **kwargs)
    if kind == "timm":
        return timm.create_model(name, **kwargs)
    if kind == "reference":
        from reference_crossformer import forward

        model = timm.create_model(name)

        class Reference(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.params = torch.nn.ParameterList(list(model.state_dict(keep_vars=True).values()))
                self.keys = list(model.state_dict().keys())

            def forward(self, x):
                p = dict(zip(self.keys, self.params))
                return forward(p, x, model.depths, model.num_heads, model.group_size, model.crs_interval, "pp")

        return Reference()
    raise ValueError(kind)


def _peak_rss_gib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _macs(spec: dict, model, size: int) -> float:
    import torch

    if spec["kind"] in ("ours", "reference"):
        from crossformer_vision.models.flops import count_flops

        ref = model if spec["kind"] == "ours" else _build({**spec, "kind": "ours"})
        return count_flops(ref, size, "implementation").total
    from torch.utils.flop_counter import FlopCounterMode

    counted = _build(spec)  # a separate copy: explicit attention matmuls (the counter misses CPU SDPA kernels)
    for m in counted.modules():
        if hasattr(m, "fused_attn"):
            m.fused_attn = False
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        counted.eval()(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 2


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    if spec.get("keep_freed"):
        from crossformer_vision.utils.allocator import keep_freed_memory

        keep_freed_memory()
    torch.manual_seed(0)
    model = _build(spec)
    size, batch, mode = spec["size"], spec["batch"], spec["mode"]
    out: dict = {"macs": _macs(spec, model, size)}
    x = torch.randn(batch, 3, size, size)
    if spec["task"] == "infer":
        model.eval()
        ctx = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if mode == "bf16-autocast"
            else torch.autocast("cpu", enabled=False)
        )
        if mode == "bf16-model":
            model = model.to(torch.bfloat16)
            x = x.to(torch.bfloat16)
        times = []
        with torch.inference_mode(), ctx:
            for i in range(spec["warmup"] + spec["runs"]):
                start = time.perf_counter()
                model(x)
                if i >= spec["warmup"]:
                    times.append(time.perf_counter() - start)
        out["seconds"] = statistics.median(times)
        out["img_per_s"] = batch / out["seconds"]
    else:
        model.train()
        if spec.get("grad_checkpointing"):
            model.set_grad_checkpointing(True)
        fused = {"fused": True} if spec.get("fused", True) else {}
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, **fused)
        y = torch.randint(0, 1000, (batch,))
        ctx = (
            torch.autocast("cpu", dtype=torch.bfloat16)
            if mode == "bf16-autocast"
            else torch.autocast("cpu", enabled=False)
        )
        times = []
        for i in range(spec["warmup"] + spec["runs"]):
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with ctx:
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - start)
        out["seconds"] = statistics.median(times)
        out["img_per_s"] = batch / out["seconds"]
    out["peak_rss_gib"] = _peak_rss_gib()
    return out


# ---------------------------------------------------------------------------------------------- driver side
def run_spec(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    # huge pages for PyTorch's CPU allocator (what the `crossformer` CLI sets), for every row alike
    env["THP_MEM_ALLOC_ENABLE"] = "1" if spec.get("cli_memory", True) else "0"
    if spec.get("preload"):
        env["LD_PRELOAD"] = spec["preload"]
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env, timeout=3600
    )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def matmul_peak(dtype_name: str, threads: int, n: int = 4096, runs: int = 10) -> float:
    import torch

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)
    a, b, c = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype), torch.empty(n, n, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b, out=c)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        torch.mm(a, b, out=c)  # into a preallocated output: the kernel alone, no page faults of a fresh 64 MiB result
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def _bf16_agreement(model, x, labels=None, batch: int = 32) -> dict:
    """Top-1 agreement of ``model`` under bf16 autocast and as a bf16 model with its fp32 predictions on ``x``
    (and the fp32 top-1 accuracy when ``labels`` are given). The model is back in fp32 afterwards."""
    import torch

    with torch.inference_mode():
        ref = torch.cat([model(c) for c in x.split(batch)]).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = torch.cat([model(c) for c in x.split(batch)]).float()
        model.to(torch.bfloat16)
        cast = torch.cat([model(c.to(torch.bfloat16)) for c in x.split(batch)]).float()
        model.float()
    top2 = ref.topk(2, dim=-1).values
    out = {
        "images": len(x),
        "bf16_autocast_top1_agreement": float((auto.argmax(-1) == ref.argmax(-1)).float().mean()) * 100,
        "bf16_model_top1_agreement": float((cast.argmax(-1) == ref.argmax(-1)).float().mean()) * 100,
        "median_top1_margin": float((top2[:, 0] - top2[:, 1]).median()),
        "mean_abs_logit_error_autocast": float((auto - ref).abs().mean()),
    }
    if labels is not None:
        out["fp32_top1_accuracy"] = float((ref.argmax(-1) == labels).float().mean()) * 100
    return out


def agreement(threads: int, images: int) -> dict:
    """bf16 against fp32 on the bundled Fashion-MNIST test images, CrossFormer-S at 224 with random weights.

    The worst case: 1000 classes of nearly tied logits (median top-1 margin ~0.1), so bf16's rounding flips 1-2 % of
    the images. :func:`trained_agreement` measures a model trained on the bundled images.
    """
    import math

    import timm
    import torch
    from timm.data import create_transform

    import crossformer_vision  # noqa: F401
    from crossformer_vision.data import FashionMNIST

    torch.set_num_threads(threads)
    model = timm.create_model("crossformer_s").eval()
    # fixture-style weights (tests/fixtures_official.py): random but with non-degenerate logits and position bias
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    tf = create_transform(input_size=(3, 224, 224), crop_pct=1.0, interpolation="bicubic")
    data = FashionMNIST(split="test", transform=tf, limit=images)
    x = torch.stack([data[i][0] for i in range(len(data))])
    return _bf16_agreement(model, x)


def trained_agreement(threads: int, images: int, steps: int, batch: int = 64, size: int = 64) -> dict:
    """bf16 against fp32 for a CrossFormer-S (10 classes) trained here on the bundled Fashion-MNIST images.

    Trained from scratch at ``size`` pixels (the width that keeps it to minutes on a CPU) for ``steps`` AdamW steps
    over ``steps * batch`` training images, one pass; then evaluated on the first ``images`` test images at the same
    size. Agreement is measured where predictions mean something: a classifier whose top-1 margins come from training,
    not from random weights.
    """
    import timm
    import torch
    import torch.nn.functional as F
    from timm.data import create_transform

    import crossformer_vision  # noqa: F401
    from crossformer_vision.data import FashionMNIST

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    tf = create_transform(
        input_size=(3, size, size), crop_pct=1.0, interpolation="bilinear", mean=(0.286,) * 3, std=(0.353,) * 3
    )

    def load(split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        data = FashionMNIST(split=split, transform=tf, limit=n)
        pairs = [data[i] for i in range(len(data))]
        return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs])

    x_train, y_train = load("train", steps * batch)
    x_test, y_test = load("test", images)
    model = timm.create_model("crossformer_s", num_classes=10).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.1)
    flips = torch.rand(steps, generator=torch.Generator().manual_seed(0)) < 0.5
    start = time.perf_counter()
    for i in range(steps):
        xb, yb = x_train[i * batch : (i + 1) * batch], y_train[i * batch : (i + 1) * batch]
        loss = F.cross_entropy(model(xb.flip(-1) if flips[i] else xb), yb, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        if i % 20 == 0 or i == steps - 1:
            print(f"  agreement model: step {i + 1}/{steps}, loss {loss.item():.3f}", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - start
    return {
        **_bf16_agreement(model.eval(), x_test, y_test),
        "steps": steps,
        "batch": batch,
        "size": size,
        "train_seconds": seconds,
    }


def targets(result: dict, official: dict, peak32: float) -> list[str]:
    """The CPU speed targets (docs/benchmarks.md), each with this run's figure next to it."""

    def find(section: str, model: str, mode: str) -> dict:
        return next((r for r in result[section] if r["model"] == model and r["mode"] == mode), {})

    def pct(r: dict) -> float:
        return 100 * r.get("img_per_s", 0) * 2 * r.get("macs", 0) / 1e9 / peak32

    lines = ["targets against this run:"]
    for v, goal in (("crossformer_s", 85), ("crossformer_t", 80), ("crossformer_b", 80), ("crossformerpp_s", 80)):
        r = find("inference", f"ours {v}", "fp32")
        if r:
            lines.append(f"  {v} fp32 inference: {pct(r):.0f} % of the fp32 matmul peak (target >= {goal} %)")
    base = official["inference_bs32_img_per_s"]["crossformer_s"]
    agree, trained = result.get("agreement", {}), result.get("agreement_trained", {})
    for mode, key in (("bf16-autocast", "bf16_autocast_top1_agreement"), ("bf16-model", "bf16_model_top1_agreement")):
        r = find("inference", "ours crossformer_s", mode)
        if r:
            lines.append(
                f"  crossformer_s {mode}: {r['img_per_s'] / base:.2f}x the official fp32 figure (target >= 2.5x), "
                f"top-1 agreement {trained.get(key, float('nan')):.1f} % trained on the bundled images, "
                f"{agree.get(key, float('nan')):.1f} % with random weights (target >= 99 %)"
            )
    plain = find("training", "ours crossformer_s", "fp32")
    ckpt = find("training", "ours crossformer_s + grad ckpt", "fp32")
    step = official["train_bs16_s_per_step"]["crossformer_s"]
    # the CLI trains with tcmalloc where it is installed, with huge pages alone elsewhere: both are reported
    for label, r in (("", plain), (", tcmalloc", find("training", "ours crossformer_s", "fp32, tcmalloc"))):
        if r.get("seconds"):
            lines.append(
                f"  training fp32{label} batch 16: {step / r['seconds']:.2f}x faster than the official step "
                f"(target >= 1.2x), peak RSS {r['peak_rss_gib']:.2f} GiB (target <= 3.0 GiB)"
            )
    if plain.get("seconds") and ckpt.get("seconds"):
        lines.append(
            f"  gradient checkpointing: peak RSS {100 * ckpt['peak_rss_gib'] / plain['peak_rss_gib']:.1f} % of the "
            f"plain step's (target <= 60 %), {ckpt['seconds'] / plain['seconds']:.3f}x its time (target <= 1.4x)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick", action="store_true", help="fewer models and runs, one round (writes speed_cpu_quick.json)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--rounds", type=int, default=None, help="measure every row this many times, keep the fastest (2; --quick 1)"
    )
    parser.add_argument("--training-only", action="store_true", help="only the training rows (and the matmul peak)")
    parser.add_argument("--out", default=str(HERE / "results" / "speed_cpu.json"))
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.out == parser.get_default("out"):  # the full run's committed file stays
        if args.quick:
            args.out = str(Path(args.out).with_name("speed_cpu_quick.json"))
        elif args.training_only:
            args.out = str(Path(args.out).with_name("speed_cpu_training.json"))

    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    official = json.loads((HERE / "official_baseline.json").read_text())
    t = args.threads
    peak32 = matmul_peak("float32", t)
    peak16 = matmul_peak("bfloat16", t)
    version = __import__("torch").__version__
    console.print(f"torch {version}, {t} threads; matmul 4096^2: fp32 {peak32:.1f} GFLOP/s, bf16 {peak16:.1f} GFLOP/s")

    pending: list[tuple[dict, dict]] = []

    def later(spec: dict) -> dict:
        """A row's result, filled in by the measuring rounds below."""
        result: dict = {}
        pending.append((spec, result))
        return result

    runs = 3 if args.quick else 5
    # every inference row runs with the process settings of the CLI's inference commands (huge pages, freed memory
    # kept: utils/allocator.py), whatever the model; two extra rows show CrossFormer-S without them
    inf = dict(task="infer", size=224, batch=32, warmup=2, runs=runs, threads=t, keep_freed=True)
    rows: list[tuple[str, dict, dict]] = []
    variants = (
        ["crossformer_s"] if args.quick else ["crossformer_t", "crossformer_s", "crossformer_b", "crossformerpp_s"]
    )
    for v in variants:
        for mode in ("fp32", "bf16-autocast", "bf16-model"):
            if mode != "fp32" and v not in ("crossformer_s", "crossformerpp_s"):
                continue
            rows.append((f"ours {v}", {"mode": mode}, later({**inf, "kind": "ours", "name": v, "mode": mode})))
    s_inf = {**inf, "kind": "ours", "name": "crossformer_s", "mode": "fp32"}
    from crossformer_vision.utils.allocator import tcmalloc_library

    preload = tcmalloc_library()
    if not preload:
        console.print("tcmalloc not found (Debian: apt install libtcmalloc-minimal4): no tcmalloc rows")
    for mode, change in (
        ("fp32, huge pages only", {"keep_freed": False}),
        ("fp32, default allocator", {"keep_freed": False, "cli_memory": False}),
        *([("fp32, tcmalloc", {"keep_freed": False, "preload": preload})] if preload else []),
    ):
        rows.append(("ours crossformer_s", {"mode": mode}, later({**s_inf, **change})))
    for v in ["crossformer_s"] if args.quick else ["crossformer_s", "crossformerpp_s"]:
        rows.append(
            (f"reference {v}", {"mode": "fp32"}, later({**inf, "kind": "reference", "name": v, "mode": "fp32"}))
        )
    for name in (
        ["swin_tiny_patch4_window7_224"]
        if args.quick
        else ["swin_tiny_patch4_window7_224", "deit_small_patch16_224", "resnet50"]
    ):
        for mode in ("fp32", "bf16-autocast"):
            rows.append((f"timm {name}", {"mode": mode}, later({**inf, "kind": "timm", "name": name, "mode": mode})))

    train = dict(task="train", size=224, batch=16, warmup=1, runs=3 if args.quick else 5, threads=t)
    s_train = {**train, "kind": "ours", "name": "crossformer_s", "mode": "fp32"}
    # (label, mode shown, spec changes)
    training_rows = [
        ("ours crossformer_s", "fp32", {}),
        ("ours crossformer_s", "fp32, default allocator", {"cli_memory": False}),
        ("ours crossformer_s", "fp32, keep freed memory", {"keep_freed": True}),
        *([("ours crossformer_s", "fp32, tcmalloc", {"preload": preload})] if preload else []),
        ("ours crossformer_s + grad ckpt", "fp32", {"grad_checkpointing": True}),
        ("ours crossformer_s", "bf16-autocast", {"mode": "bf16-autocast"}),
        ("reference crossformer_s", "fp32", {"kind": "reference", "fused": False}),
        ("timm swin_tiny_patch4_window7_224", "fp32", {"kind": "timm", "name": "swin_tiny_patch4_window7_224"}),
    ]
    trows = [(label, {"mode": mode}, later({**s_train, **change})) for label, mode, change in training_rows]
    if args.training_only:
        rows.clear()
        pending[:] = [(spec, r) for spec, r in pending if spec["task"] == "train"]

    # rounds of every row in turn: the machine's speed drifts over minutes, so each row gets several chances and keeps
    # its fastest process (each process reports the median of its timed runs); peak RSS is the largest seen
    for rnd in range(args.rounds):
        for i, (spec, result) in enumerate(pending):
            print(
                f"round {rnd + 1}/{args.rounds}, run {i + 1}/{len(pending)}: {spec['kind']} {spec['name']} "
                f"{spec['task']} {spec['mode']}",
                file=sys.stderr,
                flush=True,
            )
            result.setdefault("rounds", []).append(run_spec(spec))
    for _, result in pending:
        ok = [r for r in result["rounds"] if "img_per_s" in r]
        if not ok:
            result.update(result["rounds"][-1])
            continue
        result.update(max(ok, key=lambda r: r["img_per_s"]))
        result["img_per_s_rounds"] = [r["img_per_s"] for r in ok]
        result["peak_rss_gib"] = max(r["peak_rss_gib"] for r in ok)
        del result["rounds"]
    # the peak the percentages are taken of: the larger of the measurements before and after the rounds
    peak32_end = matmul_peak("float32", t)
    console.print(f"fp32 matmul peak after the rounds: {peak32_end:.1f} GFLOP/s; using {max(peak32, peak32_end):.1f}")
    peak32 = max(peak32, peak32_end)

    table = Table(title=f"CPU, {t} threads, 224x224: inference batch 32, training batch 16 (AdamW)")
    for col in ("model", "mode", "img/s", "% fp32 peak", "official code img/s", "train s/step", "train peak RSS GiB"):
        table.add_column(col, justify="left" if col in ("model", "mode") else "right")

    def pct(r: dict) -> str:
        return f"{100 * r['img_per_s'] * 2 * r['macs'] / 1e9 / peak32:.0f} %" if "img_per_s" in r else "-"

    result = {"matmul_gflops": {"fp32": peak32, "bf16": peak16}, "inference": [], "training": []}
    for label, meta, r in rows:
        key = label.split()[-1]
        off = (
            official["inference_bs32_img_per_s"].get(key)
            if meta["mode"].startswith("fp32") and not label.startswith("reference")
            else None
        )
        table.add_row(
            label,
            meta["mode"],
            f"{r['img_per_s']:.2f}" if "img_per_s" in r else r.get("error", "?"),
            pct(r),
            f"{off:.2f}" if off else "",
            "",
            "",
        )
        result["inference"].append({"model": label, **meta, **r})
    for label, meta, r in trows:
        table.add_row(
            label,
            meta["mode"],
            f"{r['img_per_s']:.2f}" if "img_per_s" in r else r.get("error", "?"),
            pct(r),
            "",
            f"{r['seconds']:.2f}" if "seconds" in r else "-",
            f"{r['peak_rss_gib']:.2f}" if "peak_rss_gib" in r else "-",
        )
        result["training"].append({"model": label, **meta, **r})
    console.print(table)
    step, rss = official["train_bs16_s_per_step"], official["train_bs16_peak_rss_gib"]
    console.print(
        f"official code on this machine type: CrossFormer-S training {step['crossformer_s']:.2f} s/step, "
        f"peak RSS {rss['crossformer_s']:.2f} GiB; swin_tiny {step['swin_tiny_patch4_window7_224']:.2f} s/step."
    )

    if args.training_only:
        result["targets"] = targets(result, official, peak32)
        for line in result["targets"]:
            console.print(line)
        _write(result, Path(args.out), console)
        return

    sizes = [224, 448] if args.quick else [224, 448, 896, 1344]
    large = Table(title="large inputs, batch 1, fp32 inference: img/s and peak RSS")
    for col in ("size", "ours crossformer_s img/s", "RSS GiB", "timm swin_tiny img/s", "RSS GiB", "ours tokens/s (M)"):
        large.add_column(col, justify="right")
    result["large"] = []
    for s in sizes:
        spec = dict(task="infer", size=s, batch=1, warmup=1, runs=3, threads=t, mode="fp32", keep_freed=True)
        a = run_spec({**spec, "kind": "ours", "name": "crossformer_s"})
        b = run_spec({**spec, "kind": "timm", "name": "swin_tiny_patch4_window7_224", "kwargs": {"img_size": s}})
        large.add_row(
            str(s),
            f"{a.get('img_per_s', 0):.2f}",
            f"{a.get('peak_rss_gib', 0):.2f}",
            f"{b.get('img_per_s', 0):.2f}",
            f"{b.get('peak_rss_gib', 0):.2f}",
            f"{a.get('img_per_s', 0) * (s // 4) ** 2 / 1e6:.3f}",
        )
        result["large"].append({"size": s, "ours": a, "swin_tiny": b})
    console.print(large)

    agree = agreement(t, 256 if args.quick else 1000)
    result["agreement"] = agree
    console.print(
        f"bf16 vs fp32 top-1 agreement on {agree['images']} bundled Fashion-MNIST test images, CrossFormer-S at 224 "
        f"with fixture-style random weights (1000 classes, median top-1 margin {agree['median_top1_margin']:.3f}): "
        f"autocast {agree['bf16_autocast_top1_agreement']:.1f} %, "
        f"bf16 weights {agree['bf16_model_top1_agreement']:.1f} %"
    )
    trained = trained_agreement(t, 256 if args.quick else 1000, steps=30 if args.quick else 100)
    result["agreement_trained"] = trained
    console.print(
        f"the same for a CrossFormer-S trained here on the bundled images ({trained['steps']} steps of "
        f"{trained['batch']} at {trained['size']} px, {trained['train_seconds']:.0f} s; fp32 test top-1 "
        f"{trained['fp32_top1_accuracy']:.1f} %, median top-1 margin {trained['median_top1_margin']:.2f}): "
        f"autocast {trained['bf16_autocast_top1_agreement']:.1f} %, "
        f"bf16 weights {trained['bf16_model_top1_agreement']:.1f} % on {trained['images']} test images"
    )
    result["targets"] = targets(result, official, peak32)
    for line in result["targets"]:
        console.print(line)
    _write(result, Path(args.out), console)


def _write(result: dict, out: Path, console) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    result["date"] = time.strftime("%Y-%m-%d")
    out.write_text(json.dumps(result, indent=1))
    console.print(f"written: {out}")


if __name__ == "__main__":
    main()
