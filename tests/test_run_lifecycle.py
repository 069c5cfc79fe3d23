"""The shared run lifecycle and the one loader: output-directory rule, model files as untrusted data, every way of
naming a model (run folder, killed run, checkpoint folder, file)."""

from __future__ import annotations

import json

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from crossformer_vision.engine import CheckpointManager, load_config
from crossformer_vision.engine.loading import load_model, model_metadata
from crossformer_vision.engine.run import RESULT_KEYS, check_output_dir, prepare_run, write_results
from crossformer_vision.tasks.classification.config import DEFAULTS
from train_utils import TINY_ARGS, tiny_classifier_file

TINY = TINY_ARGS
CLASSES = ["a", "b", "c"]


def _classifier_file(path, **kwargs):
    return tiny_classifier_file(path, CLASSES, **kwargs)


def _rewrite_meta(src, dst, **changes):
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in changes.items()})
    save_file(load_file(str(src)), str(dst), metadata=meta)
    return dst


def test_model_file_round_trip_and_schema(tmp_path):
    model = _classifier_file(tmp_path / "final.safetensors")
    loaded = load_model(tmp_path / "final.safetensors", "classification")
    assert loaded.name == "crossformer_t" and loaded.classes == CLASSES and loaded.kind == "run"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


@pytest.mark.parametrize(
    "args, what",
    [
        ({**TINY, "pretrained_cfg_overlay": {"url": "http://example.invalid/w.pth"}}, "pretrained_cfg_overlay"),
        ({**TINY, "checkpoint_path": "/etc/passwd"}, "checkpoint_path"),
        ({**TINY, "pretrained": True}, "pretrained"),
        ({**TINY, "embed_dim": 10**6}, "embed_dim"),
    ],
)
def test_metadata_that_reaches_downloads_paths_or_memory_is_refused(tmp_path, args, what):
    src = tmp_path / "ok.safetensors"
    _classifier_file(src)
    bad = _rewrite_meta(src, tmp_path / "bad.safetensors", model_args=args)
    with pytest.raises(ValueError, match=what):
        load_model(bad, "classification")


def test_a_head_of_the_wrong_shape_is_an_error_not_a_random_head(tmp_path):
    src = tmp_path / "ok.safetensors"
    _classifier_file(src)
    state = load_file(str(src))
    state["head.weight"] = state["head.weight"][:2].clone()
    state["head.bias"] = state["head.bias"][:2].clone()
    from safetensors import safe_open

    with safe_open(str(src), "pt") as f:
        meta = dict(f.metadata())
    save_file(state, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"shape mismatch for head\.(weight|bias)"):
        load_model(tmp_path / "bad.safetensors", "classification")


def test_another_tasks_model_names_the_right_command(tmp_path):
    src = tmp_path / "ok.safetensors"
    _classifier_file(src)
    with pytest.raises(ValueError, match=r"classification model.*crossformer eval / predict"):
        load_model(src, "segmentation")


def test_a_killed_run_and_its_checkpoint_folders_load(tmp_path):
    """A run killed before final.safetensors: the run folder means its latest checkpoint, a step folder itself."""
    torch.manual_seed(0)
    model = timm.create_model("crossformer_t", num_classes=3, **TINY).eval()
    meta = model_metadata("classification", "crossformer_t", TINY, CLASSES, {})
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    step = manager.save(4, model.state_dict(), {"global_step": 4}, {"train": {}}, meta={"model_meta": meta})
    for path in (tmp_path / "run", step):
        loaded = load_model(path, "classification")
        assert loaded.kind == "checkpoint" and loaded.classes == CLASSES
        assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values()))


def test_nothing_to_load_is_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_model(tmp_path / "absent", "classification")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no trained model"):
        load_model(tmp_path / "empty", "classification")
    (tmp_path / "zero.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"zero\.safetensors"):
        load_model(tmp_path / "zero.safetensors", "classification")


def test_stored_config_paths_are_not_followed(tmp_path):
    """A model file's stored configuration gives test-time settings, never paths (data roots, weights)."""
    cfg = load_config(DEFAULTS, None, ["data.root=/somewhere/secret", "model.pretrained=/etc/x.pth", "train.amp=bf16"])
    _classifier_file(tmp_path / "m.safetensors", config=cfg)
    run_cfg = load_model(tmp_path / "m.safetensors", "classification").run_config(
        DEFAULTS, ("model.pretrained", "data.root")
    )
    assert run_cfg["data"]["root"] is None and run_cfg["model"]["pretrained"] is None
    assert run_cfg["train"]["amp"] == "bf16"


def test_an_occupied_output_dir_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("original: true\n")
    _classifier_file(run / "final.safetensors")
    cfg = load_config(DEFAULTS, None, [f"train.output_dir={run}"])
    with pytest.raises(ValueError, match=r"already holds a run.*--resume"):
        prepare_run(cfg, "classification")
    assert (run / "config.yaml").read_text() == "original: true\n"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_output_dir(tmp_path / "file", None)


def test_results_start_with_the_shared_keys(tmp_path):
    write_results(tmp_path, {"per_class": [], **dict.fromkeys(RESULT_KEYS, 0)})
    assert list(json.loads((tmp_path / "results.json").read_text()))[: len(RESULT_KEYS)] == list(RESULT_KEYS)
    with pytest.raises(ValueError, match="skipped"):
        write_results(tmp_path, {k: 0 for k in RESULT_KEYS if k != "skipped"})


def test_model_files_carry_no_local_paths():
    """Two identical runs in different folders write identical metadata: paths are stored as null."""
    from crossformer_vision.tasks.classification.config import PATH_KEYS

    metas = [
        model_metadata(
            "classification", "crossformer_t", TINY, CLASSES, load_config(DEFAULTS, None, [f"train.output_dir={d}"]),
            path_keys=PATH_KEYS,
        )
        for d in ("/runs/a", "/elsewhere/b")
    ]  # fmt: skip
    assert metas[0] == metas[1]
    assert json.loads(metas[0]["config"])["train"]["output_dir"] is None
