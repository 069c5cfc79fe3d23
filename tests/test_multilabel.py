"""Multi-label recognition: the CSRA formula worked by hand, the metrics on hand-worked cases, the VOC2007 / COCO /
CSV readers on tiny generated fixtures, the demo scenes, and a tiny run end to end (train, eval, predict)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from crossformer_vision.data.multilabel import demo_scenes, read_coco_labels, read_csv_labels, read_voc2007
from crossformer_vision.tasks.multilabel.heads import TEMPERATURES, CSRAHead
from crossformer_vision.tasks.multilabel.metrics import multilabel_metrics, topk_only
from crossformer_vision.tasks.multilabel.model import MultiLabelNet, validate_model_args

E02 = 1.2214027581601699  # e^0.2, for the softmax over two scores 0.6 and 0.8


def _head(num_heads: int, lam: float) -> CSRAHead:
    """A CSRA head over 2 channels and 1 class whose every classifier is m = (3, 4), ||m|| = 5."""
    head = CSRAHead(2, 1, num_heads=num_heads, lam=lam)
    with torch.no_grad():
        for conv in head.classifiers:
            conv.weight.copy_(torch.tensor([3.0, 4.0]).view(1, 2, 1, 1))
    return head


# a 1 x 2 map: position 1 holds (1, 0), position 2 (0, 1) -> scores m.x / ||m|| = 0.6 and 0.8
FEATURES = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).T.reshape(1, 2, 1, 2)


def test_csra_matches_the_formula_by_hand():
    base = (0.6 + 0.8) / 2  # average pooling: 0.7
    w1, w2 = 1 / (1 + E02), E02 / (1 + E02)  # softmax(0.6, 0.8) at T = 1
    att_t1 = 0.6 * w1 + 0.8 * w2  # 0.70997
    assert _head(1, 0.5)(FEATURES).item() == pytest.approx(base + 0.5 * att_t1, abs=1e-6)
    assert _head(1, 0.5)(FEATURES).item() == pytest.approx(1.0549834, abs=1e-6)
    # two heads: T = 1 and T = inf (max pooling: 0.8), logits summed
    assert TEMPERATURES[2] == (1.0, math.inf)
    expected = (base + 0.5 * att_t1) + (base + 0.5 * 0.8)
    assert _head(2, 0.5)(FEATURES).item() == pytest.approx(expected, abs=1e-6)
    # lambda 0 is average pooling of the normalised scores
    assert _head(1, 0.0)(FEATURES).item() == pytest.approx(0.7, abs=1e-6)
    # a large temperature approaches the max
    assert TEMPERATURES[4][-1] == math.inf and TEMPERATURES[8] == (1, 2, 3, 4, 5, 6, 7, math.inf)


def test_token_logit_shares_sum_to_the_logits():
    from crossformer_vision.tasks.multilabel.heads import AvgPoolHead

    torch.manual_seed(0)
    x = torch.randn(2, 6, 3, 4)
    plain = AvgPoolHead(6, 5).eval()
    shares = plain.token_logit_shares(x)
    assert shares.shape == (2, 5, 3, 4)
    torch.testing.assert_close(shares.sum((2, 3)), plain(x) - plain.fc.bias, atol=1e-6, rtol=1e-6)
    for num_heads in (1, 2, 4):  # 2 and 4 heads include T = inf (the max: one-hot attention at the argmax)
        head = CSRAHead(6, 5, num_heads=num_heads, lam=0.3).eval()
        shares = head.token_logit_shares(x)
        assert shares.shape == (2, 5, 3, 4)
        torch.testing.assert_close(shares.sum((2, 3)), head(x), atol=1e-6, rtol=1e-6)
    # by hand, 1 head at T = 1: position j's share is s_j (1/2 + lambda softmax_j(s)) for the scores 0.6, 0.8
    w1, w2 = 1 / (1 + E02), E02 / (1 + E02)
    expected = [0.6 * (0.5 + 0.5 * w1), 0.8 * (0.5 + 0.5 * w2)]
    assert _head(1, 0.5).token_logit_shares(FEATURES).flatten().tolist() == pytest.approx(expected, abs=1e-6)
    # 2 heads (T = 1 and T = inf): the max-pooled head adds lambda * 0.8 to position 2 only
    expected = [expected[0] + 0.6 * 0.5, expected[1] + 0.8 * (0.5 + 0.5)]
    assert _head(2, 0.5).token_logit_shares(FEATURES).flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_csra_is_scale_free_in_the_classifier_and_refuses_unknown_head_counts():
    head = _head(1, 0.3)
    before = head(FEATURES)
    with torch.no_grad():
        head.classifiers[0].weight.mul_(7.0)  # the weight norm divides the scores out
    assert torch.allclose(head(FEATURES), before, atol=1e-6)
    with pytest.raises(ValueError, match="heads"):
        CSRAHead(2, 1, num_heads=3)


@pytest.mark.parametrize(
    ("name", "kwargs", "size", "grid"),
    [
        ("crossformer_t", dict(embed_dim=16, depths=[1, 1], num_heads=[1, 2], group_size=[2, 2],
                               crs_interval=[2, 1], merge_kernel_sizes=[[2, 4]]), 32, 4),  # NHWC
        ("resnet10t", {}, 64, 2),  # NCHW
        ("vit_tiny_patch16_224", dict(img_size=48, depth=1), 48, 3),  # tokens with a class token
    ],
)  # fmt: skip
def test_any_backbone_gives_an_nchw_map_and_logits(name, kwargs, size, grid):
    backbone = timm.create_model(name, num_classes=0, **kwargs)
    model = MultiLabelNet(backbone, 5, "csra", num_heads=4, lam=0.5).eval()
    x = torch.randn(2, 3, size, size)
    feats = model.forward_features(x)
    assert feats.shape == (2, backbone.num_features, grid, grid)
    assert model(x).shape == (2, 5) and model.class_maps(x).shape == (2, 5, grid, grid)
    assert model.forward_head(feats, pre_logits=True).shape == (2, backbone.num_features)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier() is model.head
    plain = MultiLabelNet(backbone, 5, "avg").eval()
    assert plain(x).shape == (2, 5)
    # the plain head's CAM averages to its logits (linear head)
    assert torch.allclose(plain.class_maps(x).mean(dim=(2, 3)), plain(x), atol=1e-5)


def test_model_arguments_from_a_file_are_checked():
    ok = {"backbone": {"embed_dim": 16}, "head": {"name": "csra", "num_heads": 4, "lam": 0.5}}
    assert validate_model_args("crossformer_t", ok, "f")["head"]["num_heads"] == 4
    for bad in (
        {"backbone": {}, "head": {"name": "csra", "num_heads": 3, "lam": 0.5}},
        {"backbone": {}, "head": {"name": "mlp", "num_heads": 1, "lam": 0.5}},
        {"backbone": {}, "head": {"name": "csra", "num_heads": 1, "lam": float("nan")}},
        {"backbone": {"pretrained": True}, "head": {"name": "csra", "num_heads": 1, "lam": 0.1}},
    ):
        with pytest.raises(ValueError):
            validate_model_args("crossformer_t", bad, "f")


def test_metrics_on_a_hand_worked_case():
    probs = torch.tensor([[0.9, 0.6, 0.2], [0.8, 0.3, 0.4], [0.3, 0.7, 0.55], [0.1, 0.2, 0.6]])
    targets = torch.tensor([[1, 1, 0], [0, 0, -1], [1, 1, 1], [0, 0, 0]])
    m, ap = multilabel_metrics(probs, targets)
    # class 0 ranks 1,0,1,0 -> AP (1/1 + 2/3) / 2; class 1 ranks 1,1,0,0 -> 1; class 2 (row 2 ignored) 0,1,0 -> 1/2
    assert ap == pytest.approx([100 * 5 / 6, 100.0, 50.0], abs=1e-4)
    assert m["mAP"] == pytest.approx(100 * (5 / 6 + 1 + 0.5) / 3, abs=1e-4)
    # at 0.5: class 0 TP 1 FP 1 FN 1; class 1 TP 2; class 2 TP 1 FP 1 (the ignored 0.4 counts nowhere)
    assert m["CP"] == pytest.approx(100 * (0.5 + 1 + 0.5) / 3, abs=1e-4)
    assert m["CR"] == pytest.approx(100 * (0.5 + 1 + 1) / 3, abs=1e-4)
    cp, cr = (0.5 + 1 + 0.5) / 3, (0.5 + 1 + 1) / 3
    assert m["CF1"] == pytest.approx(100 * 2 * cp * cr / (cp + cr), abs=1e-4)  # F1 of the averages
    assert m["OP"] == pytest.approx(100 * 4 / 6, abs=1e-4) and m["OR"] == pytest.approx(100 * 4 / 5, abs=1e-4)
    assert m["OF1"] == pytest.approx(100 * 2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5), abs=1e-4)


def test_top3_only_predicts_an_images_three_best_labels():
    probs = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.1], [0.2, 0.9, 0.1, 0.1, 0.1]])
    targets = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 0, 0, 1]])
    assert torch.equal(topk_only(probs, 3)[0], torch.tensor([0.9, 0.8, 0.7, 0.0, 0.0]))
    m, _ = multilabel_metrics(probs, targets)
    # all at 0.5: predicted (0,0..3), (1,1): TP 4 of 5 predictions, 4 of 5 positives
    assert m["OP"] == pytest.approx(80.0, abs=1e-4) and m["OR"] == pytest.approx(80.0, abs=1e-4)
    # top 3: label 3 of image 0 (0.6, a TP) can no longer be predicted: TP 3 of 4 predictions, 3 of 5 positives
    assert m["OP_top3"] == pytest.approx(75.0, abs=1e-4) and m["OR_top3"] == pytest.approx(60.0, abs=1e-4)


def _jpg(path, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path)


def _voc_xml(objects):
    body = "".join(f"<object><name>{n}</name><difficult>{int(d)}</difficult></object>" for n, d in objects)
    return f"<annotation><filename>x.jpg</filename>{body}</annotation>"


def test_voc2007_layout_difficult_and_bad_annotations(tmp_path):
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").mkdir(parents=True)
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    files = {
        "000001": [("dog", 0), ("person", 1), ("person", 0)],  # person: a non-difficult one too -> positive
        "000002": [("cat", 1), ("car", 0)],  # cat: difficult only
        "000003": [("unicorn", 0), ("bus", 0)],  # an unknown class: that object is left out
        "000004": None,  # an unparsable annotation file
        "000005": [("dog", 0)],  # its image is missing
    }
    for image_id, objects in files.items():
        xml = "<annotation><object>" if objects is None else _voc_xml(objects)
        (voc / "Annotations" / f"{image_id}.xml").write_text(xml)
        if image_id != "000005":
            _jpg(voc / "JPEGImages" / f"{image_id}.jpg")
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(files) + "\n")
    with pytest.warns(UserWarning, match=r"1 image\(s\) whose file is missing.*000004\.xml|000004\.xml"):
        found = read_voc2007(tmp_path / "VOCdevkit", "test", difficult="ignore")
    names = found.classes
    assert [p.rsplit("/", 1)[1] for p in found.paths] == ["000001.jpg", "000002.jpg", "000003.jpg"]
    row = dict(zip(names, found.targets[1]))
    assert row["cat"] == -1 and row["car"] == 1 and row["dog"] == 0
    assert found.targets[0][names.index("person")] == 1 and found.targets[2].sum() == 1  # bus only
    assert found.stats == {
        "image(s) whose file is missing": 1,
        "image(s) with an unreadable annotation file": 1,
        "object(s) of an unknown class": 1,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = read_voc2007(voc, "test", difficult="negative")
    assert train.targets[1][names.index("cat")] == 0  # the paper trains difficult-only classes as negatives
    with pytest.raises(FileNotFoundError, match="trainval"):
        read_voc2007(voc, "trainval")


def test_coco_image_level_labels_and_bad_annotations(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        _jpg(tmp_path / "val2014" / name)
    coco = {
        "images": [{"id": i, "file_name": n, "width": 40, "height": 30} for i, n in ((1, "a.jpg"), (2, "b.jpg"),
                                                                                    (3, "c.jpg"))],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 18, "bbox": [5, 5, 10, 10]},
            {"id": 3, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
            {"id": 4, "image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 4]},
            {"id": 5, "image_id": 2, "category_id": 99, "bbox": [0, 0, 4, 4]},  # unknown category
        ],  # image 3 has none: left out as in the paper's prepare_coco.py
    }  # fmt: skip
    ann = tmp_path / "annotations" / "instances_val2014.json"
    ann.parent.mkdir()
    ann.write_text(json.dumps(coco))
    with pytest.warns(UserWarning, match="unknown_category|categories"):
        found = read_coco_labels(tmp_path / "val2014", ann)
    assert found.classes == ["person", "car", "dog"]
    assert found.targets.tolist() == [[1, 0, 1], [0, 1, 0]]
    assert found.stats["unknown_category"] == 1


def test_csv_layout(tmp_path):
    for name in ("x.png", "y.png"):
        _jpg(tmp_path / "img" / name)
    (tmp_path / "train.csv").write_text("image,labels,ignore\nimg/x.png,cat;dog,\nimg/y.png,,bird\nimg/z.png,cat,\n")
    (tmp_path / "classes.txt").write_text("bird\ncat\ndog\n")
    with pytest.warns(UserWarning, match="missing"):
        found = read_csv_labels(tmp_path, "train", ["bird", "cat", "dog"])
    assert found.targets.tolist() == [[0, 1, 1], [-1, 0, 0]]


def test_demo_scenes_are_deterministic_and_keep_their_boxes(tmp_path, monkeypatch):
    monkeypatch.setenv("CROSSFORMER_CACHE_DIR", str(tmp_path))
    few = demo_scenes("val", 6, size=64, side=(12, 28), cache=False)
    more = demo_scenes("val", 10, size=64, side=(12, 28))  # built and cached
    again = demo_scenes("val", 10, size=64, side=(12, 28))  # from the cache
    assert np.array_equal(few.images, more.images[:6]) and np.array_equal(more.images, again.images)
    assert list(tmp_path.rglob("*.npz"))
    for i in range(10):
        items = more.boxes_of(i)
        assert 1 <= len(items) <= 5
        assert sorted({c for c, _ in items}) == np.flatnonzero(more.targets[i]).tolist()
        for _, (x, y, w, h) in items:
            assert min(x, y) >= 0 and x + w <= 64 and y + h <= 64 and w > 0 and h > 0
            assert more.images[i, y : y + h, x : x + w].max() > 60  # an item is painted inside its box


def test_a_tiny_run_end_to_end(tmp_path, monkeypatch):
    from crossformer_vision.configs import resolve_config
    from crossformer_vision.engine import load_config
    from crossformer_vision.tasks.multilabel.config import DEFAULTS
    from crossformer_vision.tasks.multilabel.evaluate import evaluate_checkpoint
    from crossformer_vision.tasks.multilabel.predict import predict_images
    from crossformer_vision.tasks.multilabel.train import train

    monkeypatch.setenv("CROSSFORMER_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    overrides = [
        "data.demo_train=48", "data.demo_val=24", "data.demo_size=64", "data.img_size=64", "data.demo_side=[12,28]",
        "model.kwargs.embed_dim=16", "model.kwargs.group_size=[4,4,4]", "train.batch_size=16", "sched.epochs=1",
        "sched.warmup_epochs=0", "loss.name=asl", "train.progress=false", f"train.output_dir={out}",
    ]  # fmt: skip
    cfg = load_config(DEFAULTS, resolve_config("demo", task="multilabel"), overrides)
    result = train(cfg)
    saved = json.loads((out / "results.json").read_text())
    assert saved["task"] == "multilabel" and saved["steps"] == 3
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "CF1_top3", "OF1_top3"):
        assert 0 <= saved["metrics"][key] <= 100
    assert len(saved["per_class"]) == 10 and (out / "curves.png").is_file()
    again = evaluate_checkpoint(out)
    assert again["metrics"]["mAP"] == pytest.approx(result["metrics"]["mAP"], abs=1e-3)
    picture = tmp_path / "scene.png"
    Image.fromarray(demo_scenes("val", 1, size=64, side=(12, 28)).images[0]).save(picture)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    preds = predict_images(out, [str(picture), str(tmp_path / "broken.png")], tmp_path / "pred", maps=True)
    assert "error" in preds[0] or "error" in preds[1]
    good = next(p for p in preds if "error" not in p)
    assert len(good["top"]) == 5 and (tmp_path / "pred" / "scene_maps.png").is_file()
