"""mIoU / mAcc / aAcc against a hand-computed example: dataset-level sums, ignore index, NaN classes, reduction."""

from __future__ import annotations

import math

import pytest
import torch

from crossformer_vision.tasks.segmentation import SegmentationMetric, intersect_and_union

# Two images, 3 classes (+ class 3 that never occurs when K = 4), 255 = ignore.
LABEL_1 = torch.tensor([[0, 0, 1], [1, 2, 255]])
PRED_1 = torch.tensor([[0, 1, 1], [1, 0, 2]])
LABEL_2 = torch.tensor([[2, 2], [2, 2]])
PRED_2 = torch.tensor([[2, 2], [2, 0]])
# By hand. Image 1 (the ignored pixel dropped): intersection [1, 2, 0], prediction [2, 3, 0], label [2, 2, 1].
# Image 2: intersection [0, 0, 3], prediction [1, 0, 3], label [0, 0, 4].
# Totals: intersection [1, 2, 3], union = pred + label - inter = [5-1, 5-2, 8-3] = [4, 3, 5], label [2, 2, 5].
IOU = [1 / 4, 2 / 3, 3 / 5]
ACC = [1 / 2, 2 / 2, 3 / 5]
A_ACC = 6 / 9


def filled() -> SegmentationMetric:
    metric = SegmentationMetric(3, class_names=["a", "b", "c"])
    metric.update(PRED_1[None], LABEL_1[None])
    metric.update(PRED_2[None], LABEL_2[None])
    return metric


def test_intersect_and_union_of_one_image():
    areas = intersect_and_union(PRED_1, LABEL_1, 3)
    assert areas.tolist() == [[1, 2, 0], [3, 3, 1], [2, 3, 0], [2, 2, 1]]


def test_dataset_level_metrics_match_the_hand_computation():
    result = filled().compute()
    torch.testing.assert_close(result["IoU"], torch.tensor(IOU, dtype=torch.float64))
    torch.testing.assert_close(result["Acc"], torch.tensor(ACC, dtype=torch.float64))
    assert result["mIoU"] == pytest.approx(sum(IOU) / 3)  # 0.5056; the mean of per-image mIoUs would be 0.354
    assert result["mAcc"] == pytest.approx(0.7)
    assert result["aAcc"] == pytest.approx(A_ACC)


def test_absent_classes_are_nan_and_excluded_from_the_means():
    metric = SegmentationMetric(5)
    metric.update(PRED_1, LABEL_1)  # 2-d maps are accepted too
    metric.update(PRED_2, LABEL_2)
    metric.update(torch.tensor([[4]]), torch.tensor([[255]]))  # a prediction on an ignored pixel: not counted
    metric.update(torch.tensor([[4]]), torch.tensor([[0]]))  # class 4 predicted, never in the ground truth
    result = metric.compute()
    assert math.isnan(result["IoU"][3]) and math.isnan(result["Acc"][3])  # absent from both
    assert result["IoU"][4] == 0 and math.isnan(result["Acc"][4])  # predicted only: IoU 0 counts, Acc NaN
    iou = [1 / 4, 2 / 3, 3 / 5, 0.0]
    iou[0] = 1 / 5  # the extra pixel adds to class 0's label area and union
    assert result["mIoU"] == pytest.approx(sum(iou) / 4)
    assert result["mAcc"] == pytest.approx((1 / 3 + 1 + 3 / 5) / 3)


def test_logits_are_reduced_by_argmax():
    metric = SegmentationMetric(3)
    logits = torch.nn.functional.one_hot(PRED_1, 3).permute(2, 0, 1)[None].float()
    metric.update(logits, LABEL_1[None])
    assert metric.areas.tolist() == intersect_and_union(PRED_1, LABEL_1, 3).tolist()
    assert metric.num_images == 1


def test_reduce_fn_sums_areas_before_dividing():
    metric = filled()
    before = metric.areas.clone()

    def all_reduce_in_place(t: torch.Tensor) -> None:  # torch.distributed.all_reduce with two equal ranks
        t.mul_(2)

    seen = []

    def all_reduce_returning(t: torch.Tensor) -> torch.Tensor:  # engine.distributed.all_reduce_sum style
        seen.append(t.clone())
        return t + torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])

    doubled = metric.compute(reduce_fn=all_reduce_in_place)
    assert doubled["mIoU"] == pytest.approx(sum(IOU) / 3)
    metric.compute(reduce_fn=all_reduce_returning)
    assert torch.equal(seen[0], before) and seen[0].dtype == torch.int64
    assert torch.equal(metric.areas, before)  # compute() leaves the state alone

    other = SegmentationMetric(3)
    other.update(PRED_2[None], LABEL_2[None])
    only_first = SegmentationMetric(3)
    only_first.update(PRED_1[None], LABEL_1[None])
    merged = only_first.compute(reduce_fn=lambda t: t + other.areas)  # two ranks with different images
    assert merged["mIoU"] == pytest.approx(sum(IOU) / 3)


def test_table_and_errors():
    metric = filled()
    table = metric.table()
    assert "mIoU 50.56" in table and "aAcc 66.67" in table and table.splitlines()[2].startswith("a ")
    with pytest.raises(ValueError, match="outside"):
        metric.update(torch.tensor([[0]]), torch.tensor([[7]]))
    with pytest.raises(ValueError, match="shapes differ"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="class names"):
        SegmentationMetric(3, class_names=["a"])
    metric.reset()
    assert metric.areas.sum() == 0 and math.isnan(metric.compute()["mIoU"])
