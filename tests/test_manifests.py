"""Every official state-dict layout (12 classification, 11 dense-backbone manifests) is reproduced exactly."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

import crossformer_vision as cf

MANIFESTS = json.loads((Path(__file__).parent / "data" / "official_manifests.json").read_text())
PAPER_PARAMS = {
    "crossformer_t": 27_776_794,
    "crossformer_s": 30_657_394,
    "crossformer_b": 51_971_554,
    "crossformer_l": 91_971_184,
    "crossformerpp_s": 23_325_340,
    "crossformerpp_b": 51_994_594,
    "crossformerpp_l": 92_001_904,
    "crossformerpp_h": 95_962_944,
}


def _variant(manifest_name: str) -> str:
    name = manifest_name.removesuffix("_maincode")
    for prefix in ("det_main_", "det_v1_", "seg_main_", "seg_v1_"):
        name = name.removeprefix(prefix)
    return name


def _digest(model) -> str:
    lines = [
        f"{k} {'x'.join(map(str, v.shape))} {str(v.dtype).replace('torch.', '')}" for k, v in model.state_dict().items()
    ]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.mark.parametrize("variant", list(PAPER_PARAMS))
def test_exact_parameter_count(variant):
    with torch.device("meta"):  # shapes only: no memory, no init time
        model = cf.create_model(variant)
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMS[variant]


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_state_dict_layout_equals_official_manifest(name):
    info = MANIFESTS[name]
    with torch.device("meta"):
        model = cf.create_model(_variant(name), dense=info["kind"] != "classification")
    assert len(model.state_dict()) == info["num_entries"]
    assert sum(p.numel() for p in model.parameters()) == info["num_params"]
    assert _digest(model) == info["sha256"]


def test_all_variants_listed():
    assert cf.list_variants() == list(PAPER_PARAMS)
    assert {_variant(n) for n in MANIFESTS} == set(PAPER_PARAMS)
