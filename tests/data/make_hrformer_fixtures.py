"""Build ``hrformer_fixtures.{json,safetensors}``: outputs of the official HRFormer code (HRNet/HRFormer) on CPU.

The official repository is not part of this one. Extract it and point this script at it::

    git --git-dir=<mirror of HRNet/HRFormer> archive HEAD cls seg | tar -x -C /tmp/hrf
    pip install --target /tmp/hrf_deps einops yacs
    python tests/data/make_hrformer_fixtures.py /tmp/hrf /tmp/hrf_deps

The official code runs unmodified, with these stand-ins:

* ``cls/models/modules/multihead_isa_attention.py`` calls ``F.pad`` without importing ``F`` (inputs whose branches
  are not multiples of the window raise ``NameError``); ``F`` (``torch.nn.functional``) is set in that module;
* ``nn.SyncBatchNorm`` (dense code) is ``nn.BatchNorm2d`` (same keys and eval maths; SyncBN needs a process group);
* ``torchvision.models.utils`` (gone from torchvision; imported, unused, by the dense ``bottleneck_block.py``) is a
  module holding ``torch.hub.load_state_dict_from_url``;
* the segmentation code's logger (``lib.utils.tools.logger``), ``ModuleHelper`` (only ``BNReLU`` with
  ``bn_type="torchbn"`` is used) and the configer are small local classes; ``BackboneSelector`` is bypassed by
  setting the OCR model's ``backbone`` to the official ``HighResolutionTransformer`` of ``hrt_config.py``.

Stored per fixture: the official state-dict order (names and shapes, derived buffers left out), the official parameter
count of the model built (and, for the classification / OCR models, at the official sizes), and the outputs.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from fixtures_hrformer import FIXTURES, JSON, TENSORS, drawn_entries, fixture_input, redraw_state_dict  # noqa: E402


def _import_cls(root: Path):
    import yaml

    sys.path.insert(0, str(root / "cls"))
    pkg = types.ModuleType("models")  # the package without its __init__ (which imports every model of the repo)
    pkg.__path__ = [str(root / "cls" / "models")]
    sys.modules["models"] = pkg
    import models.modules.multihead_isa_attention as isa

    isa.F = F  # stand-in: the official module forgets `import torch.nn.functional as F`
    import models.hrt as hrt

    def build(name: str, num_classes: int = 1000):
        cfg = yaml.safe_load((root / "cls" / "configs" / "hrt" / f"{name}.yaml").read_text())["MODEL"]["HRT"]
        for s in ("STAGE2", "STAGE3", "STAGE4"):  # cls/config.py defaults the tiny yaml relies on
            st = cfg[s]
            st.setdefault("FFN_TYPES", [[["conv_mlp"] * 2] * st["NUM_BRANCHES"]] * st["NUM_MODULES"])
        return hrt.HighResolutionTransformer(cfg, num_classes=num_classes)

    sys.path.pop(0)
    for key in [k for k in sys.modules if k == "models" or k.startswith("models.")]:
        del sys.modules[key]  # the seg code has its own `lib.models`; keep the namespaces apart
    return build


def _import_seg(root: Path):
    nn.SyncBatchNorm = nn.BatchNorm2d  # stand-in: eval maths and keys equal, no process group needed
    sys.path.insert(0, str(root / "seg"))

    class Log:
        info = warn = warning = debug = staticmethod(lambda *a, **k: None)

        @staticmethod
        def error(msg, *a, **k):
            raise RuntimeError(msg)

    logger = types.ModuleType("lib.utils.tools.logger")
    logger.Logger = Log
    for name in ("lib.utils", "lib.utils.tools"):
        mod = types.ModuleType(name)
        mod.__path__ = []
        sys.modules[name] = mod
    sys.modules["lib.utils.tools.logger"] = logger

    class ModuleHelper:
        @staticmethod
        def BNReLU(num_features, bn_type=None, **kwargs):
            assert bn_type == "torchbn"
            return nn.Sequential(nn.BatchNorm2d(num_features, **kwargs), nn.ReLU())

    helper = types.ModuleType("lib.models.tools.module_helper")
    helper.ModuleHelper = ModuleHelper
    for name in ("lib.models.tools",):
        mod = types.ModuleType(name)
        mod.__path__ = []
        sys.modules[name] = mod
    sys.modules["lib.models.tools.module_helper"] = helper
    selector = types.ModuleType("lib.models.backbones.backbone_selector")
    selector.BackboneSelector = None  # replaced below: the OCR model's backbone is set directly
    sys.modules["lib.models.backbones.backbone_selector"] = selector
    tv_utils = types.ModuleType("torchvision.models.utils")  # imported (unused) by the official bottleneck_block.py
    tv_utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url
    sys.modules["torchvision.models.utils"] = tv_utils
    import lib.models.nets.hrt as nets
    from lib.models.backbones.hrt.hrt_backbone import HighResolutionTransformer
    from lib.models.backbones.hrt.hrt_config import MODEL_CONFIGS

    def backbone(name: str):
        return HighResolutionTransformer(MODEL_CONFIGS[name])

    class Configer:
        def __init__(self, num_classes):
            self.values = {("data", "num_classes"): num_classes, ("network", "bn_type"): "torchbn"}

        def get(self, *key):
            return self.values[key]

    def ocr(name: str, num_classes: int):
        class Selector:
            def __init__(self, configer):
                pass

            def get_backbone(self):
                return backbone(name)

        nets.BackboneSelector = Selector
        cls = nets.HRT_SMALL_OCR_V2 if name == "hrt_small" else nets.HRT_BASE_OCR_V2
        return cls(Configer(num_classes))

    return backbone, ocr


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main(root: Path, deps: Path) -> None:
    sys.path.insert(0, str(deps))
    build_cls = _import_cls(root)
    build_dense, build_ocr = _import_seg(root)
    meta, tensors = {}, {}
    for name, spec in FIXTURES.items():
        torch.manual_seed(0)
        if spec["kind"] == "cls":
            model = build_cls(spec["official"])
        elif spec["kind"] == "dense":
            model = build_dense(spec["official"])
        else:
            model = build_ocr(spec["official"], spec["num_classes"])
        model.eval()
        entries = drawn_entries(model.state_dict())
        missing, unexpected = model.load_state_dict(redraw_state_dict(entries), strict=False)
        assert not unexpected and all(k.endswith(("num_batches_tracked", "index")) for k in missing), missing
        with torch.no_grad():
            out = model(fixture_input(name))
        outputs = list(out) if isinstance(out, (list, tuple)) else [out]
        info = {"entries": entries, "num_outputs": len(outputs), "official_params": _count(model)}
        if spec["kind"] == "ocr":  # the ADE20K model's size (150 classes)
            info["official_params_ade20k"] = _count(build_ocr(spec["official"], 150))
        meta[name] = info
        for i, o in enumerate(outputs):
            tensors[f"{name}.{i}"] = o.contiguous()
        print(name, [tuple(o.shape) for o in outputs], info["official_params"], flush=True)
    JSON.write_text(json.dumps(meta, separators=(",", ":")) + "\n")
    save_file(tensors, TENSORS)


if __name__ == "__main__":
    main(
        Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/hrf"),
        Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/hrf_deps"),
    )
