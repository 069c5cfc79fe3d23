"""COCO metrics on hand-made cases whose AP follows from the protocol by hand.

The COCO protocol (pycocotools ``COCOeval``): per class, detections are sorted by score and greedily matched to GT at
each IoU threshold 0.50:0.05:0.95 (IoU >= threshold); precision is made monotone from the right and read at the 101
recall points 0, 0.01, ..., 1 (``searchsorted(recall, r, 'left')``; 0 beyond the last recall reached); AP is the mean
over recall points, IoU thresholds and classes that have GT. Detections matched to a crowd region are ignored.

GT used below (category ids 5 and 9 -> labels 1 and 2):
* image 1 (200 x 200): A = [10, 10, 40, 40] and B = [100, 100, 50, 50] of category 5 (medium: 32^2 < area < 96^2),
  and a crowd region [150, 0, 50, 50] of category 5;
* image 2 (200 x 200): C = [20, 20, 100, 100] of category 9 (large).
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from crossformer_vision.tasks.detection import CocoEvaluator

A, B, CROWD, C = [10, 10, 40, 40], [100, 100, 50, 50], [150, 0, 50, 50], [20, 20, 100, 100]
ONE_OF_TWO = 51 / 101  # recall reaches 0.5 with precision 1: recall points 0, 0.01, ..., 0.50 score 1


def mask_of(box, size=200):
    m = torch.zeros(size, size, dtype=torch.bool)
    x, y, w, h = box
    m[y : y + h, x : x + w] = True
    return m


def rle_of(box):
    import numpy as np
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask_of(box).numpy().astype("uint8")))
    return {"size": rle["size"], "counts": rle["counts"].decode()}


def gt():
    ann = [(1, 1, 5, A, 0), (2, 1, 5, B, 0), (3, 1, 5, CROWD, 1), (4, 2, 9, C, 0)]
    return {
        "images": [
            {"id": 1, "width": 200, "height": 200, "file_name": "1.png"},
            {"id": 2, "width": 200, "height": 200, "file_name": "2.png"},
        ],
        "categories": [{"id": 5, "name": "five"}, {"id": 9, "name": "nine"}],
        "annotations": [
            {
                "id": i,
                "image_id": img,
                "category_id": cat,
                "bbox": box,
                "area": box[2] * box[3],
                "iscrowd": crowd,
                "segmentation": rle_of(box),
            }
            for i, img, cat, box, crowd in ann
        ],
    }


def det(boxes_xywh, scores, labels, masks=False):
    boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes_xywh], dtype=torch.float32).reshape(-1, 4)
    out = {
        "boxes": boxes,
        "scores": torch.tensor(scores, dtype=torch.float32),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }
    if masks:
        out["masks"] = (
            torch.stack([mask_of(b) for b in boxes_xywh]).float()[:, None]
            if boxes_xywh
            else torch.zeros(0, 1, 200, 200)
        )
    return out


def evaluate(preds_1, preds_2, **kwargs):
    ev = CocoEvaluator(gt(), **kwargs)
    ev.update([preds_1, preds_2], [{"image_id": 1}, {"image_id": 2}])
    return ev, ev.evaluate()


def test_perfect_predictions_give_ap_one():
    ev, m = evaluate(det([A, B], [0.9, 0.8], [1, 1], True), det([C], [0.7], [2], True), iou_types=("bbox", "segm"))
    for t in ("bbox", "segm"):
        metrics = (m[f"{t}/AP"], m[f"{t}/AP50"], m[f"{t}/AP75"], m[f"{t}/APm"], m[f"{t}/APl"])
        assert metrics == pytest.approx((1, 1, 1, 1, 1), abs=1e-12)
        assert m[f"{t}/APs"] == -1  # no small GT: COCO's convention
    assert ev.per_class["bbox"] == pytest.approx({"five": 1.0, "nine": 1.0}, abs=1e-12)


def test_one_of_two_objects_found():
    # class 5: A found (score 0.9), B missed; a detection on the crowd region (0.99) is ignored, not a false positive
    _, m = evaluate(det([A, CROWD], [0.9, 0.99], [1, 1]), det([C], [0.7], [2]))
    assert math.isclose(m["bbox/AP"], (ONE_OF_TWO + 1) / 2)  # mean of class 5 (51/101) and class 9 (1)
    assert math.isclose(m["bbox/AP50"], (ONE_OF_TWO + 1) / 2)
    assert math.isclose(m["bbox/APm"], ONE_OF_TWO)  # only class 5 has medium GT
    assert math.isclose(m["bbox/APl"], 1.0)  # only class 9 has large GT


def test_false_positive_ranked_first_halves_precision():
    # class 5: a false positive (0.95) above the true positive A (0.9): precision 0.5 at recall 0.5 -> 0.5 * 51/101
    far = [60, 150, 30, 30]
    _, m = evaluate(det([far, A], [0.95, 0.9], [1, 1]), det([C], [0.7], [2]))
    assert math.isclose(m["bbox/AP"], (0.5 * ONE_OF_TWO + 1) / 2)


def test_partial_overlap_counts_at_low_iou_thresholds_only():
    # a box covering 67 % of C (IoU 0.67): a match at IoU 0.50, 0.55, 0.60, 0.65 -> AP 4/10, AP50 1, AP75 0
    half = [20, 20, 100, 67]
    _, m = evaluate(det([A, B], [0.9, 0.8], [1, 1], True), det([half], [0.7], [2], True), iou_types=("bbox", "segm"))
    for t in ("bbox", "segm"):  # the masks are the boxes' pixels, so segm IoU is the same 6700 / 10000
        assert math.isclose(m[f"{t}/APl"], 0.4)
        assert math.isclose(m[f"{t}/AP"], (1 + 0.4) / 2)
        assert math.isclose(m[f"{t}/AP75"], 0.5) and math.isclose(m[f"{t}/AP50"], 1.0)


def test_no_detections_give_zero():
    _, m = evaluate(det([], [], []), det([], [], []))
    assert m["bbox/AP"] == 0 and m["bbox/APm"] == 0 and m["bbox/APs"] == -1


def test_results_json_is_accepted_by_pycocotools(tmp_path):
    from pycocotools.coco import COCO

    ev = CocoEvaluator(gt(), iou_types=("bbox", "segm"))
    ev.update([det([A], [0.9], [1], True), det([C], [0.7], [2], True)], [{"image_id": 1}, {"image_id": 2}])
    for t in ("bbox", "segm"):
        path = ev.write_results(tmp_path / f"{t}.json", t)
        results = json.loads(path.read_text())
        assert {r["category_id"] for r in results} == {5, 9}  # original category ids, not labels
        coco_gt = COCO()
        coco_gt.dataset = gt()
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(str(path))
        assert len(coco_dt.anns) == 2
    bbox = json.loads((tmp_path / "bbox.json").read_text())
    assert bbox[0] == {"image_id": 1, "category_id": 5, "bbox": [10.0, 10.0, 40.0, 40.0], "score": pytest.approx(0.9)}
    segm = json.loads((tmp_path / "segm.json").read_text())
    assert isinstance(segm[0]["segmentation"]["counts"], str) and segm[0]["segmentation"]["size"] == [200, 200]


def test_distributed_gather_counts_every_image_once():
    preds = {1: det([A, CROWD], [0.9, 0.99], [1, 1]), 2: det([C], [0.7], [2])}
    rank0 = CocoEvaluator(gt())
    rank1 = CocoEvaluator(gt())
    rank0.update([preds[1]], [{"image_id": 1}])
    rank1.update([preds[2], preds[1]], [{"image_id": 2}, {"image_id": 1}])  # image 1 again (sampler padding)
    payloads = [rank0._results, rank1._results]

    def gather_returning_list(obj):
        return payloads

    def all_gather_object(object_list, obj, group=None):  # torch.distributed's signature
        object_list[:] = payloads

    expected = (ONE_OF_TWO + 1) / 2
    for fn, world_size in ((gather_returning_list, None), (all_gather_object, 2)):
        for ev in (rank0, rank1):
            ev.gather_fn, ev.world_size = fn, world_size
            m = ev.evaluate()
            assert math.isclose(m["bbox/AP"], expected)
    rank0.gather_fn = None  # without gathering, rank 0 alone saw only image 1
    with pytest.warns(UserWarning, match="on 1 of the 2 GT images"):
        m = rank0.evaluate()
    assert math.isclose(m["bbox/AP"], ONE_OF_TWO)  # class 9 has no GT in image 1 and no detection: not counted


def test_faster_coco_eval_backend_agrees():
    preds = (det([A, CROWD], [0.9, 0.99], [1, 1], True), det([[20, 20, 100, 67]], [0.7], [2], True))
    _, reference = evaluate(*preds, iou_types=("bbox", "segm"))
    _, fast = evaluate(*preds, iou_types=("bbox", "segm"), backend="faster_coco_eval")
    assert fast == pytest.approx(reference, abs=1e-9)


def test_predictions_of_a_resized_image_are_mapped_back():
    # the dataset resized 200x200 to 100x100: predictions are in that frame; size / orig_size map them back
    small = det([[5, 5, 20, 20], [50, 50, 25, 25]], [0.9, 0.8], [1, 1])
    small["masks"] = torch.stack([mask_of(b, 100) for b in ([5, 5, 20, 20], [50, 50, 25, 25])]).float()[:, None]
    ev = CocoEvaluator(gt(), iou_types=("bbox", "segm"))
    size = {"size": torch.tensor([100, 100]), "orig_size": torch.tensor([200, 200])}
    ev.update([small, det([C], [0.7], [2], True)], [{"image_id": 1, **size}, {"image_id": 2}])
    m = ev.evaluate()
    assert math.isclose(m["bbox/AP"], 1.0) and math.isclose(m["segm/AP"], 1.0)


def test_per_class_table_and_errors():
    ev, _ = evaluate(det([A], [0.9], [1]), det([C], [0.7], [2]), label_to_cat_id={1: 5, 2: 9})
    table = ev.per_class_table("bbox")
    assert "| five | 50.5 |" in table and "| nine | 100.0 |" in table
    assert "Average Precision" in ev.summaries["bbox"] and len(ev.stats["bbox"]) == 12
    with pytest.raises(ValueError, match="labels \\[3\\] have no category id"):
        ev.update([det([A], [0.9], [3])], [{"image_id": 1}])
    with pytest.raises(ValueError, match="image id 7 is not in the GT"):
        ev.update([det([A], [0.9], [1])], [{"image_id": 7}])
    with pytest.raises(ValueError, match="category ids \\[4\\]"):
        CocoEvaluator(gt(), label_to_cat_id={1: 4})
    with pytest.raises(ValueError, match="iou_types"):
        CocoEvaluator(gt(), iou_types=("keypoints",))
    with pytest.raises(ValueError, match="needs 'masks'"):
        CocoEvaluator(gt(), iou_types=("segm",)).update([det([A], [0.9], [1])], [{"image_id": 1}])
    with pytest.raises(ValueError, match="no images were evaluated"):
        CocoEvaluator(gt()).evaluate()
