"""mmdet FPN / RetinaHead / RPNHead / Shared2FCBBoxHead / FCNMaskHead weights in torchvision's detection modules.

Reference outputs come from the real mmdet classes (``tests/data/mm/make_det_fixtures.py``); parameters, inputs and
RoI features are re-drawn here from the documented seeds. The numbers asserted for torchvision's own anchor
generator, level mapper and RoI pooler are the ones quoted in ``docs/detection_weights.md``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, box_iou
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7
from torchvision.ops.poolers import LevelMapper

from crossformer_vision.tasks.detection.mm_convert import (
    ZERO_FILLED,
    MMAnchorGenerator,
    MMLastLevelP6P7,
    MMMultiScaleRoIAlign,
    convert_mmdet_mask_rcnn,
    convert_mmdet_retinanet,
    mmdet_map_roi_levels,
)

DATA = Path(__file__).parent / "data" / "mm"
FIXTURES = json.loads((DATA / "det_fixtures.json").read_text())
MANIFESTS = json.loads((DATA / "det_manifests.json").read_text())
ATOL = 1e-5
CASES = ["base", "odd"]
NUM_ANCHORS = {"retinanet": 9, "maskrcnn": 3}


@functools.cache
def expected() -> dict[str, torch.Tensor]:
    return load_file(DATA / "det_fixtures.safetensors")


# --- re-drawing the reference parameters / inputs (recipe: tests/data/mm/make_det_fixtures.py) -----------------------


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key, t in tensors.items():
        h.update(key.encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


@functools.cache
def mm_state_dict(name: str) -> dict[str, torch.Tensor]:
    meta = FIXTURES[name]
    shapes = dict(meta["state_dict_shapes"])
    out = {}
    for prefix, seed in meta["param_seeds"].items():
        g = torch.Generator().manual_seed(seed)
        for key, shape in shapes.items():
            if key.startswith(prefix):
                draw = torch.randn(shape, generator=g)
                out[key] = draw / math.sqrt(math.prod(shape[1:])) if key.endswith("weight") else draw * 0.1
    return {k: out[k] for k in shapes}


@functools.cache
def inputs(name: str, case: str) -> tuple[torch.Tensor, ...]:
    meta = FIXTURES[name]
    g = torch.Generator().manual_seed(meta["input_seeds"][case])
    sizes = meta["level_sizes"][case]
    return tuple(torch.randn((meta["batch"], c, h, w), generator=g) for c, (h, w) in zip(meta["input_channels"], sizes))


@functools.cache
def roi_feats() -> dict[str, torch.Tensor]:
    meta = FIXTURES["maskrcnn"]
    g = torch.Generator().manual_seed(meta["roi_feat_seed"])
    return {k: torch.randn(shape, generator=g) for k, shape in meta["roi_feat_shapes"].items()}


def reference(name: str, key: str, actual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(stored expected tensor, ``actual`` sampled on the same pixel grid when the stored one is sampled)."""
    ref = expected()[f"{name}.{key}"]
    rows = expected().get(f"{name}.{key}.rows")
    if rows is not None:
        actual = actual.index_select(-2, rows).index_select(-1, expected()[f"{name}.{key}.cols"])
    return ref, actual


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()


@pytest.mark.parametrize("name", ["retinanet", "maskrcnn"])
def test_redrawn_parameters_and_inputs_match_reference(name):
    meta = FIXTURES[name]
    assert _digest(mm_state_dict(name)) == meta["state_dict_sha256"]
    for case in CASES:
        assert _digest({str(i): x for i, x in enumerate(inputs(name, case))}) == meta["inputs_sha256"][case]
    if name == "maskrcnn":
        assert _digest(roi_feats()) == meta["roi_feats_sha256"]


# --- RetinaNet -------------------------------------------------------------------------------------------------------


