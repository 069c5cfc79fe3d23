"""The console script: model facts table, demo and error reporting."""

import json

from crossformer_vision.cli.main import main as cli


def test_models_json(capsys):
    assert cli(["models", "--json", "--variants", "crossformer_s", "crossformerpp_s"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["variant"] for r in rows] == ["crossformer_s", "crossformerpp_s"]
    assert rows[0]["params"] == 30_657_394 and abs(rows[0]["gflops_official"] - 4.91) <= 0.02


def test_models_table_at_other_size(capsys):
    assert cli(["models", "--img-size", "512", "384", "--variants", "crossformer_t"]) == 0
    out = capsys.readouterr().out
    assert "512x384" in out and "crossformer_t" in out


def test_forward_runs_a_variant_on_the_bundled_image(capsys):
    assert cli(["models", "--forward", "--variants", "crossformer_t"]) == 0
    out = capsys.readouterr().out
    assert "64@56x56" in out and "(1, 1000)" in out


def test_demo_smoke(tmp_path):
    """The main job end to end, shrunk: both models train, the table and the pictures are written."""
    from train_utils import run_cli

    tiny = [
        "data.train_limit=256",
        "data.val_limit=100",
        "train.batch_size=32",
        "optim.base_batch=32",
        "train.threads=1",
        "train.progress=false",
    ]
    out = run_cli(["demo", "--quick", "--output-dir", str(tmp_path), *tiny])
    assert "Swin (timm)" in out.stdout and "CrossFormer" in out.stdout
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["model"] for r in rows] == ["CrossFormer", "Swin (timm)"]
    assert all(0 <= r["top1"] <= 100 for r in rows)
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    assert (tmp_path / "crossformer" / "confusion.png").is_file()


def test_errors_are_reported_without_traceback(capsys, tmp_path):
    assert cli(["convert", str(tmp_path / "nope.pth"), str(tmp_path / "out.safetensors")]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err


def test_config_mistakes_are_named(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  name: [oops\n")
    assert cli(["train", "--config", str(bad)]) == 2
    assert f"{bad} is not valid YAML" in capsys.readouterr().err
    assert cli(["train", "--config", "fashion_mnist_demo", "optim.lr=[1"]) == 2
    assert "override 'optim.lr=[1': the value is not valid YAML" in capsys.readouterr().err
    assert cli(["train", "--config", "fashion_mnist_demo", "train.batch_size=abc"]) == 2
    assert "train.batch_size takes a number, got 'abc'" in capsys.readouterr().err
    assert cli(["train", "--config", "fashion_mnist_demo", "train.deterministic=1"]) == 2
    assert "train.deterministic takes true or false" in capsys.readouterr().err
    # overrides on both sides of an option all count (the second one is checked, so this stops there)
    assert (
        cli(["train", "--config", "fashion_mnist_demo", "optim.lr=1e-3", "--force-resume", "train.batch_size=x"]) == 2
    )
    assert "train.batch_size takes a number, got 'x'" in capsys.readouterr().err
    assert cli(["train", "--config", "fashion_mnist_demo", "optim.lr=1e-3", "--force-resume", "stray"]) == 2
    assert "unrecognized arguments: stray" in capsys.readouterr().err
    assert cli(["models", "--img-size", "31"]) == 2
    assert "--img-size takes H or H W, each at least 32" in capsys.readouterr().err


def test_predict_topk_below_one_is_rejected(capsys, tmp_path):
    import pytest

    for bad in ("-1", "0", "x"):
        with pytest.raises(SystemExit) as exc:
            cli(["predict", str(tmp_path), "--checkpoint", str(tmp_path), "--topk", bad])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert "--topk" in err and ">= 1" in err and "Traceback" not in err


def test_a_model_argument_from_a_preset_for_another_model_is_named(capsys, tmp_path):
    """Switching model.name on a preset keeps the preset's model arguments: say which key set the one that fails."""
    runs = tmp_path / "runs"
    cases = [
        (["train", "--config", "fashion_mnist_demo", "model.name=deit_tiny_patch16_224"], "model.kwargs.depths"),
        (["seg", "train", "--config", "seg_demo", "model.name=semfpn_swin_s"], "model.kwargs.aux_channels"),
        (["det", "train", "--config", "det_demo_maskrcnn", "model.name=maskrcnn_swin_t"], "model.kwargs.group_size"),
    ]
    for i, (args, key) in enumerate(cases):
        assert cli([*args, f"train.output_dir={runs / str(i)}"]) == 2
        err = capsys.readouterr().err
        assert f"takes no argument '{key.rsplit('.', 1)[1]}', set by {key}" in err and "model.kwargs={}" in err, err
        assert "Traceback" not in err
