"""ImageNet-layout folders: image modes, unreadable files, missing splits, empty and mismatched classes; and
train / eval / predict on such a folder end to end."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from crossformer_vision.data.folder import ImageFolderDataset, collate_skipping, load_rgb
from train_utils import TINY_RUN, run_cli


def _make(root, split, classes, n=4, size=40):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        d = root / split / name
        d.mkdir(parents=True)
        for i in range(n):
            arr = (rng.random((size, size)) * 60 + 80 * c).clip(0, 255).astype(np.uint8)
            Image.fromarray(arr).convert("RGB").save(d / f"{i}.png")


def test_image_modes_become_rgb(tmp_path):
    grey = tmp_path / "g.png"
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(grey)
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(rgba)
    deep = tmp_path / "d.png"
    Image.fromarray(np.full((8, 8), 65535, np.uint16)).save(deep)
    pal = tmp_path / "p.gif"
    Image.new("P", (8, 8), 3).save(pal)
    for path in (grey, rgba, deep, pal):
        im = load_rgb(path)
        assert im.mode == "RGB" and im.size == (8, 8)
    assert np.asarray(load_rgb(deep)).max() == 255  # 16-bit white stays white (scaled, not clipped)
    assert tuple(np.asarray(load_rgb(rgba))[0, 0]) == (10, 20, 30)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    _make(tmp_path, "train", ["a", "b"])
    (tmp_path / "train" / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    ds = ImageFolderDataset(tmp_path, "train", transform=lambda im: torch.zeros(3, 4, 4))
    batch = collate_skipping([ds[i] for i in range(len(ds))])
    assert batch["images"].shape[0] == 8 and len(batch["skipped"]) == 1
    assert batch["skipped"][0][0].endswith("broken.jpg")
    strict = ImageFolderDataset(tmp_path, "train", on_error="raise")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.jpg"):
        [strict[i] for i in range(len(strict))]


def test_layout_problems_are_explained(tmp_path):
    _make(tmp_path, "train", ["a", "b", "c"])
    _make(tmp_path, "val", ["a", "b", "d"])
    with pytest.raises(FileNotFoundError, match=r"split folder .*valid does not exist \(found: \['train', 'val'\]\)"):
        ImageFolderDataset(tmp_path, "valid")
    train = ImageFolderDataset(tmp_path, "train")
    with pytest.raises(ValueError, match=r"only in val: \['d'\]; missing from val: \['c'\]"):
        ImageFolderDataset(tmp_path, "val", classes=train.classes)
    (tmp_path / "train" / "e").mkdir()
    with pytest.warns(UserWarning, match=r"1 class folder\(s\) hold no images \(e\)"):
        ds = ImageFolderDataset(tmp_path, "train")
    assert ds.classes == ["a", "b", "c", "e"]


@pytest.mark.slow
def test_train_eval_predict_on_a_folder(tmp_path):
    _make(tmp_path / "data", "train", ["dark", "mid", "light"], n=12)
    _make(tmp_path / "data", "val", ["dark", "mid", "light"], n=4)
    Image.fromarray(np.full((40, 40), 30, np.uint16)).save(tmp_path / "data" / "val" / "dark" / "deep.png")
    Image.new("RGBA", (40, 40), (200, 200, 200, 128)).save(tmp_path / "data" / "val" / "light" / "alpha.png")
    (tmp_path / "data" / "val" / "mid" / "corrupt.png").write_bytes(b"garbage")
    run = tmp_path / "run"
    overrides = [o for o in TINY_RUN if not o.startswith(("data.dataset", "data.train_limit", "data.val_limit"))]
    run_cli(
        [
            "train",
            *overrides,
            "data.dataset=folder",
            f"data.root={tmp_path / 'data'}",
            "train.batch_size=8",
            "optim.base_batch=8",
            "sched.epochs=2",
            "train.amp=bf16",
            f"train.output_dir={run}",
        ]
    )
    results = json.loads((run / "results.json").read_text())
    assert results["metrics"]["num_images"] == 14 and results["metrics"]["skipped"] == 1
    for png in ("curves.png", "confusion.png"):
        assert (run / png).stat().st_size > 10_000
    out = run_cli(["eval", "--checkpoint", str(run), "--json"])
    metrics = json.loads(out.stdout)["metrics"]
    assert metrics["num_images"] == 14
    # evaluated under the run's bf16 autocast, as in training (in float32 the loss differs by ~1e-3)
    assert metrics["loss"] == pytest.approx(results["metrics"]["loss"], rel=1e-5)
    assert metrics["top1"] == results["metrics"]["top1"]
    out = run_cli(
        ["predict", "--checkpoint", str(run), "--json", "--topk", "2", str(tmp_path / "data" / "val" / "mid")]
    )
    preds = json.loads(out.stdout)
    assert len(preds) == 5 and sum("error" in p for p in preds) == 1
    ok = [p for p in preds if "top" in p]
    assert all(len(p["top"]) == 2 and p["top"][0]["label"] in ("dark", "mid", "light") for p in ok)
    # the run's other weights evaluate too: best.safetensors and a checkpoints/step-* folder
    step = sorted((run / "checkpoints").glob("step-*"))[-1]
    for weights in (run / "best.safetensors", step):
        out = run_cli(["eval", "--checkpoint", str(weights), "--json"])
        assert json.loads(out.stdout)["metrics"]["num_images"] == 14
    # an official-style file with another number of classes (no class names) is refused, not an IndexError
    sd = {k: v for k, v in load_file(str(run / "final.safetensors")).items()}
    sd["head.weight"], sd["head.bias"] = torch.zeros(10, sd["head.weight"].shape[1]), torch.zeros(10)
    torch.save({"model": sd}, tmp_path / "other.pth")
    kwargs = [o for o in overrides if o.startswith("model.kwargs")]
    proc = run_cli(
        [
            "eval",
            "--checkpoint",
            str(tmp_path / "other.pth"),
            "--model",
            "crossformer_t",
            "data.dataset=folder",
            f"data.root={tmp_path / 'data'}",
            *kwargs,
        ],
        check=False,
    )
    assert proc.returncode == 2 and "the model predicts 10 classes but the dataset has 3" in proc.stderr, proc.stderr
