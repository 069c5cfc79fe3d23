"""torch.distributed set-up for ``torchrun`` (gloo on CPU, NCCL on GPU) and the few collectives the loops need."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "all_gather_objects",
    "all_reduce_sum",
    "barrier",
    "cleanup",
    "init_distributed",
    "is_main",
    "resolve_device",
]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _accepted_devices() -> str:
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        names += ["cuda", f"cuda:0..{count - 1}" if count > 1 else "cuda:0"]
    if _mps_available():
        names.append("mps")
    return ", ".join(names)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: str | None, world_size: int = 1, local_rank: int = 0) -> torch.device:
    """The device ``train.device`` names, checked against what this machine has.

    Accepted: ``None`` / ``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` (under ``torchrun``:
    the process's local rank), ``"cuda:N"`` (one process, N < the device count) and ``"mps"`` (where available).

    Raises:
        ValueError: Anything else, or a device this machine lacks (one line naming ``train.device``).
    """
    if device is not None and not isinstance(device, str):
        raise ValueError(f"train.device must be a device name ({_accepted_devices()}), got {device!r}")
    name = "auto" if device is None else device.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ValueError(f"train.device=mps: no Apple MPS device is available here; use {_accepted_devices()}")
        if world_size > 1:
            raise ValueError("train.device=mps runs one process; start it without torchrun")
        return torch.device("mps")
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"train.device={device!r} is not a device this project runs on; use {_accepted_devices()}")
    if not torch.cuda.is_available():
        raise ValueError(
            f"train.device={device} was requested but no CUDA device is available; use train.device=cpu (--device cpu)"
        )
    count = torch.cuda.device_count()
    if not index:
        if local_rank >= count:
            raise ValueError(f"this process has local rank {local_rank} but the machine has {count} CUDA device(s)")
        return torch.device("cuda", local_rank)
    if int(index) >= count:
        raise ValueError(f"train.device={device}: this machine has {count} CUDA device(s); use {_accepted_devices()}")
    if world_size > 1:
        raise ValueError(
            f"train.device={device} names one GPU but torchrun starts {world_size} processes: use train.device=cuda "
            "(each process takes the GPU of its local rank)"
        )
    return torch.device("cuda", int(index))


def init_distributed(device: str | None = None, timeout_s: int = 1800) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (or run alone without one).

    Args:
        device: ``train.device``: ``None`` / ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``
            (:func:`resolve_device`). The backend follows it: NCCL on CUDA, gloo otherwise.
        timeout_s: Collective timeout.

    Raises:
        ValueError: An unknown device or one this machine lacks (one line).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, world_size, local_rank)
    use_cuda = dev.type == "cuda"
    if use_cuda:
        torch.cuda.set_device(dev)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if use_cuda else None,
        )
    return DistInfo(rank, world_size, local_rank, dev)


def is_main() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes (in place; returned for convenience)."""
    if dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather one picklable object from every process (a one-element list when not distributed)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
