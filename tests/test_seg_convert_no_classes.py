"""An mmseg checkpoint without class names: ``seg convert`` writes no ``classes`` entry, and the converted file (also
one of an older version with ``"classes": "null"``) loads for eval / predict with numbered class names."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from crossformer_vision.engine.loading import load_model
from crossformer_vision.tasks.segmentation import build_segmentor
from crossformer_vision.tasks.segmentation.convert import convert_mmseg
from crossformer_vision.tasks.segmentation.predict import predict_images

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4))


@pytest.fixture(scope="module")
def no_class_pth(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_segmentor("upernet_crossformer_s", num_classes=3, channels=8, aux_channels=8, backbone_kwargs=TINY)
    path = tmp_path_factory.mktemp("seg") / "noclasses.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, path)
    yield path
    torch.set_num_threads(threads)


def _metadata(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_convert_writes_no_null_classes(no_class_pth, tmp_path):
    dst = tmp_path / "conv.safetensors"
    meta = convert_mmseg(no_class_pth, dst)
    assert "classes" not in meta and "classes" not in _metadata(dst)
    loaded = load_model(dst, "segmentation")
    model = loaded.model
    assert model.class_names is None and loaded.classes is None and model.num_classes == 3


def test_null_classes_of_older_files_read_as_unknown(no_class_pth, tmp_path):
    dst = tmp_path / "conv.safetensors"
    meta = convert_mmseg(no_class_pth, dst)
    old = tmp_path / "old.safetensors"
    save_file(load_file(str(dst)), str(old), metadata={**meta, "classes": "null", "palette": ""})
    model = load_model(old, "segmentation").model
    assert model.class_names is None and model.palette is None


def test_predict_with_a_converted_file_without_classes(no_class_pth, tmp_path):
    dst = tmp_path / "conv.safetensors"
    convert_mmseg(no_class_pth, dst)
    image = tmp_path / "im.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(image)
    (result,) = predict_images(dst, [image, tmp_path], tmp_path / "out", device="cpu")  # named twice: once
    assert set(result["classes"]) <= {"0", "1", "2"} and abs(sum(result["classes"].values()) - 1) < 0.01
    assert (tmp_path / "out" / "im_labels.png").is_file()
    assert json.loads(json.dumps(result))  # plain JSON for --json
