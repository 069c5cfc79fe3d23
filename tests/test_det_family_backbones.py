"""SOFT, CMT and HRFormer as detection trunks (tiny widths, CPU): shapes, stage layouts, weights, names.

The forward + training step of every listed detector on them is in ``tests/test_task_models.py``.
"""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from crossformer_vision.models.cmt import CMT_VARIANTS
from crossformer_vision.models.hrformer import HRFORMER_VARIANTS
from crossformer_vision.models.soft import SOFT_VARIANTS
from crossformer_vision.tasks.detection import build_detector, list_detectors
from crossformer_vision.tasks.detection.backbones import (
    FAMILY_BACKBONES,
    LISTED_FAMILY_BACKBONES,
    build_detection_backbone,
    build_trunk,
    trunk_stages,
)
from crossformer_vision.tasks.detection.model import parse_detector_name
from crossformer_vision.tasks.segmentation.backbones import build_backbone
from family_tiny import family_tiny

TINY = {name: family_tiny(name) for name in ("soft_tiny", "cmt_ti", "hrformer_t")}
NAMES = list(TINY)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.mark.parametrize("name", NAMES)
def test_trunk_maps_at_strides_4_to_32(name):
    trunk = build_trunk(name, drop_path_rate=0.1, **TINY[name]).eval()
    channels = [4, 8, 16, 32] if name.startswith("hrformer") else [16, 32, 48, 64]
    assert trunk.out_channels == channels and trunk.out_strides == [4, 8, 16, 32]
    with torch.no_grad():
        for h, w in [(64, 96), (100, 75), (33, 47)]:
            maps = trunk(torch.randn(2, 3, h, w))
            # CMT: maps of the input padded to a multiple of 32; the others ceil(H / s)
            ph, pw = (-(-h // 32) * 32, -(-w // 32) * 32) if name.startswith("cmt") else (h, w)
            assert [tuple(m.shape) for m in maps] == [
                (2, c, -(-ph // s), -(-pw // s)) for c, s in zip(channels, [4, 8, 16, 32])
            ]
            assert all(torch.isfinite(m).all() for m in maps)


def _group_ids(groups) -> list[list[int]]:
    """ids of the parameters of each stage group (modules and parameters)."""
    return [
        [id(p) for item in g for p in ([item] if isinstance(item, nn.Parameter) else item.parameters())] for g in groups
    ]


@pytest.mark.parametrize("name", NAMES)
def test_stage_layout_and_frozen_stages(name):
    """The stem and four stages cover every trunk parameter exactly once; frozen_stages=k freezes the first k + 1."""
    trunk = build_trunk(name, **TINY[name])
    owned = _group_ids(trunk_stages(trunk))
    assert len(owned) == 5 and all(owned)
    flat = [i for ids in owned for i in ids]
    assert len(flat) == len(set(flat)) and set(flat) == {id(p) for p in trunk.parameters()}
    for k in (0, 2, 4):
        backbone = build_detection_backbone(name, "rcnn", frozen_stages=k, fpn_channels=8, **TINY[name])
        layout = trunk_stages(backbone.body)
        frozen = {i for ids in _group_ids(layout)[: k + 1] for i in ids}
        assert all(p.requires_grad == (id(p) not in frozen) for p in backbone.body.parameters())
        backbone.train()
        modules = [item for g in layout[: k + 1] for item in g if isinstance(item, nn.Module)]
        assert all(not m.training for top in modules for m in top.modules())
    with pytest.raises(ValueError, match=r"frozen_stages must be in \[-1, 4\]"):
        build_detection_backbone(name, "rcnn", frozen_stages=5, **TINY[name])


@pytest.mark.parametrize("name", NAMES)
def test_batchnorm_statistics_frozen_by_default(name):
    backbone = build_detection_backbone(name, "rcnn", fpn_channels=8, **TINY[name]).train()
    norms = [m for m in backbone.body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert backbone.norm_eval is True
    backbone = build_detection_backbone(name, "rcnn", fpn_channels=8, norm_eval=False, **TINY[name]).train()
    assert all(m.training for m in backbone.body.modules() if isinstance(m, nn.BatchNorm2d))


def test_retinanet_freezes_hrformer_fusion_into_the_unread_stride_4_branch():
    retina = build_detection_backbone("hrformer_t", "retinanet", fpn_channels=8, **TINY["hrformer_t"])
    rcnn = build_detection_backbone("hrformer_t", "rcnn", fpn_channels=8, **TINY["hrformer_t"])
    frozen = [n for n, p in retina.body.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith("stage4.0.fuse_layers.0.") for n in frozen)
    assert all(p.requires_grad for p in rcnn.body.parameters())


def _official_file(name: str, path, **extra) -> nn.Module:
    """A tiny classification model saved as an official file would be: ``{"model": state dict}`` with the
    ImageNet head, ``module.`` prefixes (DDP)."""
    model = timm.create_model(name, num_classes=10, **{**TINY[name], **extra})
    with torch.no_grad():
        for p in model.parameters():  # away from the init, so that a silent non-load would show
            p.add_(torch.randn_like(p) * 0.01)
    torch.save({"model": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return model.eval()


@pytest.mark.parametrize("name", NAMES)
def test_official_imagenet_file_loads_without_its_head(name, tmp_path):
    path = tmp_path / f"{name}.pth"
    model = _official_file(name, path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_intermediates(x, intermediates_only=True)
        trunks = (build_trunk(name, weights=path, **TINY[name]), build_backbone(name, weights=str(path), **TINY[name]))
        for trunk in trunks:
            maps = trunk.eval()(x)
            assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(maps, expected))
    # a detector takes the file as its backbone_weights
    det = build_detector(f"retinanet_{name}", num_classes=3, backbone_weights=path, backbone_kwargs=TINY[name])
    ref = dict(model.named_parameters())
    body = dict(det.backbone.body.named_parameters())
    key = next(k for k in body if k.endswith(("conv1.weight", "patch_embed1.proj.0.weight", "stem_conv1.weight")))
    assert torch.equal(body[key], ref[key.removeprefix("body.model.")])


def test_wrong_files_are_refused(tmp_path):
    path = tmp_path / "soft.pth"
    _official_file("soft_tiny", path)
    with pytest.raises(ValueError, match=r"soft\.pth is not a cmt_ti checkpoint: it looks like a SOFT file") as err:
        build_trunk("cmt_ti", weights=path, **TINY["cmt_ti"])
    assert "missing keys" in str(err.value) and len(str(err.value).splitlines()) == 1
    wide = dict(TINY["soft_tiny"], embed_dims=(16, 32, 48, 80))
    with pytest.raises(ValueError, match=r"shape mismatch for .*: checkpoint \(64,\) vs model \(80,\)") as err:
        build_trunk("soft_tiny", weights=path, **wide)
    assert "the backbone's model arguments" in str(err.value) and len(str(err.value).splitlines()) == 1
    with pytest.raises(ValueError, match=r"weights is not a soft_tiny checkpoint: .*missing keys"):  # a read mapping
        build_trunk("soft_tiny", weights={"model": {"pos_embed1": torch.zeros(1)}}, **TINY["soft_tiny"])
    with pytest.raises(ValueError, match="timm has no hub weights"):
        build_trunk("hrformer_t", weights="timm", **TINY["hrformer_t"])
    with pytest.raises(ValueError, match="lda_rule applies to CrossFormer backbones only"):
        build_trunk("soft_tiny", lda_rule="fixed_group", **TINY["soft_tiny"])


def test_names_list_one_variant_per_family_and_parse_all():
    listed, every = list_detectors(), list_detectors(all_variants=True)
    assert set(FAMILY_BACKBONES) == {*SOFT_VARIANTS, *CMT_VARIANTS, *HRFORMER_VARIANTS}
    assert len(listed) == 4 * 16 and len(every) == 4 * 25 and set(listed) < set(every)
    assert {n.partition("_")[2] for n in listed} >= set(LISTED_FAMILY_BACKBONES)
    assert "maskrcnn_soft_small" in listed and "retinanet_cmt_s" in listed and "maskrcnn_hrformer_s" in listed
    assert "cascade_soft_huge" not in listed and parse_detector_name("cascade_soft_huge") == ("cascade", "soft_huge")
    assert all(parse_detector_name(n)[1] in FAMILY_BACKBONES for n in set(every) - set(listed))
    with pytest.raises(ValueError, match="Did you mean maskrcnn_hrformer_b"):
        parse_detector_name("maskrcnn_hrformer_bb")


@pytest.mark.parametrize("name", sorted(FAMILY_BACKBONES))
def test_full_size_trunks_on_meta(name):
    """Every variant builds at full size (meta device: no memory), with its family's widths."""
    with torch.device("meta"):
        trunk = build_trunk(name)
    if name in HRFORMER_VARIANTS:
        width = HRFORMER_VARIANTS[name]["width"]
        assert trunk.out_channels == [width, 2 * width, 4 * width, 8 * width]
    else:
        assert trunk.out_channels == list(trunk.body.model.embed_dims)
    assert trunk.out_strides == [4, 8, 16, 32]


@pytest.mark.parametrize(
    ("name", "trunk", "total"),
    [("maskrcnn_soft_small", 38_344_438, 58_516_203), ("retinanet_cmt_s", 24_315_960, 34_549_548),
     ("maskrcnn_hrformer_s", 7_891_050, 27_923_551)],
)  # fmt: skip
def test_full_size_parameter_counts(name, trunk, total):
    """docs/backbones.md's counts; the trunk is the classifier without its ImageNet head (SOFT 38,858,462 - head
    513,000 - norm 1,024; CMT 26,256,160 - conv head 659,200 - classifier 1,281,000)."""
    with torch.device("meta"):
        model = build_detector(name, num_classes=80)
    assert sum(p.numel() for p in model.backbone.body.parameters()) == trunk
    assert sum(p.numel() for p in model.parameters()) == total
