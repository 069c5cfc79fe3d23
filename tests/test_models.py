"""Generic model-contract tests over every registered variant, with tiny widths."""

import copy

import pytest
import timm
import torch

import crossformer_vision as cf

VARIANTS = cf.list_variants()
TINY = dict(embed_dim=32, num_heads=(1, 2, 4, 8), depths=(1, 1, 4, 1), drop_path_rate=0.0, num_classes=7)


def tiny(name: str, **kwargs) -> cf.CrossFormer:
    return cf.create_model(name, **{**TINY, **kwargs})


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = tiny(name)
    x = torch.randn(2, 3, 64, 96)
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.square().sum().backward()
    # The bias of the position-bias MLP's last layer adds one constant per head to every logit of
    # that head; softmax is invariant to such a shift, so its true gradient is exactly zero (what
    # survives is rounding noise). It must still be reached by autograd.
    shift_invariant = [n for n, _ in model.named_parameters() if n.endswith("attn.pos.pos3.2.bias")]
    missing = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or (n not in shift_invariant and not p.grad.abs().sum() > 0)
    ]
    assert not missing, missing
    assert shift_invariant and all(model.get_parameter(n).grad.abs().max() < 1e-3 for n in shift_invariant)


@pytest.mark.parametrize("name", VARIANTS)
def test_grad_checkpointing_gives_same_outputs_and_gradients(name):
    model = tiny(name)
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    ref.sum().backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], rtol=1e-5, atol=1e-6, msg=n)


def test_grad_checkpointing_recomputes_the_embedding_and_the_blocks():
    model = tiny("crossformer_s")
    runs = {}

    def count(name):
        def hook(module, args):
            runs[name] = runs.get(name, 0) + 1

        return hook

    model.patch_embed.register_forward_pre_hook(count("embed"))
    for i, stage in enumerate(model.layers):
        stage.blocks[0].register_forward_pre_hook(count(f"stage{i}"))
    x = torch.randn(2, 3, 64, 64)

    def forward_calls():
        runs.clear()
        model(x).sum().backward()
        return dict(runs)

    assert forward_calls() == {"embed": 1, "stage0": 1, "stage1": 1, "stage2": 1, "stage3": 1}
    model.set_grad_checkpointing(True)  # the backward pass runs each checkpointed forward again
    assert forward_calls() == {"embed": 2, "stage0": 2, "stage1": 2, "stage2": 2, "stage3": 1}
    model.set_grad_checkpointing(True, last_stage=True)
    assert forward_calls() == {"embed": 2, "stage0": 2, "stage1": 2, "stage2": 2, "stage3": 2}
    model.set_grad_checkpointing(False)
    assert forward_calls() == {"embed": 1, "stage0": 1, "stage1": 1, "stage2": 1, "stage3": 1}
    with torch.no_grad():  # nothing to recompute without autograd
        model.set_grad_checkpointing(True)
        runs.clear()
        model(x)
        assert runs == {"embed": 1, "stage0": 1, "stage1": 1, "stage2": 1, "stage3": 1}


def test_grad_checkpointing_releases_freed_memory_between_stages(monkeypatch):
    import crossformer_vision.models.crossformer as module

    calls = []
    monkeypatch.setattr(module, "release_freed_memory", lambda: calls.append(torch.is_grad_enabled()) or True)
    model = tiny("crossformer_s")
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    assert calls == []  # not without checkpointing
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    # once before each checkpointed stage's forward (grad mode on), once after its backward (grad mode off); the
    # last stage is not checkpointed by default
    assert calls == [True] * 3 + [False] * 3
    calls.clear()
    model.set_grad_checkpointing(True, last_stage=True)
    model(x).sum().backward()
    assert calls == [True] * 4 + [False] * 4
    calls.clear()
    model.set_grad_checkpointing(True, release_memory=False)
    model(x).sum().backward()
    with torch.no_grad():
        model.set_grad_checkpointing(True)
        model(x)
    assert calls == []


