"""Run by test_distributed.py under ``torchrun --nproc_per_node 2``: one DDP step on a sharded batch.

Writes the parameters after the step and the reduced metrics to the path given as argv[1] (rank 0 only).
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.checkpoint import save_checkpoint, unwrap_model
from common.data import build_loader
from common.distributed import cleanup, get_world_size, init_distributed, reduce_weighted_mean, wrap_ddp


def make_model_and_data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(8, 6), torch.randint(3, (8,))
    return model, TensorDataset(x, y)


def main(out: str) -> None:
    info = init_distributed("cpu")
    model, dataset = make_model_and_data()
    ddp = wrap_ddp(model, info)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.5)
    (x, y), = list(build_loader(dataset, batch_size=8 // get_world_size(), train=False))
    loss = nn.functional.cross_entropy(ddp(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    metrics = reduce_weighted_mean({"loss": loss.item() * len(y), "rank": float(info.rank) * len(y)}, len(y))
    save_checkpoint({"model": unwrap_model(ddp).state_dict(), "metrics": metrics, "shard": x,
                     "world_size": info.world_size}, out)
    cleanup()


if __name__ == "__main__":
    main(sys.argv[1])
