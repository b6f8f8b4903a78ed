"""dsnet/train.py end to end on the embedded digits: the three stages chained through --resume, resume of Stage I,
an ImageFolder run as the README writes it, the original config names, MLflow, and bad inputs (one line on
stderr, exit status 2, nothing written)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from dsnet.models import create_model
from dsnet.train import cli, main, parse_args

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "dsnet" / "train.py"
CONFIGS = REPO / "dsnet" / "configs"
TINY_MODEL = "slimmable_mbnet_v1_bn_uniform_tiny"
# the tiny supernet on the 1,437 / 360 digits at 8x8 pixels, 12 batches of 128: a few seconds per stage on one thread
TINY = ["--dataset", "digits", "--model", TINY_MODEL, "--img-size", "8", "-b", "128", "-vb", "2", "--epochs", "1",
        "--cooldown-epochs", "0", "--warmup-epochs", "0", "-j", "0", "--device", "cpu", "--reset_bn_batches", "2"]
STAGE_DIRS = {"supernet": f"train-slimmable-{TINY_MODEL}", "reset_bn": f"reset_bn-slimmable-{TINY_MODEL}",
              "gate": f"train-dynamic-slimmable-{TINY_MODEL}"}


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    env["OMP_NUM_THREADS"] = "1"  # one thread per process: no OpenMP spinning when the cores are shared
    return env


def _run(args: list[str], cwd: Path, module: bool = False, timeout: int = 180):
    command = [sys.executable, "-m", "dsnet.train"] if module else [sys.executable, str(SCRIPT)]
    return subprocess.run(command + args, cwd=cwd, env=_env(cwd), capture_output=True, text=True, timeout=timeout)


def _epoch_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("Epoch ")]


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
    """Stage I -> BN recalibration -> Stage II, each with its config file and the previous stage's checkpoint as
    --resume, in this process; Stage I logs to MLflow. Returns the output base, the results and the MLflow URI."""
    work = tmp_path_factory.mktemp("dsnet_stages")
    out, uri = work / "out", f"sqlite:///{work}/mlflow.db"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            mp.chdir(work)  # MLflow's artifacts go to ./mlruns
            supernet = main(parse_args(["-c", str(CONFIGS / "supernet.yml"), "--output", str(out)] + TINY))
        common = TINY + ["--output", str(out), "--no-mlflow"]
        recal = main(parse_args(["-c", str(CONFIGS / "reset_bn.yml"), "--resume", supernet["checkpoint"]] + common))
        gate = main(parse_args(["-c", str(CONFIGS / "gate.yml"), "--resume", recal["checkpoint"]] + common))
    finally:
        torch.set_num_threads(threads)
    return out, {"supernet": supernet, "reset_bn": recal, "gate": gate}, uri


def test_stage_one_trains_recalibrates_and_evaluates_every_sub_network(stages):
    out, results, _ = stages
    folder = out / STAGE_DIRS["supernet"]
    assert results["supernet"]["checkpoint"] == str(folder / "checkpoint-1.pth.tar")
    assert {p.name for p in folder.iterdir()} >= {"last.pth.tar", "model_best.pth.tar", "checkpoint-1.pth.tar",
                                                  "summary.csv", "results.json", "results.csv", "args.yaml"}
    ckpt = torch.load(folder / "checkpoint-1.pth.tar", weights_only=True)
    assert {"epoch", "arch", "state_dict", "optimizer", "args", "version", "state_dict_ema", "metric"} <= set(ckpt)
    assert (ckpt["epoch"], ckpt["arch"], ckpt["version"]) == (1, TINY_MODEL, 2)
    assert ckpt["args"]["model_ema_decay"] == 0.997 and ckpt["args"]["num_classes"] == 10
    assert torch.load(folder / "last.pth.tar", weights_only=True)["epoch"] == 0
    rows = (folder / "results.csv").read_text().splitlines()
    assert rows[0] == "network,choice,widths,madds,prec1,prec5,loss" and len(rows) == 1 + 2 * 14
    madds = [int(r.split(",")[3]) for r in rows[1:15]]
    assert madds == sorted(madds) and madds[0] < madds[-1]
    assert len(results["supernet"]["epochs"]) == 1 and len(results["supernet"]["final"]["ema"]) == 14


def test_reset_bn_stage_trains_nothing_and_feeds_the_gate_stage(stages):
    out, results, _ = stages
    recal = results["reset_bn"]
    assert recal["epochs"] == [] and recal["checkpoint"] == str(out / STAGE_DIRS["reset_bn"] / "checkpoint-1.pth.tar")
    assert "metric" not in torch.load(recal["checkpoint"], weights_only=True)
    assert not (out / STAGE_DIRS["reset_bn"] / "last.pth.tar").exists()


def test_gate_stage_trains_only_the_gate(stages):
    out, results, _ = stages
    gate = results["gate"]
    assert gate["checkpoint"] == str(out / STAGE_DIRS["gate"] / "checkpoint-1.pth.tar")
    before = torch.load(results["reset_bn"]["checkpoint"], weights_only=True)["state_dict"]
    after = torch.load(gate["checkpoint"], weights_only=True)["state_dict"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"blocks.3.first_block.gate.gate.0.weight"}  # BN frozen, every other weight fixed
    final = gate["final"]["ema"]
    assert set(final) >= {"prec1", "prec5", "flops", "gate_acc", "route_counts"} and sum(final["route_counts"]) == 360
    assert json.loads((out / STAGE_DIRS["gate"] / "results.json").read_text())["stage"] == "gate"


def test_mlflow_run_is_logged(stages):
    from mlflow.tracking import MlflowClient

    out, _, uri = stages
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("dsnet")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == STAGE_DIRS["supernet"]
    assert run.data.params["model"] == TINY_MODEL and run.data.params["inplace_bootstrap"] == "True"
    assert {"train/loss_largest", "val/smallest_prec1", "ema_val/largest_prec1", "test/13_prec1",
            "test_ema/0_flops"} <= set(run.data.metrics)
    assert run.data.tags["final_checkpoint"] == str((out / STAGE_DIRS["supernet"] / "checkpoint-1.pth.tar").resolve())
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"results.json", "results.csv", "summary.csv"} <= artifacts


def test_resume_stage_one_continues_at_the_next_epoch(stages, tmp_path, capsys):
    out, _, _ = stages
    last = out / STAGE_DIRS["supernet"] / "last.pth.tar"  # epoch 0 of a 1-epoch run
    main(parse_args(["-c", str(CONFIGS / "mobilenetv1_bn_uniform.yml"), "--resume", str(last), "--output",
                     str(tmp_path), "--no-mlflow"] + TINY + ["--epochs", "2"]))
    stdout = capsys.readouterr().out
    assert "Restored the optimizer state" in stdout and "Loaded state_dict_ema" in stdout
    epochs = _epoch_lines(stdout)
    assert len(epochs) == 1 and epochs[0].startswith("Epoch 1/1"), stdout
    ckpt = torch.load(tmp_path / STAGE_DIRS["supernet"] / "checkpoint-2.pth.tar", weights_only=True)
    assert ckpt["epoch"] == 2


def test_resume_keeps_the_best_metric_and_its_epoch(stages, tmp_path, capsys):
    out, _, _ = stages
    last = torch.load(out / STAGE_DIRS["supernet"] / "last.pth.tar", weights_only=True)
    assert last["best_epoch"] == 0 and last["best_metric"] == last["metric"]
    last["best_metric"] = 100.0  # a best the resumed epoch cannot beat
    torch.save(last, tmp_path / "last.pth.tar")
    main(parse_args(["-c", str(CONFIGS / "mobilenetv1_bn_uniform.yml"), "--resume", str(tmp_path / "last.pth.tar"),
                     "--output", str(tmp_path / "run"), "--no-mlflow"] + TINY + ["--epochs", "2"]))
    assert "*** Best metric: 100.0000 (epoch 0)" in capsys.readouterr().out
    folder = tmp_path / "run" / STAGE_DIRS["supernet"]
    assert not (folder / "model_best.pth.tar").exists()  # never replaced by a worse model
    assert torch.load(folder / "last.pth.tar", weights_only=True)["best_epoch"] == 0


def test_two_process_gloo_run_with_bn_recalibration(tmp_path):
    """Stage I and its BN recalibration under torchrun (2 processes, Gloo); the recalibration repeats the short
    loader on every rank (a rank that stops early would leave the others waiting for ever)."""
    args = ["--standalone", "--nproc_per_node", "2", str(SCRIPT), "-c", str(CONFIGS / "supernet.yml")] + TINY + [
        "--reset_bn_batches", "5", "--dist-bn", "reduce", "--output", str(tmp_path / "out"), "--no-mlflow"]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run"] + args, cwd=tmp_path,
                            env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(_epoch_lines(result.stdout)) == 1  # rank 0 prints
    ckpt = torch.load(tmp_path / "out" / STAGE_DIRS["supernet"] / "checkpoint-1.pth.tar", weights_only=True)
    assert ckpt["args"]["world_size"] == 2 and not any(k.startswith("module.") for k in ckpt["state_dict"])


# ------------------------------------------------------------------------------------------- ImageFolder
def _image_folder(root: Path, per_class: dict[str, int]) -> Path:
    generator = torch.Generator().manual_seed(0)
    for split, count in per_class.items():
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (20, 20, 3), generator=generator, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")
    return root


def _released_checkpoint(path: Path, num_classes: int = 1000, model_name: str = TINY_MODEL) -> Path:
    """A checkpoint as the original's CheckpointSaver writes it under DDP: ``module.`` keys, Namespace args."""
    model = create_model(model_name, num_classes=num_classes)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "arch": model_name, "state_dict": state, "state_dict_ema": model.state_dict(),
                "optimizer": {"state": {}, "param_groups": []}, "args": argparse.Namespace(model=model_name),
                "version": 2}, path)
    return path