@pytest.mark.parametrize("name", VARIANTS)
def test_intermediates_match_features(name):
    model = tiny(name).eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        final, inter = model.forward_intermediates(x, norm=True)
        only = model.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
        early = model.forward_intermediates(x, indices=2, stop_early=True, intermediates_only=True)
    torch.testing.assert_close(final, feats)
    torch.testing.assert_close(inter[-1], feats.permute(0, 3, 1, 2))
    assert [t.shape for t in inter] == [(1, 32 * 2**i, 24 >> i, 16 >> i) for i in range(4)]
    torch.testing.assert_close(only[0], inter[1])
    assert len(early) == 2 and early[0].shape == inter[2].shape


@pytest.mark.parametrize("name", VARIANTS)
def test_timm_features_only(name):
    model = timm.create_model(name, features_only=True, **{k: v for k, v in TINY.items() if k != "num_classes"})
    assert model.feature_info.channels() == [32, 64, 128, 256]
    assert model.feature_info.reduction() == [4, 8, 16, 32]
    maps = model(torch.randn(1, 3, 128, 96))
    assert [tuple(m.shape) for m in maps] == [(1, 32 * 2**i, 32 >> i, 24 >> i) for i in range(4)]
    sub = timm.create_model(
        name, features_only=True, out_indices=(1, 2), **{k: v for k, v in TINY.items() if k != "num_classes"}
    )
    assert sub.feature_info.channels() == [64, 128]
    assert len(sub(torch.randn(1, 3, 64, 64))) == 2
    assert not any(k.startswith("model.layers.3") for k in sub.state_dict())


def test_features_only_model_trains_with_grad_checkpointing():
    kwargs = {k: v for k, v in TINY.items() if k != "num_classes"}
    torch.manual_seed(0)
    model = timm.create_model("crossformer_t", features_only=True, **kwargs)
    x = torch.randn(2, 3, 64, 64)

    def grads():
        model.zero_grad()
        sum(m.square().mean() for m in model(x)).backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.set_grad_checkpointing(True)
    assert model.model.grad_checkpointing and model.model.layers[0].grad_checkpointing
    for a, b in zip(plain, grads(), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("pool", ["max", "avgmax", "catavgmax"])
def test_global_pool_choices_follow_timm(pool):
    model = tiny("crossformer_t").eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    model.reset_classifier(5, global_pool=pool)
    max_ = feats.amax(dim=(1, 2))
    expected = {"max": max_, "avgmax": 0.5 * (feats.mean(dim=(1, 2)) + max_)}
    expected["catavgmax"] = torch.cat([feats.mean(dim=(1, 2)), max_], dim=1)
    torch.testing.assert_close(model.forward_head(feats, pre_logits=True), expected[pool])
    assert model.head.in_features == (512 if pool == "catavgmax" else 256) and model(x).shape == (2, 5)
    built = tiny("crossformer_t", global_pool=pool)
    assert built.global_pool == pool and built.head.in_features == model.head.in_features
    with pytest.raises(ValueError, match="global_pool must be one of"):
        tiny("crossformer_t", global_pool="token")
    with pytest.raises(ValueError, match="global_pool must be one of"):
        model.reset_classifier(3, global_pool="mean")


def test_pruned_model_forwards_with_the_last_kept_stage():
    model = tiny("crossformer_s").eval()
    x = torch.randn(2, 3, 64, 64)
    maps = model.forward_intermediates(x, intermediates_only=True)
    assert model.prune_intermediate_layers(indices=[1], prune_head=True) == [1]
    with torch.no_grad():
        out = model(x)  # the final norm had stage 4's width: it failed with a normalized_shape error
    assert out.shape == (2, 8, 8, 64) and model.num_features == 64
    torch.testing.assert_close(out.permute(0, 3, 1, 2), maps[1])
    kept_head = tiny("crossformer_s").eval()
    kept_head.prune_intermediate_layers(indices=2, prune_head=False)  # the last two stages: nothing cut
    assert kept_head(x).shape == (2, 7)
    kept_head.prune_intermediate_layers(indices=[0, 2], prune_head=False)  # stage 4 cut: head rebuilt for stage 3
    assert kept_head.head.in_features == 128 and kept_head(x).shape == (2, 7)


def test_timm_registry_and_pretrained_cfg():
    assert set(VARIANTS) <= set(timm.list_models("crossformer*"))
    model = timm.create_model("crossformerpp_s")
    cfg = model.pretrained_cfg
    assert cfg["input_size"] == (3, 224, 224) and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    data_cfg = timm.data.resolve_model_data_config(model)
    assert data_cfg["crop_pct"] == 0.875


def test_head_api_and_no_weight_decay():
    model = tiny("crossformer_s").eval()
    x = torch.randn(2, 3, 64, 64)
    feats = model.forward_features(x)
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, 256)
    torch.testing.assert_close(model.forward_head(feats), model.head(pooled))
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0, global_pool="")
    assert model(x).shape == (2, 2, 2, 256)
    nwd = model.no_weight_decay()
    assert "patch_embed.norm.weight" in nwd and "layers.0.blocks.0.attn.qkv.bias" in nwd
    assert "layers.0.blocks.0.attn.qkv.weight" not in nwd
    assert all(model.get_parameter(n).ndim <= 1 for n in nwd)


