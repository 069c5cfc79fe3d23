"""``crossformer det``: train + exact resume on the embedded det_demo set, eval / predict on the run, and an official
mmdet checkpoint through convert / predict / eval (tiny or low-resolution configurations, CPU)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from crossformer_vision.cli.main import main
from crossformer_vision.data.coco import det_demo_dir
from crossformer_vision.engine import load_config, read_metrics
from crossformer_vision.engine.run import check_resume
from crossformer_vision.tasks.detection.config import DEFAULTS, RESUME_MUST_MATCH
from train_utils import run_cli, weights

# A tiny Mask R-CNN on 16 demo images (4 steps per epoch), multi-scale training and drop path on, so that resuming
# has to restore the RNG streams as well as the weights, optimizer and schedule.
TINY_DET = [
    "model.name=maskrcnn_crossformer_t",
    "model.kwargs.embed_dim=16",
    "model.kwargs.depths=[1,1,1,1]",
    "model.kwargs.num_heads=[1,1,2,4]",
    "model.kwargs.group_size=[4,4,2,1]",
    "model.kwargs.crs_interval=[2,1,1,1]",
    "model.drop_path_rate=0.1",
    "model.fpn_channels=16",
    "model.box_head_dim=32",
    "model.mask_head_channels=8",
    "model.mask_head_convs=1",
    "model.min_size=[48,64]",
    "model.max_size=64",
    "model.detector.kwargs.rpn_pre_nms_top_n_train=100",
    "model.detector.kwargs.rpn_post_nms_top_n_train=50",
    "model.detector.kwargs.rpn_pre_nms_top_n_test=50",
    "model.detector.kwargs.rpn_post_nms_top_n_test=25",
    "model.detector.kwargs.box_batch_size_per_image=32",
    "model.detector.kwargs.box_score_thresh=0.0",
    "data.dataset=det_demo",
    "data.train_limit=16",
    "data.val_limit=6",
    "data.workers=0",
    "optim.lr=1e-3",
    "optim.base_batch=4",
    "sched.epochs=2",
    "sched.lr_steps=[1]",
    "sched.warmup_iters=3",
    "train.batch_size=4",
    "train.threads=1",
    "train.progress=false",
    "train.log_every=1",
    "train.deterministic=true",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """An uninterrupted run, and one stopped after 5 of its 8 steps (mid epoch 2) then resumed."""
    root = tmp_path_factory.mktemp("det_runs")
    full, resumed = root / "full", root / "resumed"
    # the two independent runs side by side (one thread each): most of their time is Python start-up
    with ThreadPoolExecutor(2) as pool:
        done = pool.map(
            run_cli,
            [
                ["det", "train", *TINY_DET, f"train.output_dir={full}"],
                ["det", "train", *TINY_DET, "train.max_steps=5", f"train.output_dir={resumed}"],
            ],
        )
        list(done)
    assert not (resumed / "checkpoints" / "step-00000008").exists()
    run_cli(["det", "train", *TINY_DET, f"train.output_dir={resumed}", "--resume", str(resumed)])
    return {"full": full, "resumed": resumed}


def test_resumed_run_equals_uninterrupted_run_bitwise(runs):
    a, b = weights(runs["full"]), weights(runs["resumed"])
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    # the resumed log replays nothing twice, and both runs logged the same steps and losses
    train_a = [r for r in read_metrics(runs["full"]) if r["split"] == "train"]
    train_b = [r for r in read_metrics(runs["resumed"]) if r["split"] == "train"]
    assert [r["step"] for r in train_a] == [r["step"] for r in train_b] == list(range(1, 9))
    assert [r["loss"] for r in train_a] == [r["loss"] for r in train_b]


def test_run_directory_holds_results(runs):
    run = runs["full"]
    val = [r for r in read_metrics(run) if r["split"] == "val"]
    assert [r["epoch"] for r in val] == [1, 2]  # evaluated after every epoch
    assert {"bbox/AP", "bbox/AP50", "segm/AP", "train_loss_mask", "train_loss_classifier"} <= set(val[-1])
    report = json.loads((run / "results.json").read_text())
    assert set(report["per_class_AP"]) == {"bbox", "segm"} and len(report["per_class_AP"]["bbox"]) == 10
    assert len(report["coco_stats"]["segm"]) == 12
    for name in ("results_bbox.json", "results_segm.json", "curves.png", "final.safetensors", "config.yaml"):
        assert (run / name).is_file(), name
    detections = json.loads((run / "results_segm.json").read_text())
    assert detections and {"image_id", "category_id", "segmentation", "score"} <= set(detections[0])
    assert {d["image_id"] for d in detections} <= set(range(1, 7))  # data.val_limit=6


def test_eval_and_predict_on_the_run(runs, tmp_path, capsys):
    args = ["det", "eval", "--checkpoint", str(runs["full"]), "--json", "--output-dir", str(tmp_path / "eval")]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("bbox/AP", "bbox/AP50", "bbox/APs", "segm/AP", "segm/AP75"):
        assert key in out["metrics"]
    assert out["num_images"] == 6 and out["report"] is None
    # the same numbers as the run's own last evaluation
    last = [r for r in read_metrics(runs["full"]) if r["split"] == "val"][-1]
    assert out["metrics"]["bbox/AP"] == pytest.approx(last["bbox/AP"], abs=1e-3)
    assert (tmp_path / "eval" / "results_bbox.json").is_file()

    images = sorted((det_demo_dir() / "val").glob("*.png"))[:2]
    pred = tmp_path / "pred"
    args = ["det", "predict", *map(str, images), "--checkpoint", str(runs["full"]), "--output-dir", str(pred)]
    assert main([*args, "--score-thresh", "0.0", "--device", "cpu"]) == 0
    found = json.loads((pred / "predictions.json").read_text())
    assert set(found) == {str(p) for p in images}
    first = next(iter(found.values()))
    assert first and {"box", "label", "name", "score", "mask"} <= set(first[0])
    assert all((pred / f"{p.stem}.png").is_file() for p in images)


def test_eval_warns_when_the_files_class_names_differ(runs, tmp_path, capsys):
    ann = json.loads((det_demo_dir() / "instances_val.json").read_text())
    ann["categories"][1]["name"] = "Jeans"  # same count, one renamed: matched by position, so say so
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(ann))
    data = ["data.dataset=coco", f"data.val_json={renamed}", f"data.val_images={det_demo_dir() / 'val'}"]
    with pytest.warns(UserWarning, match=r"1 of 10 class names of .*renamed\.json differ.*'Jeans' in the file, "):
        assert main(["det", "eval", "--checkpoint", str(runs["full"]), "--json", *data]) == 0
    assert json.loads(capsys.readouterr().out)["num_images"] == 6


def test_resume_refuses_a_different_recipe(runs):
    cfg = load_config(DEFAULTS, None, [*TINY_DET, f"train.output_dir={runs['full']}", "optim.lr=5e-3"])
    with pytest.raises(ValueError, match=r"optim\.lr: 0\.001 \(checkpoint\) -> 0\.005 \(now\)"):
        check_resume(cfg, runs["full"], RESUME_MUST_MATCH, force=False)
    more_epochs = load_config(DEFAULTS, None, [*TINY_DET, "sched.epochs=3"])
    check_resume(more_epochs, runs["full"], RESUME_MUST_MATCH, force=False)  # a longer schedule is a legitimate change


def test_official_mmdet_checkpoint_convert_predict_eval(tmp_path, capsys):
    """A CrossFormer++-S Mask R-CNN in the official mmdet layout (random values) -> det convert -> det predict on the
    converted file; det eval on the official file explains why an 80-class COCO model cannot be scored on the
    10-class demo set."""
    from test_det_weights import official_checkpoint

    ckpt = official_checkpoint("det_main_crossformerpp_s", "maskrcnn_crossformer_pp_s_neck_heads", device="cpu")
    g = torch.Generator().manual_seed(0)
    ckpt["state_dict"] = {k: torch.randn(v.shape, generator=g) * 0.02 for k, v in ckpt["state_dict"].items()}
    src = tmp_path / "mask_rcnn_crossformerpp_s.pth"
    torch.save(ckpt, src)
    dst = tmp_path / "mask_rcnn_crossformerpp_s.safetensors"
    assert main(["det", "convert", str(src), str(dst)]) == 0
    printed = capsys.readouterr().out
    assert "maskrcnn_crossformerpp_s (lda_rule fixed_group), 80 classes" in printed
    assert "neck + heads: 42 entries loaded" in printed

    image = sorted((det_demo_dir() / "val").glob("*.png"))[0]
    out = tmp_path / "pred"
    args = ["det", "predict", str(image), "--checkpoint", str(dst), "--output-dir", str(out), "--device", "cpu"]
    test_time = ["model.min_size=[64]", "model.max_size=64", "model.detector.kwargs.box_score_thresh=0.0"]
    assert main([*args, "--score-thresh", "0.0", "--set", *test_time]) == 0
    found = json.loads((out / "predictions.json").read_text())[str(image)]
    assert found and {"box", "label", "name", "score", "mask"} <= set(found[0])
    assert found[0]["name"] == f"class_{found[0]['label'] - 1}"  # the checkpoint's meta CLASSES
    assert (out / f"{image.stem}.png").is_file()

    code = main(["det", "eval", "--checkpoint", str(src), "data.dataset=det_demo", "model.min_size=[64]"])
    assert code == 2 and "the model predicts 80 classes but" in capsys.readouterr().err


def test_presets_resolve():
    from crossformer_vision.configs import list_presets, resolve_config
    from crossformer_vision.tasks.detection import get_recipe, parse_detector_name

    names = list_presets("detection")
    for variant in ("crossformer_s", "crossformer_b", "crossformerpp_s", "swin_t", "resnet50"):
        assert {f"coco_retinanet_{variant}", f"coco_maskrcnn_{variant}", f"coco_cascade_{variant}"} <= set(names)
        assert f"coco_cascade_{variant}_3x" in names
    for variant in ("crossformer_s", "crossformer_b", "crossformerpp_s"):
        assert f"coco_maskrcnn_{variant}_3x" in names
    for name in names:
        cfg = load_config(DEFAULTS, resolve_config(name, task="detection"))  # unknown keys would raise
        parse_detector_name(cfg["model"]["name"])
        if name.startswith("coco_"):
            recipe = get_recipe("3x" if name.endswith("_3x") else "1x")
            assert cfg["train"]["batch_size"] * 8 == cfg["optim"]["base_batch"] == recipe.batch_size
            assert cfg["optim"]["lr"] == recipe.lr and cfg["sched"]["epochs"] == recipe.epochs
            assert tuple(cfg["sched"]["lr_steps"]) == recipe.lr_steps
            if recipe.name == "3x":  # (the 1x Swin-T presets keep their own 0.05)
                assert cfg["optim"]["weight_decay"] == recipe.weight_decay and cfg["aug"]["policy"] == "3x"
            assert cfg["sched"]["warmup_iters"] == recipe.warmup_iters
            assert tuple(cfg["model"]["min_size"]) == recipe.min_size
