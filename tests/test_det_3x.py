"""The 3x recipe: the random-crop branch of Swin's policy on boxes / masks, the 3x and cascade COCO presets, and the
cascade parameter counts (full size on the meta device only)."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from crossformer_vision.data.coco import crop_policy, detection_transforms, random_range_crop
from crossformer_vision.engine.config import load_config
from crossformer_vision.tasks.detection import build_detector, get_recipe
from crossformer_vision.tasks.detection.config import DEFAULTS
from crossformer_vision.tasks.detection.train import param_groups


def _sample(h: int = 700, w: int = 900):
    image = tv_tensors.Image(torch.rand(3, h, w))
    boxes = torch.tensor([[0, 0, 40, 40], [w - 40, h - 40, w, h], [100, 100, 800, 650], [300, 200, 360, 260]])
    masks = torch.zeros(4, h, w, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        masks[i, y0:y1, x0:x1] = 1
    target = {
        "boxes": tv_tensors.BoundingBoxes(boxes.float(), format="XYXY", canvas_size=(h, w)),
        "masks": tv_tensors.Mask(masks),
        "labels": torch.arange(1, 5),
    }
    return image, target


def test_random_range_crop_keeps_boxes_inside_and_drops_empty():
    crop = random_range_crop(384, 600)
    torch.manual_seed(0)
    dropped = 0
    for _ in range(20):
        image, target = crop(*_sample())
        h, w = image.shape[-2:]
        assert 384 <= h <= 600 and 384 <= w <= 600
        boxes = target["boxes"]
        assert boxes.canvas_size == (h, w) and target["masks"].shape[-2:] == (h, w)
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 1).all()  # nothing empty left
        assert len(boxes) == len(target["labels"]) == len(target["masks"])
        assert (target["masks"].flatten(1).sum(1) > 0).all()  # each kept box keeps its (cropped) mask
        dropped += 4 - len(boxes)
    assert dropped > 0  # the two corner boxes cannot both survive a <= 600 crop of a 900 x 700 image


def test_crop_policy_and_transform_builder():
    torch.manual_seed(0)
    sizes = {crop_policy()(*_sample())[0].shape[-2:] for _ in range(12)}
    assert (700, 900) in sizes and any(max(s) <= 600 for s in sizes)  # both branches drawn
    assert len(detection_transforms(train=True, policy="3x").transforms) == 3  # flip, policy, to float
    assert len(detection_transforms(train=False, policy="3x").transforms) == 1  # evaluation: untouched
    with pytest.raises(ValueError, match=r"aug\.policy"):
        detection_transforms(train=True, policy="5x")


def test_no_decay_groups():
    model = torch.nn.Sequential()
    model.add_module("norm", torch.nn.LayerNorm(4))
    model.add_module("fc", torch.nn.Linear(4, 4))
    decay, other = param_groups(model, 0.05, ["norm"])
    assert len(decay["params"]) == 2 and len(other["params"]) == 2 and other["weight_decay"] == 0.0
    assert len(param_groups(model, 1e-4, [])) == 1


@pytest.mark.parametrize("backbone", ["crossformer_s", "crossformer_b", "crossformerpp_s", "swin_t", "resnet50"])
def test_cascade_presets(backbone):
    from crossformer_vision.configs import resolve_config

    three = get_recipe("3x")
    for suffix in ("", "_3x"):
        cfg = load_config(DEFAULTS, resolve_config(f"coco_cascade_{backbone}{suffix}", task="detection"))
        assert cfg["model"]["name"] == f"cascade_{backbone}"
        if suffix:
            assert cfg["sched"]["epochs"] == three.epochs and tuple(cfg["sched"]["lr_steps"]) == three.lr_steps
            assert cfg["optim"]["weight_decay"] == three.weight_decay and cfg["aug"]["policy"] == "3x"
            assert tuple(cfg["model"]["min_size"]) == three.min_size and "norm" in cfg["optim"]["no_decay_keys"]
        else:
            assert cfg["sched"]["epochs"] == 12 and cfg["aug"]["policy"] is None


@pytest.mark.parametrize(
    ("backbone", "millions"),
    [("crossformer_s", 88.01), ("crossformer_b", 109.32), ("crossformerpp_s", 80.81), ("swin_t", 85.64),
     ("resnet50", 82.24)],
)  # fmt: skip
def test_cascade_params(backbone, millions):
    with torch.device("meta"):
        model = build_detector(f"cascade_{backbone}", num_classes=80)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == millions
