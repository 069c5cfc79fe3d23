"""Checkpoint files in the exact layouts the official code releases (built from a model's state dict).

* classification: ``{'model': sd, 'optimizer': ..., 'lr_scheduler': ..., 'max_accuracy': ..., 'epoch': ...,
  'config': yacs CfgNode}`` (the Swin-derived ``save_checkpoint``); v1 files add per-block ``attn.biases`` and
  ``attn.relative_position_index`` buffers right after ``attn.pos.*``;
* backbone pre-training file: ``ckpt['model']`` saved alone;
* mmseg / mmdet: ``{'meta': {...}, 'state_dict': {'backbone.*', <heads>}, 'optimizer': ...}``.

The yacs class is a stand-in (a ``dict`` subclass pickled as ``yacs.config.CfgNode``), as the real one is.
"""

from __future__ import annotations

import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch


def _yacs_module() -> types.ModuleType:
    mod = types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            self.__dict__["__immutable__"] = False
            self.__dict__["__deprecated_keys__"] = set()
            self.__dict__["__renamed_keys__"] = {}
            self.__dict__["__new_allowed__"] = False

    CfgNode.__module__ = "yacs.config"
    CfgNode.__qualname__ = "CfgNode"
    mod.CfgNode = CfgNode
    return mod


def make_config(model_name: str):
    """A yacs-like config object; pickling it requires the (fake) yacs module, loading does not."""
    mod = _yacs_module()
    cfg = mod.CfgNode(
        {
            "MODEL": mod.CfgNode({"TYPE": "cross-scale", "NAME": model_name, "NUM_CLASSES": 1000}),
            "TRAIN": mod.CfgNode({"EPOCHS": 300, "BASE_LR": 1e-3}),
        }
    )
    return mod, cfg


def with_v1_buffers(sd: dict, group: int = 7) -> OrderedDict:
    out = OrderedDict()
    for key, value in sd.items():
        out[key] = value
        if key.endswith("attn.pos.pos3.2.bias"):
            prefix = key[: -len("pos.pos3.2.bias")]
            out[prefix + "biases"] = torch.zeros((2 * group - 1) ** 2, 2)
            out[prefix + "relative_position_index"] = torch.zeros(group**2, group**2, dtype=torch.long)
    return out


def save_classification(path: Path, sd: dict, model_name: str = "crossformer_s", v1: bool = False) -> Path:
    mod, cfg = make_config(model_name)
    sys.modules["yacs"] = types.ModuleType("yacs")
    sys.modules["yacs.config"] = mod
    try:
        torch.save(
            {
                "model": with_v1_buffers(sd) if v1 else OrderedDict(sd),
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "weight_decay": 0.05, "params": [0, 1]}]},
                "lr_scheduler": {"t_initial": 300, "base_values": [0.001]},
                "max_accuracy": np.float64(82.5),
                "epoch": 299,
                "config": cfg,
            },
            path,
        )
    finally:
        sys.modules.pop("yacs.config", None)
        sys.modules.pop("yacs", None)
    return path


def save_backbone_only(path: Path, sd: dict) -> Path:
    torch.save(OrderedDict(sd), path)
    return path


def save_mm(path: Path, backbone_sd: dict, heads: dict, ddp: bool = False) -> Path:
    state = OrderedDict((f"backbone.{k}", v) for k, v in backbone_sd.items())
    state.update(heads)
    if ddp:
        state = OrderedDict((f"module.{k}", v) for k, v in state.items())
    meta = {
        "mmcv_version": "1.6.2",
        "time": "Sat Nov 21 2026",
        "CLASSES": ("wall", "building"),
        "PALETTE": [[120, 120, 120]],
        "epoch": 12,
        "iter": 160000,
        "config": "model = dict(type='EncoderDecoder')",
        "hook_msgs": {},
    }
    torch.save({"meta": meta, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}, path)
    return path
