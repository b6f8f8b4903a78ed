"""adn/train_adn.py end to end on the embedded digits: train, resume, evaluate every configuration, torchrun, and
bad inputs (one line on stderr, exit status 2, nothing written)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adn.models import create_model
from adn.train_adn import cli, main, parse_args
from common.checkpoint import LOCK_NAME

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "adn" / "train_adn.py"
# resnet_adn_cifar on the 1,437 / 360 digits at their native 8x8 pixels: ~3 s per epoch on one CPU thread.
TINY = ["--dataset", "digits", "--model", "resnet_adn_cifar", "--device", "cpu", "--val-crop-size", "8", "-b", "64",
        "-j", "0", "--lr", "0.05"]


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    env["OMP_NUM_THREADS"] = "1"  # one thread per process: no OpenMP spinning when the cores are shared
    env.update(extra)
    return env


def _run(args: list[str], cwd: Path, module: bool = False, timeout: int = 180, **env: str):
    command = [sys.executable, "-m", "adn.train_adn"] if module else [sys.executable, str(SCRIPT)]
    return subprocess.run(command + args, cwd=cwd, env=_env(cwd, **env), capture_output=True, text=True,
                          timeout=timeout)


def _assert_user_error(result, *needles: str) -> None:
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train_adn.py: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs with EMA and MLflow tracking; the output folder and the finished process."""
    work = tmp_path_factory.mktemp("adn_train")
    out = work / "out"
    result = _run(TINY + ["--epochs", "2", "--model-ema", "--model-ema-steps", "4", "--output-dir", str(out)], work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work, out, result


def test_training_writes_checkpoints_and_tracks(trained):
    work, out, result = trained
    epochs = [line for line in result.stdout.splitlines() if line.startswith("Epoch ")]
    assert len(epochs) == 2 and "base-net TTTT" in epochs[1] and "super-net FFFF" in epochs[1]
    assert "EMA val" in epochs[1]
    assert {p.name for p in out.iterdir()} >= {"checkpoint.pth", "model_0.pth", "model_1.pth", "run_summary.json"}
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 1 and {"model", "optimizer", "lr_scheduler", "model_ema", "args"} <= set(ckpt)
    assert ckpt["args"]["model"] == "resnet_adn_cifar"

    db = sqlite3.connect(work / "mlflow.db")
    steps = db.execute("select distinct step from metrics where key = 'val/base_acc1'").fetchall()
    assert sorted(s for (s,) in steps) == [0, 1]
    keys = {k for (k,) in db.execute("select distinct key from metrics")}
    assert {"train/loss_full_acc", "train/loss_kd", "train/acc1_skip", "val/super_acc1", "val/ema_base_acc1"} <= keys
    tags = dict(db.execute("select key, value from tags"))
    assert tags["final_checkpoint"] == str((out / "checkpoint.pth").resolve())
    assert list(work.glob("mlruns/*/*/artifacts/run_summary.json"))


def test_resume_continues_at_the_next_epoch(trained, tmp_path):
    _, out, _ = trained
    resumed = tmp_path / "resumed"
    result = _run(TINY + ["--epochs", "3", "--resume", str(out / "checkpoint.pth"), "--model-ema",
                          "--model-ema-steps", "4", "--output-dir", str(resumed), "--no-mlflow"], tmp_path,
                  module=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "continuing at epoch 2" in result.stdout
    epochs = [line for line in result.stdout.splitlines() if line.startswith("Epoch ")]
    assert len(epochs) == 1 and epochs[0].startswith("Epoch 2/2")
    assert torch.load(resumed / "checkpoint.pth", weights_only=True)["epoch"] == 2
    assert (resumed / "model_2.pth").is_file()


def test_test_only_evaluates_every_skip_cfg(trained, tmp_path):
    _, out, _ = trained
    result = _run(TINY + ["--test-only", "--weights", str(out / "checkpoint.pth"), "--eval-all-skip-cfgs",
                          "--output-dir", str(tmp_path), "--no-mlflow"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    configs = [f"{a}{b}{c}{d}" for a in "FT" for b in "FT" for c in "FT" for d in "FT"]
    table = [line.split()[0] for line in result.stdout.splitlines() if line[:4] in configs]
    assert table == configs
    rows = (tmp_path / "skip_cfgs.csv").read_text().splitlines()
    assert rows[0] == "skip_cfg,acc1,acc5,loss,macs" and [r.split(",")[0] for r in rows[1:]] == configs
    macs = {r.split(",")[0]: int(r.split(",")[-1]) for r in rows[1:]}
    assert macs["FFFF"] > macs["TFFF"] > macs["TTFF"] > macs["TTTF"] > macs["TTTT"]


def test_test_only_reads_any_skip_cfg_spelling_and_the_ema_entry(trained, tmp_path):
    _, out, _ = trained
    common = TINY + ["--test-only", "--weights", str(out / "checkpoint.pth"), "--no-mlflow",
                     "--output-dir", str(tmp_path)]
    spelled = main(parse_args(common + ["--skip-cfg", "t", "False", "1", "0"]))
    compact = main(parse_args(common + ["--skip-cfg", "TFTF"]))
    assert list(spelled) == list(compact) == ["TFTF"] and spelled["TFTF"]["acc1"] == compact["TFTF"]["acc1"]
    ema = main(parse_args(common + ["--model-ema"]))
    assert set(ema) == {"FFFF"}
    assert not list(tmp_path.iterdir())  # evaluating one configuration writes nothing


def test_two_process_gloo_run(tmp_path):
    out = tmp_path / "ddp"
    args = ["--standalone", "--nproc_per_node", "2", str(SCRIPT)] + TINY + [
        "-b", "32", "--epochs", "1", "--ra-sampler", "--ra-reps", "2", "--model-ema", "--model-ema-steps", "4",
        "--output-dir", str(out), "--no-mlflow"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run"] + args, cwd=tmp_path,
                            env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = [line for line in result.stdout.splitlines() if line.startswith("Epoch ")]
    assert len(epochs) == 1  # rank 0 prints
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["args"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])



def test_one_configuration_alone_with_shared_norms(tmp_path, capsys):
    """--train-skip-cfg trains and evaluates that one network; --no-skip-aware-norms builds the model without the
    ``*_skip`` norms, and its checkpoint loads strictly with the same flag."""
    out = tmp_path / "base"
    result = main(parse_args(TINY + ["--epochs", "1", "--train-skip-cfg", "t", "1", "True", "T",
                                      "--no-skip-aware-norms", "--output-dir", str(out), "--no-mlflow"]))
    assert set(result["val"]) == {"trained"} and set(result["train"]) == {"loss_ce", "acc1", "acc5", "lr", "img/s"}
    assert "val: trained TTTT Acc@1" in capsys.readouterr().out
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["args"]["train_skip_cfg"] == "TTTT" and ckpt["args"]["skip_aware_norms"] is False
    assert not any("_skip" in key for key in ckpt["model"])
    test = main(parse_args(TINY + ["--test-only", "--weights", str(out / "checkpoint.pth"), "--skip-cfg", "TTTT",
                                   "--no-skip-aware-norms", "--no-mlflow"]))
    assert test["TTTT"]["acc1"] == result["val"]["trained"]["acc1"]


# ------------------------------------------------------------------------------------------- bad inputs
def test_default_model_is_a_clear_error_in_a_real_process(tmp_path):
    _assert_user_error(_run([], tmp_path), "--model resnet18 is not an ADN model", "resnet50", "mobilenet_v2")


def test_corrupt_weights_are_one_line_and_overwrite_nothing(tmp_path):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02 definitely not a checkpoint")
    table = tmp_path / "skip_cfgs.csv"
    table.write_text("keep me\n")
    result = _run(TINY + ["--test-only", "--weights", str(corrupt), "--eval-all-skip-cfgs", "--output-dir",
                          str(tmp_path), "--no-mlflow"], tmp_path)
    _assert_user_error(result, "corrupt")
    assert table.read_text() == "keep me\n"


def _cli_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train_adn.py: error: "), err
    return lines[0]


@pytest.mark.parametrize("extra, needle", [
    (["--skip-cfg", "maybe", "--test-only"], "'maybe' is not a skip flag"),
    (["--skip-cfg", "T", "F", "--test-only"], "needs 4 flags"),
    (["--skip-cfg", "TFT", "--test-only"], "got 3"),
    (["--fpn", "--model", "mobilenet_v2"], "ResNet models only"),
    (["--epochs", "two"], "argument --epochs: invalid int value"),
    (["--opt", "lamb"], "--opt lamb is not supported"),
    (["--weights", "w.pth"], "--weights is read with --test-only only"),
    (["--subpath-alpha", "1.5"], "--subpath-alpha must lie in [0, 1]"),
    (["--train-skip-cfg", "TFT"], "--train-skip-cfg: this model has 4 skippable stages"),
    (["--train-skip-cfg", "maybe"], "--train-skip-cfg: 'maybe' is not a skip flag"),
    (["--train-skip-cfg", "TTTT", "--test-only"], "with --test-only use --skip-cfg"),
    (["--train-skip-cfg", "TTTT", "--fpn"], "cannot go with --train-skip-cfg"),
    (["--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
    (["--lr=-0.1"], "argument --lr: '-0.1' must be > 0"),
    (["--wd=-1"], "argument --wd/--weight-decay: '-1' is negative"),
    (["--dist-timeout", "inf"], "argument --dist-timeout: 'inf' is not a finite number"),
])
def test_bad_flags(extra, needle, capsys, tmp_path):
    assert needle in _cli_error(TINY + ["--no-mlflow", "--output-dir", str(tmp_path)] + extra, capsys)


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(capsys, tmp_path):
    target = tmp_path / "out"
    target.write_text("mine")
    line = _cli_error(TINY + ["--no-mlflow", "--output-dir", str(target)], capsys)
    assert "is an existing file, not a folder" in line and target.read_text() == "mine"


def test_a_second_run_into_a_folder_a_live_run_holds_is_refused(capsys, tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(f"{other.pid}\n")
        line = _cli_error(TINY + ["--no-mlflow", "--output-dir", str(tmp_path)], capsys)
    finally:
        other.kill()
        other.wait()
    assert f"is in use by another run (process {other.pid})" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME]


def test_missing_data_path(capsys, tmp_path):
    line = _cli_error(["--model", "resnet50", "--device", "cpu", "--data-path", str(tmp_path / "imagenet"),
                       "--no-mlflow"], capsys)
    assert str(tmp_path / "imagenet") in line and "--dataset digits" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_default_device_without_cuda(capsys):
    assert "use --device cpu" in _cli_error(["--model", "resnet50"], capsys)


def test_weights_of_another_model(capsys, tmp_path):
    other = tmp_path / "mobilenet.pth"
    torch.save(create_model("mobilenet_v2", num_classes=10).state_dict(), other)
    line = _cli_error(TINY + ["--test-only", "--weights", str(other), "--no-mlflow"], capsys)
    assert "does not fit this model" in line and "missing in checkpoint" in line


def test_unknown_config_key(capsys, tmp_path):
    config = tmp_path / "adn.yaml"
    config.write_text("model: resnet_adn_cifar\nlearning_rate: 0.1\n")
    line = _cli_error(["-c", str(config), "--device", "cpu", "--dataset", "digits"], capsys)
    assert "learning_rate" in line and "unknown key" in line


def test_config_values_are_defaults_and_flags_win(tmp_path):
    config = tmp_path / "adn.yaml"
    config.write_text("model: resnet_adn_cifar\nsubpath-topk: 5\nskip_cfg: TTFF\nlr: 0.5\n")
    args = parse_args(["-c", str(config), "--lr", "0.01"])
    assert (args.model, args.subpath_topk, args.skip_cfg, args.lr) == ("resnet_adn_cifar", 5, ["TTFF"], 0.01)


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--subpath-topk", "--eval-all-skip-cfgs", "--dataset", "--cache-dataset", "--mlflow-uri", "-c",
                 "--train-skip-cfg", "--no-skip-aware-norms"):
        assert flag in out


def _image_tree(root: Path) -> Path:
    """``root/{train,val}/<class>/<n>.png``, two classes of four 40x40 images; one training image damaged."""
    from PIL import Image

    for split in ("train", "val"):
        for c, cls in enumerate(("a", "b")):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), (120 * c, 30 * i, 0)).save(root / split / cls / f"{i}.png")
    bad = root / "train" / "b" / "2.png"
    bad.write_bytes(bad.read_bytes()[:50])
    return bad


def test_a_corrupt_image_is_one_line_or_skipped_and_counted(tmp_path, capsys):
    bad = _image_tree(tmp_path / "data")
    argv = ["--dataset", "imagefolder", "--data-path", str(tmp_path / "data"), "--model", "resnet_adn_cifar",
            "--device", "cpu", "--val-crop-size", "32", "--val-resize-size", "32", "--train-crop-size", "32",
            "-b", "8", "-j", "0", "--epochs", "1", "--no-mlflow", "--output-dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    err = capsys.readouterr().err  # the epoch's progress bar, then the one-line error
    assert exit_info.value.code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1].split("\r")[-1].strip()
    assert line.startswith(f"train_adn.py: error: corrupt image {bad}") and "--skip-corrupt-images" in line
    result = main(parse_args(argv + ["--skip-corrupt-images"]))
    assert result is not None and (tmp_path / "out" / "checkpoint.pth").is_file()
    assert f"warning: skipped corrupt image {bad}" in capsys.readouterr().err
