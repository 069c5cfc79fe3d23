"""Build ``hrformer_bias_resize.safetensors``: the official HRFormer loader's resizing of relative position bias tables.

The dense HRFormer-B models with 13 x 13 / 15 x 15 windows (``hrt_base_win13`` / ``win15``) start from the ImageNet
``hrt_base.pth`` (7 x 7 windows). The official loader (``seg/lib/models/tools/module_helper.py``,
``ModuleHelper.load_model(..., network="hrt_window")``) resizes every ``relative_position_bias_table``
``[(2w-1)^2, heads]`` of the file to the model's ``[(2w'-1)^2, heads]``. This script runs that function unmodified
on random tables (the logger it imports is a stand-in) and stores inputs and outputs, so that
``tests/test_family_convert.py`` compares this package's resizing with the official one::

    git --git-dir=<mirror of HRNet/HRFormer> archive HEAD cls seg | tar -x -C /tmp/hrf
    python tests/data/make_hrformer_bias_fixture.py /tmp/hrf

Stored tensors: ``w{src}_to_w{dst}.input`` ``[(2 src - 1)^2, heads]`` and ``w{src}_to_w{dst}.output``
``[(2 dst - 1)^2, heads]`` for (7 -> 13, 2 heads), (7 -> 15, 4 heads), (13 -> 7, 1 head), 26 KB.
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

OUT = Path(__file__).parent / "hrformer_bias_resize.safetensors"
#: (source window, target window, heads)
CASES = ((7, 13, 2), (7, 15, 4), (13, 7, 1))
SEED = 27


def _official_load_model(root: Path):
    logger = types.ModuleType("lib.utils.tools.logger")

    class Logger:  # stand-in: the official logger writes to files
        info = staticmethod(lambda *a, **k: None)
        error = staticmethod(lambda *a, **k: None)

    logger.Logger = Logger
    for name in ("lib", "lib.utils", "lib.utils.tools"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["lib.utils.tools.logger"] = logger
    sys.path.insert(0, str(root / "seg" / "lib" / "models" / "tools"))
    import module_helper

    sys.path.pop(0)
    return module_helper.ModuleHelper.load_model


def main(root: Path) -> None:
    load_model = _official_load_model(root)
    g = torch.Generator().manual_seed(SEED)
    out = {}
    for src, dst, heads in CASES:
        table = torch.randn((2 * src - 1) ** 2, heads, generator=g)
        model = nn.Module()
        model.relative_position_bias_table = nn.Parameter(torch.zeros((2 * dst - 1) ** 2, heads))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "hrt_base.pth"
            torch.save({"model": {"relative_position_bias_table": table.clone()}}, path)
            load_model(model, pretrained=str(path), all_match=False, network="hrt_window")
        out[f"w{src}_to_w{dst}.input"] = table
        out[f"w{src}_to_w{dst}.output"] = model.relative_position_bias_table.detach().clone()
    save_file(out, str(OUT), metadata={"source": "HRNet/HRFormer seg/lib/models/tools/module_helper.py"})
    print(f"wrote {OUT}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in out.items()))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
