"""``crossformer seg convert`` / ``seg eval|predict --checkpoint`` with an official HRFormer OCR checkpoint (openseg
``HRT_SMALL_OCR_V2``): the parity fixture's weights saved in the official file layout (``{'state_dict':
{'module.backbone.*', 'module.ocr_distri_head.*', ...}}`` with ``relative_position_index`` buffers) are detected,
built as ``ocr_hrformer_s`` (window and classes from the shapes), converted and loaded back with equal outputs."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from crossformer_vision.cli.main import main
from crossformer_vision.engine.loading import load_model
from crossformer_vision.tasks.segmentation.convert import convert_mmseg
from crossformer_vision.tasks.segmentation.model import build_segmentor
from crossformer_vision.tasks.segmentation.ocr import convert_official_ocr, describe_ocr_state_dict
from fixtures_hrformer import FIXTURES, load_fixture

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    """(path of the official-layout ``.pth``, the fixture, the model test_hrformer builds from it)."""
    fx = load_fixture("ocr_s")
    sd = {f"module.{k}": v for k, v in fx["state_dict"].items()}
    for key in [k for k in sd if k.endswith("relative_position_bias_table")]:  # derived buffers, as official files
        sd[key.replace("relative_position_bias_table", "relative_position_index")] = torch.zeros(49, 49).long()
    path = tmp_path_factory.mktemp("ocr") / "hrt_small_ocr_v2.pth"
    torch.save({"config_dict": {"network": {"model_name": "hrt_small_ocr_v2"}}, "state_dict": sd, "epoch": 3}, path)
    reference = build_segmentor("ocr_hrformer_s", num_classes=FIXTURES["ocr_s"]["num_classes"]).eval()
    reference.load_state_dict(convert_official_ocr(fx["state_dict"]), strict=False)
    return path, fx, reference


def _metadata(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_convert_then_load_gives_the_reference_outputs(official, tmp_path, capsys):
    path, fx, reference = official
    dst = tmp_path / "ocr_s.safetensors"
    assert main(["seg", "convert", str(path), str(dst)]) == 0
    assert "ocr_hrformer_s, 5 classes, window 7" in capsys.readouterr().out
    meta = _metadata(dst)
    assert meta["kind"] == "hrformer_ocr" and meta["model"] == "ocr_hrformer_s" and meta["window_size"] == "7"
    assert "lda_rule" not in meta and "classes" not in meta  # official files carry no class names
    with torch.no_grad():
        expected = reference(fx["input"])
        for source in (path, dst):  # seg eval / predict --checkpoint: the official file and the converted one
            loaded = load_model(source, "segmentation")
            assert loaded.name == "ocr_hrformer_s" and loaded.classes is None and loaded.model.window_size == 7
            assert torch.equal(loaded.model(fx["input"]), expected)
    assert (reference(fx["input"]) - fx["outputs"][1]).abs().max() <= 1e-4 * fx["outputs"][1].abs().max()


def test_window_and_variant_come_from_the_shapes(official):
    _, fx, _ = official
    sd = convert_official_ocr(fx["state_dict"])
    info = describe_ocr_state_dict(sd)
    assert info == dict(name="ocr_hrformer_s", variant="hrformer_s", window_size=7, num_classes=5)
    w13 = {k: torch.zeros(25 * 25, v.shape[1]) if k.endswith("bias_table") else v for k, v in sd.items()}
    assert describe_ocr_state_dict(w13)["window_size"] == 13
    narrow = {**sd, "backbone.transition1.0.0.weight": torch.zeros(18, 256, 3, 3)}  # T's width, S's modules
    with pytest.raises(ValueError, match=r"not hrformer_t: num_modules \(1, 4, 2\) \(expected \(1, 3, 2\)\)"):
        describe_ocr_state_dict(narrow)


def test_edited_files_and_wrong_files_are_one_line(official, tmp_path, capsys):
    path, fx, _ = official
    broken = tmp_path / "broken.pth"
    sd = {f"module.{k}": v for k, v in fx["state_dict"].items() if not k.startswith("aux_head.2.")}
    torch.save({"state_dict": sd}, broken)
    cls = tmp_path / "crossformer_s_cls.pth"
    torch.save({"model": {"patch_embed.projs.0.weight": torch.zeros(48, 3, 4, 4), "head.weight": torch.zeros(3, 8)}},
               cls)  # fmt: skip
    wrong_width = tmp_path / "wrong.pth"
    sd = {**fx["state_dict"], "conv3x3.0.weight": torch.zeros(512, 400, 3, 3)}
    torch.save({"state_dict": sd}, wrong_width)
    for bad, words in (
        (broken, "aux_head.2.weight is missing"),
        (cls, "needs backbone.* and decode_head.*"),
        (wrong_width, "shape mismatch: ['decode_head.1.bottleneck.conv.weight (512, 400, 3, 3) vs model"),
    ):
        assert main(["seg", "convert", str(bad), str(tmp_path / "out.safetensors")]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "out.safetensors").exists()
    good = tmp_path / "good.safetensors"
    meta = convert_mmseg(path, good)
    edited = tmp_path / "edited.safetensors"
    save_file(load_file(str(good)), str(edited), metadata={**meta, "window_size": "13"})
    assert main(["seg", "predict", "--checkpoint", str(edited), str(tmp_path / "none.png")]) == 2
    assert "metadata says model ocr_hrformer_s with window 13" in capsys.readouterr().err
    assert main(["seg", "convert", str(path), str(tmp_path / "x.safetensors"), "--lda-rule", "fixed_group"]) == 2
    assert "HRFormer OCR model" in capsys.readouterr().err
