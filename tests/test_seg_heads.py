"""mmseg-compatible segmentation heads: outputs of the real mmseg classes, official key layouts, argument errors.

Reference outputs come from ``data/mm/`` (extracted by ``data/mm/make_seg_fixtures.py``). Parameters and inputs are
re-drawn here from the documented seeded recipe, and SHA-256 digests tie them to the reference fixtures.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from crossformer_vision.tasks.segmentation import FPN, ConvModule, FCNHead, FPNHead, UPerHead, resize_logits

DATA = Path(__file__).parent / "data" / "mm"
FIXTURES = json.loads((DATA / "seg_fixtures.json").read_text())
MANIFESTS = json.loads((DATA / "seg_manifests.json").read_text())
EXPECTED = load_file(DATA / "seg_fixtures.safetensors")
TOL_FP32 = 1e-5
TOL_FP64 = 1e-10
CLASSES = {"UPerHead": UPerHead, "FCNHead": FCNHead, "FPN": FPN, "FPNHead": FPNHead}


def build_from_mm(cls_name: str, mm_kwargs: dict) -> nn.Module:
    """Our module from an mm class name (``"mmseg UPerHead"``) and its config kwargs, which map one to one."""
    kwargs = {k: v for k, v in mm_kwargs.items() if k != "loss_decode"}
    assert kwargs.pop("align_corners", False) is False
    if "norm_cfg" in kwargs:
        kwargs["norm"] = kwargs.pop("norm_cfg")["type"]  # "BN" / "SyncBN"
    return CLASSES[cls_name.split()[-1]](**kwargs)


def redraw_(module: nn.Module, seed: int) -> nn.Module:
    """The fixtures' parameter recipe: one generator, named_modules() order, every parameter and buffer."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) / math.sqrt(m.weight[0].numel()))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.num_batches_tracked.copy_(torch.randint(1, 1000, (), generator=g))
    return module


def digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key, t in tensors.items():
        h.update(key.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def draw_inputs(meta: dict, case: str) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(meta["input_seeds"][case])
    return [
        torch.randn((meta["batch"], c, h, w), generator=g)
        for c, (h, w) in zip(meta["input_channels"], meta["level_sizes"][case])
    ]


class Model(nn.Module):
    """Holds components under their mm prefixes (``decode_head``, ``neck``, ...), like an mm EncoderDecoder."""

    def __init__(self, components: dict[str, nn.Module]):
        super().__init__()
        for prefix, module in components.items():
            self.add_module(prefix, module)


@functools.cache
def fixture_model(name: str) -> nn.Module:
    """The fixture's module(s) with re-drawn parameters, in eval mode, under the fixture's key prefixes."""
    meta = FIXTURES[name]
    parts = {
        prefix: redraw_(build_from_mm(cls, kwargs), meta["param_seeds"][prefix])
        for prefix, (cls, kwargs) in meta["components"].items()
    }
    return (parts[""] if "" in parts else Model(parts)).eval()


def check(key: str, actual: torch.Tensor, tol: float) -> float:
    """Compare with a stored output (on its stored pixel grid when it was sub-sampled); return the max |diff|."""
    expected = EXPECTED[key]
    if f"{key}.rows" in EXPECTED:
        actual = actual.index_select(-2, EXPECTED[f"{key}.rows"]).index_select(-1, EXPECTED[f"{key}.cols"])
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (key, actual.shape, expected.shape)
    diff = (actual - expected).abs().max().item()
    assert diff <= tol, f"{key}: max |diff| {diff:.3g} > {tol:g}"
    return diff


def cases(name: str) -> list[str]:
    return FIXTURES[name]["cases"]


# --- parameters and inputs are the reference ones ------------------------------------------------------------------


@pytest.mark.parametrize("name", list(FIXTURES))
def test_redrawn_parameters_and_inputs_match_reference(name):
    meta = FIXTURES[name]
    state = fixture_model(name).state_dict()
    assert digest(state) == meta["state_dict_sha256"], "re-drawn state dict (keys, order or values) differs"
    for case in meta["cases"]:
        inputs = draw_inputs(meta, case)
        assert digest({str(i): x for i, x in enumerate(inputs)}) == meta["inputs_sha256"][case]


# --- numerics against mmseg -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", cases("uperhead"))
def test_uperhead_matches_mmseg(case):
    head, meta = fixture_model("uperhead"), FIXTURES["uperhead"]
    inputs = draw_inputs(meta, case)
    with torch.no_grad():
        out = head(inputs)
        out64 = copy.deepcopy(head).double()([x.double() for x in inputs])
    check(f"uperhead.outputs.{case}", out, TOL_FP32)
    check(f"uperhead.outputs_fp64.{case}", out64, TOL_FP64)
    if f"uperhead.resized.{case}" in EXPECTED:
        check(f"uperhead.resized.{case}", resize_logits(out, meta["image_sizes"][case]), TOL_FP32)


def test_uperhead_intermediates_match_mmseg():
    head = fixture_model("uperhead")
    inputs = draw_inputs(FIXTURES["uperhead"], "base")
    with torch.no_grad():
        check("uperhead.intermediates.base.psp_bottleneck", head.psp_forward(inputs[-1]), TOL_FP32)
        check("uperhead.intermediates.base.fpn_bottleneck", head.forward_features(inputs), TOL_FP32)


@pytest.mark.parametrize("case", cases("fcnhead"))
def test_fcnhead_matches_mmseg(case):
    head, meta = fixture_model("fcnhead"), FIXTURES["fcnhead"]
    inputs = draw_inputs(meta, case)
    with torch.no_grad():
        out = head(inputs)
        out64 = copy.deepcopy(head).double()([x.double() for x in inputs])
        if case == "base":
            check("fcnhead.intermediates.base.convs", head.forward_features(inputs), TOL_FP32)
    check(f"fcnhead.outputs.{case}", out, TOL_FP32)
    check(f"fcnhead.outputs_fp64.{case}", out64, TOL_FP64)
    check(f"fcnhead.resized.{case}", resize_logits(out, meta["image_sizes"][case]), TOL_FP32)


@pytest.mark.parametrize("case", cases("fpn_fpnhead"))
def test_fpn_neck_and_fpnhead_match_mmseg(case):
    model, meta = fixture_model("fpn_fpnhead"), FIXTURES["fpn_fpnhead"]
    inputs = draw_inputs(meta, case)
    with torch.no_grad():
        feats = model.neck(inputs)
        out = model.decode_head(feats)
        model64 = copy.deepcopy(model).double()
        feats64 = model64.neck([x.double() for x in inputs])
        out64 = model64.decode_head(feats64)
        scale_outs = [head(x) for head, x in zip(model.decode_head.scale_heads, feats)]
    assert len(feats) == 4
    for level, (f32, f64) in enumerate(zip(feats, feats64)):
        check(f"fpn_fpnhead.neck_outputs.{case}.{level}", f32, TOL_FP32)
        if f"fpn_fpnhead.neck_outputs_fp64.{case}.{level}" in EXPECTED:
            check(f"fpn_fpnhead.neck_outputs_fp64.{case}.{level}", f64, TOL_FP64)
    check(f"fpn_fpnhead.outputs.{case}", out, TOL_FP32)
    check(f"fpn_fpnhead.outputs_fp64.{case}", out64, TOL_FP64)
    if case == "base":
        for i, t in enumerate(scale_outs):
            check(f"fpn_fpnhead.scale_head_outputs.base.{i}", t, TOL_FP32)
        check("fpn_fpnhead.resized.base", resize_logits(out, meta["image_sizes"]["base"]), TOL_FP32)
    else:  # odd sizes: level 3 (5x6) doubles three times to 40x48, then the final resize shrinks it to 33x41
        assert scale_outs[3].shape[-2:] == (40, 48)


@pytest.mark.parametrize("name, levels", [("retinanet_fpn", range(5)), ("maskrcnn_fpn", (3, 4))])
def test_fpn_extra_levels_match_mmdet(name, levels):
    """``add_extra_convs='on_input'`` with ``start_level=1`` (RetinaNet) and max-pool P6 (Mask R-CNN)."""
    model = fixture_model(name)
    with torch.no_grad():
        outs = model.neck(draw_inputs(FIXTURES[name], "odd"))
    assert len(outs) == 5
    for level in levels:
        check(f"{name}.neck_outputs.odd.{level}", outs[level], TOL_FP32)


@pytest.mark.parametrize("source", ["on_input", "on_lateral", "on_output"])
def test_fpn_extra_conv_sources(source):
    inputs = small_inputs()[2:]  # 24 ch at 4x6, 32 ch at 2x3
    neck = FPN([24, 32], 8, 4, add_extra_convs=source, relu_before_extra_convs=True)
    with torch.no_grad():
        outs = neck(inputs)
        assert [tuple(o.shape[-2:]) for o in outs] == [(4, 6), (2, 3), (1, 2), (1, 1)]
        assert neck.fpn_convs[2].conv.in_channels == (32 if source == "on_input" else 8)
        assert torch.equal(outs[3], neck.fpn_convs[3](outs[2].relu()))


def test_fpn_nearest_is_legacy_not_exact():
    x = torch.arange(5.0).view(1, 1, 1, 5)
    neck = FPN([1, 1], 1, 2)
    with torch.no_grad():
        for conv in [*neck.lateral_convs, *neck.fpn_convs]:
            conv.conv.weight.zero_()
            conv.conv.bias.zero_()
        neck.lateral_convs[1].conv.weight.fill_(1)
        neck.fpn_convs[0].conv.weight[..., 1, 1] = 1
        fine = neck([torch.zeros(1, 1, 1, 8), x])[0]
    # legacy nearest: src = floor(dst * 5 / 8)
    assert fine.flatten().tolist() == [0, 0, 1, 1, 2, 3, 3, 4]


# --- key layouts of the official configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(MANIFESTS))
def test_official_key_layout(name):
    manifest = MANIFESTS[name]
    with torch.device("meta"):
        model = Model({prefix: build_from_mm(cls, kw) for prefix, (cls, kw) in manifest["components"].items()})
    layout = [[k, list(v.shape)] for k, v in model.state_dict().items()]
    assert layout == manifest["keys"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]


def test_syncbn_and_no_norm_layouts():
    def keys(norm):
        with torch.device("meta"):
            return list(FCNHead(8, 4, 3, num_convs=1, concat_input=False, norm=norm).state_dict())

    assert keys("syncbn") == keys("bn")
    assert isinstance(ConvModule(3, 4, 3, norm="syncbn").bn, nn.SyncBatchNorm)
    assert keys(None) == ["conv_seg.weight", "conv_seg.bias", "convs.0.conv.weight", "convs.0.conv.bias"]
    assert list(FCNHead(8, 4, 3).state_dict())[-6:-4] == ["conv_cat.conv.weight", "conv_cat.bn.weight"]


# --- shapes, training mode -------------------------------------------------------------------------------------------


def small_inputs(batch: int = 2, size: tuple[int, int] = (64, 96), channels=(8, 16, 24, 32)) -> list[torch.Tensor]:
    return [torch.randn(batch, c, size[0] // s, size[1] // s) for c, s in zip(channels, (4, 8, 16, 32))]


def test_output_strides_and_gradients():
    inputs = small_inputs()
    neck = FPN([8, 16, 24, 32], 8, 4)
    heads = {
        UPerHead([8, 16, 24, 32], 8, 5): (16, 24),
        FCNHead(24, 8, 5, in_index=2, num_convs=1, concat_input=False): (4, 6),
        FCNHead(32, 8, 5): (2, 3),
    }
    for head, size in heads.items():
        out = head(inputs)
        assert out.shape == (2, 5, *size)
        out.square().mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    fpn_head = FPNHead([8] * 4, 8, 5)
    out = fpn_head(neck(inputs))
    assert out.shape == (2, 5, 16, 24)
    out.square().mean().backward()
    assert all(p.grad is not None for p in [*fpn_head.parameters(), *neck.parameters()])
    assert resize_logits(out, (64, 96)).shape == (2, 5, 64, 96)


# --- argument errors -----------------------------------------------------------------------------------------------


def test_forward_rejects_wrong_channels_and_levels():
    head = UPerHead([8, 16, 24, 32], 8, 5)
    inputs = small_inputs()
    with pytest.raises(ValueError, match=r"input level 2 has 20 channels, expected 24 \(in_channels\[2\]\)"):
        head([*inputs[:2], inputs[2][:, :20], inputs[3]])
    with pytest.raises(ValueError, match=r"reads input level 3 .* got 3 feature maps"):
        head(inputs[:3])
    with pytest.raises(ValueError, match=r"must be \[B, C, H, W\]"):
        head([*inputs[:3], inputs[3][0]])
    with pytest.raises(TypeError, match="not a single tensor"):
        head(inputs[0])
    with pytest.raises(ValueError, match="has 16 channels, expected 24"):
        FCNHead(24, 8, 5, in_index=2)(small_inputs(channels=(8, 8, 16, 32)))
    with pytest.raises(ValueError, match=r"FPN expects 4 feature maps .* got 3"):
        FPN([8, 16, 24, 32], 8, 4)(inputs[:3])
    with pytest.raises(ValueError, match="input level 1 has 16 channels, expected 8"):
        FPNHead([8] * 4, 8, 5)(inputs)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: UPerHead([8, 16], 8, 5, in_index=[0, 1, 2]), "has 3 entries but in_channels"),
        (lambda: UPerHead([8, 16], 8, 5, pool_scales=()), "pool_scales must not be empty"),
        (lambda: UPerHead([8, 16], 0, 5), "channels must be a positive int, got 0"),
        (lambda: UPerHead([8, 16], 8, 5, dropout_ratio=1.0), r"dropout_ratio must be in \[0, 1\)"),
        (lambda: UPerHead([8, 16], 8, 5, norm="gn"), "unknown norm 'gn'"),
        (lambda: FCNHead([8], 8, 5), "in_channels must be an int"),
        (lambda: FCNHead(16, 8, 5, num_convs=0), r"in_channels \(16\) must equal channels \(8\)"),
        (lambda: FPN([8, 16], 8, 1), "num_outs must be an int >= the 2 used input levels"),
        (lambda: FPN([8, 16], 8, 3, add_extra_convs=True), "ambiguous"),
        (lambda: FPN([8, 16], 8, 3, add_extra_convs="on_top"), "add_extra_convs must be False or one of"),
        (lambda: FPNHead([8, 8], 8, 5, feature_strides=[8, 4]), "first feature stride must be the smallest"),
        (lambda: FPNHead([8, 8], 8, 5), r"feature_strides .* one entry per in_channels entry"),
    ],
)
def test_constructor_rejects_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_resize_logits_rejects_bad_size():
    with pytest.raises(ValueError, match="positive"):
        resize_logits(torch.zeros(1, 2, 4, 4), (0, 8))
    with pytest.raises(ValueError, match=r"\[B, K, h, w\]"):
        resize_logits(torch.zeros(2, 4, 4), (8, 8))