@functools.cache
def retinanet_modules() -> nn.Module:
    kw = FIXTURES["retinanet"]["kwargs"]
    neck, head = kw["neck"], kw["bbox_head"]
    start = neck["start_level"]
    m = nn.Module()
    m.fpn = FeaturePyramidNetwork(
        neck["in_channels"][start:],
        neck["out_channels"],
        extra_blocks=MMLastLevelP6P7(neck["in_channels"][-1], neck["out_channels"], on_input=True),
    )
    m.head = RetinaNetHead(head["in_channels"], NUM_ANCHORS["retinanet"], head["num_classes"])
    m.load_state_dict(convert_mmdet_retinanet(mm_state_dict("retinanet"), fpn_prefix="fpn."))
    return m.eval()


@functools.cache
def retinanet_outputs(case: str) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    m = retinanet_modules()
    start = FIXTURES["retinanet"]["kwargs"]["neck"]["start_level"]
    with torch.no_grad():
        levels = list(m.fpn(OrderedDict((str(i), x) for i, x in enumerate(inputs("retinanet", case)[start:]))).values())
        head = m.head(levels)
    return levels, head["cls_logits"], head["bbox_regression"]


def per_level_nchw(flat: torch.Tensor, sizes: list[tuple[int, int]], num_anchors: int) -> list[torch.Tensor]:
    """torchvision's ``[N, sum(H*W*A), K]`` back to mmdet's ``[N, A*K, H, W]`` (channel ``a*K + k``)."""
    n, _, k = flat.shape
    chunks = flat.split([h * w * num_anchors for h, w in sizes], dim=1)
    return [c.reshape(n, h, w, num_anchors * k).permute(0, 3, 1, 2) for c, (h, w) in zip(chunks, sizes)]


@pytest.mark.parametrize("case", CASES)
def test_retinanet_fpn_p3_to_p7(case):
    levels, _, _ = retinanet_outputs(case)
    assert len(levels) == 5
    for i, out in enumerate(levels):
        ref, got = reference("retinanet", f"neck_outputs.{case}.{i}", out)
        assert max_diff(got, ref) <= ATOL, f"P{i + 3}"


@pytest.mark.parametrize("case", CASES)
def test_retinanet_head_outputs(case):
    levels, cls_logits, bbox_regression = retinanet_outputs(case)
    sizes = [tuple(t.shape[-2:]) for t in levels]
    num_classes = FIXTURES["retinanet"]["kwargs"]["bbox_head"]["num_classes"]
    assert cls_logits.shape[-1] == num_classes
    for key, flat in (("cls_scores", cls_logits), ("bbox_preds", bbox_regression)):
        for i, out in enumerate(per_level_nchw(flat, sizes, NUM_ANCHORS["retinanet"])):
            ref, got = reference("retinanet", f"{key}.{case}.{i}", out)
            assert max_diff(got, ref) <= ATOL, f"{key} level {i}"
    if case == "odd":  # the other direction: mmdet's maps flattened the way torchvision's loss / decoding reads them
        ref = [expected()[f"retinanet.cls_scores.odd.{i}"] for i in range(5)]
        ref_flat = torch.cat([t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, num_classes) for t in ref], dim=1)
        assert max_diff(cls_logits, ref_flat) <= ATOL


@pytest.mark.parametrize("case", CASES)
def test_torchvision_last_level_p6p7_differs_only_at_p7(case):
    levels, _, _ = retinanet_outputs(case)
    block = LastLevelP6P7(*retinanet_modules().fpn.extra_blocks.p6.weight.shape[1::-1])
    block.load_state_dict(retinanet_modules().fpn.extra_blocks.state_dict())
    assert not block.use_P5  # in != out channels, so torchvision also reads C5 ...
    with torch.no_grad():
        p, _ = block([levels[2]], [inputs("retinanet", case)[-1]], ["p5"])
    assert max_diff(p[1], levels[3]) == 0.0
    assert max_diff(p[2], levels[4]) > 0.5  # ... but applies ReLU before p7: 0.84 (base) / 1.31 (odd)


# --- anchors ---------------------------------------------------------------------------------------------------------


def _image_list(height: int, width: int) -> ImageList:
    return ImageList(torch.zeros(1, 3, height, width), [(height, width)])


