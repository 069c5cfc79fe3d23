"""Config files and overrides from outside: a binary or huge file, a value where a section belongs, and a fraction
where a whole number belongs are each refused in one line naming the file or key, before the run starts."""

import os

import pytest
from PIL import Image

from crossformer_vision.engine import config as config_module
from crossformer_vision.engine.config import apply_overrides, load_config, merge_config

DEFAULTS = {
    "model": {"name": "crossformer_s", "drop_path_rate": None, "kwargs": {}, "backbone": {"weights": None}},
    "optim": {"lr": 5.0e-4, "betas": [0.9, 0.999]},
    "sched": {"epochs": 300, "warmup_epochs": 20.0},
    "train": {"batch_size": 128, "amp": None, "deterministic": False},
}


def _one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("kind", ["random bytes", "png renamed", "nul bytes"])
def test_a_binary_config_file_is_named(tmp_path, kind):
    path = tmp_path / "run.yaml"
    if kind == "random bytes":
        path.write_bytes(b"\xff\xfe" + os.urandom(4096))
    elif kind == "png renamed":
        Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "x.png")
        (tmp_path / "x.png").rename(path)
    else:
        path.write_bytes(b"model:\x00\x01 name")
    with pytest.raises(ValueError) as err:
        load_config(DEFAULTS, path)
    message = _one_line(err)
    assert str(path) in message
    assert "not a text file" in message or "is not valid YAML" in message


def test_a_huge_config_file_is_not_read(tmp_path, monkeypatch):
    monkeypatch.setattr(config_module, "MAX_CONFIG_BYTES", 1000)
    path = tmp_path / "big.yaml"
    path.write_text("model:\n  name: crossformer_s\n" + "# padding\n" * 200)
    with pytest.raises(ValueError, match=r"big\.yaml is 0\.0 MB, not a config file \(the limit is 0 MB\)"):
        load_config(DEFAULTS, path)
    path.write_text("model:\n  name: crossformer_b\n")
    assert load_config(DEFAULTS, path)["model"]["name"] == "crossformer_b"


def test_deeply_nested_yaml_is_named(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("[" * 20000)
    with pytest.raises(ValueError, match=r"deep\.yaml is not valid YAML"):
        load_config(DEFAULTS, path)


def test_a_utf8_bom_is_fine(tmp_path):
    path = tmp_path / "bom.yaml"
    path.write_bytes("\ufeffmodel:\n  name: crossformer_t\n".encode())
    assert load_config(DEFAULTS, path)["model"]["name"] == "crossformer_t"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model=3", "model is a section of settings, not a value (got 3); set its entries, e.g. model.name="),
        ("model=null", "model is a section of settings, not a value (got None)"),
        ("model.backbone=x", "model.backbone is a section of settings, not a value (got 'x')"),
        ("model.kwargs=3", "model.kwargs takes a mapping of arguments, got 3"),
        ("model.kwargs=[1, 2]", "model.kwargs takes a mapping of arguments"),
    ],
)
def test_a_value_for_a_section_is_refused(override, message):
    with pytest.raises(ValueError) as err:
        apply_overrides(DEFAULTS, [override])
    assert message in _one_line(err)


def test_a_mapping_for_a_section_is_merged_and_checked():
    cfg = apply_overrides(DEFAULTS, ["model={name: swin_t}", "model.kwargs={embed_dim: 32}"])
    assert cfg["model"] == {**DEFAULTS["model"], "name": "swin_t", "kwargs": {"embed_dim": 32}}
    assert apply_overrides(cfg, ["model.kwargs={}"])["model"]["kwargs"] == {}
    with pytest.raises(ValueError, match=r"unknown config key 'model\.nme'.*did you mean model\.name"):
        apply_overrides(DEFAULTS, ["model={nme: swin_t}"])
    with pytest.raises(ValueError, match=r"train\.batch_size takes a whole number, got 2\.5"):
        apply_overrides(DEFAULTS, ["train={batch_size: 2.5}"])


def test_a_yaml_section_set_to_a_value_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: crossformer_b\n")
    with pytest.raises(ValueError) as err:
        load_config(DEFAULTS, path)
    message = _one_line(err)
    assert message.startswith(f"{path}: model is a section of settings, not a value (got 'crossformer_b')")
    assert "e.g. model: {name: crossformer_s}" in message
    path.write_text("model:\n  kwargs: 3\n")
    with pytest.raises(ValueError, match=r"model\.kwargs takes a mapping of arguments, got 3"):
        load_config(DEFAULTS, path)
    path.write_text("model:\n# name: crossformer_b\ntrain:\n  batch_size: 8\n")  # an empty section reads as null
    cfg = load_config(DEFAULTS, path)
    assert cfg["model"] == DEFAULTS["model"] and cfg["train"]["batch_size"] == 8


@pytest.mark.parametrize("value", ["2.5", "1e-3", ".inf", ".nan"])
def test_a_fraction_for_a_whole_number_is_refused(tmp_path, value):
    with pytest.raises(ValueError) as err:
        apply_overrides(DEFAULTS, [f"train.batch_size={value}"])
    assert "command-line overrides: train.batch_size takes a whole number, got" in _one_line(err)
    path = tmp_path / "run.yaml"
    path.write_text(f"sched:\n  epochs: {value}\n")
    with pytest.raises(ValueError, match=rf"{path.name}: sched\.epochs takes a whole number"):
        load_config(DEFAULTS, path)


def test_whole_numbers_for_int_defaults_and_fractions_for_float_defaults(tmp_path):
    cfg = apply_overrides(DEFAULTS, ["train.batch_size=2.0", "sched.epochs=1e2", "sched.warmup_epochs=0.5"])
    assert cfg["train"]["batch_size"] == 2 and isinstance(cfg["train"]["batch_size"], int)
    assert cfg["sched"]["epochs"] == 100 and isinstance(cfg["sched"]["epochs"], int)
    assert cfg["sched"]["warmup_epochs"] == 0.5
    # float defaults take ints, None defaults take anything, booleans stay booleans
    cfg = apply_overrides(DEFAULTS, ["optim.lr=1", "train.amp=bf16", "model.drop_path_rate=0.3"])
    assert cfg["optim"]["lr"] == 1 and cfg["train"]["amp"] == "bf16" and cfg["model"]["drop_path_rate"] == 0.3
    with pytest.raises(ValueError, match=r"train\.batch_size takes a number, got True"):
        apply_overrides(DEFAULTS, ["train.batch_size=true"])
    assert merge_config(DEFAULTS, {"sched": {"warmup_epochs": 0.25}})["sched"]["warmup_epochs"] == 0.25


def test_the_shipped_classification_presets_still_load():
    from importlib.resources import files

    import yaml

    from crossformer_vision.tasks.classification.config import DEFAULTS as CLASSIFICATION

    presets = sorted((files("crossformer_vision") / "configs" / "classification").iterdir(), key=lambda p: p.name)
    assert len(presets) >= 3
    for preset in presets:
        loaded = yaml.safe_load(preset.read_text())
        merged = merge_config(CLASSIFICATION, loaded, preset.name)
        assert merged["sched"]["warmup_epochs"] == loaded.get("sched", {}).get("warmup_epochs", 20)
