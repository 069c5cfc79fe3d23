"""COCO RLE segmentations from outside: a bad one is found when the dataset is built, counted, named (annotation id
and image file) and dropped, instead of stopping training mid-epoch with pycocotools' "Invalid RLE mask
representation"."""

import json
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from crossformer_vision.data import CocoDetection


def _rle(mask):
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": list(mask.shape), "counts": rle["counts"].decode()}


GOOD_MASK = np.zeros((10, 10), bool)
GOOD_MASK[2:6, 3:8] = True

BAD_RLES = {
    "garbage string": ({"size": [10, 10], "counts": "garbage"}, "not a valid COCO RLE string"),
    "string cut short": ({"size": [10, 10], "counts": _rle(GOOD_MASK)["counts"][:-1] + "a"}, "not a valid"),
    "string of too few pixels": ({"size": [10, 10], "counts": "52"}, "decode to 7 pixels, not height x width"),
    "list of too few pixels": ({"size": [10, 10], "counts": [20, 30, 49]}, "are 99 pixels, not height x width"),
    "list of too many pixels": ({"size": [10, 10], "counts": [20, 30, 51]}, "are 101 pixels"),
    "negative run": ({"size": [10, 10], "counts": [120, -20]}, "negative run"),
    "float counts": ({"size": [10, 10], "counts": [50.0, 50.0]}, "must be integers"),
    "size of another image": ({"size": [10, 12], "counts": [120]}, r"RLE size \[10, 12\] differs"),
    "no size": ({"counts": [100]}, "RLE size None is not"),
    "counts a number": ({"size": [10, 10], "counts": 100}, "must be a list or a string"),
}


def _write(tmp_path, segmentations):
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "img.png")
    anns = [
        {"id": 100 + i, "image_id": 1, "category_id": 1, "bbox": [3, 2, 5, 4], "segmentation": s, "iscrowd": 0}
        for i, s in enumerate(segmentations)
    ]
    data = {
        "images": [{"id": 1, "file_name": "img.png", "height": 10, "width": 10}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": anns,
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "ann.json"


@pytest.mark.parametrize("case", sorted(BAD_RLES))
def test_a_bad_rle_is_named_counted_and_dropped_up_front(tmp_path, case):
    bad, reason = BAD_RLES[case]
    ann_file = _write(tmp_path, [_rle(GOOD_MASK), bad, None])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(tmp_path, ann_file)
    assert ds.stats["bad_segmentation"] == 2  # the bad RLE and the annotation without a segmentation
    ids = [a for a, _, _ in ds.bad_segmentations]
    assert ids == [101, 102] and all(f == "img.png" for _, f, _ in ds.bad_segmentations)
    assert re.search(reason, ds.bad_segmentations[0][2]) and ds.bad_segmentations[1][2] == "no segmentation"
    (warning,) = caught
    message = str(warning.message)
    assert "2 annotations without a usable segmentation" in message and "\n" not in message
    assert "annotation id 101 of img.png" in message
    _, target = ds[0]  # the good RLE is decoded, the bad one never reaches pycocotools
    assert target["masks"].shape == (1, 10, 10) and torch.equal(target["masks"][0].bool(), torch.from_numpy(GOOD_MASK))


def test_good_rles_both_kinds_pass(tmp_path):
    runs, value, run = [], 0, 0
    for v in GOOD_MASK.flatten(order="F").astype(int):
        if v == value:
            run += 1
        else:
            runs.append(run)
            value, run = v, 1
    runs.append(run)
    full = np.ones((10, 10), bool)  # starts with a run of 1s: the first count is 0
    ann_file = _write(tmp_path, [_rle(GOOD_MASK), {"size": [10, 10], "counts": runs}, _rle(full)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = CocoDetection(tmp_path, ann_file)
    assert not ds.bad_segmentations and "bad_segmentation" not in ds.stats
    _, target = ds[0]
    masks = target["masks"].bool()
    assert torch.equal(masks[0], masks[1]) and masks[2].all()


def test_a_segmentation_changed_after_the_check_names_the_image(tmp_path):
    ann_file = _write(tmp_path, [_rle(GOOD_MASK)])
    ds = CocoDetection(tmp_path, ann_file)
    box, label, _ = ds.annotations[1][0]
    ds.annotations[1][0] = (box, label, {"size": [10, 10], "counts": "garbage"})
    with pytest.raises(ValueError, match=r"image id 1 \(img\.png\) of .*ann\.json: pycocotools cannot decode"):
        ds[0]
