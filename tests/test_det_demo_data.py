"""The embedded detection demo set (data/det_demo): loads, exact boxes / masks, reproducible; end to end on it."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from crossformer_vision.data import CLASS_NAMES, det_demo, det_demo_dir, detection_collate, detection_transforms
from crossformer_vision.tasks.detection import CocoEvaluator, build_detector, predict_and_save

REPO = Path(__file__).resolve().parents[1]


def decode(segmentation) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools vs numpy 2
        return mask_utils.decode(segmentation).astype(bool)


@pytest.fixture(scope="module")
def val_json():
    return json.loads((det_demo_dir() / "instances_val.json").read_text())


def test_splits_load_without_problems():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no dropped or clipped entry
        train, val = det_demo("train"), det_demo("val")
    assert (len(train), len(val)) == (400, 100)
    assert val.class_names == list(CLASS_NAMES) and val.cat_ids == list(range(1, 11))
    image, target = val[0]
    assert image.shape == (3, 128, 128) and torch.equal(image[0], image[1])  # grey on dark, stored as RGB
    assert 2 <= len(target["labels"]) <= 5 and target["masks"].shape[1:] == (128, 128)


def test_boxes_areas_and_masks_are_exact(val_json):
    by_image: dict[int, list[dict]] = {}
    for ann in val_json["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    assert len(by_image) == 100 and len(val_json["annotations"]) >= 200
    for image_id, anns in by_image.items():
        masks = np.stack([decode(a["segmentation"]) for a in anns])
        assert masks.shape[1:] == (128, 128)
        assert masks.sum(axis=0).max() == 1  # visible masks never overlap: occlusion order is respected
        image = np.asarray(Image.open(det_demo_dir() / "val" / f"{image_id:06d}.png"))
        background = image[..., 0][~masks.any(axis=0)]
        for ann, mask in zip(anns, masks):
            ys, xs = np.nonzero(mask)
            box = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["bbox"] == box and ann["area"] == mask.sum() and ann["iscrowd"] == 0
            # painted items are brighter than the dark background on average
            assert image[..., 0][mask].mean() > background.mean()


def test_rebuild_reproduces_the_first_canvases(tmp_path, val_json):
    spec = importlib.util.spec_from_file_location("build_det_demo_data", REPO / "scripts" / "build_det_demo_data.py")
    builder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(builder)
    coco = builder.build_split("val", 2, 128, 0, tmp_path)
    shipped = [a for a in val_json["annotations"] if a["image_id"] <= 2]
    assert coco["annotations"] == shipped and coco["images"] == val_json["images"][:2]
    for name in ("000001.png", "000002.png"):
        rebuilt = np.asarray(Image.open(tmp_path / "val" / name))
        assert np.array_equal(rebuilt, np.asarray(Image.open(det_demo_dir() / "val" / name)))


def test_readme_and_licence_ship_with_the_data():
    readme = (det_demo_dir() / "README.md").read_text()
    assert "synthetic" in readme and "python scripts/build_det_demo_data.py" in readme and "MIT" in readme
    assert "Zalando SE" in (det_demo_dir() / "LICENSE").read_text()


def test_train_step_evaluate_and_visualize(tmp_path):
    """Mask R-CNN (tiny) on demo images: a training step, COCO evaluation of its output, PNG / JSON predictions."""
    train = det_demo("train", transforms=detection_transforms(train=True), skip_empty=True)
    val = det_demo("val")
    k = len(train.class_names)
    model = build_detector(
        "maskrcnn_crossformer_s",
        num_classes=k,
        min_size=128,
        max_size=128,
        fpn_channels=32,
        backbone_kwargs=dict(embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0),
        rpn_post_nms_top_n_test=50,
        box_score_thresh=0.0,
        box_detections_per_img=20,
        box_head=TwoMLPHead(32 * 7 * 7, 64),
        box_predictor=FastRCNNPredictor(64, k + 1),
        mask_head=MaskRCNNHeads(32, (32, 32), 1),
        mask_predictor=MaskRCNNPredictor(32, 32, k + 1),
    )
    images, targets = detection_collate([train[0]])
    model.train()
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())

    model.eval()
    images, targets = detection_collate([val[0], val[1]])
    with torch.no_grad():
        outputs = model(images)
    evaluator = CocoEvaluator.from_dataset(val, iou_types=("bbox", "segm"))
    evaluator.update(outputs, targets)
    with pytest.warns(UserWarning, match="on 2 of the 100 GT images"):
        metrics = evaluator.evaluate()
    assert set(metrics) == {f"{t}/{m}" for t in ("bbox", "segm") for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    assert all(-1 <= v <= 1 for v in metrics.values())
    assert set(evaluator.per_class["bbox"]) == set(CLASS_NAMES)

    path = det_demo_dir() / "val" / "000001.png"
    json_path = predict_and_save(model, [path], tmp_path, class_names=val.class_names, score_thresh=0.0)
    (first,) = json.loads(json_path.read_text()).values()
    assert len(first) == len(outputs[0]["boxes"]) and {"box", "label", "name", "score", "mask"} <= set(first[0])
    assert first[0]["box"] == pytest.approx(outputs[0]["boxes"][0].tolist(), abs=0.01)
    drawn = np.asarray(Image.open(tmp_path / "000001.png"))
    assert drawn.shape == (128, 128, 3) and not np.array_equal(drawn, np.asarray(Image.open(path)))
