"""``det predict`` input handling: colliding base names, a file named twice, unreadable images (a stub detector)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import crossformer_vision.tasks.detection.predict as det_predict
from crossformer_vision.engine.loading import LoadedModel
from crossformer_vision.tasks.detection import predict_and_save


class StubDetector(nn.Module):
    """One box per image, labelled 1, whose x1 is the image width (tells the images apart)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, images):
        out = []
        for x in images:
            w = float(x.shape[-1])
            out.append(
                {
                    "boxes": torch.tensor([[0.0, 0.0, w - 1, 2.0]]),
                    "labels": torch.tensor([1]),
                    "scores": torch.tensor([0.9]),
                }
            )
        return out


def _png(path: Path, width: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, width, 3), 100, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def stub(monkeypatch):
    def load(*a, **k):
        return LoadedModel(StubDetector(), "detection", "stub", ["thing"], None, "run", "run")

    monkeypatch.setattr(det_predict, "load_model", load)


def test_same_base_name_gets_unique_pictures(tmp_path, stub):
    a = _png(tmp_path / "dup" / "a" / "x.png", 10)
    b = _png(tmp_path / "dup" / "b" / "x.png", 20)
    out = tmp_path / "out"
    json_path, paths, unreadable = det_predict.predict_files("run", [str(a), str(b)], out, device="cpu")
    assert paths == [a, b] and unreadable == {}
    assert sorted(p.name for p in out.glob("*.png")) == ["x.png", "x_.png"]
    assert Image.open(out / "x.png").size == (10, 8) and Image.open(out / "x_.png").size == (20, 8)
    assert set(json.loads(json_path.read_text())) == {str(a), str(b)}


def test_a_file_named_twice_is_predicted_once(tmp_path, stub):
    folder = tmp_path / "imgs"
    x = _png(folder / "x.png", 10)
    _png(folder / "y.png", 12)
    out = tmp_path / "out"
    twice = [str(folder), str(x), str(tmp_path / "imgs" / ".." / "imgs" / "x.png")]
    json_path, paths, _ = det_predict.predict_files("run", twice, out, device="cpu")
    assert [p.name for p in paths] == ["x.png", "y.png"]
    assert sorted(p.name for p in out.glob("*.png")) == ["x.png", "y.png"]
    assert len(json.loads(json_path.read_text())) == 2


def test_unreadable_images_are_skipped_and_reported(tmp_path, stub):
    good = _png(tmp_path / "mixed" / "good.png", 10)
    bad = tmp_path / "mixed" / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "out"
    json_path, paths, unreadable = det_predict.predict_files("run", [str(tmp_path / "mixed")], out, device="cpu")
    assert paths == [good]
    assert list(unreadable) == [str(bad)] and "cannot read the image" in unreadable[str(bad)]
    assert list(json.loads(json_path.read_text())) == [str(good)]
    assert [p.name for p in out.glob("*.png")] == ["good.png"]


def test_no_readable_image_is_an_error(tmp_path, stub):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="none of the 1 images could be read"):
        det_predict.predict_files("run", [str(bad)], tmp_path / "out", device="cpu")
    assert not (tmp_path / "out" / "predictions.json").exists()


def test_predict_and_save_without_unreadable_still_raises(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="cannot read the image"):
        predict_and_save(StubDetector(), [bad], tmp_path / "out", device="cpu")


def test_cli_reports_skipped_images(tmp_path, stub, capsys):
    from crossformer_vision.cli.main import main

    good = _png(tmp_path / "mixed" / "good.png", 10)
    (tmp_path / "mixed" / "bad.jpg").write_bytes(b"not a jpeg")
    rc = main(["det", "predict", str(tmp_path / "mixed"), "--checkpoint", "run", "--output-dir", str(tmp_path / "o")])
    text = capsys.readouterr().out
    assert rc == 0
    assert "in 1 images" in text and "bad.jpg" in text and "unreadable" in text
    assert list(json.loads((tmp_path / "o" / "predictions.json").read_text())) == [str(good)]
