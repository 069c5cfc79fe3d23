"""COCO-format dataset: category mapping, masks (polygon / RLE), crowd and empty images, bad input, transforms."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from crossformer_vision.data import CocoDetection, detection_collate, detection_transforms

# image id -> (file name, json height, json width, file height, file width)
IMAGES = {
    10: ("a.png", 40, 60, 40, 60),
    20: ("b.png", 50, 50, 50, 50),
    30: ("c.png", 32, 32, 32, 32),  # no annotations
    40: ("missing.png", 40, 40, None, None),  # no file
    50: ("d.png", 40, 40, 30, 30),  # the file is smaller than the json says
}


def rle_box(x0, y0, x1, y1, h, w):
    from pycocotools import mask as mask_utils

    m = np.zeros((h, w), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    return {"size": [h, w], "counts": rle["counts"].decode()}


def uncompressed_rle(m):
    counts, value, run = [], 0, 0
    for v in m.flatten(order="F"):
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(m.shape), "counts": counts}


def annotations():
    m2 = np.zeros((40, 60), dtype=np.uint8)
    m2[30:40, 50:60] = 1
    anns = [
        # (image, category, bbox, segmentation, extra)
        (10, 3, [5, 5, 10, 10], [[5, 5, 15, 5, 15, 15, 5, 15]], {}),  # polygon
        (10, 7, [50, 30, 20, 20], uncompressed_rle(m2), {}),  # sticks out right / bottom: clipped to [50, 30, 60, 40]
        (10, 12, [1, 1, 0, 5], [[1, 1, 2, 1, 2, 6]], {}),  # zero width: degenerate
        (10, 3, [70, 10, 5, 5], [[70, 10, 75, 10, 75, 15]], {}),  # outside the image: nothing left after clipping
        (99, 3, [1, 1, 5, 5], [[1, 1, 6, 1, 6, 6]], {}),  # unknown image
        (20, 99, [1, 1, 5, 5], [[1, 1, 6, 1, 6, 6]], {}),  # unknown category
        (20, 12, [0, 0, 50, 50], rle_box(0, 0, 50, 50, 50, 50), {"iscrowd": 1}),  # crowd: not a target
        (20, 12, [10, 10, 20, 20], rle_box(10, 10, 30, 30, 50, 50), {}),  # compressed RLE
        (20, 3, [0, 0, 10, 10], [], {}),  # no segmentation: dropped when masks are loaded
        (20, 3, "bad", [], {}),  # malformed box
        (40, 3, [1, 1, 5, 5], [[1, 1, 6, 1, 6, 6]], {}),  # image file missing
        (50, 7, [1, 1, 5, 5], [[1, 1, 6, 1, 6, 6]], {}),
    ]
    return [
        {"id": i + 1, "image_id": img, "category_id": cat, "bbox": box, "segmentation": seg, "iscrowd": 0, **extra}
        for i, (img, cat, box, seg, extra) in enumerate(anns)
    ]


@pytest.fixture
def coco_dir(tmp_path):
    images = []
    for image_id, (name, h, w, fh, fw) in IMAGES.items():
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        if fh is not None:
            pixels = np.full((fh, fw, 3), image_id, dtype=np.uint8)
            pixels[:, : fw // 2] = 200  # left half bright: shows the flip
            Image.fromarray(pixels).save(tmp_path / name)
    categories = [{"id": 12, "name": "bird"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    data = {"images": images, "annotations": annotations(), "categories": categories}
    (tmp_path / "instances.json").write_text(json.dumps(data))
    return tmp_path


def load(coco_dir, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDetection(coco_dir, coco_dir / "instances.json", **kwargs)
    return ds, caught


def test_mapping_counts_and_one_summary_warning(coco_dir):
    ds, caught = load(coco_dir)
    assert ds.cat_ids == [3, 7, 12] and ds.cat_id_to_label == {3: 1, 7: 2, 12: 3}
    assert ds.label_to_cat_id == {1: 3, 2: 7, 3: 12} and ds.class_names == ["cat", "dog", "bird"]
    assert ds.ids == [10, 20, 30, 50]  # the missing file is left out, the empty image kept
    assert dict(ds.stats) == {
        "boxes_clipped": 1,
        "boxes_degenerate": 1,
        "boxes_too_small": 1,
        "unknown_image": 1,
        "unknown_category": 1,
        "crowd_ignored": 1,
        "bad_segmentation": 1,
        "boxes_malformed": 1,
        "missing_file": 1,
    }
    assert len(caught) == 1  # one summary, not one warning per entry
    message = str(caught[0].message)
    for text in ("1 boxes clipped", "1 degenerate boxes", "1 images whose file is missing", "missing.png"):
        assert text in message


def test_targets_boxes_labels_masks(coco_dir):
    ds, _ = load(coco_dir)
    image, target = ds[0]
    assert image.shape == (3, 40, 60) and image.dtype == torch.float32 and image.min() >= 0 and image.max() <= 1
    assert target["image_id"] == 10 and target["orig_size"].tolist() == [40, 60] and target["size"].tolist() == [40, 60]
    assert target["boxes"].tolist() == [[5, 5, 15, 15], [50, 30, 60, 40]]  # xywh -> xyxy, the second clipped
    assert target["labels"].tolist() == [1, 2] and target["labels"].dtype == torch.int64
    masks = target["masks"]
    assert masks.shape == (2, 40, 60) and masks.dtype == torch.uint8
    assert masks[0, 5:15, 5:15].all() and masks[0].sum() == 100  # the polygon's pixels
    assert masks[1, 30:40, 50:60].all() and masks[1].sum() == 100  # the uncompressed RLE
    _, target = ds[1]  # crowd, bad box, missing mask and unknown category left out
    assert target["labels"].tolist() == [3] and target["boxes"].tolist() == [[10, 10, 30, 30]]
    assert target["masks"][0].sum() == 400


def test_empty_images_kept_or_skipped(coco_dir):
    ds, _ = load(coco_dir)
    _, target = ds[2]
    assert target["image_id"] == 30 and target["boxes"].shape == (0, 4) and target["masks"].shape == (0, 32, 32)
    assert target["labels"].shape == (0,)
    skipping, _ = load(coco_dir, skip_empty=True)
    assert skipping.ids == [10, 20, 50] and skipping.stats["empty_images_skipped"] == 1


def test_without_masks_an_annotation_needs_no_segmentation(coco_dir):
    ds, _ = load(coco_dir, masks=False)
    _, target = ds[1]
    assert target["labels"].tolist() == [3, 1] and "masks" not in target
    assert "bad_segmentation" not in ds.stats


def test_unreadable_or_mismatched_image_names_the_entry(coco_dir):
    ds, _ = load(coco_dir)
    with pytest.raises(ValueError, match=r"image id 50 \(.*d.png\): file is 30x30 .* json says 40x40"):
        ds[3]
    (coco_dir / "a.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"image id 10 \(.*a.png\): cannot read"):
        ds[0]


def test_bad_files_raise(coco_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoDetection(coco_dir, coco_dir / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        CocoDetection(coco_dir, bad)
    data = json.loads((coco_dir / "instances.json").read_text())
    data["images"].append(dict(data["images"][0]))
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="duplicate image id 10"):
        CocoDetection(coco_dir, bad)
    data = json.loads((coco_dir / "instances.json").read_text())
    del data["images"][1]["height"]
    bad.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="image id 20 needs positive int 'height' and 'width'"):
        CocoDetection(coco_dir, bad)


def test_flip_moves_image_boxes_and_masks_together(coco_dir):
    ds, _ = load(coco_dir, transforms=detection_transforms(train=True, flip_prob=1.0))
    image, target = ds[0]
    assert target["boxes"].tolist() == [[45, 5, 55, 15], [0, 30, 10, 40]]  # x -> 60 - x
    for box, mask in zip(target["boxes"], target["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == box.tolist()
    assert (image[:, :, 30:] > 0.7).all() and (image[:, :, :30] < 0.1).all()  # the bright half moved right
    _, target = load(coco_dir, transforms=detection_transforms(train=False))[0][0]
    assert target["boxes"].tolist() == [[5, 5, 15, 15], [50, 30, 60, 40]]  # no flip at evaluation


def test_resize_transform_and_collate(coco_dir):
    ds, _ = load(coco_dir, transforms=detection_transforms(train=False, min_size=80, max_size=200))
    image, target = ds[0]
    assert image.shape == (3, 80, 120) and target["size"].tolist() == [80, 120]
    assert target["orig_size"].tolist() == [40, 60]  # what the evaluator maps predictions back to
    assert target["boxes"].tolist() == [[10, 10, 30, 30], [100, 60, 120, 80]]
    assert target["masks"].shape == (2, 80, 120) and target["masks"][0].sum() == 400
    images, targets = detection_collate([ds[0], ds[1]])
    assert [i.shape for i in images] == [(3, 80, 120), (3, 80, 80)] and [t["image_id"] for t in targets] == [10, 20]
    assert isinstance(targets[0]["boxes"], torch.Tensor) and type(targets[0]["boxes"]) is torch.Tensor
