"""``crossformer convert --variant`` for official HRFormer / SOFT / CMT / AugViT files, and HRFormer bias resizing.

Official files are written in the official layout (``tests/official_files.py``: ``{'model': sd, 'optimizer': ...,
'config': yacs}``, with the derived buffers the official code saves: HRFormer's ``relative_position_index``,
AugViT's ``index_matrix``) from tiny models; the converted file must load through ``crossformer eval / predict``'s
loader and through timm's pretrained loading with outputs equal to the source model's. The bias resize is compared
with the official loader's output on random tables (``tests/data/make_hrformer_bias_fixture.py``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import crossformer_vision  # noqa: F401  (registers the models in timm)
from crossformer_vision.cli.main import main as cli
from crossformer_vision.engine.loading import load_model
from crossformer_vision.models.hrformer import checkpoint_filter_fn, create_hrformer_backbone, resize_bias_table
from crossformer_vision.models.io import read_safetensors_header
from official_files import save_backbone_only, save_classification

BIAS_FIXTURE = Path(__file__).parent / "data" / "hrformer_bias_resize.safetensors"

#: One tiny configuration per family (the variant's own logic, cut widths / depths) and an input it takes.
TINY = {
    "hrformer_t": (dict(width=4, num_heads=[1, 1, 2, 2], num_modules=[1, 1, 1], window_size=3), 32),
    "soft_tiny": (dict(embed_dims=[16, 32, 48, 64], num_heads=[1, 2, 3, 4], depths=[1, 1, 1, 1]), 64),
    "cmt_ti": (dict(embed_dims=[16, 32, 48, 64], stem_channel=8, depths=[1, 1, 1, 1], fc_dim=32, img_size=64), 64),
    "augvit_small_circulant2": (dict(embed_dim=32, num_heads=2, depth=2, img_size=32), 32),
}


def _model_args(kwargs: dict) -> list[str]:
    return [arg for k, v in kwargs.items() for arg in ("--model-arg", f"{k}={json.dumps(v)}")]


def _official_file(tmp_path: Path, name: str, num_classes: int = 5, **overrides) -> tuple[torch.nn.Module, Path]:
    """A tiny ``name`` model and its weights saved as the official code saves them (derived buffers included)."""
    torch.manual_seed(0)
    kwargs = {**TINY[name][0], **overrides}
    model = timm.create_model(name, num_classes=num_classes, **kwargs).eval()
    sd = model.state_dict()
    derived = {k: b for k, b in model.named_buffers() if k not in sd}  # relative_position_index / index_matrix
    return model, save_classification(tmp_path / f"{name}.pth", {**sd, **derived}, model_name=name)


@pytest.mark.parametrize("name", list(TINY))
def test_convert_round_trip(name, tmp_path, capsys):
    """convert -> the eval / predict loader gives the source model's outputs, timm's pretrained loading its weights."""
    src, official = _official_file(tmp_path, name)
    dst = tmp_path / f"{name}.safetensors"
    assert cli(["convert", str(official), str(dst), "--variant", name, *_model_args(TINY[name][0])]) == 0
    assert f"{name} classification model" in capsys.readouterr().out
    meta, _ = read_safetensors_header(dst)
    assert (meta["task"], meta["model"], meta["source"]) == ("classification", name, official.name)
    assert json.loads(meta["model_args"]) == TINY[name][0] and len(json.loads(meta["classes"])) == 5

    x = torch.randn(1, 3, TINY[name][1], TINY[name][1])
    loaded = load_model(dst, "classification")  # what `crossformer eval / predict --checkpoint DST` opens
    assert loaded.name == name and loaded.classes == [f"class_{i}" for i in range(5)]
    overlay = dict(file=str(dst), num_classes=5)
    via_timm = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=5, **TINY[name][0])
    with torch.no_grad():
        assert torch.equal(loaded.model(x), src(x))
    theirs, ours = via_timm.state_dict(), src.state_dict()  # same class and weights: the same outputs
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)


def test_hub_folder_loaded_by_timm(tmp_path):
    src, official = _official_file(tmp_path, "soft_tiny", num_classes=3)
    folder = tmp_path / "hub"
    args = _model_args(TINY["soft_tiny"][0])
    assert cli(["convert", str(official), str(folder), "--variant", "soft_tiny", "--hub", *args]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "soft_tiny" and config["num_classes"] == 3
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))


def test_wrong_files_and_variants_are_refused_in_one_line(tmp_path, capsys):
    _, official = _official_file(tmp_path, "soft_tiny")
    dst = str(tmp_path / "out.safetensors")
    cases = [
        (["--variant", "cmt_ti"], ["is not a cmt_ti checkpoint: it looks like a SOFT file", "missing keys"]),
        (["--variant", "soft_small"], ["is not a soft_small checkpoint: pass the SOFT variant", "shape mismatch"]),
        ([], ["not a CrossFormer state dict", "pass --variant NAME"]),
        (["--hub"], ["not a CrossFormer state dict", "pass --variant NAME"]),
        (["--variant", "soft_nano"], ["unknown --variant 'soft_nano'"]),
        (["--variant", "soft_tiny", "--model-arg", "checkpoint_path=/etc"], ["'checkpoint_path' would make"]),
        (["--variant", "soft_tiny", "--dense"], ["--dense keeps the backbone of CrossFormer and HRFormer"]),
    ]
    for extra, words in cases:
        assert cli(["convert", str(official), dst, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not Path(dst).exists()


def test_bias_resize_equals_the_official_loader():
    """``resize_bias_table`` against the official ``ModuleHelper.load_model(..., network="hrt_window")`` output."""
    fx = load_file(str(BIAS_FIXTURE))
    for src, dst in ((7, 13), (7, 15), (13, 7)):
        table = fx[f"w{src}_to_w{dst}.input"]
        out = resize_bias_table(table, dst)
        assert out.shape == ((2 * dst - 1) ** 2, table.shape[1])
        torch.testing.assert_close(out, fx[f"w{src}_to_w{dst}.output"], rtol=0, atol=1e-6)
    # a hand case: a table that is linear in the offset stays linear (interior of the bilinear grid)
    dy, dx = torch.meshgrid(torch.arange(-2.0, 3.0), torch.arange(-2.0, 3.0), indexing="ij")
    resized = resize_bias_table((dy + 10 * dx).reshape(25, 1), 5).reshape(9, 9)
    assert torch.allclose(resized[4, 4], torch.tensor(0.0)) and resized[2:7, 2:7].diff(dim=1).allclose(
        torch.tensor(10 * 5 / 9)
    )
    with pytest.raises(ValueError, match="expected"):
        resize_bias_table(torch.zeros(24, 2), 5)


def test_hrformer_file_of_another_window(tmp_path, capsys):
    """A 3 x 3-window file converts to a 5 x 5-window model (``--model-arg window_size=5``): tables resized, every
    other tensor unchanged; its backbone alone converts to a dense trunk that the dense model loads."""
    src, official = _official_file(tmp_path, "hrformer_t")
    sd = src.state_dict()
    kwargs = {**TINY["hrformer_t"][0], "window_size": 5}
    dst = tmp_path / "w5.safetensors"
    assert cli(["convert", str(official), str(dst), "--variant", "hrformer_t", *_model_args(kwargs)]) == 0
    out = load_file(str(dst))
    tables = [k for k in sd if k.endswith("relative_position_bias_table")]
    assert tables and set(out) == set(sd)
    for k in sd:
        expected = resize_bias_table(sd[k], 5) if k in tables else sd[k]
        assert out[k].shape == expected.shape and torch.equal(out[k], expected), k
    assert load_model(dst, "classification").model_args["window_size"] == 5

    trunk = {k: v for k, v in sd.items() if not k.startswith(("incre_modules", "downsamp_modules", "final_layer",
                                                                "classifier"))}  # fmt: skip
    backbone_file = save_backbone_only(tmp_path / "backbone.pth", trunk)
    dense = tmp_path / "dense_w5.safetensors"
    assert cli(["convert", str(backbone_file), str(dense), "--variant", "hrformer_t", *_model_args(kwargs)]) == 0
    assert "dense backbone" in capsys.readouterr().out
    meta, _ = read_safetensors_header(dense)
    assert meta["dense"] == "true" and json.loads(meta["model_args"])["window_size"] == 5
    model = create_hrformer_backbone("hrformer_t", **kwargs)
    model.load_state_dict(checkpoint_filter_fn(load_file(str(dense)), model), strict=True)
    assert cli(["convert", str(backbone_file), str(tmp_path / "hub"), "--variant", "hrformer_t", "--hub",
                *_model_args(kwargs)]) == 2  # fmt: skip
    assert "holds a dense hrformer_t trunk" in capsys.readouterr().err


def test_eval_and_predict_read_official_family_files_through_the_family_filter(tmp_path, capsys, one_thread):
    """``crossformer eval / predict --checkpoint official.pth`` (``load_foreign``) reads a family's official file the
    way ``crossformer convert --variant`` does: derived buffers and wrappers filtered, every key checked, the head's
    size from the file; ``--model`` (+ ``model.kwargs``) names custom widths, full-size variants are detected."""
    import numpy as np
    from PIL import Image

    src, official = _official_file(tmp_path, "hrformer_t")  # with its relative_position_index buffers
    kwargs = TINY["hrformer_t"][0]
    loaded = load_model(official, "classification", model_name="hrformer_t", model_kwargs=kwargs)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), src(x))
    assert (loaded.name, loaded.kind, loaded.classes, loaded.model_args["width"]) == ("hrformer_t", "official", None, 4)
    trunk = {k: v for k, v in src.state_dict().items() if not k.startswith(("incre_modules", "downsamp_modules",
                                                                             "final_layer", "classifier"))}  # fmt: skip
    cases = [
        (dict(), ["looks like a HRFormer file but fits none of its variants", "as --model and model.kwargs."]),
        (dict(model_name="soft_tiny"), ["is not a soft_tiny checkpoint: it looks like a HRFormer file", "--model"]),
        (dict(model_name="hrformer_t", model_kwargs={**kwargs, "width": 8}), ["shape mismatch for"]),
        (dict(model_name="hrformer_t", model_kwargs={**kwargs, "checkpoint_path": "/etc"}), ["'checkpoint_path'"]),
    ]
    for options, words in cases:
        with pytest.raises(ValueError) as err:
            load_model(official, "classification", **options)
        assert len(str(err.value).splitlines()) == 1 and all(w in str(err.value) for w in words), err.value
    dense = save_backbone_only(tmp_path / "trunk.pth", trunk)
    with pytest.raises(ValueError, match="holds a dense hrformer_t trunk without a classifier head"):
        load_model(dense, "classification", model_name="hrformer_t", model_kwargs=kwargs)

    # a full-size official CMT-Ti file (DDP prefixes): detected without --model, predicted through the CLI
    from timm.data import create_transform, resolve_model_data_config

    from crossformer_vision.data.folder import load_rgb

    torch.manual_seed(0)
    full = timm.create_model("cmt_ti", num_classes=3).eval()
    path = save_classification(tmp_path / "cmt_ti.pth", {f"module.{k}": v for k, v in full.state_dict().items()})
    image = tmp_path / "im.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(image)
    capsys.readouterr()
    assert cli(["predict", str(image), "--checkpoint", str(path), "--json", "--topk", "3"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    cfg = {k: v for k, v in resolve_model_data_config(full).items() if k != "crop_mode"}
    with torch.no_grad():  # the source model's probabilities on predict's preprocessing
        probs = full(create_transform(**cfg)(load_rgb(image))[None]).softmax(-1)[0]
    assert [t["index"] for t in top] == probs.argsort(descending=True).tolist()
    assert all(abs(t["probability"] - float(probs[t["index"]])) < 1e-5 for t in top)