def test_design_card_command_reads_the_reset_bn_output(tmp_path):
    """``python dsnet/train.py DATA -c dsnet/configs/gate.yml`` with no --resume: the config's ``resume:`` is the
    reset-BN stage's output under ./output (here a stand-in file of the full model; sizes shrunk by flags)."""
    data = _image_folder(tmp_path / "data", {"train": 4, "val": 2})
    _released_checkpoint(tmp_path / "output" / "reset_bn-slimmable-slimmable_mbnet_v1_bn_uniform" /
                         "checkpoint-1.pth.tar", model_name="slimmable_mbnet_v1_bn_uniform")
    result = _run([str(data), "-c", str(CONFIGS / "gate.yml"), "--img-size", "32", "-b", "4", "-vb", "1",
                   "--epochs", "1", "--cooldown-epochs", "0", "-j", "0", "--device", "cpu", "--no-mlflow"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Loaded checkpoint output/reset_bn-slimmable-slimmable_mbnet_v1_bn_uniform/checkpoint-1.pth.tar" \
        in result.stdout
    assert (tmp_path / "output" / "train-dynamic-slimmable-slimmable_mbnet_v1_bn_uniform" /
            "checkpoint-1.pth.tar").is_file()


def test_imagefolder_gate_stage_as_written(tmp_path):
    data = _image_folder(tmp_path / "data", {"train": 4, "validation": 2})  # the original's validation/ fallback
    resume = _released_checkpoint(tmp_path / "DS_MBNet-released.pth.tar")
    result = _run([str(data), "-c", str(CONFIGS / "gate.yml"), "--resume", str(resume), "--model", TINY_MODEL,
                   "--img-size", "16", "-b", "4", "-vb", "1", "--epochs", "1", "--cooldown-epochs", "0", "-j", "0",
                   "--device", "cpu", "--output", str(tmp_path / "out"), "--no-mlflow"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Loaded state_dict_ema" in result.stdout and len(_epoch_lines(result.stdout)) == 1
    folder = tmp_path / "out" / f"train-dynamic-slimmable-{TINY_MODEL}"
    final = json.loads((folder / "results.json").read_text())["final"]
    assert sum(final["model"]["route_counts"]) == 4 and final["ema"]["flops"] > 0


# --------------------------------------------------------------------------------------------- configs
FULL = "slimmable_mbnet_v1_bn_uniform"
CHAINED = {"mobilenetv1_bn_uniform_reset_bn.yml": f"output/train-slimmable-{FULL}/checkpoint-160.pth.tar",
           "mobilenetv1_bn_uniform_gate.yml": f"output/reset_bn-slimmable-{FULL}/checkpoint-1.pth.tar"}


@pytest.mark.parametrize("name", ["mobilenetv1_bn_uniform.yml", "mobilenetv1_bn_uniform_reset_bn.yml",
                                  "mobilenetv1_bn_uniform_gate.yml"])
def test_original_config_names_give_the_original_namespace(name, reference_dir):
    original = json.loads((reference_dir / "train_cli_and_configs.json").read_text())
    expected = original["configs"][name]["effective_args"]
    args = parse_args(["/PATH/TO/ImageNet", "-c", str(CONFIGS / name)])
    for key, value in expected.items():
        if key == "resume" and name in CHAINED:  # the one difference: the stages hand over through resume:
            assert value == "" and args.resume == CHAINED[name]
            continue
        assert getattr(args, key.replace("-", "_")) == value, key
    assert (CONFIGS / name).is_symlink() and not os.readlink(CONFIGS / name).startswith("/")


def test_every_original_flag_keeps_its_default(reference_dir):
    flags = json.loads((reference_dir / "train_cli_and_configs.json").read_text())["cli_flags"]
    args = vars(parse_args([]))
    defaults = {f["dest"]: f["default"] for f in flags if f["dest"] != "help"}
    assert len(defaults) == 70
    assert {k: args[k] for k in defaults} == defaults


def test_help_documents_the_additions(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--dataset", "--routing_space", "--original_dynamic_madds", "--no-gate_eval_noise",
                 "--sgs_on_logits", "--reset_bn_largest", "--reset_bn_batches", "--reset_bn_cumulative",
                 "--no-inplace_bootstrap", "--no-ensemble_ib", "--mlflow-uri", "num_choice", "-c"):
        assert flag in out, flag


def test_added_flags_switch_bootstrapping_off_and_recalibrate_cumulatively(monkeypatch, tmp_path):
    """``--no-inplace_bootstrap`` overrides supernet.yml's ``inplace_bootstrap: true`` (every sub-network learns
    from the labels; the engine gets the flag) and ``--reset_bn_cumulative`` reaches the BN recalibration;
    without them the config's values hold."""
    import dsnet.train as train_module

    config = ["-c", str(CONFIGS / "supernet.yml")]
    defaults = parse_args(config)
    assert defaults.inplace_bootstrap and not defaults.ensemble_ib and not defaults.reset_bn_cumulative
    seen: dict[str, list] = {"inplace_bootstrap": [], "cumulative": []}
    real_epoch, real_reset = train_module.train_epoch_slim, train_module.reset_bn

    def epoch(*args, **kwargs):
        seen["inplace_bootstrap"].append(args[6].inplace_bootstrap)
        return real_epoch(*args, **kwargs)

    def reset(*args, **kwargs):
        seen["cumulative"].append(kwargs["cumulative"])
        return real_reset(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_epoch_slim", epoch)
    monkeypatch.setattr(train_module, "reset_bn", reset)
    result = main(parse_args(config + TINY + ["--no-inplace_bootstrap", "--reset_bn_cumulative", "--no-mlflow",
                                              "--output", str(tmp_path / "out")]))
    assert seen == {"inplace_bootstrap": [False], "cumulative": [True, True]}  # the model and its EMA
    assert len(result["final"]["model"]) == 14
    assert parse_args(config + ["--ensemble_ib", "--no-ensemble_ib"]).ensemble_ib is False


# ------------------------------------------------------------------------------------------- bad inputs
def test_default_model_is_a_clear_error_in_a_real_process(tmp_path):
    result = _run(["--dataset", "digits", "--output", str(tmp_path / "out")], tmp_path, module=True)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: --model resnet101 is not a DS-Net model")
    assert TINY_MODEL in lines[0] and not (tmp_path / "out").exists()


def _cli_error(argv: list[str], capsys, tmp_path: Path) -> str:
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli(argv + ["--output", str(out), "--no-mlflow"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("train.py: error: "), err
    assert not out.exists()  # nothing written
    return lines[0]


@pytest.mark.parametrize("extra, needles", [
    (["--epochs", "two"], ["argument --epochs: invalid int value"]),
    (["--dataset", "cifar"], ["argument --dataset: invalid choice"]),
    (["--dist-bn", "sum"], ["--dist-bn sum is not one of"]),
    (["--jsd"], ["--jsd True is not supported", "Jensen-Shannon"]),
    (["--aug-splits", "3"], ["--aug-splits 3 is not supported"]),
    (["--split-bn"], ["--split-bn True is not supported"]),
    (["--bn-tf"], ["--bn-tf True is not supported"]),
    (["--drop-path", "0.1"], ["DS-Net has no drop-path"]),
    (["--ensemble_ib"], ["needs --inplace_bootstrap"]),
    (["--routing_space", "0", "1", "2", "14"], ["--routing_space", "0..13"]),
    (["--start_chn_idx", "11"], ["--start_chn_idx", "[11, 12, 13, 14]"]),
    (["--opt", "nosuchopt"], ["--opt nosuchopt"]),
    (["--sched", "nosuchsched"], ["--sched nosuchsched"]),
    (["--eval-metric", "top1"], ["--eval-metric top1 is not one of: prec1, prec5, loss"]),
    (["--lr", "nan"], ["argument --lr: 'nan' is not a finite number"]),
    (["--weight-decay=-1"], ["argument --weight-decay: '-1' is negative"]),
    (["-b", "4096"], ["fewer than one batch of -b 4096"]),
])
def test_bad_flags(extra, needles, capsys, tmp_path):
    line = _cli_error(TINY + extra, capsys, tmp_path)
    for needle in needles:
        assert needle in line, line


def test_an_output_base_that_is_a_file_is_refused_before_any_work(capsys, tmp_path):
    (tmp_path / "taken").write_text("mine")
    with pytest.raises(SystemExit) as exit_info:
        cli(TINY + ["--output", str(tmp_path / "taken"), "--no-mlflow"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and "is a file, so the folder cannot be created" in err and "\n" not in err
    assert (tmp_path / "taken").read_text() == "mine"


def test_bad_config_key_and_type(capsys, tmp_path):
    config = tmp_path / "bad.yml"
    config.write_text("model: slimmable_mbnet_v1_bn_uniform_tiny\nlearning_rate: 0.1\n")
    line = _cli_error(["-c", str(config), "--dataset", "digits"], capsys, tmp_path)
    assert "learning_rate" in line and "unknown key" in line
    config.write_text("epochs: ten\n")
    assert "key 'epochs'" in _cli_error(["-c", str(config), "--dataset", "digits"], capsys, tmp_path)
    config.write_text("train_mode: gates\n")
    assert "train_mode must be 'all'" in _cli_error(["-c", str(config)] + TINY, capsys, tmp_path)


def test_missing_data(capsys, tmp_path):
    base = ["-c", str(CONFIGS / "supernet.yml"), "--model", TINY_MODEL, "--device", "cpu"]
    assert "DATA is missing" in _cli_error(base, capsys, tmp_path)
    assert "is not a folder" in _cli_error([str(tmp_path / "nowhere")] + base, capsys, tmp_path)
    data = tmp_path / "data"
    (data / "val" / "cat").mkdir(parents=True)
    assert f"no 'train' folder at {data / 'train'}" in _cli_error([str(data)] + base, capsys, tmp_path)
    _image_folder(tmp_path / "noval", {"train": 1})
    line = _cli_error([str(tmp_path / "noval")] + base, capsys, tmp_path)
    assert f"no 'val' folder at {tmp_path / 'noval' / 'val'}" in line


@pytest.mark.parametrize("config, producer", [("reset_bn.yml", "supernet.yml"), ("gate.yml", "reset_bn.yml"),
                                              ("mobilenetv1_bn_uniform_gate.yml", "reset_bn.yml")])
def test_stage_without_its_input_checkpoint(config, producer, capsys, tmp_path):
    line = _cli_error(["-c", str(CONFIGS / config)] + TINY, capsys, tmp_path)
    assert "--resume" in line and producer in line
    missing = tmp_path / "missing.pth.tar"
    line = _cli_error(["-c", str(CONFIGS / config), "--resume", str(missing)] + TINY, capsys, tmp_path)
    assert f"--resume {missing} does not exist" in line and producer in line


def test_corrupt_resume_file(capsys, tmp_path):
    corrupt = tmp_path / "corrupt.pth.tar"
    corrupt.write_bytes(b"\x80\x02 definitely not a checkpoint")
    line = _cli_error(["-c", str(CONFIGS / "gate.yml"), "--resume", str(corrupt)] + TINY, capsys, tmp_path)
    assert "--resume" in line and "corrupt" in line and "reset_bn.yml" in line


def test_checkpoint_of_another_model(capsys, tmp_path):
    other = tmp_path / "other.pth.tar"
    torch.save({"state_dict": torch.nn.Linear(4, 2).state_dict(), "epoch": 3, "version": 2}, other)
    line = _cli_error(["--resume", str(other)] + TINY, capsys, tmp_path)
    assert "does not fit this model" in line and "missing in checkpoint" in line and "unexpected" in line
    line = _cli_error(["--initial-checkpoint", str(other)] + TINY, capsys, tmp_path)
    assert line.startswith("train.py: error: --initial-checkpoint: ") and "does not fit this model" in line
    wrong_classes = _released_checkpoint(tmp_path / "imagenet.pth.tar", num_classes=1000)
    line = _cli_error(["-c", str(CONFIGS / "gate.yml"), "--resume", str(wrong_classes)] + TINY, capsys, tmp_path)
    assert "shape mismatch" in line and "classifier.weight" in line
