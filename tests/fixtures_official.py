"""The official reference fixtures, rebuilt without the shared reference files.

Weights and inputs follow the recipe of ``tests/data/make_official_fixtures.py``: every parameter is re-drawn in the
official parameter order from one CPU generator seeded 1234 (ndim >= 2: ``randn / sqrt(fan_in)`` with
``fan_in = p[0].numel()``; 1-D ``*.weight``: ``1 + 0.2 randn``; other 1-D: ``0.2 randn``), the input from a
generator seeded 2024. Expected outputs come from ``data/official_fixtures.safetensors``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

DATA = Path(__file__).parent / "data"
META = json.loads((DATA / "official_fixtures.json").read_text())
_TENSORS = load_file(DATA / "official_fixtures.safetensors")


def redraw_parameters(shapes: list[tuple[str, list[int]]], seed: int = 1234) -> dict[str, torch.Tensor]:
    """Fixture-style weights: large enough that LayerNorm affines, biases and the position bias matter."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes:
        if len(shape) >= 2:
            out[name] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif name.endswith("weight"):
            out[name] = 1 + 0.2 * torch.randn(shape, generator=g)
        else:
            out[name] = 0.2 * torch.randn(shape, generator=g)
    return out


def fixture(name: str) -> dict:
    """``config``, ``flavour``, ``state_dict`` (official keys, incl. v1 buffers), ``input`` and expected outputs."""
    meta = META[name]
    sd = redraw_parameters(meta["parameters"], meta["seeds"]["perturb_generator_seed"])
    for key, shape in meta["buffers"]:  # v1 derived buffers: present in the official files, values irrelevant
        sd[key] = torch.zeros(shape, dtype=torch.int64 if key.endswith("index") else torch.float32)
    g = torch.Generator().manual_seed(meta["seeds"]["input_generator_seed"])
    outputs = [v for k, v in sorted(_TENSORS.items()) if k.startswith(f"{name}.output.")]
    return {
        "config": meta["config"],
        "flavour": meta["flavour"],
        "state_dict": sd,
        "input": torch.randn(meta["input_shape"], generator=g),
        "output": outputs if len(outputs) > 1 else outputs[0],
        "features": _TENSORS.get(f"{name}.features"),
        "output_fp64": _TENSORS.get(f"{name}.output_fp64"),
    }
