"""padnet/dyconv/main.py end to end on the embedded digits: Iterative Mode Partition for every PAD model, training,
checkpoints in the original format, auto-resume, --evaluate --weight (ours and the original's files), MLflow,
torchrun with two Gloo processes, and bad inputs (one line on stderr, exit status 2, nothing written)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from common.checkpoint import CheckpointError
from padnet.dyconv import main as dyconv_main
from padnet.dyconv.main import (
    BEST,
    CHECKPOINT,
    CHECKPOINT_KEYS,
    LOG_COLUMNS,
    cli,
    load_model_config,
    main,
    parse_args,
)

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "padnet" / "dyconv" / "main.py"
CONFIGS = REPO / "padnet" / "dyconv" / "configs"
# PAD / DY ResNet-10 at 1/16 width (the shipped digits configs use 1/4): the per-sample kernels of a dynamic layer
# cost the same at any image size, so the width sets the speed (about 4 s per digits epoch on one thread)
PAD_CFG = "model: {type: DyResNet10_PAD, kwargs: {num_classes: 10, scale: 0.0625, Lambda: both}}\n"
DY_CFG = "model: {type: DyResNet10, kwargs: {num_classes: 10, scale: 0.0625}}\n"
# the 1,437 / 360 digits at 32 px, 11 batches of 128 per epoch; IMP on 2 batches
TINY = ["--dataset", "digits", "--input-size", "32", "-b", "128", "-j", "0", "--device", "cpu", "--epochs", "1",
        "--temp_epoch", "1", "--lr-decay", "cos", "--pruner", "snip", "--sparsity", "0.3",
        "--prune_dataset_ratio", "2"]


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _masks(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k.endswith("kernels_weights_mask")}


def _dynamic_fraction(state: dict[str, torch.Tensor]) -> float:
    masks = _masks(state).values()
    return sum(m.sum().item() for m in masks) / sum(m.numel() for m in masks)


@pytest.fixture(scope="module")
def cfg(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("padnet_cfg")
    (folder / "pad.yml").write_text(PAD_CFG)
    (folder / "dy.yml").write_text(DY_CFG)
    return {"pad": str(folder / "pad.yml"), "dy": str(folder / "dy.yml")}


@pytest.fixture(scope="module")
def run(tmp_path_factory, cfg):
    """One epoch of the tiny PAD model with SNIP-IMP at kappa 0.3, logged to MLflow; returns folder, result, URI."""
    work = tmp_path_factory.mktemp("padnet_main")
    uri = f"sqlite:///{work}/mlflow.db"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            mp.chdir(work)
            result = main(parse_args(["--config_file", cfg["pad"], "-c", str(work / "ckpt"), "-a", "pad_r10"]
                                     + TINY))
    finally:
        torch.set_num_threads(threads)
    return work / "ckpt", result, uri


def test_imp_runs_before_training_and_fixes_the_mask(run):
    folder, result, _ = run
    ratios = result["dynamic_ratios"]
    assert ratios["overall"] == pytest.approx(0.3, abs=0.01)
    assert len(ratios) > 2 and any(r != pytest.approx(0.3, abs=1e-3) for k, r in ratios.items() if k != "overall")
    lines = (folder / "dynamic_ratios.txt").read_text().splitlines()
    assert lines[-1].startswith("overall\t") and len(lines) == len(ratios)
    ckpt = torch.load(folder / CHECKPOINT, weights_only=True)
    assert _dynamic_fraction(ckpt["state_dict"]) == pytest.approx(ratios["overall"])
    assert all(set(m.unique().tolist()) <= {0.0, 1.0} for m in _masks(ckpt["state_dict"]).values())


def test_checkpoint_has_the_original_keys_and_log_txt(run):
    folder, result, _ = run
    ckpt = torch.load(folder / CHECKPOINT, weights_only=True)
    assert set(CHECKPOINT_KEYS) <= set(ckpt)
    assert (ckpt["epoch"], ckpt["arch"]) == (1, "pad_r10")
    assert ckpt["model"]["type"] == "DyResNet10_PAD"
    # one epoch of 11 iterations annealed over --temp_epoch 1: the last temperature is that of iteration 10
    assert ckpt["temperature"] == pytest.approx(1 + 29 / 11) == result["temperature"]
    assert not any(k.startswith("module.") for k in ckpt["state_dict"])
    assert ckpt["best_prec1"] == pytest.approx(result["epochs"][0]["val"]["acc1"])
    assert (folder / BEST).is_file() and (folder / "arch.txt").is_file() and (folder / "options.txt").is_file()
    rows = (folder / "log.txt").read_text().splitlines()
    assert rows[0].rstrip("\t").split("\t") == list(LOG_COLUMNS) and len(rows) == 2
    assert float(rows[1].split("\t")[0]) == 1.0


def test_mlflow_run_is_logged(run):
    from mlflow.tracking import MlflowClient

    folder, _, uri = run
    client = MlflowClient(tracking_uri=uri)
    (mlrun,) = client.search_runs([client.get_experiment_by_name("padnet").experiment_id])
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["model.type"] == "DyResNet10_PAD"
    assert {"train/loss", "train/temperature", "val/acc1", "val/acc5", "imp/dynamic_ratio"} <= set(mlrun.data.metrics)
    assert mlrun.data.tags["final_checkpoint"] == str((folder / CHECKPOINT).resolve())


def test_auto_resume_continues_without_a_new_partition(run, cfg, tmp_path, capsys):
    folder, _, _ = run
    resumed = tmp_path / "ckpt"
    shutil.copytree(folder, resumed)
    before = torch.load(resumed / CHECKPOINT, weights_only=True)
    result = main(parse_args(["--config_file", cfg["pad"], "-c", str(resumed), "--no-mlflow"]
                             + TINY + ["--epochs", "2"]))
    out = capsys.readouterr().out
    assert "Iterative Mode Partition" not in out and "loaded checkpoint" in out
    assert [e["epoch"] for e in result["epochs"]] == [2]
    after = torch.load(resumed / CHECKPOINT, weights_only=True)
    assert after["epoch"] == 2 and after["temperature"] == pytest.approx(before["temperature"])  # past temp_epoch
    assert all(torch.equal(v, after["state_dict"][k]) for k, v in _masks(before["state_dict"]).items())
    assert len((resumed / "log.txt").read_text().splitlines()) == 3


@pytest.mark.parametrize("failing", [BEST, CHECKPOINT])
def test_a_failed_save_writes_no_log_row_and_keeps_the_best_consistent(run, cfg, tmp_path, capsys, monkeypatch,
                                                                       failing):
    """Disk full in epoch 2: whichever file fails, log.txt keeps one row, checkpoint.pth stays at epoch 1 with the
    best_prec1 of the model_best beside it, and the resumed run writes each epoch's row once."""
    folder, _, _ = run
    resumed = tmp_path / "ckpt"
    shutil.copytree(folder, resumed)
    real_save = dyconv_main.save_checkpoint

    def save(state, path):
        if Path(path).name == failing and state["epoch"] == 2:
            raise CheckpointError(f"no space left on device while writing {path}")
        return real_save(state, path)

    monkeypatch.setattr(dyconv_main, "save_checkpoint", save)
    monkeypatch.setattr(dyconv_main, "validate", lambda *args: {"acc1": 101.0, "acc5": 100.0, "loss": 0.0})
    argv = ["--config_file", cfg["pad"], "-c", str(resumed), "--no-mlflow"] + TINY + ["--epochs", "2"]
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    err = capsys.readouterr().err  # the progress bars of epoch 2, then the one-line error
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("main.py: error: no space left on device"), err[-500:]
    assert len((resumed / "log.txt").read_text().splitlines()) == 2
    last = torch.load(resumed / CHECKPOINT, weights_only=True)
    best = torch.load(resumed / BEST, weights_only=True)
    assert last["epoch"] == 1 and last["best_prec1"] <= best["best_prec1"]
    monkeypatch.setattr(dyconv_main, "save_checkpoint", real_save)
    main(parse_args(argv))
    rows = (resumed / "log.txt").read_text().splitlines()
    assert [float(r.split("\t")[0]) for r in rows[1:]] == [1.0, 2.0]


