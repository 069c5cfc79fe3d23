"""Training checkpoints that lose nothing: atomic directories, the last N kept, exact resume.

A checkpoint is a directory ``step-00001234/`` holding

* ``model.safetensors`` (and ``ema.safetensors``): the weights, in the project's own format;
* ``state.pt``: optimizer, scheduler, grad scaler, RNG states, epoch / step counters, metric history
  (plain tensors and values: it loads with ``torch.load(weights_only=True)``);
* ``config.yaml``: the resolved run configuration;
* ``meta.json``: written last; a directory without it is incomplete and ignored.

Everything is first written to a hidden temporary directory next to it, flushed to disk, then renamed in one
``os.replace``. A run killed at any moment leaves the previous checkpoint untouched; a full disk or a read-only
directory raises :class:`CheckpointWriteError` and the previous checkpoint is still there.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..models.io import normal_file_mode, read_safetensors_header, write_error_reason
from .config import save_config

__all__ = [
    "CheckpointManager",
    "CheckpointWriteError",
    "check_output_dir",
    "check_resume_target",
    "load_training_checkpoint",
    "load_training_checkpoint_path",
]

_PREFIX = "step-"


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written; the previous one is intact."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage: every tensor gets its own contiguous copy
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


class CheckpointManager:
    """Writes and finds training checkpoints in ``directory``.

    Args:
        directory: Where ``step-*`` directories live.
        keep_last: How many complete checkpoints to keep (older ones are deleted after a successful write).
    """

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.glob(f"{_PREFIX}*") if p.is_dir() and (p / "meta.json").is_file()]
        return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))

    def latest(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def save(
        self,
        step: int,
        model_state: Mapping[str, torch.Tensor],
        train_state: Mapping[str, Any],
        config: Mapping[str, Any],
        ema_state: Mapping[str, torch.Tensor] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write checkpoint ``step`` atomically and prune old ones; returns its directory."""
        final = self.directory / f"{_PREFIX}{step:08d}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=self.directory))
            os.chmod(tmp, normal_file_mode(directory=True))  # mkdtemp makes 0700: the mode of any new folder
        except OSError as err:
            raise self._error(err, final) from None
        try:
            save_file(_tensors(model_state), str(tmp / "model.safetensors"))
            if ema_state is not None:
                save_file(_tensors(ema_state), str(tmp / "ema.safetensors"))
            torch.save(dict(train_state), tmp / "state.pt")
            save_config(config, tmp / "config.yaml")
            info = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), **(meta or {})}
            (tmp / "meta.json").write_text(json.dumps(info, indent=1))
            mode = normal_file_mode()
            for f in tmp.iterdir():
                os.chmod(f, mode)  # the safetensors writer makes 0600 files
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():  # same step written again (e.g. end of epoch right after a periodic save)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        except (OSError, RuntimeError, SafetensorError) as err:
            # a full disk / read-only folder / size limit: OSError from Python, SafetensorError from the safetensors
            # writer, RuntimeError ("unexpected pos") from torch.save
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._error(err, final) from None
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune()
        return final

    def _error(self, err: BaseException, target: Path) -> CheckpointWriteError:
        previous = self.latest()
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        return CheckpointWriteError(
            f"cannot write checkpoint {target}: {write_error_reason(err)}; {kept}. Free space or choose another "
            "output directory (train.output_dir=...) and resume."
        )

    def _prune(self) -> None:
        for old in self.checkpoints()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for tmp in self.directory.glob(f".{_PREFIX}*.tmp"):  # left by a run killed while writing
            shutil.rmtree(tmp, ignore_errors=True)


