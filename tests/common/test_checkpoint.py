"""common.checkpoint: atomic save (disk full, umask), bit-exact resume, safe loading of foreign checkpoints, key
reports, and the output folder checks and lock."""

from __future__ import annotations

import argparse
import copy
import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common import checkpoint as ckpt
from common.checkpoint import (
    LOCK_NAME,
    CheckpointError,
    OutputDirError,
    OutputLock,
    check_output_dir,
    load_checkpoint_file,
    load_pretrained,
    load_state_dict,
    resume,
    save_checkpoint,
    select_state_dict,
    training_state,
)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


class Ema(nn.Module):
    """An EMA copy of a model (the shape of timm's ModelEmaV3: a module with a ``module`` inside)."""

    def __init__(self, model: nn.Module, decay: float = 0.9):
        super().__init__()
        self.module, self.decay = copy.deepcopy(model), decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, m in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            e.copy_(e * self.decay + (1 - self.decay) * m) if e.is_floating_point() else e.copy_(m)


def make_run():
    model = tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return model, optimizer, scheduler, scaler, Ema(model)


def train_epoch(model, optimizer, scheduler, ema, steps: int = 3) -> None:
    model.train()
    for _ in range(steps):
        x = torch.randn(16, 4)  # draws from the global RNG, as a data loader's shuffling would
        loss = model(x).pow(2).mean()  # dropout draws from the RNG too
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)
    scheduler.step()


def test_resume_continues_bit_for_bit(tmp_path):
    torch.manual_seed(1)
    model, optimizer, scheduler, scaler, ema = make_run()
    for _ in range(4):
        train_epoch(model, optimizer, scheduler, ema)
    uninterrupted = {k: v.clone() for k, v in model.state_dict().items()}
    ema_uninterrupted = {k: v.clone() for k, v in ema.state_dict().items()}

    torch.manual_seed(1)
    model, optimizer, scheduler, scaler, ema = make_run()
    for _ in range(2):
        train_epoch(model, optimizer, scheduler, ema)
    path = save_checkpoint(training_state(model, optimizer, scheduler, scaler, ema, epoch=1, step=6,
                                          args=argparse.Namespace(lr=0.1)), tmp_path / "checkpoint.pth")
    torch.manual_seed(12345)  # a fresh process would start from another RNG state
    model, optimizer, scheduler, scaler, ema = make_run()
    state = resume(path, model, optimizer, scheduler, scaler, ema)
    assert (state["epoch"], state["step"], state["args"]) == (1, 6, {"lr": 0.1})
    for _ in range(state["epoch"] + 1, 4):
        train_epoch(model, optimizer, scheduler, ema)
    for key, value in model.state_dict().items():
        assert torch.equal(value, uninterrupted[key]), key
    for key, value in ema.state_dict().items():
        assert torch.equal(value, ema_uninterrupted[key]), key


def test_training_checkpoint_loads_with_weights_only(tmp_path):
    model, optimizer, scheduler, scaler, ema = make_run()
    path = save_checkpoint(training_state(model, optimizer, scheduler, scaler, ema, epoch=0), tmp_path / "c.pth")
    torch.load(path, weights_only=True)  # plain torch, no allow-list needed


def test_save_is_atomic_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"epoch": 1, "w": torch.ones(3)}, path)

    def crash(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint({"epoch": 2, "w": torch.zeros(3)}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]


def test_resume_refuses_missing_optimizer_state(tmp_path):
    model, optimizer, *_ = make_run()
    path = save_checkpoint(training_state(model), tmp_path / "c.pth")
    with pytest.raises(CheckpointError, match="no 'optimizer' state"):
        resume(path, model, optimizer)


def test_resume_refuses_a_plain_state_dict(tmp_path):
    model = tiny_model()
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        resume(tmp_path / "weights.pth", model)


def test_original_repository_checkpoints_load(tmp_path):
    """timm / torchvision training scripts save an argparse.Namespace and NumPy scalars next to the weights."""
    model = tiny_model()
    weights = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": weights, "state_dict_ema": weights, "args": argparse.Namespace(lr=0.08, mean=None),
                "metric": np.float64(71.7), "epoch": 299, "version": 2}, tmp_path / "released.pth.tar")
    loaded = load_checkpoint_file(tmp_path / "released.pth.tar")
    assert loaded["args"].lr == 0.08 and float(loaded["metric"]) == pytest.approx(71.7)
    report = load_pretrained(tiny_model(), tmp_path / "released.pth.tar", prefer_ema=True)
    assert report.clean


