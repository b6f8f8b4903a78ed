"""Distributed training under ``torchrun``: process group, DDP wrapping, metric reduction, seeding.

Launched by ``torchrun``, :func:`init_distributed` reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and joins
the process group (NCCL on GPU, Gloo on CPU). Run as a plain ``python`` script it does nothing, and every
helper here behaves as the single process it is.
"""

from __future__ import annotations

import argparse
import datetime
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the number of processes and the device it should use."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str | None = None, local_rank: int = 0) -> torch.device:
    """``cuda:<local_rank>`` when CUDA is asked for (or ``None`` and available), else ``cpu``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            from common.errors import UserError

            raise UserError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    return dev


DEFAULT_TIMEOUT_S = 600.0


def add_distributed_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--dist-timeout``: how long a collective waits for a silent rank before the job ends."""
    from common.config import positive_float

    parser.add_argument("--dist-timeout", type=positive_float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                        help="under torchrun, end the job when a rank has not joined a collective for this long "
                             "(a frozen or dead rank; default: %(default)s)")


def init_distributed(device: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> DistInfo:
    """Join the ``torchrun`` process group if launched by it; otherwise return a single-process DistInfo. A
    collective that waits longer than ``timeout_s`` for another rank raises, so a frozen rank ends the job."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return DistInfo(device=resolve_device(device))
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size,
                                device_id=dev if dev.type == "cuda" else None,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def cleanup() -> None:
    """Leave the process group (a no-op when there is none)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_distributed(run: Callable[[DistInfo], T], device: str | None = None,
                    timeout_s: float = DEFAULT_TIMEOUT_S, output_dir: str | os.PathLike | None = None,
                    output_flag: str = "--output-dir") -> T:
    """``run(info)`` inside :func:`init_distributed` / :func:`cleanup`: the ``main`` of every training script.

    Given ``output_dir``, the main process checks it and holds its one-run lock for the whole run
    (:func:`common.checkpoint.prepare_output_dir`) before ``run`` reads data or builds a model.
    """
    from common.checkpoint import prepare_output_dir  # common.checkpoint imports this module

    info = init_distributed(device, timeout_s)
    try:
        with prepare_output_dir(output_dir, output_flag):
            return run(info)
    finally:
        cleanup()


def get_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0 and in a process that is not distributed: the one that prints, logs and saves."""
    return get_rank() == 0


def print_main(*args, **kwargs) -> None:
    """``print`` on the main process only."""
    if is_main_process():
        print(*args, **kwargs)


def wrap_ddp(model: nn.Module, info: DistInfo, **kwargs) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when running distributed, else return it unchanged."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, **kwargs)


def all_reduce_sum(values: torch.Tensor | float | list[float]) -> torch.Tensor:
    """Sum a tensor (or numbers) over all processes; returns a float64 tensor on the CPU."""
    tensor = torch.as_tensor(values, dtype=torch.float64)
    if get_world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        tensor = tensor.to(device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu()


def reduce_weighted_mean(total: dict[str, float], count: float) -> dict[str, float]:
    """Global means of per-process sums: ``sum_ranks(total[k]) / sum_ranks(count)`` for every metric k.

    Pass sums (e.g. number correct, summed loss) and the number of samples they cover.
    """
    keys = sorted(total)
    reduced = all_reduce_sum([total[k] for k in keys] + [count])
    n = max(reduced[-1].item(), 1.0)
    return {k: reduced[i].item() / n for i, k in enumerate(keys)}


def seed_everything(seed: int, per_rank: bool = True) -> int:
    """Seed Python, NumPy and torch (all devices); with ``per_rank`` each rank gets ``seed + rank``.

    Returns the seed used by this process.
    """
    seed = seed + (get_rank() if per_rank else 0)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return seed
