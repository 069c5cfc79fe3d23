"""Official checkpoint files load (safely), convert to safetensors, and wrong or broken files fail clearly."""

import pickle

import pytest
import torch

import crossformer_vision as cf
from crossformer_vision.cli.main import main as cli
from crossformer_vision.models.io import read_checkpoint, read_state_dict
from official_files import save_backbone_only, save_classification, save_mm

TINY = dict(embed_dim=32, num_heads=(1, 2, 4, 8), depths=(1, 1, 2, 1))


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(1)
    model = cf.create_model("crossformer_s", num_classes=10, **TINY).eval()
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    return model


def _same_maps(a, b):
    return all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("v1", [False, True], ids=["main", "v1-buffers"])
def test_classification_file_with_yacs_config(tmp_path, source, v1):
    path = save_classification(tmp_path / "crossformer.pth", source.state_dict(), v1=v1)
    ckpt = read_checkpoint(path)
    assert ckpt["config"].MODEL.NAME == "crossformer_s" and ckpt["epoch"] == 299
    model = cf.create_model("crossformer_s", num_classes=10, **TINY).eval()
    cf.load_official_state_dict(model, ckpt)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))


def test_backbone_only_and_mm_checkpoints_load_into_dense_backbone(tmp_path, source):
    sd = source.state_dict()
    dense_sd = {k: v for k, v in sd.items() if not k.startswith(("norm.", "head."))}
    heads = {
        "decode_head.conv_seg.weight": torch.zeros(150, 512, 1, 1),
        "neck.lateral_convs.0.conv.weight": torch.zeros(2),
    }
    files = [
        save_backbone_only(tmp_path / "backbone.pth", sd),
        save_mm(tmp_path / "upernet.pth", dense_sd, heads),
        save_mm(tmp_path / "retinanet_ddp.pth", dense_sd, {"bbox_head.retina_cls.weight": torch.zeros(3)}, ddp=True),
    ]
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        expected = source.forward_intermediates(x, intermediates_only=True)
    for path in files:
        bb = cf.create_model("crossformer_s", dense=True, **TINY).eval()
        cf.load_official_state_dict(bb, read_checkpoint(path))
        with torch.no_grad():
            assert _same_maps(bb(x), expected), path.name


def test_missing_and_unexpected_keys_are_named(source):
    model = cf.create_model("crossformer_s", num_classes=10, **TINY)
    sd = dict(source.state_dict())
    sd.pop("layers.1.blocks.0.mlp.fc1.weight")
    sd["layers.1.blocks.0.surprise"] = torch.zeros(1)
    with pytest.raises(
        ValueError,
        match=r"missing keys: layers\.1\.blocks\.0\.mlp\.fc1\.weight.*unexpected keys: layers\.1\.blocks\.0\.surprise",
    ):
        cf.load_official_state_dict(model, sd)


def test_wrong_variant_is_explained():
    with torch.device("meta"):
        ckpt = cf.create_model("crossformer_b").state_dict()
        model = cf.create_model("crossformer_s")
    with pytest.raises(ValueError, match=r"looks like 'crossformer_b'.*unexpected keys: layers\.2\.blocks\.6"):
        cf.load_official_state_dict(model, ckpt)
    with torch.device("meta"):
        ckpt = cf.create_model("crossformer_l").state_dict()
    with pytest.raises(ValueError, match=r"shape mismatch for patch_embed"):
        cf.load_official_state_dict(model, ckpt)


def test_skip_head_for_fine_tuning(source):
    model = cf.create_model("crossformer_s", num_classes=3, **TINY)
    with pytest.raises(ValueError, match=r"head\.weight"):
        cf.load_official_state_dict(model, source.state_dict())
    cf.load_official_state_dict(model, source.state_dict(), skip_head=True)
    assert torch.equal(model.layers[0].blocks[0].attn.qkv.weight, source.layers[0].blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("name", cf.list_variants())
def test_variant_detected_from_shapes(name):
    with torch.device("meta"):
        sd = cf.create_model(name).state_dict()
    assert cf.detect_variant(sd) == name
    assert cf.detect_variant({f"backbone.{k}": v for k, v in sd.items() if not k.startswith("head")}) == name


def test_truncated_and_corrupted_files(tmp_path, source):
    good = save_classification(tmp_path / "good.pth", source.state_dict())
    data = good.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint at all" * 100)
    for name in ("truncated.pth", "garbage.pth"):
        with pytest.raises(ValueError, match=r"corrupted or (truncated|not a checkpoint)"):
            read_checkpoint(tmp_path / name)
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00" * 20)
    with pytest.raises(ValueError, match="corrupted or truncated"):
        read_checkpoint(tmp_path / "bad.safetensors")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.pth")


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_arbitrary_pickled_code_is_refused(tmp_path, source, capsys):
    path = tmp_path / "evil.pth"
    torch.save({"model": source.state_dict(), "extra": _Payload()}, path)
    with pytest.raises(ValueError, match=r"refusing to load .*builtins\.print.*--trust-checkpoint"):
        read_checkpoint(path)
    assert "must never run" not in capsys.readouterr().out
    with pytest.raises(pickle.UnpicklingError):  # torch's own weights-only loader refuses the yacs config
        torch.load(save_classification(tmp_path / "c.pth", source.state_dict()), weights_only=True)


def test_convert_cli_roundtrip(tmp_path, source):
    src = save_classification(tmp_path / "official.pth", source.state_dict(), v1=True)
    dst = tmp_path / "converted.safetensors"
    assert cli(["convert", str(src), str(dst)]) == 0
    sd = read_state_dict(dst)
    model = cf.create_model("crossformer_s", num_classes=10, **TINY).eval()
    cf.load_official_state_dict(model, sd)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))
    dense = tmp_path / "dense.safetensors"
    assert cli(["convert", str(src), str(dense), "--dense", "--lda-rule", "fixed_interval"]) == 0
    assert not any(k.startswith("head.") for k in read_state_dict(dense))
    assert cli(["convert", str(tmp_path / "missing.pth"), str(dense)]) == 2


def test_timm_pretrained_from_converted_official_file(tmp_path):
    """Official file -> `crossformer convert` -> timm's own pretrained loading (pretrained_cfg_overlay file=...)."""
    import timm

    torch.manual_seed(3)
    src = cf.create_model("crossformer_t", **TINY).eval()
    official = save_classification(tmp_path / "official_t.pth", src.state_dict(), v1=True)
    converted = tmp_path / "crossformer_t.safetensors"
    assert cli(["convert", str(official), str(converted)]) == 0
    model = timm.create_model(
        "crossformer_t", pretrained=True, pretrained_cfg_overlay=dict(file=str(converted)), **TINY
    )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), src(x))
