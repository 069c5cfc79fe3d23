"""Model arguments from a file's metadata: allow-list, bounded values, registered names, meta-device sizing."""

import time

import pytest
import torch

from crossformer_vision.models.arguments import (
    MAX_PARAMETERS,
    estimate_parameters,
    meta_state_shapes,
    validate_model_arguments,
    validate_model_name,
)

TINY = dict(
    embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 4], group_size=[4, 4, 2, 1], crs_interval=[2, 1, 1, 1]
)


def test_tiny_crossformer_arguments_pass_and_build():
    args = validate_model_arguments("crossformer_t", {**TINY, "lda_rule": "fixed_interval", "mlp_ratio": 2})
    assert args["depths"] == (1, 1, 1, 1) and args["mlp_ratio"] == 2.0
    shapes = meta_state_shapes("crossformer_t", 7, TINY)
    assert shapes["head.weight"] == (7, 128)
    import timm

    model = timm.create_model("crossformer_t", num_classes=7, **validate_model_arguments("crossformer_t", TINY))
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    # estimate_parameters counts timm's default head (1000 classes)
    assert estimate_parameters("crossformer_t", TINY) == sum(p.numel() for p in model.parameters()) + 993 * 129


@pytest.mark.parametrize(
    "key, value",
    [
        ("pretrained", True),
        ("pretrained_cfg", {"url": "http://attacker.invalid/w.pth"}),
        ("pretrained_cfg_overlay", {"file": "/etc/passwd", "url": "http://attacker.invalid/"}),
        ("checkpoint_path", "/etc/passwd"),
        ("cache_dir", "/tmp/x"),
        ("weights_url", "http://attacker.invalid/"),
        ("norm_layer", "torch.nn.LayerNorm"),
        ("num_classes", 10),
        ("features_only", True),
        ("embed_dim", {"nested": 1}),
        ("depths", [1, 1, [1], 1]),
        ("lda_rule", "os.system"),
        ("global_pool", "__import__"),
        ("drop_path_rate", float("nan")),
        ("qkv_bias", 1),
        ("embed_dim", True),
        ("depths", list(range(1, 100))),
    ],
)
def test_forbidden_keys_and_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ValueError, match=f"checkpoint metadata refused: model argument '{key}") as err:
        validate_model_arguments("crossformer_t", {key: value})
    assert "\n" not in str(err.value)


def test_callables_and_non_string_keys_are_refused():
    with pytest.raises(ValueError, match="refused"):
        validate_model_arguments("crossformer_t", {"embed_dim": print})
    with pytest.raises(ValueError, match="refused"):
        validate_model_arguments("crossformer_t", {1: 2})
    with pytest.raises(ValueError, match="JSON object"):
        validate_model_arguments("crossformer_t", [("embed_dim", 16)])


def test_other_timm_models_take_only_generic_arguments():
    assert validate_model_arguments("resnet18", {"drop_rate": 0.1, "in_chans": 1}) == {"drop_rate": 0.1, "in_chans": 1}
    with pytest.raises(ValueError, match="'stem_width' is not accepted for resnet18"):
        validate_model_arguments("resnet18", {"stem_width": 16})
    # the widths and depths a Swin / DeiT run shrinks are accepted (the demo's Swin baseline reopens)
    swin = {"embed_dim": 16, "depths": [1, 1], "num_heads": [1, 2], "window_size": 4, "patch_size": 2}
    assert validate_model_arguments("swin_tiny_patch4_window7_224", swin).keys() == swin.keys()
    with pytest.raises(ValueError, match="'in_chans' must be"):
        validate_model_arguments("resnet18", {"in_chans": 10**6})


@pytest.mark.parametrize("name", ["hf-hub:attacker/model", "local-dir:/etc", "/etc/passwd", "no_such_model", "", 3])
def test_model_name_must_be_registered(name):
    with pytest.raises(ValueError, match="checkpoint metadata refused"):
        validate_model_arguments(name, {})


def test_tagged_names_are_registered_names():
    assert validate_model_name("resnet18.a1_in1k") == "resnet18.a1_in1k"


def test_oversized_architecture_is_refused_without_allocating(monkeypatch):
    # fail loudly if anything allocates real parameter memory
    real_empty = torch.empty

    def guarded_empty(*args, **kwargs):
        t = real_empty(*args, **kwargs)
        assert t.device.type == "meta" or t.numel() < 10**7, "real memory allocated"
        return t

    monkeypatch.setattr(torch, "empty", guarded_empty)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="more than the 1,000,000,000 accepted"):
        validate_model_arguments("crossformer_l", {"embed_dim": 1024, "num_heads": 8})
    with pytest.raises(ValueError, match="'embed_dim' must be a whole number from 1 to 1024"):
        validate_model_arguments("crossformer_t", {"embed_dim": 1 << 20})
    with pytest.raises(ValueError, match="'mlp_ratio'"):
        validate_model_arguments("crossformer_t", {"mlp_ratio": 1e9})
    assert time.perf_counter() - start < 20
    assert estimate_parameters("crossformer_l", {}) < MAX_PARAMETERS


def test_inconsistent_arguments_are_one_line():
    with pytest.raises(ValueError, match="do not describe a valid crossformer_t") as err:
        validate_model_arguments("crossformer_t", {"depths": [1, 1]})
    assert "\n" not in str(err.value)
