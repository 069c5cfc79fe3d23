"""train.device: only devices this project runs on, and only those the machine has."""

import pytest
import torch

from crossformer_vision.engine import distributed as dist_module
from crossformer_vision.engine.distributed import init_distributed, resolve_device


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(dist_module, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(dist_module, "_mps_available", lambda: False)


@pytest.mark.parametrize("name", ["tpu", "xla", "gpu", "cuda:x", "cuda:-1", "cpu:0", "", "npu:0"])
def test_unknown_devices_are_refused_naming_the_key(no_gpu, name):
    with pytest.raises(ValueError, match=r"train\.device=.* is not a device this project runs on; use auto, cpu$"):
        init_distributed(name)


def test_non_string_device_is_refused(no_gpu):
    with pytest.raises(ValueError, match=r"train\.device must be a device name"):
        init_distributed(0)


@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA"])
def test_cuda_without_cuda_is_one_line(no_gpu, name):
    with pytest.raises(ValueError, match=r"no CUDA device is available; use train\.device=cpu") as err:
        init_distributed(name)
    assert "\n" not in str(err.value)


def test_mps_where_absent(no_gpu):
    with pytest.raises(ValueError, match="no Apple MPS device"):
        resolve_device("mps")


@pytest.mark.parametrize("name", [None, "auto", "cpu", " CPU "])
def test_cpu_and_auto_without_gpu(no_gpu, name):
    assert init_distributed(name).device == torch.device("cpu")


def test_cuda_choices_with_two_gpus(two_gpus):
    assert resolve_device(None) == torch.device("cuda", 0)
    assert resolve_device("cuda", world_size=2, local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match=r"has 2 CUDA device\(s\); use auto, cpu, cuda, cuda:0\.\.1"):
        resolve_device("cuda:2")
    with pytest.raises(ValueError, match="names one GPU but torchrun starts 2 processes"):
        resolve_device("cuda:1", world_size=2)
    with pytest.raises(ValueError, match="local rank 2"):
        resolve_device("cuda", world_size=3, local_rank=2)