def test_group_size_and_interval_are_choosable_with_the_same_weights():
    a = tiny("crossformer_s").eval()
    b = tiny("crossformer_s", group_size=4, crs_interval=(4, 2, 2, 1)).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert (a(x) - b(x)).abs().max() > 1e-4
    assert b.layers[2].blocks[1].layout(16, 16).group == (4, 4)


@pytest.mark.parametrize("size", [(97, 131), (32, 32), (33, 250), (224, 160)])
def test_any_input_size(size):
    model = tiny("crossformerpp_s").eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
        maps = model.forward_intermediates(torch.randn(1, 3, *size), intermediates_only=True)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    h, w = size[0] // 4, size[1] // 4
    assert [m.shape[-2:] for m in maps] == [(h >> i, w >> i) for i in range(4)]


def test_large_input_1024():
    model = tiny("crossformer_t", depths=(1, 1, 2, 1)).eval()
    with torch.inference_mode():
        maps = model.forward_intermediates(torch.randn(1, 3, 1024, 1024), intermediates_only=True)
    assert [m.shape[-1] for m in maps] == [256, 128, 64, 32]
    assert all(torch.isfinite(m).all() for m in maps)


def test_float64_and_bfloat16():
    model = tiny("crossformerpp_s").eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = model(x)
        out64 = model.double()(x.double())
        out16 = model.to(torch.bfloat16)(x.to(torch.bfloat16))
        model.float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outac = model(x)
    assert out64.dtype == torch.float64 and (out64 - ref.double()).abs().max() < 1e-4
    assert out16.dtype == torch.bfloat16
    scale = ref.abs().max()
    assert (out16.float() - ref).abs().max() < 0.1 * scale
    assert (outac.float() - ref).abs().max() < 0.1 * scale


