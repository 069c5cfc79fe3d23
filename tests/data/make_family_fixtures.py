"""Build ``family_fixtures.{json,safetensors}``: outputs of the official SOFT / CMT / AugViT code on CPU.

The official repositories are not part of this one. Extract them and point this script at them::

    git --git-dir=<mirror of fudan-zvg/SOFT> archive HEAD | tar -x -C /tmp/soft
    git --git-dir=<mirror of huawei-noah/Efficient-AI-Backbones> archive HEAD | tar -x -C /tmp/ebb
    pip install --target /tmp/refdeps einops scipy   # SOFT imports einops, AugViT scipy
    python tests/data/make_family_fixtures.py /tmp/soft /tmp/ebb /tmp/refdeps

Stand-ins (the official code is otherwise run unmodified, ``kernel_method="torch"``):

* ``SOFT._C`` (the CUDA extension, unused on the torch kernel path) and ``cv2`` (imported, unused) are empty modules;
* ``Tensor.cuda`` is the identity while SOFT runs (its torch kernel calls ``torch.ones(...).cuda()``);
* SOFT's ``newton_inverse_kernel`` (a CUDA-only autograd wrapper) calls the official ``newton_inv`` it wraps.

Every official state-dict entry is re-drawn in the official order from one CPU generator (see
``tests/fixtures_families.py``, which rebuilds them in the tests), the input from a second one; stored are the
parameter names / shapes, the official parameter counts and multiply-adds (torch's FLOP counter / 2) at the
official sizes, and the expected outputs.
"""

from __future__ import annotations

import json
import sys
import types
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch.utils.flop_counter import FlopCounterMode

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))
from fixtures_families import FIXTURES, derived, redraw_state_dict  # noqa: E402

#: Official parameter counts are taken at each family's official construction size.
COUNT_SIZES = {"cmt_ti": 160, "cmt_xs": 192, "cmt_s": 224, "cmt_b": 256}


@contextmanager
def _cuda_is_identity():
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = original


def _import_official(soft_dir: Path, ebb_dir: Path, deps: Path) -> dict[str, types.ModuleType]:
    sys.path[:0] = [str(deps), str(soft_dir), str(ebb_dir / "cmt_pytorch"), str(ebb_dir / "augvit_pytorch" / "models")]
    sys.modules["cv2"] = types.ModuleType("cv2")
    sys.modules["SOFT._C"] = types.ModuleType("SOFT._C")
    import SOFT  # noqa: F401  (namespace package: the repository's SOFT/ folder)
    import SOFT.kernel.inverse as inverse

    sys.modules["SOFT"]._C = sys.modules["SOFT._C"]
    import models.softmax_free_transformer as sft

    sft.newton_inverse_kernel = lambda mat, iters=20: inverse.newton_inv(mat, iters)
    import augvit
    import cmt
    import models.softmax_free_vision_transformer as soft

    return {"soft": soft, "cmt": cmt, "augvit": augvit}


def _build(mods, name: str, img_size: int | None = None) -> torch.nn.Module:
    family = name.split("_")[0]
    kwargs = {"kernel_method": "torch"} if family == "soft" else {}
    if img_size is not None and family in ("cmt", "augvit"):
        kwargs["img_size"] = img_size
    return getattr(mods[family], name)(**kwargs).eval()


def main(soft_dir: Path, ebb_dir: Path, deps: Path) -> None:
    mods = _import_official(soft_dir, ebb_dir, deps)
    meta, tensors = {}, {}
    for fx_name, spec in FIXTURES.items():
        name = spec["model"]
        torch.manual_seed(0)
        model = _build(mods, name, spec.get("img_size"))
        official = model.state_dict()
        params = dict(model.named_parameters())
        shapes = [[k, list(v.shape)] for k, v in official.items() if not derived(k)]
        sd = redraw_state_dict(shapes, seed=spec["seed"])
        missing, unexpected = model.load_state_dict(sd, strict=False)
        assert not unexpected and all(derived(k) for k in missing), (missing, unexpected)
        g = torch.Generator().manual_seed(spec["seed"] + 1)
        x = torch.randn(spec["input_shape"], generator=g)
        with torch.no_grad(), _cuda_is_identity():
            out = model(x)
        count_size = COUNT_SIZES.get(name, 224)
        count_model = _build(mods, name, COUNT_SIZES.get(name))
        if fx_name == name:  # multiply-adds per image at the official size, by torch's FLOP counter
            with torch.no_grad(), _cuda_is_identity(), FlopCounterMode(display=False) as counter:
                count_model(torch.randn(1, 3, count_size, count_size))
            spec = {**spec, "official_gmacs": round(counter.get_total_flops() / 2e9, 4)}
        meta[fx_name] = {
            **spec,
            "state": shapes,
            "derived": [[k, list(v.shape)] for k, v in official.items() if derived(k)],
            "num_parameters_fixture": sum(p.numel() for p in params.values()),
            "num_parameters_official": sum(p.numel() for p in count_model.parameters()),
            "official_count_img_size": count_size,
        }
        tensors[f"{fx_name}.logits"] = out.contiguous()
        print(f"{fx_name}: {name} {tuple(x.shape)} -> {tuple(out.shape)}, |out|max {out.abs().max():.3f}")
    # one line per fixture: the name / shape lists are long
    lines = ",\n".join(f"{json.dumps(k)}: {json.dumps(v, separators=(',', ':'))}" for k, v in meta.items())
    (HERE / "family_fixtures.json").write_text("{\n" + lines + "\n}\n")
    save_file(tensors, HERE / "family_fixtures.safetensors")


if __name__ == "__main__":
    main(*(Path(a) for a in sys.argv[1:4]))
