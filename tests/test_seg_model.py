"""Segmentor and builders: output shapes for every backbone family, losses, mmseg key layouts at full size."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from crossformer_vision.tasks.segmentation import (
    MultiLevelNeck,
    Segmentor,
    TimmBackbone,
    build_segmentor,
    list_segmentors,
    segmentation_loss,
)

MANIFESTS = json.loads((Path(__file__).parent / "data" / "mm" / "seg_manifests.json").read_text())
TINY_CF = dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4))
TINY_HEADS = dict(channels=16, aux_channels=8)
TINY_SWIN = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))

# (name, builder kwargs): one tiny model per backbone family.
FAMILIES = [
    ("upernet_crossformer_s", dict(backbone_kwargs=TINY_CF, **TINY_HEADS)),
    ("semfpn_crossformerpp_s", dict(backbone_kwargs=TINY_CF, channels=8, neck_channels=16)),
    ("upernet_swin_t", dict(backbone_kwargs=TINY_SWIN, **TINY_HEADS)),
    ("upernet_resnet101", dict(backbone_kwargs=dict(layers=[1, 1, 1, 1]), **TINY_HEADS)),
    ("upernet_vit_b16", dict(backbone_kwargs=dict(embed_dim=32, depth=4, num_heads=2), **TINY_HEADS)),
    ("semfpn_deit_s16", dict(backbone_kwargs=dict(embed_dim=32, depth=4, num_heads=2), channels=8, neck_channels=16)),
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize(("name", "kwargs"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_every_family_gives_logits_at_any_input_size(name, kwargs):
    model = build_segmentor(name, num_classes=5, **kwargs).eval()
    assert [len(model.backbone.out_channels), len(model.backbone.out_strides)] == [4, 4]
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 64, 32))
        logits = model(torch.randn(2, 3, 37, 45))  # neither a multiple of 32 nor of the patch size
    assert [f.shape[-2:] for f in feats] == [(16, 8), (8, 4), (4, 2), (2, 1)]  # strides 4..32, NCHW
    assert logits.shape == (2, 5, 37, 45)
    assert torch.isfinite(logits).all()


def test_timm_families_use_the_expected_adapters():
    swin = build_segmentor("upernet_swin_t", num_classes=3, **FAMILIES[2][1])
    assert isinstance(swin.backbone, TimmBackbone) and swin.backbone.channels_last
    assert swin.backbone.out_norms is not None and swin.backbone.pad_multiple == 4  # mmseg's per-output norms
    vit = build_segmentor("upernet_vit_b16", num_classes=3, **FAMILIES[4][1])
    assert isinstance(vit.neck, MultiLevelNeck) and vit.neck.scales == [4.0, 2.0, 1.0, 0.5]
    assert vit.backbone.is_plain and vit.backbone.pad_multiple == 16
    assert vit.auxiliary_head.in_index == 3  # mmseg's ViT configs read the last MLN level
    assert "neck.lateral_convs.0.conv.bias" in vit.state_dict()  # mmseg MLN keys
    deit = build_segmentor("semfpn_deit_s16", num_classes=3, **FAMILIES[5][1])
    assert isinstance(deit.neck[0], MultiLevelNeck) and deit.decode_head.feature_strides == [4, 8, 16, 32]
    with torch.device("meta"):  # full ViT-B, shapes only
        default_vit = build_segmentor("upernet_vit_b16", num_classes=3, channels=8, aux_channels=8).backbone
    assert default_vit.body.feature_info.get_dicts()[0]["index"] == 2  # blocks (2, 5, 8, 11) as mmseg


def test_train_mode_returns_losses_and_eval_mode_logits():
    model = build_segmentor("upernet_crossformer_s", num_classes=4, **FAMILIES[0][1])
    images = torch.randn(2, 3, 32, 32)
    targets = torch.randint(0, 4, (2, 32, 32))
    targets[0, :10] = 255
    losses = model.train()(images, targets)
    assert set(losses) == {"loss", "loss_decode", "loss_aux"}
    assert losses["loss"].requires_grad and not losses["loss_decode"].requires_grad
    torch.testing.assert_close(losses["loss"].detach(), losses["loss_decode"] + losses["loss_aux"])
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="needs targets"):
        model(images)
    model.eval()
    assert model(images, targets).shape == (2, 4, 32, 32)  # eval ignores targets
    with pytest.raises(TypeError, match="integer labels"):
        model.loss(images, targets.float())


def test_loss_is_mmseg_cross_entropy_and_respects_ignore():
    logits = torch.randn(2, 3, 5, 7)
    target = torch.randint(0, 3, (2, 5, 7))
    target[:, 0] = 255
    per_pixel = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    torch.testing.assert_close(segmentation_loss(logits, target), per_pixel.sum() / target.numel())  # mmseg default
    torch.testing.assert_close(
        segmentation_loss(logits, target, avg_non_ignore=True), per_pixel.sum() / (target != 255).sum()
    )
    assert segmentation_loss(logits, torch.full_like(target, 255)).item() == 0.0


def test_aux_loss_weight_and_no_aux():
    model = build_segmentor("upernet_crossformer_s", num_classes=3, aux=False, **FAMILIES[0][1]).train()
    assert model.auxiliary_head is None
    losses = model(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))
    assert set(losses) == {"loss", "loss_decode"}
    assert model.aux_weight == 0.4


def test_syncbn_has_the_same_keys_and_converts_backbone_batchnorm():
    kwargs = dict(num_classes=3, **FAMILIES[3][1])
    bn = build_segmentor("upernet_resnet101", **kwargs)
    sync = build_segmentor("upernet_resnet101", norm="syncbn", **kwargs)
    assert list(bn.state_dict()) == list(sync.state_dict())
    assert all(type(m) is not torch.nn.BatchNorm2d for m in sync.modules())
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in sync.backbone.modules())


def test_crossformer_backbones_use_the_official_dense_settings():
    v1 = build_segmentor("upernet_crossformer_s", num_classes=3, **FAMILIES[0][1]).backbone
    pp = build_segmentor("semfpn_crossformerpp_s", num_classes=3, **FAMILIES[1][1]).backbone
    assert (v1.lda_rule, pp.lda_rule) == ("fixed_interval", "fixed_group")
    assert v1.group_size == pp.group_size == (7, 7, 7, 7) and v1.crs_interval == pp.crs_interval == (8, 4, 2, 1)
    other = build_segmentor(
        "upernet_crossformer_s", num_classes=3, **TINY_HEADS, backbone_kwargs=dict(TINY_CF, lda_rule="fixed_group")
    )
    assert other.backbone.lda_rule == "fixed_group"


@pytest.mark.parametrize(
    ("name", "manifest", "params"),
    [
        ("upernet_crossformer_s", "upernet_crossformer_heads", 62_308_022),  # published 62.3 M
        ("upernet_crossformerpp_s", "upernet_crossformer_pp_s_heads", None),
        ("semfpn_crossformer_s", "semfpn_crossformer_neck_head", 34_260_000),  # published 34.3 M
        ("semfpn_crossformerpp_s", "semfpn_crossformer_pp_s_neck_head", None),
    ],
)
def test_full_size_key_layout_matches_mmseg(name, manifest, params):
    with torch.device("meta"):
        model = build_segmentor(name, num_classes=150, norm="syncbn")
    sd = model.state_dict()
    heads = [[k, list(v.shape)] for k, v in sd.items() if not k.startswith("backbone.")]
    assert heads == MANIFESTS[manifest]["keys"]  # names, shapes and order of mmseg's EncoderDecoder
    assert next(iter(sd)).startswith("backbone.")
    if params is not None:
        assert sum(p.numel() for p in model.parameters()) == params


def test_builder_errors_and_names():
    names = list_segmentors()
    assert "upernet_crossformer_s" in names and "semfpn_crossformerpp_h" in names and "upernet_swin_b" in names
    assert "ocr_hrformer_s" in names and "semfpn_soft_tiny" in names and "upernet_cmt_b" in names
    assert len(names) == len(set(names)) == 3 * (8 + 7 + 3 + 5 + 4)  # heads x (variants, aliases, HRFormer, SOFT, CMT)
    with pytest.raises(ValueError, match="unknown segmentor"):
        build_segmentor("deeplab_crossformer_s")
    with pytest.raises(ValueError, match="unknown backbone"):
        build_segmentor("upernet_not_a_model")
    with pytest.raises(ValueError, match="weights="):
        build_segmentor("upernet_crossformer_s", pretrained=True)


def test_any_timm_pyramid_model_serves_and_others_are_refused_up_front():
    # a stride-2 level first (EfficientNet): the four pyramid levels are taken, as mmseg configs pick out_indices
    eff = build_segmentor("semfpn_efficientnet_b0", num_classes=3, channels=8, neck_channels=16)
    assert eff.backbone.out_strides == [4, 8, 16, 32] and eff.backbone.out_channels == [24, 40, 112, 320]
    with torch.no_grad():
        assert eff.eval()(torch.randn(1, 3, 40, 56)).shape == (1, 3, 40, 56)
    with pytest.raises(ValueError, match=r"gives strides \[2, 4, 8, 16\]: .*out_indices=\[0, 1, 2, 3\] must select"):
        build_segmentor("semfpn_efficientnet_b0", num_classes=3, backbone_kwargs=dict(out_indices=(0, 1, 2, 3)))
    with pytest.raises(ValueError, match=r"levit_128 gives strides \[16, 32, 64\]: this model cannot serve"):
        build_segmentor("upernet_levit_128", num_classes=3, **TINY_HEADS)  # failed inside training before


def test_no_weight_decay_follows_the_mmseg_recipe():
    model = build_segmentor("upernet_crossformer_s", num_classes=3, **FAMILIES[0][1])
    names = model.no_weight_decay()
    assert "backbone.patch_embed.norm.weight" in names and "backbone.layers.0.blocks.0.norm1.bias" in names
    assert "decode_head.bottleneck.bn.weight" not in names  # 'norm' custom key does not match mmseg's 'bn'
    assert "decode_head.conv_seg.weight" not in names


def test_segmentor_validates_its_arguments():
    model = build_segmentor("upernet_crossformer_s", num_classes=3, **FAMILIES[0][1])
    with pytest.raises(ValueError, match="size_divisor"):
        Segmentor(model.backbone, model.decode_head, size_divisor=0)
    with pytest.raises(ValueError, match="class names"):
        Segmentor(model.backbone, model.decode_head, class_names=["a"])
    with pytest.raises(ValueError, match=r"\[B, H, W\]"):
        model.train().loss(torch.randn(2, 3, 64, 64), torch.zeros(3, 64, 64, dtype=torch.long))


@pytest.mark.parametrize("index", [2, 4], ids=["swin", "vit"])
def test_timm_backbones_take_odd_sizes_without_segmentor_padding(index):
    name, kwargs = FAMILIES[index]
    model = build_segmentor(name, num_classes=3, size_divisor=None, **kwargs).eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, 37, 45))  # padded to the patch size inside the backbone
        logits = model(torch.randn(1, 3, 37, 45))
    assert all(f.dim() == 4 and f.shape[1] == c for f, c in zip(feats, model.backbone.out_channels))
    assert logits.shape == (1, 3, 37, 45)


def test_timm_pretrained_weights_from_a_local_file_or_a_clear_error(tmp_path, monkeypatch):
    import timm
    from safetensors.torch import save_file

    from crossformer_vision.models import registry

    source = timm.create_model("resnet18", features_only=False)
    weights = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(weights))
    # the route the offline error names: pretrained + a local file through timm's pretrained_cfg_overlay
    model = build_segmentor(
        "semfpn_resnet18", num_classes=3, pretrained=True, channels=8, neck_channels=16,
        backbone_kwargs=dict(pretrained_cfg_overlay=dict(file=str(weights))),
    )  # fmt: skip
    torch.testing.assert_close(model.backbone.body.layer1[0].conv1.weight, source.layer1[0].conv1.weight)

    def no_hub(name, pretrained=False, **kwargs):
        if pretrained and "file" not in (kwargs.get("pretrained_cfg_overlay") or {}):
            raise OSError("cannot find the requested files in the local cache")
        return timm.create_model(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(registry.timm, "create_model", no_hub)
    with pytest.raises(FileNotFoundError, match=r"pretrained weights for resnet18 are not in the local Hugging Face"):
        build_segmentor("semfpn_resnet18", num_classes=3, pretrained=True, channels=8, neck_channels=16)
    from crossformer_vision.tasks.detection import build_detector

    with pytest.raises(FileNotFoundError, match=r"resnet50 .* local weights file: model.backbone_weights="):
        build_detector("retinanet_resnet50", num_classes=2, backbone_weights="timm")