def test_nan_and_negative_float_flags_are_refused(cfg, tmp_path, capsys):
    base = ["--config_file", cfg["pad"], "-c", str(tmp_path / "out"), "--no-mlflow"] + TINY
    _fails(base + ["--lr", "nan"], capsys, "argument --lr/--learning-rate: 'nan' is not a finite number")
    _fails(base + ["--wd=-1e-4"], capsys, "'-1e-4' is negative")
    _fails(base + ["--temp_init", "0"], capsys, "argument --temp_init: '0' must be > 0")
    assert not (tmp_path / "out").exists()


def test_evaluate_restores_the_temperature(run, cfg, capsys):
    folder, result, _ = run
    out = main(parse_args(["--config_file", cfg["pad"], "-e", "--weight", str(folder / CHECKPOINT),
                           "--no-mlflow"] + TINY))
    assert out["temperature"] == pytest.approx(1 + 29 / 11)
    assert out["evaluate"]["acc1"] == pytest.approx(result["epochs"][0]["val"]["acc1"])
    assert "Acc@1" in capsys.readouterr().out


def test_evaluate_reads_an_original_format_file(run, cfg, tmp_path):
    """The original saves DataParallel keys (``module.``) and may lack ``temperature`` (then T = 1.0)."""
    folder, _, _ = run
    ckpt = torch.load(folder / CHECKPOINT, weights_only=True)
    original = {"epoch": 1, "arch": "resnet18", "best_prec1": 0.0,
                "state_dict": {f"module.{k}": v for k, v in ckpt["state_dict"].items()}}
    torch.save(original, tmp_path / "orig.pth.tar")
    out = main(parse_args(["--config_file", cfg["pad"], "-e", "--weight", str(tmp_path / "orig.pth.tar"),
                           "--no-mlflow"] + TINY))
    assert out["temperature"] == 1.0 and 0.0 <= out["evaluate"]["acc1"] <= 100.0


