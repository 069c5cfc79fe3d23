"""timm's generic model contract on every registered CrossFormer name and every name of the companion families
(HRFormer, SOFT, CMT, AugViT): the checks timm's own tests/test_models.py runs (forward, backward, default_cfg shapes,
forward_features / head, features_only, FX forward / backward, TorchScript, FX + TorchScript), plus timm's /
torchvision's FX feature extraction and a converted hub folder.

Tiny widths keep the suite fast: CrossFormer keeps every variant's group sizes, intervals, ACL and LDA rule, with
stages cut to two blocks (four with an Activation Cooling Layer for CrossFormer++); the families use the shared tiny
table of ``family_tiny.py``. ``test_real_width_contract`` runs CrossFormer-T at its real widths once.
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
from family_tiny import FAMILIES, FAMILY_NAMES, family_tiny
from official_files import save_backbone_only, save_classification

CROSSFORMER_NAMES = cf.list_variants()
NAMES = [*CROSSFORMER_NAMES, *FAMILY_NAMES]
WIDTHS = dict(embed_dim=32, num_heads=(1, 2, 4, 8))
FX_TRACER = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(name: str) -> dict:
    """Model arguments of a small ``name``. CrossFormer: width 32, at most 2 blocks per stage (SDA, LDA), 4 for
    CrossFormer++ (an Activation Cooling Layer after the third block); the families: ``family_tiny``."""
    if name not in CROSSFORMER_NAMES:
        return family_tiny(name)
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


def input_size(model: torch.nn.Module, size: tuple[int, int]) -> tuple[int, int]:
    """``size``, or the configured size of a fixed-size model (AugViT: timm's ViT with a fixed position grid)."""
    cfg = model.pretrained_cfg
    return tuple(cfg["input_size"][1:]) if cfg.get("fixed_input_size") else size


def as_nhwc(out: torch.Tensor, ref: torch.Tensor, fmt: str) -> torch.Tensor:
    """A feature node's output in the layout of ``ref`` ([B, h, w, C]): maps in the model's declared ``fmt`` are
    permuted; token sequences [B, prefix + h*w, C] (the stage blocks of SOFT, CMT and AugViT, timm's ViT convention)
    keep their last h*w tokens."""
    if out.ndim == 3:
        return out[:, out.shape[1] - ref.shape[1] * ref.shape[2] :].reshape(ref.shape)
    return out if fmt == "NHWC" else out.permute(0, 2, 3, 1)


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_default_cfg(name):
    """timm's test_model_forward / backward / default_cfgs (default_cfgs_non_std for token models without a pool
    size): shapes read through the declared output_fmt."""
    model = timm.create_model(name, **tiny(name)).eval()
    cfg, state = model.pretrained_cfg, model.state_dict()
    x = torch.randn(1, *cfg["input_size"])
    fmt = getattr(model, "output_fmt", "NCHW")
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        logits = model(x)
        assert pre.shape == (1, model.head_hidden_size)
        assert logits.shape == (1, cfg["num_classes"]) and torch.isfinite(logits).all()
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == pre.shape
        if cfg["pool_size"] is None:  # timm's non-standard models: [B, N, C] tokens or an NCHW map
            assert feats.shape[-1 if feats.ndim == 3 else 1] == model.num_features
            pooled = timm.create_model(name, num_classes=0, **tiny(name)).eval()(x)
            assert pooled.shape == (1, model.num_features)
        else:
            spatial, channel = get_spatial_dim(fmt), get_channel_dim(fmt)
            assert tuple(feats.shape[a] for a in spatial) == cfg["pool_size"]
            assert feats.shape[channel] == model.num_features
            model.reset_classifier(0, "")
            unpooled = model(x)
            bare = timm.create_model(name, num_classes=0, global_pool="", **tiny(name)).eval()
            for out in (unpooled, bare(x)):
                assert out.ndim == 4 and tuple(out.shape[a] for a in spatial) == cfg["pool_size"]
    first_conv = [cfg["first_conv"]] if isinstance(cfg["first_conv"], str) else cfg["first_conv"]
    for key in [cfg["classifier"], *first_conv]:
        assert f"{key}.weight" in state

    model = timm.create_model(name, num_classes=42, **tiny(name)).train()
    out = model(image(2, input_size(model, (96, 128))))
    out.mean().backward()
    assert out.shape == (2, 42)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_features_only_and_fx_feature_extraction(name):
    """features_only (getter and FX), timm's and torchvision's create_feature_extractor give forward_intermediates'
    maps, at three input sizes (padded groups / windows, odd sizes, non-square; fixed-size models at theirs)."""
    torch.manual_seed(0)
    model = timm.create_model(name, **tiny(name)).eval()
    getter = timm.create_model(name, features_only=True, **tiny(name)).eval()
    graph = timm.create_model(name, features_only=True, feature_cls="fx", **tiny(name)).eval()
    getter.model.load_state_dict(model.state_dict(), strict=False)
    graph.load_state_dict({f"graph_module.{k}": v for k, v in model.state_dict().items()}, strict=False)
    fmt = getattr(model, "output_fmt", "NCHW")
    assert graph.output_fmt == fmt  # the model's declared format: FX returns the feature nodes' outputs as they are
    nodes = [model.feature_info[i]["module"] for i in getter.feature_info.out_indices]
    timm_fx = timm.models.create_feature_extractor(model, nodes)
    tv_fx = create_feature_extractor(model, return_nodes=nodes, tracer_kwargs=FX_TRACER)
    for size in dict.fromkeys(input_size(model, s) for s in [(64, 64), (96, 160), (100, 68)]):
        x = image(1, size)
        with torch.no_grad():
            nchw = model.forward_intermediates(x, indices=getter.feature_info.out_indices, intermediates_only=True)
            nhwc = [m.permute(0, 2, 3, 1) for m in nchw]
            for ref, out in [
                (nchw, getter(x)),
                (nhwc, graph(x)),
                (nhwc, timm_fx(x).values()),
                (nhwc, tv_fx(x).values()),
            ]:
                out = list(out)
                assert len(out) == len(ref) == len(getter.feature_info) >= 3
                for r, o in zip(ref, out):
                    torch.testing.assert_close(o if ref is nchw else as_nhwc(o, r, fmt), r, rtol=0, atol=0)
        for info, m in zip(getter.feature_info.get_dicts(), nchw):
            assert m.shape[1] == info["num_chs"] and m.shape[2] <= math.ceil(size[0] / info["reduction"])


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", NAMES)
def test_fx_forward_backward(name):
    """timm's test_model_forward_fx / backward_fx / forward_fx_torchscript: the traced graph equals eager, trains,
    and TorchScript compiles it (eager's numbers up to float rounding, as in :func:`test_torchscript`)."""
    model = timm.create_model(name, **tiny(name)).eval()
    x = image(1, input_size(model, (96, 128)))
    with torch.inference_mode():
        ref = model(x)
        graph = fx_model(model)
        out = graph_output(graph, x)
    assert torch.equal(out, ref)
    with torch.no_grad():
        torch.testing.assert_close(graph_output(torch.jit.script(graph), x), ref, rtol=1e-4, atol=1e-5)
    model = timm.create_model(name, num_classes=42, **tiny(name)).train()
    traced = fx_model(model, train=True)
    out = graph_output(traced, image(2, input_size(model, (96, 128))))
    out.mean().backward()
    assert out.shape == (2, 42)
    assert all(p.grad is not None for p in traced.parameters())


#: timm scripts an FX features_only wrapper for one model (test_model_forward_torchscript_with_features_fx); here
#: for the first name of each family (the other names script the classifier and its FX graph; this keeps the time).
FX_FEATURES_SCRIPTED = {names[0] for names in FAMILIES.values()}


def scripted_wrappers(name: str, model: torch.nn.Module) -> list[torch.nn.Module]:
    """The feature extractors TorchScript compiles besides the classifier, with ``model``'s weights: CrossFormer's
    features_only wrapper and dense backbone; for the families timm's FX features_only wrapper (timm's
    test_model_forward_torchscript_with_features_fx), once per family."""
    if name not in CROSSFORMER_NAMES and name not in FX_FEATURES_SCRIPTED:
        return []
    if name in CROSSFORMER_NAMES:
        features = timm.create_model(name, features_only=True, **tiny(name)).eval()
        dense = cf.create_model(name, dense=True, lda_rule=dense_lda_rule(name), **tiny(name)).eval()
        features.model.load_state_dict(model.state_dict(), strict=False)
        dense.load_state_dict(model.state_dict(), strict=False)
        return [features, dense]
    graph = timm.create_model(name, features_only=True, feature_cls="fx", **tiny(name)).eval()
    graph.load_state_dict({f"graph_module.{k}": v for k, v in model.state_dict().items()}, strict=False)
    return [graph]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("name", NAMES)
def test_torchscript(name):
    """torch.jit.script of the classifier and the feature extractors: eager's numbers (the scripted model takes the
    plain path: no oneDNN kernels, no cached masks, so float rounding differs). The FX-traced classifier is scripted
    in :func:`test_fx_forward_backward`."""
    torch.manual_seed(0)
    with timm.layers.set_scriptable(True):
        model = timm.create_model(name, **tiny(name)).eval()
    x = image(2, input_size(model, (96, 160)))
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), ref, rtol=1e-4, atol=1e-5)
        for wrapper in scripted_wrappers(name, model):
            scripted = torch.jit.script(wrapper)(x)
            eager = wrapper(x)
            assert len(scripted) == len(eager) >= 3
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