def load_training_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint directory written by :class:`CheckpointManager` (or the run directory: its latest).

    Raises:
        FileNotFoundError: No checkpoint there.
        ValueError: One line: a file of the checkpoint is missing, truncated, garbled or holds objects outside the
            weights-only allow-list; it names the checkpoint and the earlier checkpoints to resume from instead.
    """
    path = load_training_checkpoint_path(path)
    out: dict[str, Any] = {"path": path}
    try:
        out["meta"] = _read_json(path / "meta.json")
        out["config"] = _read_yaml(path / "config.yaml")
        out["model"] = _read_weights(path / "model.safetensors")
        out["state"] = _read_state(path / "state.pt")
        if (path / "ema.safetensors").is_file():
            out["ema"] = _read_weights(path / "ema.safetensors")
    except _Damaged as err:
        raise ValueError(f"cannot resume from {path}: {err}; {_alternatives(path)}") from None
    return out


class _Damaged(Exception):
    pass


def _reason(err: BaseException) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _read_json(file: Path) -> dict[str, Any]:
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as err:
        raise _Damaged(f"{file.name} is missing or unreadable ({_reason(err)})") from None
    if not isinstance(value, dict):
        raise _Damaged(f"{file.name} is not a JSON object")
    return value


def _read_yaml(file: Path) -> dict[str, Any]:
    import yaml

    try:
        value = yaml.safe_load(file.read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, yaml.YAMLError) as err:
        raise _Damaged(f"{file.name} is missing or unreadable ({_reason(err)})") from None
    if not isinstance(value, dict):
        raise _Damaged(f"{file.name} is not a configuration mapping")
    return value


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    try:
        read_safetensors_header(file)
        return load_file(str(file))
    except FileNotFoundError:
        raise _Damaged(f"{file.name} is missing") from None
    except (ValueError, OSError, SafetensorError, MemoryError) as err:
        reason = _reason(err).replace(f"cannot read {file}: ", "")
        raise _Damaged(f"{file.name} is damaged: {reason}") from None


def _read_state(file: Path) -> dict[str, Any]:
    import zipfile

    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "not an allowed global" in str(err) or "WeightsUnpickler" in str(err):
            raise _Damaged(
                f"{file.name} holds objects outside the weights-only allow-list, which a training checkpoint never "
                "does (a crafted or foreign file)"
            ) from None
        raise _Damaged(f"{file.name} is damaged ({_reason(err)})") from None
    except (OSError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, MemoryError, TypeError) as err:
        raise _Damaged(f"{file.name} is missing, truncated or damaged ({_reason(err)})") from None
    if not isinstance(state, dict):
        raise _Damaged(f"{file.name} is not a training state (a mapping of states and counters)")
    return state


def _alternatives(path: Path) -> str:
    earlier = [p for p in CheckpointManager(path.parent).checkpoints() if p.name < path.name]
    if earlier:
        names = ", ".join(str(p) for p in reversed(earlier))
        return f"resume from an earlier checkpoint ({names}) or start a fresh run"
    return "no earlier checkpoint exists: start a fresh run (another train.output_dir)"


def check_resume_target(run_dir: str | os.PathLike, resume: str | os.PathLike) -> None:
    """Refuse to resume ``resume`` into ``run_dir`` when ``run_dir`` already holds another run's checkpoints.

    The resumed run writes its checkpoints, final weights and results into ``run_dir`` (``train.output_dir``); if that
    is a different run's folder, resuming would overwrite that run's results with this one's.
    """
    ckpt_dir = load_training_checkpoint_path(resume).resolve()
    own = Path(run_dir).resolve() / "checkpoints"
    if ckpt_dir.parent == own:
        return
    existing = CheckpointManager(own).latest()
    if existing is not None:
        raise ValueError(
            f"cannot resume {ckpt_dir} into {run_dir}: that folder holds another run (latest checkpoint {existing}), "
            f"whose results this run would overwrite. Set train.output_dir to the resumed run's folder "
            f"({ckpt_dir.parent.parent}) or to a new one."
        )


def load_training_checkpoint_path(path: str | os.PathLike) -> Path:
    """The checkpoint directory that :func:`load_training_checkpoint` would read for ``path``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass a run directory or one of its checkpoints/step-* folders")
    if path.is_dir() and not (path / "meta.json").is_file():
        latest = CheckpointManager(path if any(path.glob(f"{_PREFIX}*")) else path / "checkpoints").latest()
        if latest is None:
            raise FileNotFoundError(f"no complete checkpoint (step-*/meta.json) found in {path}")
        path = latest
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint directory (meta.json is missing)")
    return path


def check_output_dir(run_dir: str | os.PathLike, resume: str | os.PathLike | None) -> None:
    """The one rule for output directories: a folder holding a run (a complete checkpoint or final weights) is written
    only by resuming that run; resuming into another run's folder is refused as well."""
    run_dir = Path(run_dir)
    if resume is not None:
        check_resume_target(run_dir, resume)
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"train.output_dir {run_dir} is a file; choose a folder (--output-dir DIR)")
    held = CheckpointManager(run_dir / "checkpoints").latest()
    if held is None and (run_dir / "final.safetensors").is_file():
        held = run_dir / "final.safetensors"
    if held is not None:
        raise ValueError(
            f"{run_dir} already holds a run ({held}); resume it with --resume {run_dir}, or choose another output "
            "directory (--output-dir DIR)"
        )
