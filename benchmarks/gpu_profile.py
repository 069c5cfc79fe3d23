"""Where CrossFormer's GPU time goes, and what the candidate levers change (CUDA; ``--smoke`` checks it on the CPU).

``gpu.py`` measured CrossFormer-S at 38 TFLOP/s (bf16 autocast, batch 128 at 224, H200) against swin_tiny's 50,
although the two have the same linear-layer work (4.17 vs 4.16 GMAC per image); CrossFormer-S adds 0.60 GMAC of
convolutions (the cross-scale stem, 3 -> 96 channels with kernels 4-32 at stride 4, and the three cross-scale
merges), swin_tiny has 0.01. This script answers, in one run:

* per-module GPU time (CUDA events around every stem / merge / attention / MLP / norm call, summed per kind) for
  CrossFormer-S and, for comparison, swin_tiny's patch embedding, merges, attention and MLPs;
* the top kernels by GPU time (``torch.profiler``) for both;
* A/B of the levers, each an img/s row against the default in the same run: the cross-scale convolutions as
  stride-1 convolutions on ``pixel_unshuffle``-d blocks (``conv_impl="unshuffle"``: the stem's 3 input channels
  become 48, which tensor cores take) for the stem and for the merges, convolution weights in channels-last,
  SDPA pinned to each backend (efficient / cuDNN / math) and the explicit attention path; for training, the
  ``conv_impl`` choice.

Usage:
    python benchmarks/gpu_profile.py                  # about 2 minutes on one H200
    python benchmarks/gpu_profile.py --smoke          # every code path once on the CPU, batch 2 (measures nothing)
"""

from __future__ import annotations

import collections
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import gpu  # noqa: E402  (build, timed, autocast and the device switch are shared with the main GPU benchmark)

KINDS = {  # module class name -> row of the per-module table
    "CrossScaleEmbedding": "stem (cross-scale convs + LN)",
    "CrossScalePatchMerging": "merge (LN + cross-scale convs)",
    "GroupAttention": "attention (qkv, SDPA, proj)",
    "Mlp": "MLP",
    "LayerNorm": "LayerNorm (blocks)",
    "PatchEmbed": "stem (conv + LN)",
    "PatchMerging": "merge (LN + linear)",
    "WindowAttention": "attention (qkv, SDPA, proj)",
}


def module_times(model: torch.nn.Module, x: torch.Tensor, iters: int) -> dict[str, float]:
    """Milliseconds per forward spent inside each kind of module (outermost matches only), from CUDA events."""
    spans: dict[str, list] = collections.defaultdict(list)
    depth = [0]
    hooks = []

    def pre(kind):
        def hook(mod, args):
            depth[0] += 1
            if depth[0] == 1:
                ev = torch.cuda.Event(enable_timing=True) if gpu.DEVICE == "cuda" else time.perf_counter()
                if gpu.DEVICE == "cuda":
                    ev.record()
                spans[kind].append([ev, None])

        return hook

    def post(kind):
        def hook(mod, args, out):
            if depth[0] == 1:
                ev = torch.cuda.Event(enable_timing=True) if gpu.DEVICE == "cuda" else time.perf_counter()
                if gpu.DEVICE == "cuda":
                    ev.record()
                spans[kind][-1][1] = ev
            depth[0] -= 1

        return hook

    for mod in model.modules():
        kind = KINDS.get(type(mod).__name__)
        if kind is not None:
            hooks += [mod.register_forward_pre_hook(pre(kind)), mod.register_forward_hook(post(kind))]
    try:
        with torch.inference_mode(), gpu.autocast("bf16-autocast"):
            model(x)  # warm-up (cuDNN autotuning, caches)
            spans.clear()
            gpu.sync()
            start = time.perf_counter()
            for _ in range(iters):
                model(x)
            gpu.sync()
            total = (time.perf_counter() - start) / iters * 1e3
    finally:
        for h in hooks:
            h.remove()
    out = {"total (wall)": total}
    for kind, pairs in spans.items():
        if gpu.DEVICE == "cuda":
            ms = sum(a.elapsed_time(b) for a, b in pairs)
        else:
            ms = sum(b - a for a, b in pairs) * 1e3
        out[kind] = ms / iters
    out["rest"] = total - sum(v for k, v in out.items() if k != "total (wall)")
    return out