def test_forward_is_pure():
    """The official dense backbones change state on small maps; ours must not."""
    model = cf.create_model("crossformer_s", dense=True, embed_dim=32, num_heads=(1, 2, 4, 8)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
        model(torch.randn(1, 3, 96, 96))
        model(torch.randn(1, 3, 32, 48))
        after = model(x)
    for a, b in zip(before, after):
        assert torch.equal(a, b)


def test_train_mode_drop_path_is_stochastic_and_eval_is_deterministic():
    model = tiny("crossformer_s", drop_path_rate=0.5)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_dense_backbone_api():
    bb = cf.create_model("crossformerpp_s", dense=True, embed_dim=32, num_heads=(1, 2, 4, 8), out_indices=(1, 2, 3))
    assert bb.out_channels == [64, 128, 256] and bb.out_strides == [8, 16, 32]
    assert not any(k.startswith(("norm.", "head.")) for k in bb.state_dict())
    maps = bb(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == [64, 128, 256]


def test_inference_cache_follows_weight_changes():
    """The eval-time position-bias cache never serves stale values and never breaks autograd."""
    model = tiny("crossformerpp_s").eval()
    x = torch.randn(1, 3, 96, 64)
    with torch.inference_mode():
        first = model(x)
    out = model(x)  # autograd after an inference-mode call that filled the caches
    out.sum().backward()
    with torch.no_grad():
        assert torch.equal(model(x), first)
        model.layers[0].blocks[0].attn.pos.pos3[2].bias.add_(0.5)  # in place, like an optimizer step
        changed = model(x)
    with torch.enable_grad():
        reference = model(x).detach()  # grad enabled: the cache is bypassed
    assert not torch.equal(changed, first)
    torch.testing.assert_close(changed, reference, rtol=0, atol=1e-6)
    model.load_state_dict(tiny("crossformerpp_s").state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.train().eval()(x))


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
def test_inference_caches_follow_fused_optimizer_steps(amp):
    """torch's fused AdamW updates parameters without bumping their version counters: the cached bf16 weight casts
    and position-bias masks must still be rebuilt after its steps (here with the model left in eval mode)."""
    torch.manual_seed(0)
    model = tiny("crossformer_s").eval()
    for p in model.parameters():  # rewards any change of any weight
        p.grad = torch.randn_like(p)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    x = torch.randn(2, 3, 64, 64)

    def run(m):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            return m(x).float()

    run(model)  # fills the caches
    opt.step()
    fresh = copy.deepcopy(model)  # new storages: nothing cached applies to it
    torch.testing.assert_close(run(model), run(fresh), rtol=0, atol=0)


def test_autocast_keeps_the_position_bias_and_the_head_in_float32():
    model = tiny("crossformer_s").eval()
    x = torch.randn(2, 3, 64, 64)
    block = model.layers[0].blocks[0]
    with torch.inference_mode():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
            bias = block.attn.attention_mask(block.layout(14, 14), torch.bfloat16)  # 2 x 2 groups of 7 x 7, no padding
        exact = block.attn.pos(7, 7)
    assert out.dtype == torch.float32  # logits from the float32 head
    torch.testing.assert_close(bias, exact.to(torch.bfloat16), rtol=0, atol=0)  # one rounding, at the end
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()


def test_pretrained_weights_adapt_every_stem_conv_to_other_input_channels(tmp_path):
    """timm's in_chans adaptation must reach all four cross-scale convs (pretrained_cfg first_conv lists them)."""
    from safetensors.torch import save_file

    ref = tiny("crossformer_t").eval()
    save_file(ref.state_dict(), str(tmp_path / "w.safetensors"))
    overlay = dict(file=str(tmp_path / "w.safetensors"), num_classes=TINY["num_classes"])  # keep the head
    grey = timm.create_model(
        "crossformer_t", pretrained=True, in_chans=1, pretrained_cfg_overlay=overlay, **TINY
    ).eval()
    assert all(p.weight.shape[1] == 1 for p in grey.patch_embed.projs)
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():  # timm sums the RGB kernels: a grey image gives what the RGB model gives on it
        torch.testing.assert_close(grey(x), ref(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)


def test_forward_intermediates_stop_early_returns_the_last_stage_run():
    model = tiny("crossformer_t").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, indices=[1], stop_early=True)
        full = model.forward_intermediates(x, indices=[1], intermediates_only=True)
    assert final.shape == (2, 8, 8, 64) and len(maps) == 1
    torch.testing.assert_close(final.permute(0, 3, 1, 2), maps[0])
    torch.testing.assert_close(maps[0], full[0])
