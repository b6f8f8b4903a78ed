"""Data loaders: a distributed sampler when a process group is up, seeded shuffling and seeded workers."""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, SequentialSampler

from common.distributed import get_rank, get_world_size


def _seed_worker(worker_id: int) -> None:
    """Give every worker's NumPy and ``random`` a seed derived from its (already seeded) torch seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def build_loader(
    dataset: Dataset,
    batch_size: int,
    train: bool,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool | None = None,
    pin_memory: bool = False,
    collate_fn: Callable | None = None,
) -> DataLoader:
    """A DataLoader that shuffles (when ``train``) with a seeded generator and shards under ``torchrun``.

    When a process group is up, each rank gets a :class:`DistributedSampler` shard (shuffled by ``seed``
    and the epoch); call :func:`set_epoch` at the start of every epoch. ``drop_last`` defaults to ``train``.
    """
    drop_last = train if drop_last is None else drop_last
    generator = torch.Generator().manual_seed(seed)
    if get_world_size() > 1:
        sampler = DistributedSampler(dataset, num_replicas=get_world_size(), rank=get_rank(), shuffle=train,
                                     seed=seed, drop_last=drop_last)
    elif train:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      drop_last=drop_last, pin_memory=pin_memory, collate_fn=collate_fn,
                      worker_init_fn=_seed_worker, generator=generator,
                      persistent_workers=num_workers > 0)


def set_epoch(loader: DataLoader, epoch: int, seed: int = 0) -> None:
    """Make the shuffle of ``epoch`` depend only on ``(seed, epoch)``, so a resumed run sees the same order: the
    distributed sampler's epoch under ``torchrun``, else the loader's generator reseeded with ``seed + epoch``."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    elif loader.generator is not None:
        loader.generator.manual_seed(seed + epoch)
