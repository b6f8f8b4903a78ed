"""Repeated-augmentation sampler of ``--ra-sampler`` / ``--ra-reps`` (spec Sec. d).

Repeated augmentation (Hoffer et al. 2020; DeiT, Touvron et al. 2021) puts several augmented copies of each
image into one global batch: every index is repeated ``repetitions`` times, and the repeats go to different
processes, so each process sees a differently augmented view. As in the torchvision reference (which takes the
sampler from DeiT), an epoch is kept about as long as a plain epoch: each process yields
``len(dataset) // 256 * 256 // num_replicas`` indices. For datasets smaller than 256 images, where that rule
would give an empty epoch, each process yields ``ceil(len(dataset) / num_replicas)`` indices instead.

Under ``torchrun`` the number of processes and the rank come from the process group; call
:meth:`RASampler.set_epoch` at the start of every epoch for a new shuffle.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler

from common.distributed import get_rank, get_world_size


class RASampler(Sampler[int]):
    """Distributed sampler with repeated augmentation: each index ``repetitions`` times, spread over processes."""

    def __init__(self, dataset: Sized, num_replicas: int | None = None, rank: int | None = None,
                 shuffle: bool = True, seed: int = 0, repetitions: int = 3):
        if repetitions < 1:
            raise ValueError(f"repetitions must be at least 1, got {repetitions}")
        self.dataset = dataset
        self.num_replicas = get_world_size() if num_replicas is None else num_replicas
        self.rank = get_rank() if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside 0..{self.num_replicas - 1}")
        self.shuffle, self.seed, self.repetitions = shuffle, seed, repetitions
        self.epoch = 0
        n = len(dataset)
        self.num_samples = math.ceil(n * repetitions / self.num_replicas)  # this process's share of the repeats
        self.total_size = self.num_samples * self.num_replicas
        selected = n // 256 * 256 // self.num_replicas
        self.num_selected_samples = selected if selected > 0 else math.ceil(n / self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        repeated = order.repeat_interleave(self.repetitions).tolist()
        padding = self.total_size - len(repeated)
        repeated += (repeated * math.ceil(padding / max(len(repeated), 1)))[:padding]
        mine = repeated[self.rank:self.total_size:self.num_replicas]
        return iter(mine[: self.num_selected_samples])

    def __len__(self) -> int:
        return self.num_selected_samples

    def set_epoch(self, epoch: int) -> None:
        """Shuffle with ``seed + epoch`` in the next iteration (the same on every process)."""
        self.epoch = epoch