def top_kernels(model: torch.nn.Module, x: torch.Tensor, count: int = 15) -> list[dict]:
    """The ops with the most self GPU time (CPU time on --smoke) over 3 forwards, per forward."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu.DEVICE == "cuda" else [])
    with torch.inference_mode(), gpu.autocast("bf16-autocast"):
        model(x)
        gpu.sync()
        with profile(activities=activities) as prof:
            for _ in range(3):
                model(x)
            gpu.sync()
    attr = "self_device_time_total" if gpu.DEVICE == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    total = sum(getattr(e, attr) for e in events)
    return [
        {"op": e.key[:90], "ms": getattr(e, attr) / 3e3, "share": getattr(e, attr) / total, "calls": e.count // 3}
        for e in events[:count]
    ]


def set_conv_impl(model: torch.nn.Module, stem: str, merges: str) -> None:
    from crossformer_vision.layers import CrossScaleEmbedding, CrossScalePatchMerging

    for mod in model.modules():
        if isinstance(mod, CrossScaleEmbedding):
            mod.conv_impl = stem
        elif isinstance(mod, CrossScalePatchMerging):
            mod.conv_impl = merges


def set_fused_attn(model: torch.nn.Module, fused: bool) -> None:
    from crossformer_vision.layers import GroupAttention

    for mod in model.modules():
        if isinstance(mod, GroupAttention):
            mod.fused_attn = fused


def sdpa_backend(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, name))


def infer_ab(args) -> list[dict]:
    """img/s of CrossFormer-S (bf16 autocast, batch ``args.batch`` at 224) under each lever, default first."""
    x = torch.randn(args.batch, 3, 224, 224, device=gpu.DEVICE)
    rows = []

    def row(label: str, setup=None, ctx=contextlib.nullcontext) -> None:
        torch.manual_seed(0)
        model = gpu.build("ours", "crossformer_s").eval()
        if setup:
            setup(model)
        try:
            with torch.inference_mode(), gpu.autocast("bf16-autocast"), ctx():
                sec = gpu.timed(lambda: model(x), args.warmup, args.iters, args.reps)
            rows.append({"lever": label, "img_per_s": args.batch / sec})
        except RuntimeError as e:  # e.g. a pinned SDPA backend that cannot take these inputs
            rows.append({"lever": label, "error": str(e).splitlines()[0][:200]})
        print("A/B inference", json.dumps(rows[-1]), flush=True)

    row("default")
    row("stem unshuffled", lambda m: set_conv_impl(m, "unshuffle", "auto"))
    row("stem + merges unshuffled", lambda m: set_conv_impl(m, "unshuffle", "unshuffle"))
    row("conv weights channels-last", lambda m: m.to(memory_format=torch.channels_last))
    row("explicit attention (no SDPA)", lambda m: set_fused_attn(m, False))
    if gpu.DEVICE == "cuda":
        for backend in ("EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
            row(f"SDPA pinned to {backend}", ctx=lambda b=backend: sdpa_backend(b))
    return rows


def train_ab(args) -> list[dict]:
    """img/s of CrossFormer-S training steps (bf16 autocast, fused AdamW) for each ``conv_impl`` of the stem/merges."""
    x = torch.randn(args.batch, 3, 224, 224, device=gpu.DEVICE)
    y = torch.randint(0, 1000, (args.batch,), device=gpu.DEVICE)
    rows = []
    for label, stem, merges in (
        ("default (auto)", "auto", "auto"),
        ("stem direct", "direct", "auto"),
        ("stem + merges unshuffled", "unshuffle", "unshuffle"),
    ):
        torch.manual_seed(0)
        model = gpu.build("ours", "crossformer_s").train()
        set_conv_impl(model, stem, merges)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=gpu.DEVICE == "cuda")

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            with gpu.autocast("bf16-autocast"):
                loss = torch.nn.functional.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()

        sec = gpu.timed(step, max(2, args.warmup // 2), max(3, args.iters // 2), args.reps)
        rows.append({"lever": label, "img_per_s": args.batch / sec})
        print("A/B training", json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = gpu.timing_parser(__doc__, "profile_gpu.json")
    args = parser.parse_args()
    result: dict = {**gpu.setup(parser, args), "batch": args.batch}
    out = Path(args.out)
    x = torch.randn(args.batch, 3, 224, 224, device=gpu.DEVICE)
    for kind, name in (("ours", "crossformer_s"), ("timm", gpu.SWIN)):
        model = gpu.build(kind, name).eval()
        result[f"modules {name}"] = times = module_times(model, x, args.iters)
        print(f"\nms per forward, batch {args.batch} at 224, bf16 autocast: {name}")
        for k, v in times.items():
            print(f"  {k:34s} {v:8.2f}")
        result[f"kernels {name}"] = kernels = top_kernels(model, x)
        print(f"top ops by self {'GPU' if gpu.DEVICE == 'cuda' else 'CPU'} time: {name}")
        for k in kernels:
            print(f"  {k['ms']:8.2f} ms {100 * k['share']:5.1f} % {k['calls']:5d}x  {k['op']}")
        out.write_text(json.dumps(result, indent=1))
        del model
    result["inference A/B"] = infer_ab(args)
    out.write_text(json.dumps(result, indent=1))
    result["training A/B"] = train_ab(args)
    out.write_text(json.dumps(result, indent=1))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
