"""GPU speed and memory of this CrossFormer against the reference path and timm models, in one run (CUDA only).

Printed, and written as JSON (``--out``) with a picture beside it (``.png``):

* the bf16 matmul peak of the card (8192^3 ``torch.mm`` into a preallocated output);
* inference, batch 128 at 224, bf16 autocast (and fp32 for a few rows): img/s, multiply-adds per image, the
  achieved TFLOP/s (img/s x 2 x MACs; the hardware efficiency a model's layout gets, comparable across models of
  different cost), img/s per GMAC, and peak GPU memory;
* training steps, batch 128 at 224, bf16 autocast, AdamW (fused): img/s and peak GPU memory;
* large inputs: CrossFormer-S against swin_tiny at 224, 448, 896 and 1344 (batch 8, bf16): img/s, tokens/s and peak
  memory;
* ``torch.compile`` (inductor, default mode) of CrossFormer-S and swin_tiny for inference, with compile time;
* checks: CUDA fp32 against CPU fp32 logits on the same weights, and bf16 autocast against fp32 top-1 agreement on
  the bundled Fashion-MNIST test images (random fixture-style weights: the worst case of nearly tied logits).

``ours`` is the package's model (``timm.create_model``); ``reference`` is ``tests/reference_crossformer.py``, the
straightforward math of the official code on the same weights; swin / deit / resnet come from timm. Every row times
``--reps`` repetitions of ``--iters`` forward passes (after warm-up, with ``torch.cuda.synchronize``) and keeps the
median repetition. cuDNN autotuning is on (``torch.backends.cudnn.benchmark``), as a GPU user runs.

Usage:
    python benchmarks/gpu.py                   # about 3-4 minutes on one H200
    python benchmarks/gpu.py --no-compile      # without the torch.compile rows
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))  # the reference path lives with the tests
sys.path.insert(0, str(ROOT / "src"))  # runs from a checkout without installing the package

SWIN = "swin_tiny_patch4_window7_224"
DEVICE = "cuda"  # "cpu" only for --smoke, a quick run of every code path on a machine without a GPU


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak() -> None:
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")


def fixture_weights_(model: torch.nn.Module, seed: int = 1234) -> None:
    """Fixture-style random weights (tests/fixtures_official.py): non-degenerate logits and position bias."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                w = torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel())
            elif name.endswith("weight"):
                w = 1 + 0.2 * torch.randn(p.shape, generator=g)
            else:
                w = 0.2 * torch.randn(p.shape, generator=g)
            p.copy_(w)


def build(kind: str, name: str, device: str | None = None, **kwargs) -> torch.nn.Module:
    import timm

    import crossformer_vision  # noqa: F401  (registers the variants)

    with torch.device(device or DEVICE):
        model = timm.create_model(name, **kwargs)
    if kind != "reference":
        return model
    from reference_crossformer import forward

    class Reference(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.params = torch.nn.ParameterList(list(model.state_dict(keep_vars=True).values()))
            self.keys = list(model.state_dict().keys())

        def forward(self, x):
            p = dict(zip(self.keys, self.params))
            with torch.device(x.device):  # the reference builds its offsets and masks on the default device
                return forward(p, x, model.depths, model.num_heads, model.group_size, model.crs_interval, "pp")

    return Reference()


def macs_per_image(kind: str, name: str, model: torch.nn.Module, size: int) -> float:
    if kind in ("ours", "reference"):
        from crossformer_vision.models.flops import count_flops

        ref = model if kind == "ours" else build("ours", name, device="meta")
        return count_flops(ref, size, "implementation").total
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size, device=DEVICE))
    return counter.get_total_flops() / 2