@pytest.mark.parametrize("name", ["retinanet", "maskrcnn"])
def test_mm_anchor_generator_is_bit_exact(name):
    generator = MMAnchorGenerator.retinanet() if name == "retinanet" else MMAnchorGenerator.rpn()
    key = "anchors" if name == "retinanet" else "rpn_anchors"
    ref = [expected()[f"{name}.{key}.odd.{i}"] for i in range(5)]
    # P3..P5 (RetinaNet) / P2..P5 (Mask R-CNN) are the input sizes; each extra level halves with ceil (stride-2 conv
    # with padding 1, or max_pool2d(kernel 1, stride 2))
    sizes = [tuple(s) for s in FIXTURES[name]["level_sizes"]["odd"]][1 if name == "retinanet" else 0 :]
    while len(sizes) < 5:
        sizes.append(((sizes[-1][0] + 1) // 2, (sizes[-1][1] + 1) // 2))
    for got, want in zip(generator.grid_priors(sizes), ref):
        assert torch.equal(got, want)
    image = _image_list(*FIXTURES[name]["image_sizes"]["odd"])  # not a multiple of any stride: strides stay fixed
    (flat,) = generator(image, [torch.zeros(1, 1, *s) for s in sizes])
    assert torch.equal(flat, torch.cat(ref))
    assert generator.num_anchors_per_location() == [NUM_ANCHORS[name]] * 5


# torchvision's default anchors placed on mmdet's strides: max |corner difference| (px) and min IoU per level.
TV_ANCHOR_ROUNDING = {
    "retinanet": ([0.9188, 0.8376, 0.6349, 0.4903, 0.7006], [0.957, 0.9689, 0.9843, 0.9945, 0.9967]),
    "maskrcnn": ([0.3726, 0.3726, 0.4903, 0.4903, 0.0387], [0.957, 0.9784, 0.989, 0.9945, 0.9998]),
}


def _torchvision_default_anchors(name: str) -> AnchorGenerator:
    if name == "retinanet":  # torchvision.models.detection.retinanet._default_anchorgen
        sizes = tuple((x, int(x * 2 ** (1 / 3)), int(x * 2 ** (2 / 3))) for x in (32, 64, 128, 256, 512))
    else:  # torchvision.models.detection.faster_rcnn._default_anchorgen
        sizes = ((32,), (64,), (128,), (256,), (512,))
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)


@pytest.mark.parametrize("name", ["retinanet", "maskrcnn"])
def test_torchvision_anchor_rounding_difference(name):
    mm = MMAnchorGenerator.retinanet() if name == "retinanet" else MMAnchorGenerator.rpn()
    tv = _torchvision_default_anchors(name)
    sizes = [(3, 4)] * 5
    tv.set_cell_anchors(torch.float32, torch.device("cpu"))
    tv_anchors = tv.grid_anchors(sizes, [[torch.tensor(s)] * 2 for s in mm.strides])
    max_diffs, min_ious = TV_ANCHOR_ROUNDING[name]
    for level, (a, b) in enumerate(zip(mm.grid_priors(sizes), tv_anchors)):
        assert max_diff(a, b) == pytest.approx(max_diffs[level], abs=1e-4)
        assert box_iou(a, b).diagonal().min().item() == pytest.approx(min_ious[level], abs=1e-4)


@pytest.mark.parametrize(
    ("name", "grids", "tv_strides", "max_diffs"),
    [
        (
            "retinanet",
            [(100, 152), (50, 76), (25, 38), (13, 19), (7, 10)],
            [(8, 8), (16, 16), (32, 32), (61, 64), (114, 121)],
            [0.92, 0.84, 0.64, 36.49, 84.70],
        ),
        (
            "maskrcnn",
            [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)],
            [(4, 4), (8, 8), (16, 16), (32, 32), (61, 64)],
            [0.37, 0.37, 0.49, 0.49, 36.04],
        ),
    ],
)
def test_torchvision_anchor_stride_inference_at_800x1216(name, grids, tv_strides, max_diffs):
    """torchvision infers ``stride = image // grid``: wrong for P6 / P7 whenever 800 / 32 = 25 is odd."""
    mm = MMAnchorGenerator.retinanet() if name == "retinanet" else MMAnchorGenerator.rpn()
    tv = _torchvision_default_anchors(name)
    assert [(800 // h, 1216 // w) for h, w in grids] == tv_strides
    features = [torch.zeros(1, 1, *g) for g in grids]
    (tv_flat,) = tv(_image_list(800, 1216), features)
    tv_levels = tv_flat.split([h * w * NUM_ANCHORS[name] for h, w in grids])
    for level, (a, b) in enumerate(zip(mm.grid_priors(grids), tv_levels)):
        assert max_diff(a, b) == pytest.approx(max_diffs[level], abs=0.01)


# --- Mask R-CNN ------------------------------------------------------------------------------------------------------


@functools.cache
def maskrcnn_modules() -> nn.Module:
    kw = FIXTURES["maskrcnn"]["kwargs"]
    neck, rpn, roi = kw["neck"], kw["rpn_head"], kw["roi_head"]
    bbox, mask = roi["bbox_head"], roi["mask_head"]
    m = nn.Module()
    m.fpn = FeaturePyramidNetwork(neck["in_channels"], neck["out_channels"], extra_blocks=LastLevelMaxPool())
    m.rpn = nn.Module()
    m.rpn.head = RPNHead(rpn["in_channels"], NUM_ANCHORS["maskrcnn"])
    m.roi_heads = nn.Module()
    m.roi_heads.box_head = TwoMLPHead(bbox["in_channels"] * bbox["roi_feat_size"] ** 2, bbox["fc_out_channels"])
    m.roi_heads.box_predictor = FastRCNNPredictor(bbox["fc_out_channels"], bbox["num_classes"] + 1)
    convs = (mask["conv_out_channels"],) * mask["num_convs"]
    m.roi_heads.mask_head = MaskRCNNHeads(mask["in_channels"], convs, 1)
    m.roi_heads.mask_predictor = MaskRCNNPredictor(convs[-1], convs[-1], mask["num_classes"] + 1)
    m.load_state_dict(convert_mmdet_mask_rcnn(mm_state_dict("maskrcnn"), fpn_prefix="fpn."))
    return m.eval()


@functools.cache
def maskrcnn_outputs(case: str) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    m = maskrcnn_modules()
    with torch.no_grad():
        levels = list(m.fpn(OrderedDict((str(i), x) for i, x in enumerate(inputs("maskrcnn", case)))).values())
        objectness, deltas = m.rpn.head(levels)
    return levels, objectness, deltas


@pytest.mark.parametrize("case", CASES)
def test_maskrcnn_fpn_p2_to_p6(case):
    levels, _, _ = maskrcnn_outputs(case)
    assert len(levels) == 5
    for i, out in enumerate(levels):
        ref, got = reference("maskrcnn", f"neck_outputs.{case}.{i}", out)
        assert max_diff(got, ref) <= ATOL, f"P{i + 2}"


@pytest.mark.parametrize("case", CASES)
def test_rpn_head_outputs(case):
    _, objectness, deltas = maskrcnn_outputs(case)
    for key, outs in (("rpn_cls_scores", objectness), ("rpn_bbox_preds", deltas)):
        for i, out in enumerate(outs):
            ref, got = reference("maskrcnn", f"{key}.{case}.{i}", out)
            assert max_diff(got, ref) <= ATOL, f"{key} level {i}"


def test_bbox_head_outputs_with_background_first():
    m = maskrcnn_modules()
    with torch.no_grad():
        cls_score, bbox_pred = m.roi_heads.box_predictor(m.roi_heads.box_head(roi_feats()["bbox_roi_feats"]))
    ref_cls, ref_reg = expected()["maskrcnn.bbox_cls_score"], expected()["maskrcnn.bbox_bbox_pred"]
    num_classes = ref_reg.shape[1] // 4
    background_first = [num_classes, *range(num_classes)]
    assert max_diff(cls_score, ref_cls[:, background_first]) <= ATOL
    assert max_diff(cls_score.softmax(-1), ref_cls.softmax(-1)[:, background_first]) <= ATOL
    assert max_diff(bbox_pred[:, 4:], ref_reg) <= ATOL  # class c (mmdet) = label c + 1 (torchvision)
    assert torch.equal(bbox_pred[:, :4], torch.zeros_like(bbox_pred[:, :4]))  # zero-filled background deltas


def test_mask_head_outputs_with_background_first():
    m = maskrcnn_modules()
    with torch.no_grad():
        mask_logits = m.roi_heads.mask_predictor(m.roi_heads.mask_head(roi_feats()["mask_roi_feats"]))
    assert max_diff(mask_logits[:, 1:], expected()["maskrcnn.mask_pred"]) <= ATOL
    assert torch.equal(mask_logits[:, 0], torch.zeros_like(mask_logits[:, 0]))


# --- RoI level mapping and RoIAlign ----------------------------------------------------------------------------------


def test_roi_levels_mmdet_vs_torchvision_level_mapper():
    rois, levels = expected()["maskrcnn.rois"], expected()["maskrcnn.roi_levels"]
    assert torch.equal(mmdet_map_roi_levels(rois[:, 1:], 4), levels)
    # torchvision's mapper for P2..P5 (k_min=2, k_max=5, canonical 224 @ level 4) agrees on all 45 fixture RoIs,
    # including the boundary scales 112 / 224 / 448 and a zero-size box
    assert torch.equal(LevelMapper(2, 5)([rois[:, 1:]]), levels)
    # they differ only inside a sub-pixel band under each boundary (1e-6 added after vs inside the log2):
    # at sqrt(area) = 112 - 7e-5 torchvision already picks P3, mmdet still P2 (and likewise under 224 / 448)
    for boundary, lower_level, below in ((112.0, 0, 7e-5), (224.0, 1, 1e-4), (448.0, 2, 2e-4)):
        side = torch.tensor([boundary - below])
        box = torch.cat([torch.zeros(1, 2), side[:, None].expand(1, 2)], dim=1)
        assert mmdet_map_roi_levels(box, 4).item() == lower_level
        assert LevelMapper(2, 5)([box]).item() == lower_level + 1
    g = torch.Generator().manual_seed(0)
    corner = torch.rand(100_000, 2, generator=g) * 800
    size = 2 * torch.exp(torch.rand(100_000, 2, generator=g) * math.log(400))
    boxes = torch.cat([corner, corner + size], dim=1)
    assert torch.equal(mmdet_map_roi_levels(boxes, 4), LevelMapper(2, 5)([boxes]))


def _mmcv_axis_weights(start: torch.Tensor, length: torch.Tensor, out: int, size: int) -> torch.Tensor:
    """``[out, size]`` weights: mmcv's bilinear_interpolate averaged over a bin's ``ceil(length / out)`` samples."""
    grid = math.ceil((length / out).item())
    if grid == 0:
        return torch.zeros(out, size, dtype=torch.float64)
    # sample positions in fp32 with the kernel's operation order; the interpolation itself in fp64
    bin_size = length / out
    pos = start + torch.arange(out, dtype=torch.float32)[:, None] * bin_size
    pos = pos + (torch.arange(grid, dtype=torch.float32)[None, :] + 0.5) * bin_size / grid
    pos = pos.reshape(-1).double()
    valid = (pos >= -1) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    at_edge = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_edge, low, low + 1)
    frac = torch.where(at_edge, torch.zeros_like(pos), pos - low)
    weights = torch.zeros(len(pos), size, dtype=torch.float64)
    weights.scatter_add_(1, low[:, None], (1 - frac)[:, None])
    weights.scatter_add_(1, high[:, None], frac[:, None])
    return (weights * valid[:, None]).reshape(out, grid, size).mean(1)


def mmcv_roi_align(feature: torch.Tensor, roi: torch.Tensor, out: int, scale: float) -> torch.Tensor:
    """mmcv ``RoIAlign(out, 1/stride, sampling_ratio=0, pool_mode='avg', aligned=True)`` for one ``[C, H, W]`` map."""
    x1, y1, x2, y2 = roi.float() * scale - 0.5
    wy = _mmcv_axis_weights(y1, y2 - y1, out, feature.shape[-2])
    wx = _mmcv_axis_weights(x1, x2 - x1, out, feature.shape[-1])
    return torch.einsum("ph,chw,qw->cpq", wy, feature.double(), wx)


@functools.cache
def pyramid(smooth: bool) -> dict[str, torch.Tensor]:
    """Random P2..P5 of a 1024 x 1024 image (white noise, or 4x bilinearly up-sampled noise)."""
    g = torch.Generator().manual_seed(3)
    out = {}
    for i, stride in enumerate((4, 8, 16, 32)):
        size = 1024 // stride
        if smooth:
            noise = torch.randn(1, 4, size // 4, size // 4, generator=g)
            out[str(i)] = nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
        else:
            out[str(i)] = torch.randn(1, 4, size, size, generator=g)
    return out


@pytest.mark.parametrize("output_size", [7, 14])
def test_mm_roi_align_matches_mmcv_formula(output_size):
    rois = expected()["maskrcnn.rois"]
    boxes = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    features = {k: v.expand(2, -1, -1, -1).contiguous() for k, v in pyramid(smooth=False).items()}
    pooled = MMMultiScaleRoIAlign(["0", "1", "2", "3"], output_size)(features, boxes, [(1024, 1024)] * 2)
    levels = mmdet_map_roi_levels(torch.cat(boxes), 4)
    for i, (box, level) in enumerate(zip(torch.cat(boxes), levels.tolist())):
        want = mmcv_roi_align(features[str(level)][0], box, output_size, 1 / 4 / 2**level)
        assert max_diff(pooled[i], want) <= ATOL, f"roi {i} level {level}"


@pytest.mark.parametrize(("smooth", "low", "high"), [(False, 0.8, 1.2), (True, 0.2, 0.35)])
def test_torchvision_default_roi_pooler_differs(smooth, low, high):
    """torchvision's MaskRCNN pooler (aligned=False, sampling_ratio=2): mean |diff| / mean |mmdet| per setting."""
    g = torch.Generator().manual_seed(1)
    corner = torch.rand(500, 2, generator=g) * 800
    boxes = [
        torch.cat([corner, (corner + 8 * torch.exp(torch.rand(500, 2, generator=g) * math.log(25))).clamp(max=1024)], 1)
    ]
    features = pyramid(smooth)
    for output_size in (7, 14):
        mm = MMMultiScaleRoIAlign(["0", "1", "2", "3"], output_size)(features, boxes, [(1024, 1024)])
        tv = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size, 2)(features, boxes, [(1024, 1024)])
        relative = ((mm - tv).abs().mean() / mm.abs().mean()).item()
        assert low < relative < high, relative


# --- box decoding ----------------------------------------------------------------------------------------------------


def mmdet_delta2bbox(rois: torch.Tensor, deltas: torch.Tensor, stds: tuple[float, ...]) -> torch.Tensor:
    """mmdet ``DeltaXYWHBBoxCoder.decode`` (means 0, ``wh_ratio_clip=16/1000``, no border clipping)."""
    max_ratio = abs(math.log(16 / 1000))
    d = deltas * torch.tensor(stds)
    centre, size = (rois[:, :2] + rois[:, 2:]) * 0.5, rois[:, 2:] - rois[:, :2]
    new_centre = centre + size * d[:, :2]
    new_size = size * d[:, 2:].clamp(-max_ratio, max_ratio).exp()
    return torch.cat([new_centre - new_size * 0.5, new_centre + new_size * 0.5], dim=1)


@pytest.mark.parametrize(
    ("stds", "weights"), [((1.0,) * 4, (1.0,) * 4), ((0.1, 0.1, 0.2, 0.2), (10.0, 10.0, 5.0, 5.0))]
)
def test_box_coder_matches_mmdet_within_clip(stds, weights):
    """RetinaNet / RPN (stds 1) and R-CNN (stds 0.1, 0.1, 0.2, 0.2 = torchvision weights 10, 10, 5, 5)."""
    g = torch.Generator().manual_seed(2)
    corner = torch.rand(20_000, 2, generator=g) * 800
    rois = torch.cat([corner, corner + 8 * torch.exp(torch.rand(20_000, 2, generator=g) * math.log(100))], dim=1)
    deltas = torch.randn(20_000, 4, generator=g) / torch.tensor(stds) * 0.5
    coder = BoxCoder(weights)
    assert coder.bbox_xform_clip == pytest.approx(abs(math.log(16 / 1000)), abs=1e-12)  # same upper clip
    mm, tv = mmdet_delta2bbox(rois, deltas, stds), coder.decode_single(deltas, rois)
    size = (rois[:, 2:] - rois[:, :2]).repeat(1, 2)
    assert ((mm - tv).abs() / size).max() < 1e-5  # fp32 rounding only (e.g. / 10 vs * 0.1)
    # below -log(62.5) mmdet clamps dw / dh and torchvision does not: a 100 px box with dw = dh = -6
    box, shrink = torch.tensor([[0.0, 0.0, 100.0, 100.0]]), torch.tensor([[0.0, 0.0, -6.0, -6.0]]) / torch.tensor(stds)
    mm_box, tv_box = mmdet_delta2bbox(box, shrink, stds)[0], coder.decode_single(shrink, box)[0]
    assert (mm_box[2] - mm_box[0]).item() == pytest.approx(100 / 62.5, abs=1e-4)  # 1.6 px
    assert (tv_box[2] - tv_box[0]).item() == pytest.approx(100 * math.exp(-6), abs=1e-4)  # 0.248 px


# --- key layouts at the official sizes -------------------------------------------------------------------------------


class _FPNOnlyBackbone(nn.Module):
    """Stands in for ``BackboneWithFPN``; the CrossFormer body's keys (``backbone.body.*``) are not tested here."""

    def __init__(self, fpn: FeaturePyramidNetwork, out_channels: int):
        super().__init__()
        self.fpn = fpn
        self.out_channels = out_channels


def official_torchvision_model(manifest: dict) -> nn.Module:
    neck = manifest["components"]["neck"][1]
    in_channels, out_channels = neck["in_channels"], neck["out_channels"]
    if "bbox_head" in manifest["components"]:  # RetinaNet
        start = neck["start_level"]
        extra = MMLastLevelP6P7(in_channels[-1], out_channels, on_input=neck["add_extra_convs"] == "on_input")
        fpn = FeaturePyramidNetwork(in_channels[start:], out_channels, extra_blocks=extra)
        num_classes = manifest["components"]["bbox_head"][1]["num_classes"]
        return RetinaNet(
            _FPNOnlyBackbone(fpn, out_channels), num_classes, anchor_generator=MMAnchorGenerator.retinanet()
        )
    fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
    num_classes = manifest["components"]["roi_head"][1]["bbox_head"]["num_classes"]
    names = ["0", "1", "2", "3"]
    return MaskRCNN(
        _FPNOnlyBackbone(fpn, out_channels),
        num_classes + 1,
        rpn_anchor_generator=MMAnchorGenerator.rpn(),
        box_roi_pool=MMMultiScaleRoIAlign(names, 7),
        mask_roi_pool=MMMultiScaleRoIAlign(names, 14),
    )


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_official_key_layout_converts_exactly(name):
    manifest = MANIFESTS[name]
    with torch.device("meta"):
        mm = {key: torch.empty(shape) for key, shape in manifest["keys"]}
        model = official_torchvision_model(manifest)
        converted = (convert_mmdet_retinanet if name.startswith("retinanet") else convert_mmdet_mask_rcnn)(mm)
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert sorted(converted) == sorted(target)  # nothing missing, nothing left over
    assert {k: tuple(v.shape) for k, v in converted.items()} == target
    # every mmdet parameter is used once; the only additions are the zero-filled background slots
    added = sum(v.numel() for v in converted.values()) - manifest["num_params"]
    if name.startswith("retinanet"):
        assert added == 0
    else:
        roi = manifest["components"]["roi_head"][1]
        fc_out, mask_channels = roi["bbox_head"]["fc_out_channels"], roi["mask_head"]["conv_out_channels"]
        assert added == (4 * fc_out + 4) + (mask_channels + 1)  # 4,100 (bbox_pred) + 257 (mask_fcn_logits)
        assert {f"roi_heads.{k}" for k in ZERO_FILLED} <= set(converted)


def test_zero_filled_slots_and_strictness():
    mm = {k: v.clone() for k, v in mm_state_dict("maskrcnn").items()}
    converted = convert_mmdet_mask_rcnn({"state_dict": {"backbone.x": torch.zeros(1), **mm}})
    assert not any(k.startswith("backbone.body") for k in converted)
    assert torch.equal(converted["roi_heads.box_predictor.bbox_pred.weight"][:4], torch.zeros(4, 64))
    assert torch.equal(converted["roi_heads.mask_predictor.mask_fcn_logits.bias"][:1], torch.zeros(1))
    with pytest.raises(ValueError, match=r"neck\.lateral_convs\.0\.bn\.weight"):
        convert_mmdet_mask_rcnn({**mm, "neck.lateral_convs.0.bn.weight": torch.ones(32)})
    with pytest.raises(ValueError, match="auxiliary_head"):
        convert_mmdet_mask_rcnn({**mm, "auxiliary_head.conv.weight": torch.ones(1)})
    with pytest.raises(ValueError, match="bbox_head"):
        convert_mmdet_retinanet(mm)


# --- the converted weights inside torchvision's detectors ------------------------------------------------------------


class _TinyBackbone(nn.Module):
    """Strided convs giving the fixture's 4 levels (strides 4..32), followed by the converted FPN."""

    def __init__(self, channels: list[int], fpn: FeaturePyramidNetwork, first_level: int):
        super().__init__()
        self.stages = nn.ModuleList()
        for i, c in enumerate(channels):
            stride = 4 if i == 0 else 2
            self.stages.append(nn.Conv2d(3 if i == 0 else channels[i - 1], c, stride, stride))
        self.first_level = first_level
        self.fpn = fpn
        self.out_channels = fpn.layer_blocks[0][0].out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features[self.first_level :])))


