"""Bad input raises ValueError / TypeError naming the value and what is expected."""

import pytest
import torch

import crossformer_vision as cf


@pytest.fixture(scope="module")
def model():
    return cf.create_model("crossformer_s", embed_dim=32, num_heads=(1, 2, 4, 8), depths=(1, 1, 2, 1)).eval()


def test_wrong_channel_count(model):
    with pytest.raises(ValueError, match=r"expected 3 input channels, got 1.*in_chans=1"):
        model(torch.randn(2, 1, 64, 64))


def test_non_floating_dtype(model):
    with pytest.raises(TypeError, match=r"floating-point.*torch\.uint8"):
        model(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))


def test_empty_batch(model):
    with pytest.raises(ValueError, match=r"empty batch.*\(0, 3, 64, 64\)"):
        model(torch.zeros(0, 3, 64, 64))


def test_too_small(model):
    with pytest.raises(ValueError, match=r"input 31x64 is too small.*at least 32"):
        model(torch.zeros(1, 3, 31, 64))
    with pytest.raises(ValueError, match="too small"):
        model.forward_intermediates(torch.zeros(1, 3, 16, 16))


def test_wrong_rank(model):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\].*\(3, 64, 64\)"):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(TypeError, match="ndarray"):
        import numpy as np

        model(np.zeros((1, 3, 64, 64), dtype="float32"))


def test_unknown_variant():
    with pytest.raises(
        ValueError, match=r"unknown CrossFormer variant 'crossformer_small'.*did you mean crossformer_s"
    ):
        cf.create_model("crossformer_small")


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="lda_rule"):
        cf.CrossFormer(lda_rule="sometimes")
    with pytest.raises(ValueError, match=r"group_size has 3 entries but the model has 4 stages"):
        cf.CrossFormer(group_size=(7, 7, 7))
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        cf.CrossFormer(embed_dim=32, num_heads=(3, 6, 12, 24))


def test_official_builder_arguments():
    with pytest.raises(ValueError, match="unknown flavour"):
        cf.build_from_official({}, "v2-classification")
    with pytest.raises(ValueError, match=r"ape=True is not supported"):
        cf.build_from_official({"ape": True}, "pp-classification")
    with pytest.raises(ValueError, match="unknown official CrossFormer argument 'window_size'"):
        cf.build_from_official({"window_size": 7}, "pp-classification")
    with pytest.raises(ValueError, match="no activation cooling"):
        cf.build_from_official({"use_acl": True}, "v1-dense")
