"""Run by test_distributed.py under ``torchrun --nproc_per_node 2``: rank 1 freezes before the first collective,
rank 0 waits in it. With ``--dist-timeout`` short, the job must end on its own (argv: the timeout in seconds)."""

from __future__ import annotations

import sys
import time

import torch
import torch.distributed as dist

from common.distributed import cleanup, init_distributed


def main(timeout_s: float) -> None:
    info = init_distributed("cpu", timeout_s)
    if info.rank == 1:
        time.sleep(3600)  # a rank that hangs (a stuck data loader, a deadlock)
    dist.all_reduce(torch.ones(1))
    cleanup()


if __name__ == "__main__":
    main(float(sys.argv[1]))
