"""timm's generic model contract on every registered CrossFormer name (the checks timm's own tests/test_models.py runs):
forward, backward, default_cfg shapes, forward_features / head, features_only, FX forward / backward, TorchScript,
FX + TorchScript; plus timm's / torchvision's FX feature extraction and a converted hub folder.

Tiny widths (every variant's group sizes, intervals, ACL and LDA rule are kept; stages are cut to two blocks, four
with an Activation Cooling Layer for CrossFormer++) keep the suite fast; ``test_real_width_contract`` runs
CrossFormer-T at its real widths once.
"""

import math

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models import get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import NodePathTracer, create_feature_extractor, get_graph_node_names

import crossformer_vision as cf
from crossformer_vision.cli.main import main as cli
from crossformer_vision.models import VARIANT_ARGS, dense_lda_rule
from official_files import save_backbone_only, save_classification

NAMES = cf.list_variants()
WIDTHS = dict(embed_dim=32, num_heads=(1, 2, 4, 8))
FX_TRACER = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


def tiny(name: str) -> dict:
    """Model arguments of a small ``name``: width 32, at most 2 blocks per stage (SDA, LDA), 4 for CrossFormer++ (an
    Activation Cooling Layer after the third block)."""
    depth = 4 if name.startswith("crossformerpp_") else 2
    return dict(WIDTHS, depths=tuple(min(d, depth) for d in VARIANT_ARGS[name]["depths"]))


def fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """timm's test helper, restated: trace with timm's leaves and return the graph's output node(s)."""
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=FX_TRACER)
    train_return = [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**FX_TRACER).trace(model)
        output = next(reversed(graph.nodes))
        names = [n.name for n in reversed(graph.nodes)]
        train_return = [train_nodes[-names.index(n.name)] for n in output._input_nodes]
    return create_feature_extractor(
        model, train_return_nodes=train_return, eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=FX_TRACER
    )