def test_imp_runs_for_the_pad_mobilenet_too(tmp_path, capsys):
    """The original's case-sensitive ``'pad' in type`` never partitioned ``Dymobilenetv2_PAD``; here it does (with
    the rand scorer, one batch of images, no training epoch)."""
    cfg = CONFIGS / "digits_pad_mobilenetv2_w0.35.yml"
    result = main(parse_args(["--config_file", str(cfg), "-c", str(tmp_path), "--no-mlflow"] + TINY
                             + ["--pruner", "rand", "--prune_dataset_ratio", "1", "--epochs", "0"]))
    assert result["dynamic_ratios"]["overall"] == pytest.approx(0.3, abs=1e-3)
    assert result["epochs"] == [] and "Iterative Mode Partition" in capsys.readouterr().out


def test_every_shipped_config_names_a_registered_model():
    files = sorted(CONFIGS.glob("*.yml"))
    types = {load_model_config(str(f))["type"] for f in files}
    assert {"resnet10", "resnet50", "DyResNet10", "DyResNet18", "DyResNet50", "DyResNet10_PAD", "DyResNet18_PAD",
            "DyResNet50_PAD", "mobilenetv2", "Dymobilenetv2", "Dymobilenetv2_PAD"} <= types
    widths = {load_model_config(str(f))["kwargs"].get("width_multiplier") for f in files}
    assert {1.0, 0.75, 0.5, 0.35} <= widths