def timed(fn, warmup: int, iters: int, reps: int) -> float:
    """Median seconds per call over ``reps`` repetitions of ``iters`` calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        sync()
        times.append((time.perf_counter() - start) / iters)
    return statistics.median(times)


def matmul_peak(dtype: torch.dtype, n: int = 8192) -> float:
    a, b = torch.randn(n, n, device=DEVICE, dtype=dtype), torch.randn(n, n, device=DEVICE, dtype=dtype)
    c = torch.empty(n, n, device=DEVICE, dtype=dtype)
    sec = timed(lambda: torch.mm(a, b, out=c), warmup=3, iters=10, reps=3)
    return 2 * n**3 / sec / 1e12


def autocast(mode: str):
    return torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=mode == "bf16-autocast")


def infer_row(kind: str, name: str, mode: str, batch: int, size: int, args, **kwargs) -> dict:
    torch.manual_seed(0)
    model = build(kind, name, **kwargs).eval()
    macs = macs_per_image(kind, name, model, size)
    x = torch.randn(batch, 3, size, size, device=DEVICE)
    reset_peak()
    with torch.inference_mode(), autocast(mode):
        sec = timed(lambda: model(x), args.warmup, args.iters, args.reps)
    out = {"kind": kind, "model": name, "mode": mode, "batch": batch, "size": size, "macs": macs}
    out.update(seconds=sec, img_per_s=batch / sec, peak_gib=peak_gib())
    out["tflops"] = out["img_per_s"] * 2 * macs / 1e12
    out["img_per_s_per_gmac"] = out["img_per_s"] / (macs / 1e9)
    return out


def train_row(kind: str, name: str, batch: int, size: int, args, checkpointing: bool = False) -> dict:
    torch.manual_seed(0)
    model = build(kind, name).train()
    if checkpointing:
        model.set_grad_checkpointing(True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)
    x = torch.randn(batch, 3, size, size, device=DEVICE)
    y = torch.randint(0, 1000, (batch,), device=DEVICE)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast("bf16-autocast"):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()

    reset_peak()
    sec = timed(step, max(2, args.warmup // 2), max(3, args.iters // 2), args.reps)
    out = {"kind": kind, "model": name, "mode": "bf16-autocast", "batch": batch, "size": size}
    if checkpointing:
        out["mode"] += " + grad ckpt"
    out.update(seconds=sec, img_per_s=batch / sec, peak_gib=peak_gib())
    return out


def compile_row(kind: str, name: str, batch: int, size: int, args) -> dict:
    torch.manual_seed(0)
    eager = build(kind, name).eval()
    model = torch.compile(eager)
    x = torch.randn(batch, 3, size, size, device=DEVICE)
    with torch.inference_mode(), autocast("bf16-autocast"):
        start = time.perf_counter()
        model(x)
        sync()
        compile_s = time.perf_counter() - start
        sec = timed(lambda: model(x), args.warmup, args.iters, args.reps)
    macs = macs_per_image(kind, name, eager, size)
    out = {"kind": kind, "model": name, "mode": "bf16-autocast, torch.compile", "batch": batch, "size": size}
    out.update(seconds=sec, img_per_s=batch / sec, compile_s=compile_s, macs=macs)
    out["tflops"] = out["img_per_s"] * 2 * macs / 1e12
    out["img_per_s_per_gmac"] = out["img_per_s"] / (macs / 1e9)
    return out


def checks(images: int) -> dict:
    """CUDA fp32 against CPU fp32 on the same weights; bf16 autocast top-1 agreement with fp32 on CUDA."""
    from timm.data import create_transform

    from crossformer_vision.data import FashionMNIST

    model = build("ours", "crossformer_s", device="cpu").eval()
    fixture_weights_(model)
    tf = create_transform(input_size=(3, 224, 224), crop_pct=1.0, interpolation="bicubic")
    data = FashionMNIST(split="test", transform=tf, limit=images)
    x = torch.stack([data[i][0] for i in range(len(data))])
    with torch.inference_mode():
        cpu = model(x[:32])
        model.to(DEVICE)
        xs = x.to(DEVICE).split(128)
        fp32 = torch.cat([model(c) for c in xs]).float()
        with autocast("bf16-autocast"):
            bf16 = torch.cat([model(c) for c in xs]).float()
    top2 = fp32.topk(2, dim=-1).values
    return {
        "cuda_vs_cpu_fp32_max_abs_diff": float((fp32[:32].cpu() - cpu).abs().max()),
        "logit_scale": float(cpu.abs().max()),
        "cuda_vs_cpu_top1_agreement": float((fp32[:32].cpu().argmax(-1) == cpu.argmax(-1)).float().mean()) * 100,
        "images": len(x),
        "bf16_autocast_top1_agreement": float((bf16.argmax(-1) == fp32.argmax(-1)).float().mean()) * 100,
        "median_top1_margin": float((top2[:, 0] - top2[:, 1]).median()),
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["inference"] if r["mode"] == "bf16-autocast" and "img_per_s" in r]
    labels = [f"{r['kind']}\n{r['model'].replace('_patch4_window7_224', '').replace('_patch16_224', '')}" for r in rows]
    colors = ["tab:blue" if r["kind"] == "ours" else "tab:gray" if r["kind"] == "timm" else "tab:orange" for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5))
    for ax, key, title in (
        (axes[0], "img_per_s", "img/s"),
        (axes[1], "tflops", "achieved TFLOP/s (img/s x 2 x MACs)"),
    ):
        ax.bar(range(len(rows)), [r[key] for r in rows], color=colors)
        ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{title}, batch 128 at 224, bf16 autocast")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{result['device']}, torch {result['torch']} (blue: this package, orange: reference path)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def timing_parser(doc: str, out_name: str) -> argparse.ArgumentParser:
    """The options every GPU script shares: batch and timing repetitions, ``--out`` and ``--smoke``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results" / out_name))
    parser.add_argument("--smoke", action="store_true", help="every code path once on the CPU at batch 2")
    return parser


