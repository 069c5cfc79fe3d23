"""Failures a careless or hostile user meets on the command line: one line on stderr, exit 2, nothing lost, and the
readable part of a call still answered."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from crafted import png_header_only
from crossformer_vision.cli.main import main
from crossformer_vision.data.segmentation import seg_demo_dir
from train_utils import tiny_classifier_file


def _png(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 120, dtype=np.uint8)).save(path)
    return path


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--output-dir", "{file}"],
        ["seg", "predict", "{image}", "--checkpoint", "{model}", "--output-dir", "{file}"],
        ["det", "predict", "{image}", "--checkpoint", "{model}", "--output-dir", "{file}"],
        ["convert", "{model}", "{dir}"],
        ["seg", "convert", "{model}", "{dir}"],
        ["det", "convert", "{model}.pth", "{dir}"],
    ],
)
def test_an_output_path_of_the_wrong_kind_is_one_line(tmp_path, capsys, command):
    paths = {"file": tmp_path / "taken.txt", "dir": tmp_path / "folder", "image": tmp_path / "im.png"}
    paths["file"].write_text("keep me")
    paths["dir"].mkdir()
    _png(paths["image"])
    paths["model"] = tmp_path / "model.safetensors"
    tiny_classifier_file(paths["model"])
    args = [a.format(**paths) for a in command]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "is a file" in line or "is a folder" in line or "holds a classification model" in line, line
    assert paths["file"].read_text() == "keep me"


def test_predict_answers_the_readable_images_and_refuses_an_all_unreadable_call(tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    tiny_classifier_file(model)
    good = _png(tmp_path / "in" / "good.png")
    bomb = png_header_only(tmp_path / "in" / "bomb.png", 20000, 20000)  # over Pillow's decompression-bomb limit
    assert main(["predict", str(good), str(bomb), "--checkpoint", str(model), "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    assert "top" in out[0] and "error" in out[1] and "bomb.png" in out[1]["error"]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert main(["predict", str(bomb), str(broken), "--checkpoint", str(model)]) == 2
    assert "none of the 2 input image(s) could be read" in _one_error_line(capsys)


def test_seg_train_refuses_a_bad_validation_mask_before_training(tmp_path, capsys):
    root = tmp_path / "seg_demo"
    shutil.copytree(seg_demo_dir(), root)
    mask = sorted((root / "masks" / "val").glob("*.png"))[1]
    Image.fromarray(np.zeros((5, 7), dtype=np.uint8)).save(mask)  # not the size of its image
    run = tmp_path / "run"
    args = ["seg", "train", "--config", "seg_demo", f"data.root={root}", "--output-dir", str(run), "sched.iters=2"]
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "validation set" in line and mask.name in line
    assert not (run / "checkpoints").exists()


def test_seg_predict_bounds_the_pixels_it_segments(tmp_path):
    from crossformer_vision.engine.config import merge_config
    from crossformer_vision.engine.loading import model_metadata, save_model
    from crossformer_vision.tasks.segmentation import build_segmentor
    from crossformer_vision.tasks.segmentation.config import DEFAULTS
    from crossformer_vision.tasks.segmentation.predict import predict_images

    tiny = {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}
    section = merge_config(
        DEFAULTS["model"], {"norm": "bn", "backbone": {"kwargs": tiny}, "kwargs": {"channels": 8, "aux_channels": 8}}
    )
    model = build_segmentor(section["name"], num_classes=3, backbone_kwargs=tiny, channels=8, aux_channels=8)
    cfg = merge_config(DEFAULTS, {"model": section, "eval": {"scale": None}})
    save_model(model, tmp_path / "m.safetensors", model_metadata("segmentation", section["name"], section, "abc", cfg))
    image = _png(tmp_path / "big.png", size=(96, 160))
    with pytest.warns(UserWarning, match="exceed the bound of 4096"):
        (result,) = predict_images(tmp_path / "m.safetensors", [image], tmp_path / "out", max_pixels=4096)
    h, w = result["segmented_at"]
    assert h * w <= 4096 and abs(w / h - 160 / 96) < 0.1
    assert Image.open(result["labels"]).size == (160, 96)
