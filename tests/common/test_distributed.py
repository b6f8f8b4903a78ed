"""common.distributed: a 2-process Gloo DDP step equals one step on the concatenated batch; a frozen rank ends the
job within --dist-timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from common.checkpoint import LOCK_NAME
from common.distributed import (
    DistInfo,
    add_distributed_args,
    all_reduce_sum,
    get_world_size,
    init_distributed,
    is_main_process,
    reduce_weighted_mean,
    run_distributed,
    seed_everything,
    wrap_ddp,
)
from common.errors import ArgumentParser, UserError

WORKER = Path(__file__).with_name("ddp_worker.py")
FROZEN_WORKER = Path(__file__).with_name("frozen_rank_worker.py")


def _torchrun_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_a_frozen_rank_ends_both_processes_within_the_timeout():
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(FROZEN_WORKER),
         "5"], env=_torchrun_env(), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode != 0  # the job failed instead of hanging for the default 10 minutes
    assert elapsed < 100, elapsed
    assert "timed out" in result.stderr.lower() or "timeout" in result.stderr.lower(), result.stderr[-2000:]


def test_dist_timeout_flag_refuses_bad_values():
    parser = ArgumentParser(prog="x")
    add_distributed_args(parser)
    assert parser.parse_args([]).dist_timeout == 600.0
    for bad in ("0", "-5", "nan"):
        with pytest.raises(UserError, match="--dist-timeout"):
            parser.parse_args(["--dist-timeout", bad])


def test_two_process_gloo_step_matches_single_process(tmp_path):
    out = tmp_path / "ddp.pth"
    env = _torchrun_env()
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
         str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    ddp = torch.load(out, weights_only=True)
    assert ddp["world_size"] == 2
    assert ddp["shard"].shape[0] == 4  # each rank saw half of the batch

    sys.path.insert(0, str(WORKER.parent))
    try:
        from ddp_worker import make_model_and_data
    finally:
        sys.path.remove(str(WORKER.parent))
    model, dataset = make_model_and_data()
    x, y = dataset.tensors
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-5, atol=1e-6)
    # The reduced loss is the global mean; the mean rank over the 8 samples is 0.5.
    assert abs(ddp["metrics"]["loss"] - loss.item()) < 1e-5
    assert abs(ddp["metrics"]["rank"] - 0.5) < 1e-12


def test_single_process_is_a_no_op(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo() and not info.distributed and info.is_main
    assert is_main_process() and get_world_size() == 1
    model = nn.Linear(2, 2)
    assert wrap_ddp(model, info) is model
    assert all_reduce_sum([1.0, 2.0]).tolist() == [1.0, 2.0]
    assert reduce_weighted_mean({"correct": 3.0}, 4) == {"correct": 0.75}


def test_seeding_is_reproducible_and_per_rank_offset():
    assert seed_everything(7) == 7
    a = torch.rand(3)
    seed_everything(7)
    assert torch.equal(a, torch.rand(3))


def test_asking_for_cuda_without_a_gpu_is_a_clear_error(monkeypatch):
    from common.distributed import resolve_device
    from common.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="--device cpu"):
        resolve_device("cuda")
    assert resolve_device(None) == torch.device("cpu")


def test_run_distributed_checks_and_locks_the_output_dir_before_the_run(tmp_path):
    seen = []

    def run(info):
        seen.append(sorted(p.name for p in (tmp_path / "out" / "run").iterdir()))
        return "done"

    assert run_distributed(run, "cpu", output_dir=tmp_path / "out" / "run") == "done"
    assert not (tmp_path / "out").exists()  # the run wrote nothing: none of the folders it created is left
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="--output_dir .* is an existing file"):
        run_distributed(lambda info: seen.append("ran"), "cpu", output_dir=tmp_path / "file",
                        output_flag="--output_dir")
    assert seen == [[LOCK_NAME]]  # the run never started
