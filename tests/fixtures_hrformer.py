"""HRFormer official-parity fixtures: specs, re-drawn weights and the stored expected outputs.

``tests/data/make_hrformer_fixtures.py`` runs the official HRNet/HRFormer code on these specs and stores, per
fixture, the official state-dict order (names, shapes), the official parameter count and the outputs
(``data/hrformer_fixtures.{json,safetensors}``, ~0.4 MB). The tests re-draw the same weights from the same seeds
with :func:`redraw_state_dict`, load them into this package's models and compare.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data"
JSON = DATA / "hrformer_fixtures.json"
TENSORS = DATA / "hrformer_fixtures.safetensors"

#: name -> official model, our model and input. ``kind``: "cls" (cls/models/hrt.py, logits), "dense"
#: (seg/.../hrt_backbone.py, four branch maps), "ocr" (seg/lib/models/nets/hrt.py ``HRT_SMALL_OCR_V2``: aux and
#: final logits). Inputs are small and chosen so some branches need window padding (sizes not multiples of 7 / 13).
FIXTURES: dict[str, dict] = {
    "cls_t": dict(kind="cls", official="hrt_tiny", ours="hrformer_t", input=[1, 3, 100, 76]),
    "cls_s": dict(kind="cls", official="hrt_small", ours="hrformer_s", input=[1, 3, 56, 56]),
    "cls_b": dict(kind="cls", official="hrt_base", ours="hrformer_b", input=[1, 3, 64, 64]),
    "dense_s": dict(kind="dense", official="hrt_small", ours="hrformer_s", input=[1, 3, 72, 100]),
    "dense_b_win13": dict(
        kind="dense", official="hrt_base_win13", ours="hrformer_b", window_size=13, input=[1, 3, 64, 64]
    ),
    "dense_b_win15": dict(
        kind="dense", official="hrt_base_win15", ours="hrformer_b", window_size=15, input=[1, 3, 48, 48]
    ),
    "ocr_s": dict(kind="ocr", official="hrt_small", ours="hrformer_s", num_classes=5, input=[1, 3, 64, 64]),
}
WEIGHT_SEED = 1234
INPUT_SEED = 2024


def redraw_state_dict(entries: list[tuple[str, list[int]]], seed: int = WEIGHT_SEED) -> dict[str, torch.Tensor]:
    """Weights for every official state-dict entry, in the official order, from one CPU generator.

    ``ndim >= 2``: ``randn / sqrt(fan_in)``; ``running_var``: ``0.5 + rand``; ``running_mean``: ``0.1 randn``;
    other 1-D ``*weight``: ``1 + 0.2 randn``; other 1-D: ``0.2 randn``. ``num_batches_tracked`` and the derived
    ``relative_position_index`` are not drawn (not listed).
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in entries:
        if len(shape) >= 2:
            out[name] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif name.endswith("running_var"):
            out[name] = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith("running_mean"):
            out[name] = 0.1 * torch.randn(shape, generator=g)
        elif name.endswith("weight"):
            out[name] = 1 + 0.2 * torch.randn(shape, generator=g)
        else:
            out[name] = 0.2 * torch.randn(shape, generator=g)
    return out


def drawn_entries(state_dict: dict[str, torch.Tensor]) -> list[tuple[str, list[int]]]:
    """The entries :func:`redraw_state_dict` draws: all but ``num_batches_tracked`` / ``relative_position_index``."""
    skip = ("num_batches_tracked", "relative_position_index")
    return [(k, list(v.shape)) for k, v in state_dict.items() if not k.endswith(skip)]


def fixture_input(name: str) -> torch.Tensor:
    return torch.randn(FIXTURES[name]["input"], generator=torch.Generator().manual_seed(INPUT_SEED))


def load_fixture(name: str) -> dict:
    """``entries`` (official order), ``state_dict`` (re-drawn), ``input``, ``outputs`` and ``official_params``."""
    from safetensors.torch import load_file

    meta = json.loads(JSON.read_text())[name]
    tensors = load_file(TENSORS)
    outputs = [tensors[f"{name}.{i}"] for i in range(meta["num_outputs"])]
    entries = [(k, s) for k, s in meta["entries"]]
    return {
        "entries": entries,
        "state_dict": redraw_state_dict(entries),
        "input": fixture_input(name),
        "outputs": outputs,
        "official_params": meta["official_params"],
    }
