"""Extract what ``tests/test_det_mm_mapping.py`` needs from the mmdet reference data (made by the real mmdet classes).

Usage: ``python tests/data/mm/make_det_fixtures.py [REFDATA_MM_DIR]`` (default ``/work/shared/refdata/mm``).

The reference fixtures' parameters, inputs and RoI features come from documented seeded generators. This script
re-draws them from those seeds and checks them against the stored tensors with ``torch.equal``; the tests re-draw them
the same way (and check the SHA-256 digests stored here), so only expected outputs are stored:

* ``det_fixtures.safetensors``: for the ``odd`` case (131x163 image: odd level sizes, the case where nearest
  up-sampling conventions differ) RetinaNet ``cls_scores`` / ``bbox_preds`` / ``anchors`` and Mask R-CNN
  ``rpn_cls_scores`` / ``rpn_bbox_preds`` / ``rpn_anchors`` in full; the same head outputs of the ``base`` case and the
  FPN outputs of both cases on a strided pixel grid (``<key>.rows`` / ``<key>.cols`` hold the sampled indices; the
  step 3 is coprime with the 2x up-sampling, so both nearest-neighbour phases are covered); the RoI-head outputs
  ``bbox_cls_score`` / ``bbox_bbox_pred`` / ``mask_pred``, the 45 ``rois`` and mmdet's ``roi_levels`` in full;
* ``det_fixtures.json``: constructor kwargs, seeds, level sizes, the fixture state-dict layouts (key -> shape, in
  state-dict order) and SHA-256 digests of the re-drawn state dicts, inputs and RoI features;
* ``det_manifests.json``: the full-size key -> shape layouts and parameter counts of the official configs.
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
    "retinanet_crossformer_neck_head",
    "retinanet_crossformer_pp_s_neck_head",
    "maskrcnn_crossformer_neck_heads",
    "maskrcnn_crossformer_pp_s_neck_heads",
]
META_KEYS = ["cases", "image_sizes", "level_sizes", "input_channels", "batch", "input_seeds"]
GRID_STEP = 3


def redraw(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """The documented recipe in state-dict order: weight ~ N(0, 1/fan_in), bias ~ N(0, 0.1^2) (no norm layers here)."""
    g = torch.Generator().manual_seed(seed)
    return {
        key: torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        if key.endswith("weight")
        else torch.randn(shape, generator=g) * 0.1
        for key, shape in shapes.items()
    }


def draw_inputs(meta: dict, case: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(meta["input_seeds"][case])
    return [
        torch.randn((meta["batch"], c, h, w), generator=g)
        for c, (h, w) in zip(meta["input_channels"], meta["level_sizes"][case])
    ]


def digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over key names and raw bytes, in order."""
    h = hashlib.sha256()
    for key, t in tensors.items():
        h.update(key.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def grid(n: int, step: int) -> torch.Tensor:
    idx = list(range(0, n, step))
    return torch.tensor(idx if idx[-1] == n - 1 else [*idx, n - 1])


class Store:
    def __init__(self, prefix: str):
        self.prefix = prefix
        self.tensors: dict[str, torch.Tensor] = {}

    def full(self, key: str, t: torch.Tensor) -> None:
        self.tensors[f"{self.prefix}.{key}"] = t.contiguous()

    def sampled(self, key: str, t: torch.Tensor, step: int = GRID_STEP) -> None:
        rows, cols = grid(t.shape[-2], step), grid(t.shape[-1], step)
        self.tensors[f"{self.prefix}.{key}"] = t.index_select(-2, rows).index_select(-1, cols).contiguous()
        self.tensors[f"{self.prefix}.{key}.rows"] = rows
        self.tensors[f"{self.prefix}.{key}.cols"] = cols


def common(d: dict, seeds: dict[str, int], kwargs: dict) -> dict:
    sd = d["state_dict"]
    redrawn: dict[str, torch.Tensor] = {}
    for prefix, seed in seeds.items():
        redrawn.update(redraw({k: tuple(v.shape) for k, v in sd.items() if k.startswith(prefix)}, seed))
    assert list(redrawn) == list(sd) and all(torch.equal(redrawn[k], sd[k]) for k in sd), "param recipe mismatch"
    meta = {k: d[k] for k in META_KEYS}
    inputs_digest = {}
    for case in d["cases"]:
        inputs = draw_inputs(meta, case)
        assert all(torch.equal(a, b) for a, b in zip(inputs, d["inputs"][case])), f"input recipe mismatch {case}"
        inputs_digest[case] = digest({str(i): x for i, x in enumerate(inputs)})
    return {
        **meta,
        "kwargs": kwargs,
        "param_seeds": seeds,
        "state_dict_shapes": [[k, list(v.shape)] for k, v in sd.items()],
        "state_dict_sha256": digest(sd),
        "inputs_sha256": inputs_digest,
    }


def main(refdata: Path) -> None:
    tensors: dict[str, torch.Tensor] = {}
    fixtures: dict[str, dict] = {}

    d = torch.load(refdata / "fixtures/mmdet_retinanet_fpn_head.pt", weights_only=True)
    seeds = {"neck.": d["seeds"]["neck_param_seed"], "bbox_head.": d["seeds"]["head_param_seed"]}
    fixtures["retinanet"] = common(d, seeds, {"neck": d["neck_kwargs"], "bbox_head": d["head_kwargs"]})
    s = Store("retinanet")
    for case in d["cases"]:
        for level, t in enumerate(d["neck_outputs"][case]):
            s.sampled(f"neck_outputs.{case}.{level}", t)
        for key in ("cls_scores", "bbox_preds"):
            for level, t in enumerate(d[key][case]):
                (s.full if case == "odd" else s.sampled)(f"{key}.{case}.{level}", t)
    for level, t in enumerate(d["anchors"]["odd"]):
        s.full(f"anchors.odd.{level}", t)
    tensors.update(s.tensors)

    d = torch.load(refdata / "fixtures/mmdet_maskrcnn_fpn_heads.pt", weights_only=True)
    seeds = {"neck.": d["seeds"]["neck_param_seed"], "rpn_head.": d["seeds"]["rpn_param_seed"]}
    seeds["roi_head."] = d["seeds"]["roi_param_seed"]
    kwargs = {"neck": d["neck_kwargs"], "rpn_head": d["rpn_kwargs"], "roi_head": d["roi_kwargs"]}
    fixtures["maskrcnn"] = common(d, seeds, kwargs)
    g = torch.Generator().manual_seed(d["seeds"]["roi_feat_seed"])
    roi_feats = {key: torch.randn(d[key].shape, generator=g) for key in ("bbox_roi_feats", "mask_roi_feats")}
    assert all(torch.equal(v, d[k]) for k, v in roi_feats.items()), "RoI feature recipe mismatch"
    fixtures["maskrcnn"]["roi_feat_seed"] = d["seeds"]["roi_feat_seed"]
    fixtures["maskrcnn"]["roi_feat_shapes"] = {k: list(v.shape) for k, v in roi_feats.items()}
    fixtures["maskrcnn"]["roi_feats_sha256"] = digest(roi_feats)
    s = Store("maskrcnn")
    for case in d["cases"]:
        for level, t in enumerate(d["neck_outputs"][case]):
            s.sampled(f"neck_outputs.{case}.{level}", t)
        for key in ("rpn_cls_scores", "rpn_bbox_preds"):
            for level, t in enumerate(d[key][case]):
                (s.full if case == "odd" else s.sampled)(f"{key}.{case}.{level}", t)
    for level, t in enumerate(d["rpn_anchors"]["odd"]):
        s.full(f"rpn_anchors.odd.{level}", t)
    for key in ("bbox_cls_score", "bbox_bbox_pred", "mask_pred", "rois", "roi_levels"):
        s.full(key, d[key])
    tensors.update(s.tensors)

    save_file(tensors, OUT / "det_fixtures.safetensors")
    (OUT / "det_fixtures.json").write_text(json.dumps(fixtures, separators=(",", ":")) + "\n")

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
    (OUT / "det_manifests.json").write_text(json.dumps(manifests, separators=(",", ":")) + "\n")
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    print(f"{len(tensors)} tensors, {total / 1e6:.2f} MB of tensor data")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/refdata/mm"))
