"""Rebuild ``official_fixtures.{json,safetensors}`` from the shared reference fixtures.

The reference files (official weights, inputs, outputs; ~33 MB) are not part of the repository. Their weights
and inputs are re-drawn from documented seeds (see ``tests/fixtures_official.py``), so only the expected
outputs and the parameter order are stored here (about 1.3 MB).

Usage: python tests/data/make_official_fixtures.py /path/to/shared/refdata/fixtures
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

FIXTURES = {
    "v1_cls_tiny": "v1-classification",
    "pp_cls_small": "pp-classification",
    "det_main_pp_backbone": "pp-dense",
}


def main(src: Path) -> None:
    here = Path(__file__).parent
    meta, tensors = {}, {}
    for name, flavour in FIXTURES.items():
        d = torch.load(src / f"{name}.pt", weights_only=True)
        meta[name] = {
            "flavour": flavour,
            "config": d["config"],
            "input_shape": list(d["input"].shape),
            # official parameter order and shapes (buffers listed separately: they are not re-drawn)
            "parameters": [
                [k, list(v.shape)] for k, v in d["state_dict"].items() if not k.endswith(("biases", "index"))
            ],
            "buffers": [[k, list(v.shape)] for k, v in d["state_dict"].items() if k.endswith(("biases", "index"))],
            "seeds": d["meta"]["seeds"],
        }
        outputs = d["output"] if isinstance(d["output"], list) else [d["output"]]
        for i, out in enumerate(outputs):
            tensors[f"{name}.output.{i}"] = out.contiguous()
        for key in ("features", "output_fp64"):
            if key in d:
                tensors[f"{name}.{key}"] = d[key].contiguous()
    (here / "official_fixtures.json").write_text(json.dumps(meta, indent=1) + "\n")
    save_file(tensors, here / "official_fixtures.safetensors")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/refdata/fixtures"))