def test_converted_retinanet_runs_in_torchvision_detector():
    m = retinanet_modules()
    channels = FIXTURES["retinanet"]["input_channels"]
    backbone = _TinyBackbone(channels, m.fpn, first_level=1)
    model = RetinaNet(
        backbone, 7, anchor_generator=MMAnchorGenerator.retinanet(), head=m.head, min_size=128, max_size=160
    )
    model.eval()
    with torch.no_grad():
        (det,) = model([torch.rand(3, 128, 160)])
    assert set(det) == {"boxes", "scores", "labels"} and len(det["boxes"]) > 0
    assert det["labels"].max() < 7 and torch.isfinite(det["boxes"]).all()


def test_converted_mask_rcnn_runs_in_torchvision_detector():
    m = maskrcnn_modules()
    backbone = _TinyBackbone(FIXTURES["maskrcnn"]["input_channels"], m.fpn, first_level=0)
    names = ["0", "1", "2", "3"]
    model = MaskRCNN(
        backbone,
        None,
        min_size=128,
        max_size=160,
        rpn_anchor_generator=MMAnchorGenerator.rpn(),
        rpn_head=m.rpn.head,
        box_roi_pool=MMMultiScaleRoIAlign(names, 7),
        box_head=m.roi_heads.box_head,
        box_predictor=m.roi_heads.box_predictor,
        box_score_thresh=0.0,
        mask_roi_pool=MMMultiScaleRoIAlign(names, 14),
        mask_head=m.roi_heads.mask_head,
        mask_predictor=m.roi_heads.mask_predictor,
    )
    model.eval()
    with torch.no_grad():
        (det,) = model([torch.rand(3, 128, 160)])
    assert len(det["boxes"]) > 0 and det["masks"].shape[1:] == (1, 128, 160)
    assert det["labels"].min() >= 1 and det["labels"].max() <= 7  # background (0) is never returned
