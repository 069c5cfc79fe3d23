"""Output paths: a file where a folder is wanted, or a folder where a file is wanted, is one line with the fix."""

import pytest

from crossformer_vision.utils.paths import output_dir, output_file


def test_output_dir_is_created(tmp_path):
    out = output_dir(tmp_path / "a" / "b")
    assert out.is_dir() and out == tmp_path / "a" / "b"
    assert output_dir(out) == out  # an existing folder is fine


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=r"--output-dir .*/f is a file, not a folder; choose a folder") as err:
        output_dir(tmp_path / "f")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"^train\.output_dir "):
        output_dir(tmp_path / "f", "train.output_dir")


def test_output_dir_below_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=rf"--output-dir {tmp_path}/f/sub/dir: {tmp_path}/f is a file, not a folder"):
        output_dir(tmp_path / "f" / "sub" / "dir")
    assert (tmp_path / "f").read_text() == "x"


def test_output_file_parent_created(tmp_path):
    out = output_file(tmp_path / "x" / "y" / "m.safetensors", "--output")
    assert out.parent.is_dir() and not out.exists()


def test_output_file_that_is_a_folder(tmp_path):
    (tmp_path / "d").mkdir()
    message = r"--output .*/d is a folder; give a file name \(e\.g\. .*/d/model\.safetensors"
    with pytest.raises(ValueError, match=message):
        output_file(tmp_path / "d", "--output")


def test_output_file_below_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match=rf"--output {tmp_path}/f/m\.pt: {tmp_path}/f is a file, not a folder"):
        output_file(tmp_path / "f" / "m.pt", "--output")


def test_uncreatable_folder_is_one_line(tmp_path, monkeypatch):
    from pathlib import Path

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(ValueError, match=r"cannot create the folder of --output-dir .*: permission denied"):
        output_dir(tmp_path / "new")
