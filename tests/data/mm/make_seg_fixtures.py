"""Extract what ``tests/test_seg_heads.py`` needs from the mmseg reference data (made by the real mmseg classes).

Usage: ``python tests/data/mm/make_seg_fixtures.py [REFDATA_MM_DIR]`` (default ``/work/shared/refdata/mm``).

The reference fixtures' parameters and inputs come from documented seeded generators. This script re-draws them
from those seeds and checks the result against the stored tensors with ``torch.equal``. The tests then re-draw them
the same way, and only the expected outputs are stored here:

* ``seg_fixtures.safetensors``: fp32 head outputs in full, plus fp64 outputs, intermediates, neck outputs (also the
  mmdet RetinaNet / Mask R-CNN FPN necks, which are the same class) and the image-size resizes on a strided pixel
  grid (``<key>.rows`` / ``<key>.cols`` hold the sampled indices; steps 3 and 7 are coprime with the 2x / 4x / 16x
  resize factors, so every sub-pixel phase is covered);
* ``seg_fixtures.json``: constructor kwargs, seeds, level sizes and SHA-256 digests of the re-drawn state dicts
  and inputs;
* ``seg_manifests.json``: the full-size key -> shape layouts and parameter counts of the official configs.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

OUT = Path(__file__).parent
MANIFESTS = [
    "upernet_crossformer_heads",
    "upernet_crossformer_l_heads",
    "upernet_crossformer_pp_s_heads",
    "upernet_aux_in256_variant",
    "semfpn_crossformer_neck_head",
    "semfpn_crossformer_l_neck_head",
    "semfpn_crossformer_pp_s_neck_head",
]
NECK_MANIFESTS = [
    "retinanet_crossformer_neck_head",
    "retinanet_crossformer_pp_s_neck_head",
    "maskrcnn_crossformer_neck_heads",
    "maskrcnn_crossformer_pp_s_neck_heads",
]
META_KEYS = ["cases", "image_sizes", "level_sizes", "input_channels", "batch", "input_seeds"]


def redraw(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """The documented recipe, applied in state-dict order (= named_modules() order for these heads)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        module, name = key.rsplit(".", 1)
        if module.endswith(".bn") or module == "bn":
            if name in ("weight", "running_var"):
                out[key] = torch.rand(shape, generator=g) + 0.5
            elif name == "num_batches_tracked":
                out[key] = torch.randint(1, 1000, shape, generator=g)
            else:
                out[key] = torch.randn(shape, generator=g) * (0.2 if name == "running_mean" else 0.1)
        elif name == "weight":
            out[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        else:
            out[key] = torch.randn(shape, generator=g) * 0.1
    return out


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over key names and raw bytes, in order."""
    h = hashlib.sha256()
    for key, t in tensors.items():
        h.update(key.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def draw_inputs(meta: dict, case: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(meta["input_seeds"][case])
    return [
        torch.randn((meta["batch"], c, h, w), generator=g)
        for c, (h, w) in zip(meta["input_channels"], meta["level_sizes"][case])
    ]


def grid(n: int, step: int) -> torch.Tensor:
    idx = list(range(0, n, step))
    return torch.tensor(idx if idx[-1] == n - 1 else [*idx, n - 1])


class Store:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.tensors: dict[str, torch.Tensor] = {}

    def full(self, key: str, t: torch.Tensor) -> None:
        self.tensors[f"{self.prefix}.{key}"] = t.contiguous()

    def sampled(self, key: str, t: torch.Tensor, step: int) -> None:
        rows, cols = grid(t.shape[-2], step), grid(t.shape[-1], step)
        self.tensors[f"{self.prefix}.{key}"] = t.index_select(-2, rows).index_select(-1, cols).contiguous()
        self.tensors[f"{self.prefix}.{key}.rows"] = rows
        self.tensors[f"{self.prefix}.{key}.cols"] = cols


def main(refdata: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    fixtures: dict[str, dict] = {}

    def common(d: dict, components: dict[str, tuple[str, dict, int]]) -> dict:
        """Check the recipe for each component (prefix -> class, kwargs, seed; prefix "" = unprefixed keys)."""
        prefixes = tuple(f"{p}." if p else "" for p in components)
        sd = {k: v for k, v in d["state_dict"].items() if k.startswith(prefixes)}
        redrawn: dict[str, torch.Tensor] = {}
        for prefix, (_, _, seed) in components.items():
            dotted = f"{prefix}." if prefix else ""
            redrawn.update(redraw({k: tuple(v.shape) for k, v in sd.items() if k.startswith(dotted)}, seed))
        assert list(redrawn) == list(sd) and all(torch.equal(redrawn[k], sd[k]) for k in sd), "param recipe mismatch"
        meta = {k: d[k] for k in META_KEYS}
        inputs_digest = {}
        for case in d["cases"]:
            inputs = draw_inputs(meta, case)
            assert all(torch.equal(a, b) for a, b in zip(inputs, d["inputs"][case])), f"input recipe mismatch {case}"
            inputs_digest[case] = digest({str(i): x for i, x in enumerate(inputs)})
        return {
            **meta,
            "components": {prefix: [cls, kwargs] for prefix, (cls, kwargs, _) in components.items()},
            "param_seeds": {prefix: seed for prefix, (_, _, seed) in components.items()},
            "state_dict_sha256": digest(sd),
            "inputs_sha256": inputs_digest,
        }

    d = torch.load(refdata / "fixtures/mmseg_uperhead.pt", weights_only=True)
    fixtures["uperhead"] = common(d, {"": ("UPerHead", d["kwargs"], d["seeds"]["param_seed"])})
    s = Store("uperhead")
    for case in d["cases"]:
        s.full(f"outputs.{case}", d["outputs"][case])
        s.sampled(f"outputs_fp64.{case}", d["outputs_fp64"][case], 3)
    for case in d["resized_cases"]:
        s.sampled(f"resized.{case}", d["resized"][case], 7)
    s.full("intermediates.base.psp_bottleneck", d["intermediates"]["base"]["psp_bottleneck"])
    s.sampled("intermediates.base.fpn_bottleneck", d["intermediates"]["base"]["fpn_bottleneck"], 3)
    tensors.update(s.tensors)

    d = torch.load(refdata / "fixtures/mmseg_fcnhead.pt", weights_only=True)
    fixtures["fcnhead"] = common(d, {"": ("FCNHead", d["kwargs"], d["seeds"]["param_seed"])})
    s = Store("fcnhead")
    for case in d["cases"]:
        s.full(f"outputs.{case}", d["outputs"][case])
        s.full(f"outputs_fp64.{case}", d["outputs_fp64"][case])
    for case in d["resized_cases"]:
        s.sampled(f"resized.{case}", d["resized"][case], 7)
    s.full("intermediates.base.convs", d["intermediates"]["base"]["convs"])
    tensors.update(s.tensors)

    d = torch.load(refdata / "fixtures/mmseg_fpn_neck_fpnhead.pt", weights_only=True)
    fixtures["fpn_fpnhead"] = common(
        d,
        {
            "neck": ("FPN", d["neck_kwargs"], d["seeds"]["neck_param_seed"]),
            "decode_head": ("FPNHead", d["head_kwargs"], d["seeds"]["head_param_seed"]),
        },
    )
    s = Store("fpn_fpnhead")
    for case in d["cases"]:
        s.full(f"outputs.{case}", d["outputs"][case])
        s.sampled(f"outputs_fp64.{case}", d["outputs_fp64"][case], 3)
        for level, t in enumerate(d["neck_outputs"][case]):
            s.sampled(f"neck_outputs.{case}.{level}", t, 3)
        if case == "odd":  # the case where legacy nearest and nearest-exact differ
            for level, t in enumerate(d["neck_outputs_fp64"][case]):
                s.sampled(f"neck_outputs_fp64.{case}.{level}", t, 3)
    for i, t in enumerate(d["scale_head_outputs"]["base"]):
        s.sampled(f"scale_head_outputs.base.{i}", t, 3)
    for case in d["resized_cases"]:
        s.sampled(f"resized.{case}", d["resized"][case], 7)
    tensors.update(s.tensors)

    # mmdet FPN necks (same class): RetinaNet's 'on_input' extra convs with start_level 1, Mask R-CNN's max-pool P6.
    d = torch.load(refdata / "fixtures/mmdet_retinanet_fpn_head.pt", weights_only=True)
    fixtures["retinanet_fpn"] = common(d, {"neck": ("FPN", d["neck_kwargs"], d["seeds"]["neck_param_seed"])})
    s = Store("retinanet_fpn")
    for level, t in enumerate(d["neck_outputs"]["odd"]):
        s.sampled(f"neck_outputs.odd.{level}", t, 3)
    tensors.update(s.tensors)
    d = torch.load(refdata / "fixtures/mmdet_maskrcnn_fpn_heads.pt", weights_only=True)
    fixtures["maskrcnn_fpn"] = common(d, {"neck": ("FPN", d["neck_kwargs"], d["seeds"]["neck_param_seed"])})
    s = Store("maskrcnn_fpn")
    for level in (3, 4):
        s.full(f"neck_outputs.odd.{level}", d["neck_outputs"]["odd"][level])
    tensors.update(s.tensors)

    save_file(tensors, OUT / "seg_fixtures.safetensors")
    (OUT / "seg_fixtures.json").write_text(json.dumps(fixtures, indent=1) + "\n")

    manifests = {}
    for name in MANIFESTS:
        m = json.loads((refdata / f"manifests/{name}.json").read_text())
        assert len(m["keys"]) == m["num_keys"]
        manifests[name] = {
            "source": m["source"],
            "components": m["components"],
            "num_params": m["num_params"],
            "keys": [[k, v] for k, v in m["keys"].items()],
        }
    for name in NECK_MANIFESTS:  # only the FPN part of the detection manifests
        m = json.loads((refdata / f"manifests/{name}.json").read_text())
        keys = [[k, v] for k, v in m["keys"].items() if k.startswith("neck.")]
        manifests[name] = {
            "source": m["source"],
            "components": {"neck": m["components"]["neck"]},
            "num_params": sum(math.prod(shape) for _, shape in keys),  # no buffers in the neck
            "keys": keys,
        }
    (OUT / "seg_manifests.json").write_text(json.dumps(manifests, separators=(",", ":")) + "\n")
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"{len(tensors)} tensors, {total / 1e6:.2f} MB of tensor data")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/refdata/mm"))