def setup(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict:
    """Apply ``--smoke`` (the CPU, batch 2, one repetition, a ``smoke_`` output file) or insist on CUDA; turn cuDNN
    autotuning on. Returns the header of the result: date, device, torch version."""
    global DEVICE
    if args.smoke:
        DEVICE = "cpu"
        args.batch, args.warmup, args.iters, args.reps = 2, 1, 1, 1
        if args.out == parser.get_default("out"):
            args.out = str(Path(args.out).with_name("smoke_" + Path(args.out).name))
    elif not torch.cuda.is_available():
        raise SystemExit(f"{parser.prog} needs a CUDA device; speed.py measures the CPU (--smoke: a check)")
    torch.backends.cudnn.benchmark = True
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    return {
        "date": time.strftime("%Y-%m-%d"),
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (smoke run)",
        "torch": torch.__version__,
    }


def main() -> None:
    parser = timing_parser(__doc__, "speed_gpu.json")
    parser.add_argument("--images", type=int, default=1000, help="bundled test images for the bf16 agreement")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    args = parser.parse_args()
    result: dict = setup(parser, args)
    if args.smoke:
        args.images, args.no_compile = 8, True
    out = Path(args.out)
    result |= {
        "inference": [],
        "training": [],
        "large": [],
        "compile": [],
    }

    def save(section: str | None = None, row: dict | None = None) -> None:
        if section:
            result[section].append(row)
            print(f"{section:9s} " + json.dumps({k: v for k, v in row.items() if k != "batch"}), flush=True)
        out.write_text(json.dumps(result, indent=1))

    def attempt(section: str, fn, *a, **kw) -> None:
        try:
            save(section, fn(*a, **kw))
        except Exception as e:  # one failing row (say out of memory) must not lose the others
            save(section, {"call": f"{fn.__name__}{a[:3]}", "error": f"{type(e).__name__}: {e}"[:500]})
            reset_peak()

    result["matmul_tflops"] = {"bf16": matmul_peak(torch.bfloat16), "fp32": matmul_peak(torch.float32)}
    print(f"{result['device']}, torch {result['torch']}: matmul 8192^3 {result['matmul_tflops']}", flush=True)
    result["checks"] = checks(args.images)
    save()
    print("checks", json.dumps(result["checks"]), flush=True)

    b = args.batch
    bf16 = "bf16-autocast"
    ours = ["crossformer_t", "crossformer_s", "crossformer_b", "crossformer_l", "crossformerpp_s", "crossformerpp_b"]
    for name in ours:
        attempt("inference", infer_row, "ours", name, bf16, b, 224, args)
    for name in ("crossformer_s", "crossformerpp_s"):
        attempt("inference", infer_row, "reference", name, bf16, b, 224, args)
    for name in (SWIN, "swin_small_patch4_window7_224", "swin_base_patch4_window7_224", "deit_small_patch16_224"):
        attempt("inference", infer_row, "timm", name, bf16, b, 224, args)
    attempt("inference", infer_row, "timm", "resnet50", bf16, b, 224, args)
    for kind, name in (("ours", "crossformer_s"), ("reference", "crossformer_s"), ("timm", SWIN)):
        attempt("inference", infer_row, kind, name, "fp32", b, 224, args)

    for kind, name in (("ours", "crossformer_s"), ("reference", "crossformer_s"), ("timm", SWIN)):
        attempt("training", train_row, kind, name, b, 224, args)
    attempt("training", train_row, "ours", "crossformer_s", b, 224, args, checkpointing=True)

    for size in (224, 448) if args.smoke else (224, 448, 896, 1344):
        attempt("large", infer_row, "ours", "crossformer_s", bf16, min(8, b), size, args)
        attempt("large", infer_row, "timm", SWIN, bf16, min(8, b), size, args, img_size=size)

    if not args.no_compile:
        for kind, name in (("ours", "crossformer_s"), ("timm", SWIN)):
            attempt("compile", compile_row, kind, name, b, 224, args)

    s = next((r for r in result["inference"] if r.get("model") == "crossformer_s" and r.get("kind") == "ours"), {})
    w = next((r for r in result["inference"] if r.get("model") == SWIN and r.get("mode") == bf16), {})
    if "tflops" in s and "tflops" in w:
        result["target"] = {
            "crossformer_s_tflops": s["tflops"],
            "swin_tiny_tflops": w["tflops"],
            "crossformer_s_img_per_s_per_gmac": s["img_per_s_per_gmac"],
            "swin_tiny_img_per_s_per_gmac": w["img_per_s_per_gmac"],
        }
    save()
    plot(result, out.with_suffix(".png"))
    print(f"written: {out} and {out.with_suffix('.png')}", flush=True)


if __name__ == "__main__":
    main()