def test_numpy1_pickled_globals_are_allowed(tmp_path):
    """Checkpoints pickled under NumPy 1.x name ``numpy.core.multiarray.scalar``."""
    path = tmp_path / "old.pth"
    torch.save({"acc": np.float64(88.4)}, path, _use_new_zipfile_serialization=False, pickle_protocol=2)
    data = path.read_bytes()
    assert b"numpy._core.multiarray" in data
    path.write_bytes(data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert float(load_checkpoint_file(path)["acc"]) == pytest.approx(88.4)


class Payload:
    """Stands for an arbitrary pickled object: not on the allow-list."""


def test_arbitrary_objects_are_not_unpickled(tmp_path):
    torch.save({"model": {}, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="allow-list") as err:
        load_checkpoint_file(tmp_path / "evil.pth")
    assert "Payload" in str(err.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_files_give_a_clear_error(tmp_path, damage):
    path = tmp_path / "broken.pth"
    torch.save(tiny_model().state_dict(), path)
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 10}[damage])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as err:
        load_checkpoint_file(path)
    message = str(err.value)
    assert "weights_only" not in message and "Please file an issue" not in message  # torch's boilerplate dropped


class SystemCall:
    """Pickles as a call of ``os.system``: what a malicious checkpoint holds."""

    def __reduce__(self):
        return os.system, ("echo unpickled",)


def test_a_blocked_global_is_reported_as_unsafe_not_corrupt(tmp_path):
    torch.save({"model": {}, "payload": SystemCall()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"is unsafe: it names posix\.system") as err:
        load_checkpoint_file(tmp_path / "evil.pth")
    assert "corrupt" not in str(err.value)


def test_an_empty_file_and_a_folder_get_their_own_messages(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        load_checkpoint_file(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="is a folder; pass the checkpoint file inside it"):
        load_checkpoint_file(tmp_path)


def test_disk_full_while_saving_keeps_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint({"epoch": 1}, path)

    def full(obj, f, *args, **kwargs):
        f.write(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full)
    with pytest.raises(CheckpointError, match=r"no space left on device while writing .*checkpoint\.pth \(the "
                                              r"previous checkpoint there is kept\)"):
        save_checkpoint({"epoch": 2}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth"]  # the temporary file is gone


def test_checkpoints_keep_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = save_checkpoint({"epoch": 1}, tmp_path / "c.pth")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_output_dir_checks_fail_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputDirError, match="is an existing file, not a folder"):
        check_output_dir(tmp_path / "file")
    with pytest.raises(OutputDirError, match="is a file, so the folder cannot be created"):
        check_output_dir(tmp_path / "file" / "run")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OutputDirError, match="no space left on"):
        check_output_dir(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_read_only_parent_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ckpt.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(OutputDirError, match="is not writable"):
        check_output_dir(tmp_path / "run")


def test_one_run_per_output_dir(tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(f"{other.pid}\n")
        with pytest.raises(OutputDirError, match=f"in use by another run \\(process {other.pid}\\)"):
            OutputLock(tmp_path).acquire()
    finally:
        other.kill()
        other.wait()
    # the same lock, now of a dead process: taken over, and the killed run's temporary files removed
    (tmp_path / ".checkpoint.pth.partial-abc.tmp").write_bytes(b"half")
    (tmp_path / ".notes.tmp").write_bytes(b"a user's file")
    (tmp_path / "checkpoint.pth").write_bytes(b"kept")
    with OutputLock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text().split() == [str(os.getpid())]
        assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.tmp", LOCK_NAME, "checkpoint.pth"]
    assert not (tmp_path / LOCK_NAME).exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(tmp_path / "nope.pth")


def test_select_state_dict_entries_and_prefixes():
    a, b = {"module.w": torch.ones(1)}, {"module.w": torch.zeros(1)}
    assert torch.equal(select_state_dict({"state_dict": a, "state_dict_ema": b})["w"], torch.ones(1))
    assert torch.equal(select_state_dict({"state_dict": a, "state_dict_ema": b}, prefer_ema=True)["w"],
                       torch.zeros(1))
    assert torch.equal(select_state_dict({"model": a, "model_ema": b}, prefer_ema=True)["w"], torch.zeros(1))
    assert torch.equal(select_state_dict({"net": a, "acc": 97.0})["w"], torch.ones(1))
    assert list(select_state_dict({"w": torch.ones(1)})) == ["w"]
    assert list(select_state_dict({"model": a}, entry="model")) == ["w"]
    with pytest.raises(CheckpointError, match="no 'ema' entry"):
        select_state_dict({"model": a}, entry="ema")
    with pytest.raises(CheckpointError, match="could not find a state dict"):
        select_state_dict({"epoch": 3, "optimizer": {"state": {}}})


def test_strict_load_reports_every_difference_and_leaves_the_model_untouched():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    del state["0.bias"]
    state["head.weight"] = torch.zeros(3, 8)
    state["4.weight"] = torch.zeros(5, 8)
    with pytest.raises(CheckpointError) as err:
        load_state_dict(model, state, source="other.pth")
    message = str(err.value)
    assert "missing in checkpoint (1): 0.bias" in message
    assert "unexpected in checkpoint (1): head.weight" in message
    assert "4.weight checkpoint [5, 8] vs model [3, 8]" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_non_strict_load_loads_what_fits():
    model = tiny_model()
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    state["4.weight"] = torch.zeros(5, 8)
    report = load_state_dict(model, state, strict=False)
    assert not report.clean and [k for k, *_ in report.mismatched] == ["4.weight"]
    assert torch.equal(model.state_dict()["0.weight"], torch.zeros(8, 4))
    assert not torch.equal(model.state_dict()["4.weight"], torch.zeros(3, 8))


def test_filter_fn_converts_foreign_layouts(tmp_path):
    model = tiny_model()
    torch.save({"model": {f"backbone.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "f.pth")

    def strip_backbone(state, _model):
        return {k.removeprefix("backbone."): v for k, v in state.items()}

    assert load_pretrained(tiny_model(), tmp_path / "f.pth", filter_fn=strip_backbone).clean