def test_two_process_gloo_run(cfg, tmp_path):
    """torchrun with 2 Gloo processes on the 256 synthetic training images (-b 64: 32 per process): IMP on every
    process, DDP training, validation reduced over both, rank 0 prints and saves."""
    args = ["--standalone", "--nproc_per_node", "2", str(SCRIPT), "--config_file", cfg["pad"], "-c",
            str(tmp_path / "ckpt"), "--no-mlflow"] + TINY + ["--dataset", "synthetic", "-b", "64"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run"] + args, cwd=tmp_path,
                            env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sum(line.startswith("Epoch 1/1 |") for line in result.stdout.splitlines()) == 1  # rank 0 prints
    ckpt = torch.load(tmp_path / "ckpt" / CHECKPOINT, weights_only=True)
    assert ckpt["args"]["batch_size"] == 64 and _dynamic_fraction(ckpt["state_dict"]) == pytest.approx(0.3, abs=0.01)


# ------------------------------------------------------------------------------------------------ errors
def _fails(argv, capsys, match):
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("main.py: error:") and match in err, err


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_config_errors(tmp_path, capsys):
    ckpt = ["-c", str(tmp_path / "out"), "--no-mlflow"] + TINY
    _fails(ckpt, capsys, "--config_file is required")
    _fails(["--config_file", str(tmp_path / "none.yml")] + ckpt, capsys, "does not exist")
    _fails(["--config_file", _write(tmp_path / "a.yml", "model: [")] + ckpt, capsys, "not valid YAML")
    _fails(["--config_file", _write(tmp_path / "b.yml", "model: {type: DyResNet99}")] + ckpt, capsys,
           "unknown model type 'DyResNet99'")
    _fails(["--config_file", _write(tmp_path / "c.yml", "model: {type: DyResNet10_PAD, kwargs: {scale: 0.25, "
                                                         "num_classes: 10, widht: 3}}")] + ckpt, capsys, "cannot build")
    _fails(["--config_file", _write(tmp_path / "d.yml", "model: {type: DyResNet10_PAD}\nlr: 0.1")] + ckpt, capsys,
           "unknown key(s) lr")
    _fails(["--config_file", _write(tmp_path / "e.yml", "model: {type: DyResNet10_PAD, kwargs: {scale: 0.25, "
                                                         "num_classes: 5}}")] + ckpt, capsys, "num_classes: 10")
    assert not (tmp_path / "out").exists()


def test_flag_and_data_errors(cfg, tmp_path, capsys):
    base = ["--config_file", cfg["pad"], "-c", str(tmp_path / "out"), "--no-mlflow"]
    _fails(base + TINY + ["--sparsity", "abc"], capsys, "--sparsity")
    _fails(base + TINY + ["--sparsity", "1.5"], capsys, "must lie in (0, 1]")
    _fails(base + TINY + ["--lr-decay", "poly"], capsys, "--lr-decay")
    _fails(base + TINY + ["--prune-train-mode", "maybe"], capsys, "--prune-train-mode")
    _fails(base + TINY + ["--pruner", "synflow"], capsys, "does not apply to PAD")
    _fails(base + TINY + ["--evaluate"], capsys, "--evaluate needs --weight")
    _fails(base + ["--epochs", "1", "-j", "0", "--device", "cpu"], capsys, "-d/--data is missing")
    _fails(base + ["-d", str(tmp_path / "nowhere"), "-j", "0", "--device", "cpu"], capsys, "no 'val' folder")
    assert not (tmp_path / "out").exists()


def test_checkpoint_errors_leave_files_alone(run, cfg, tmp_path, capsys):
    folder, _, _ = run
    other = tmp_path / "dy"
    shutil.copytree(folder, other)  # a PAD checkpoint in the folder of a DY run: auto-resume must refuse it
    stamp = {p.name: p.stat().st_mtime_ns for p in other.iterdir()}
    _fails(["--config_file", cfg["dy"], "-c", str(other), "--no-mlflow"] + TINY, capsys,
           "does not fit this model")
    assert {p.name: p.stat().st_mtime_ns for p in other.iterdir()} == stamp
    _fails(["--config_file", cfg["dy"], "-e", "--weight", str(folder / CHECKPOINT), "--no-mlflow"] + TINY, capsys,
           "does not fit this model")
    corrupt = tmp_path / "bad" / CHECKPOINT
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a checkpoint")
    _fails(["--config_file", cfg["pad"], "-c", str(corrupt.parent), "--no-mlflow"] + TINY, capsys,
           "corrupt or truncated")
    assert corrupt.read_bytes() == b"not a checkpoint" and sorted(os.listdir(corrupt.parent)) == [CHECKPOINT]
    _fails(["--config_file", cfg["pad"], "-e", "--weight", str(tmp_path / "missing.pth"), "--no-mlflow"] + TINY,
           capsys, "does not exist")
