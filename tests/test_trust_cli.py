"""The CLI turns every failure a user can cause into one line on stderr (CROSSFORMER_DEBUG=1: the traceback)."""

import pytest

from crossformer_vision.cli import main as cli_main
from crossformer_vision.cli import models as models_cmd
from crossformer_vision.engine.trainer import TrainingInterrupted
from crossformer_vision.models.io import FileWriteError

CASES = [
    (TrainingInterrupted("training interrupted at step 3: ...; continue with the same command and --resume r"), 130,
     "crossformer models: training interrupted at step 3"),
    (KeyboardInterrupt(), 130, "crossformer models: interrupted"),
    (MemoryError(), 2, "crossformer models: error: out of memory; use smaller batches"),
    (MemoryError("Unable to allocate 72.8 TiB\nfor an array"), 2, "out of memory (Unable to allocate 72.8 TiB for an"),
    (IsADirectoryError(21, "Is a directory", "out"), 2, "error: [Errno 21] Is a directory: 'out'"),
    (NotADirectoryError(20, "Not a directory", "f/x"), 2, "error: [Errno 20] Not a directory: 'f/x'"),
    (FileExistsError(17, "File exists", "x"), 2, "error: [Errno 17] File exists: 'x'"),
    (FileWriteError("cannot write a.safetensors: no space left on the device; the previous file is intact"), 2,
     "error: cannot write a.safetensors: no space left"),
]  # fmt: skip


@pytest.mark.parametrize("error, code, text", CASES)
def test_failures_are_one_line(monkeypatch, capsys, error, code, text):
    def run(args):
        raise error

    monkeypatch.delenv("CROSSFORMER_DEBUG", raising=False)
    monkeypatch.setattr(models_cmd, "run", run)
    assert cli_main.main(["models"]) == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert text in err


@pytest.mark.parametrize("error", [KeyboardInterrupt(), MemoryError(), IsADirectoryError(21, "x")])
def test_debug_reraises(monkeypatch, error):
    def run(args):
        raise error

    monkeypatch.setenv("CROSSFORMER_DEBUG", "1")
    monkeypatch.setattr(models_cmd, "run", run)
    with pytest.raises(type(error)):
        cli_main.main(["models"])