def graph_output(graph: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The single output of a graph made by :func:`fx_model` (a dict of one node)."""
    return next(iter(graph(x).values()))


def image(batch: int = 1, size: tuple[int, int] = (96, 128)) -> torch.Tensor:
    return torch.randn(batch, 3, *size)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_default_cfg(name):
    """timm's test_model_forward / backward / default_cfgs: shapes read through the declared output_fmt."""
    model = timm.create_model(name, **tiny(name)).eval()
    assert model.output_fmt == "NHWC"
    cfg = model.pretrained_cfg
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model(x)
    spatial, channel = get_spatial_dim(model.output_fmt), get_channel_dim(model.output_fmt)
    assert tuple(feats.shape[a] for a in spatial) == cfg["pool_size"]
    assert feats.shape[channel] == model.num_features
    assert pre.shape == (1, model.head_hidden_size)
    assert logits.shape == (1, cfg["num_classes"]) and torch.isfinite(logits).all()
    for key in [cfg["classifier"], *cfg["first_conv"]]:
        assert f"{key}.weight" in model.state_dict()
    model.reset_classifier(0, "")
    with torch.no_grad():
        unpooled = model(x)
    assert unpooled.shape[channel] == model.num_features and unpooled.ndim == 4

    model = timm.create_model(name, num_classes=42, **tiny(name)).train()
    out = model(image(2))
    out.mean().backward()
    assert out.shape == (2, 42)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_features_only_and_fx_feature_extraction(name):
    """features_only (getter and FX), timm's and torchvision's create_feature_extractor give forward_intermediates'
    maps, at three input sizes (padded groups, odd sizes, non-square)."""
    torch.manual_seed(0)
    model = timm.create_model(name, **tiny(name)).eval()
    getter = timm.create_model(name, features_only=True, **tiny(name)).eval()
    graph = timm.create_model(name, features_only=True, feature_cls="fx", **tiny(name)).eval()
    getter.model.load_state_dict(model.state_dict(), strict=False)
    graph.load_state_dict({f"graph_module.{k}": v for k, v in model.state_dict().items()}, strict=False)
    assert graph.output_fmt == "NHWC"  # the model's declared format: FX returns the stage maps as they are
    nodes = [info["module"] for info in model.feature_info]
    timm_fx = timm.models.create_feature_extractor(model, nodes)
    tv_fx = create_feature_extractor(model, return_nodes=nodes, tracer_kwargs=FX_TRACER)
    for size in [(64, 64), (96, 160), (100, 68)]:
        x = image(1, size)
        with torch.no_grad():
            nchw = model.forward_intermediates(x, intermediates_only=True)
            nhwc = model.forward_intermediates(x, intermediates_only=True, output_fmt="NHWC")
            for ref, out in [
                (nchw, getter(x)),
                (nhwc, graph(x)),
                (nhwc, timm_fx(x).values()),
                (nhwc, tv_fx(x).values()),
            ]:
                out = list(out)
                assert len(out) == len(ref) == 4
                for r, o in zip(ref, out):
                    torch.testing.assert_close(o, r, rtol=0, atol=0)
        for info, m in zip(getter.feature_info.get_dicts(), nchw):
            assert m.shape[1] == info["num_chs"] and m.shape[2] <= math.ceil(size[0] / info["reduction"])


@pytest.mark.parametrize("name", NAMES)
def test_fx_forward_backward(name):
    """timm's test_model_forward_fx / backward_fx: the traced graph equals eager, and trains."""
    model = timm.create_model(name, **tiny(name)).eval()
    x = image(1)
    with torch.inference_mode():
        ref = model(x)
        out = graph_output(fx_model(model), x)
    assert torch.equal(out, ref)
    model = timm.create_model(name, num_classes=42, **tiny(name)).train()
    traced = fx_model(model, train=True)
    out = graph_output(traced, image(2))
    out.mean().backward()
    assert out.shape == (2, 42)
    assert all(p.grad is not None for p in traced.parameters())


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", NAMES)
def test_torchscript(name):
    """torch.jit.script of the classifier, FX-traced classifier, features_only and dense backbone: eager's numbers
    (the scripted model takes the plain path: no oneDNN kernels, no cached masks, so float rounding differs)."""
    torch.manual_seed(0)
    model = timm.create_model(name, **tiny(name)).eval()
    features = timm.create_model(name, features_only=True, **tiny(name)).eval()
    dense = cf.create_model(name, dense=True, lda_rule=dense_lda_rule(name), **tiny(name)).eval()
    features.model.load_state_dict(model.state_dict(), strict=False)
    dense.load_state_dict(model.state_dict(), strict=False)
    x = image(2, (96, 160))
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(graph_output(torch.jit.script(fx_model(model)), x), ref, rtol=1e-4, atol=1e-5)
        for wrapper in (features, dense):
            scripted = torch.jit.script(wrapper)(x)
            eager = wrapper(x)
            assert len(scripted) == len(eager) == 4
            for s, e in zip(scripted, eager):
                torch.testing.assert_close(s, e, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_real_width_contract():
    """CrossFormer-T at its real widths and depths: FX and TorchScript give eager's logits."""
    model = timm.create_model("crossformer_t").eval()
    x = image(1, (64, 96))
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(graph_output(fx_model(model), x), ref)
        torch.testing.assert_close(torch.jit.script(model)(x), ref, rtol=1e-4, atol=1e-5)


def test_hub_folder_from_official_file(tmp_path):
    """`crossformer convert official.pth DIR --hub` -> timm.create_model("local-dir:DIR", pretrained=True)."""
    torch.manual_seed(3)
    args = dict(tiny("crossformerpp_s"), num_classes=5)
    src = cf.create_model("crossformerpp_s", **args).eval()
    official = save_classification(tmp_path / "official.pth", src.state_dict(), model_name="crossformerpp_s")
    folder = tmp_path / "hub"
    assert cli(["convert", str(official), str(folder), "--hub"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert model.pretrained_cfg["architecture"] == "crossformerpp_s" and model.num_classes == 5
    x = image(1)
    with torch.no_grad():
        assert torch.equal(model(x), src(x))
    backbone = save_backbone_only(
        tmp_path / "backbone.pth",
        {k: v for k, v in src.state_dict().items() if "head" not in k and not k.startswith("norm.")},
    )
    assert cli(["convert", str(backbone), str(tmp_path / "hub2"), "--hub"]) == 2  # a dense backbone: one-line error
