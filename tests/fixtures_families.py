"""SOFT / CMT / AugViT official fixtures: weights re-drawn from seeds, expected outputs from the official code.

``tests/data/make_family_fixtures.py`` ran the official code (CPU, fp32) on these weights and inputs and stored
only the outputs, the official state-dict names and shapes, and the official parameter counts (a few KB).

Re-draw rule, in the official state-dict order from one CPU generator seeded ``seed`` (input: ``seed + 1``):
``*.weight`` with ndim >= 2: ``randn / sqrt(fan_in)`` (``fan_in = prod(shape[1:])``); other ndim >= 2 tensors
(position embeddings, class tokens, CMT's relative positions): ``0.5 randn``; 1-D ``*.weight``: ``1 + 0.2 randn``;
AugViT's circulant ``weight_list``: ``randn / sqrt(numel / 4)``; ``running_var``: ``0.5 + rand``;
``num_batches_tracked``: 0; everything else: ``0.2 randn``. Derived buffers (AugViT's circulant ``index_matrix``)
are not drawn: the official files carry them, our models rebuild them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"

_SOFT = ["soft_tiny", "soft_small", "soft_medium", "soft_large", "soft_huge"]
_CMT = ["cmt_ti", "cmt_xs", "cmt_s", "cmt_b"]
_AUG = [
    "augvit_small",
    "augvit_small_linear",
    "augvit_small_circulant2",
    "augvit_small_linear2",
    "augvit_base_circulant2",
]

#: name -> model, official construction img_size (CMT / AugViT fix it), input shape, seed.
FIXTURES: dict[str, dict] = {}
for _i, _m in enumerate(_SOFT):  # odd, non-square maps: stage 3 is 5x6, stage 4 3x3
    FIXTURES[_m] = dict(model=_m, input_shape=[1, 3, 80, 96], seed=100 + _i)
FIXTURES["soft_tiny_224"] = dict(model="soft_tiny", input_shape=[2, 3, 224, 224], seed=150)
for _i, _m in enumerate(_CMT):
    FIXTURES[_m] = dict(model=_m, img_size=64, input_shape=[1, 3, 64, 64], seed=200 + _i)
FIXTURES["cmt_ti_160"] = dict(model="cmt_ti", img_size=160, input_shape=[2, 3, 160, 160], seed=250)
for _i, _m in enumerate(_AUG):
    FIXTURES[_m] = dict(model=_m, img_size=64, input_shape=[1, 3, 64, 64], seed=300 + _i)
FIXTURES["augvit_small_circulant2_224"] = dict(
    model="augvit_small_circulant2", img_size=224, input_shape=[1, 3, 224, 224], seed=350
)


def derived(name: str) -> bool:
    """State-dict entries the official files carry but that are derived, not learnt."""
    return name.endswith("index_matrix")


def redraw_state_dict(shapes: list[tuple[str, list[int]]], seed: int) -> dict[str, torch.Tensor]:
    """The fixture weights for the official ``(name, shape)`` list (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes:
        if name.endswith("num_batches_tracked"):
            out[name] = torch.zeros(shape, dtype=torch.long)
        elif name.endswith("running_var"):
            out[name] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) >= 2 and name.endswith("weight"):
            out[name] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif len(shape) >= 2:
            out[name] = 0.5 * torch.randn(shape, generator=g)
        elif name.endswith("weight_list"):
            out[name] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape) / 4)
        elif name.endswith("weight"):
            out[name] = 1 + 0.2 * torch.randn(shape, generator=g)
        else:
            out[name] = 0.2 * torch.randn(shape, generator=g)
    return out


def family_meta(name: str) -> dict:
    """The stored facts of fixture ``name`` (names / shapes, official parameter counts), without the weights."""
    return json.loads((DATA / "family_fixtures.json").read_text())[name]


def family_fixture(name: str) -> dict:
    """``model``, ``img_size``, ``state_dict`` (official keys, derived buffers zeroed), ``input``, ``logits``,
    official parameter counts."""
    from safetensors.torch import load_file

    meta = family_meta(name)
    sd = redraw_state_dict(meta["state"], meta["seed"])
    for key, shape in meta["derived"]:
        sd[key] = torch.zeros(shape, dtype=torch.long)
    g = torch.Generator().manual_seed(meta["seed"] + 1)
    return {
        **meta,
        "state_dict": sd,
        "input": torch.randn(meta["input_shape"], generator=g),
        "logits": load_file(DATA / "family_fixtures.safetensors")[f"{name}.logits"],
    }
