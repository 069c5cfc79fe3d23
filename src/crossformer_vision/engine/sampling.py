"""Resumable, rank-aware sampling with per-sample augmentation seeds.

The global order of an epoch is a permutation drawn from ``(seed, epoch)``. Every global batch is cut into one
contiguous slice per process, and every sample carries its own augmentation seed derived from
``(seed, epoch, position)``. Hence:

* resuming at global batch ``k`` replays exactly the samples *and augmentations* an uninterrupted run would see;
* N processes with a local batch of B/N see the same global batches, augmented identically, as one process with
  batch B (so DDP reproduces single-process training up to floating-point summation order);
* the number of data-loader workers does not change the data.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["EvalShardSampler", "ResumableSampler", "SeededDataset", "eval_loader"]

_MIX = 0x9E3779B97F4A7C15


def _sample_seed(seed: int, epoch: int, position: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + position * _MIX) % (2**31 - 1)


class ResumableSampler(Sampler):
    """Yields ``(index, sample_seed)`` pairs for this process; see the module docstring.

    Args:
        num_samples: Dataset length.
        global_batch: Samples per global (all-process) micro-batch; must be divisible by ``world_size``.
        rank, world_size: This process and the number of processes.
        shuffle: Draw a new permutation each epoch (else dataset order).
        seed: Base seed of the order and of the augmentation seeds.
        drop_last: Drop the last incomplete global batch (training).
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by the {world_size} processes")
        if num_samples < (global_batch if drop_last else 1):
            raise ValueError(
                f"the dataset has {num_samples} samples, fewer than one global batch of {global_batch}; "
                "lower the batch size or add data"
            )
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.num_samples, self.global_batch)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch and skip its first ``start_batch`` global batches (resuming)."""
        self.epoch = epoch
        self.start_batch = start_batch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self._order().tolist()
        for b in range(self.start_batch, self.batches_per_epoch):
            start = b * self.global_batch
            batch = order[start : start + self.global_batch]
            local = self.local_batch if len(batch) == self.global_batch else -(-len(batch) // self.world_size)
            for pos in range(self.rank * local, min((self.rank + 1) * local, len(batch))):
                yield batch[pos], _sample_seed(self.seed, self.epoch, start + pos)

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.local_batch


class EvalShardSampler(Sampler):
    """Every sample exactly once over all processes (rank r takes r, r+N, ...); no padding, no duplicates."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, num_samples, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def eval_loader(dataset: Dataset, dist: Any, batch_size: int, workers: int, collate_fn: Any) -> DataLoader:
    """The evaluation loader of every task: this process's shard (:class:`EvalShardSampler`, ``dist`` a
    ``DistInfo``), in order, with a private generator so that evaluating mid-training draws nothing from the global
    torch RNG (the workers' base seed)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EvalShardSampler(len(dataset), dist.rank, dist.world_size),  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=collate_fn,
        generator=torch.Generator(),
    )


class SeededDataset(Dataset):
    """Runs the wrapped dataset's ``__getitem__`` with python / numpy / torch RNGs seeded per sample.

    Indexed by the ``(index, seed)`` pairs of :class:`ResumableSampler`. The global RNGs are not restored
    afterwards (saving numpy's state costs more than most transforms): the training loop re-seeds them before
    every step (:func:`crossformer_vision.engine.rng.seed_step`), so what loading leaves behind never matters.
    """

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        random.seed(seed)
        np.random.seed(seed)
        torch.default_generator.manual_seed(seed)  # the CPU generator only (transforms run on CPU)
        return self.dataset[index]
