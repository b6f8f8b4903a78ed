"""jeidnn/transfer_learning.py and jeidnn/train_dynn.py end to end on the embedded digits (tiny runs of a few
batches): the backbone found by train_dynn.py at its default path, the warm-up files, resume of both scripts,
MLflow, the original's flag spellings, and bad inputs (one line on stderr, exit status 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jeidnn import train_dynn, transfer_learning
from jeidnn.transfer_learning import parameter_groups

REPO = Path(__file__).resolve().parents[2]
TRANSFER = REPO / "jeidnn" / "transfer_learning.py"
DYNN = REPO / "jeidnn" / "train_dynn.py"
TINY_TL = ["--dataset", "digits", "--transfer-learning", "False", "--epochs", "1", "--max-batches", "2",
           "--device", "cpu"]
TINY_DYNN = ["--dataset", "digits", "--num_epoch", "3", "--max_warmup_epoch", "1", "--max-batches", "2",
             "--bilevel_batch_count", "1", "--device", "cpu"]


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(script: Path, args: list[str], cwd: Path):
    return subprocess.run([sys.executable, str(script)] + args, cwd=cwd, env=_env(cwd), capture_output=True,
                          text=True, timeout=180)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """transfer_learning.py then train_dynn.py with no checkpoint flag (the default path), both logging to MLflow."""
    work = tmp_path_factory.mktemp("jeidnn_cli")
    uri = f"sqlite:///{work}/mlflow.db"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MLFLOW_TRACKING_URI", uri)
            mp.chdir(work)
            tl = transfer_learning.main(transfer_learning.parse_args(TINY_TL))
            dynn = train_dynn.main(train_dynn.parse_args(TINY_DYNN + ["--ce_ic_tradeoff", "0.15"]))
    finally:
        torch.set_num_threads(threads)
    return work, tl, dynn, uri


def test_transfer_learning_writes_the_original_format_at_the_default_path(runs):
    work, tl, _, _ = runs
    folder = work / "checkpoint" / "checkpoint_digits_t2t_vit_7"
    assert Path(tl["best"]) == Path("checkpoint/checkpoint_digits_t2t_vit_7/best.pth")
    ckpt = torch.load(folder / "best.pth", weights_only=True)
    assert set(ckpt) == {"net", "acc", "epoch"} and ckpt["epoch"] == 0
    assert all(k.startswith("module.") for k in ckpt["net"])
    assert not any(k.startswith(("module.intermediate_heads", "module.gates")) for k in ckpt["net"])
    assert len(list(folder.glob("ckpt_0.01_0.0005_*.pth"))) == 1 and (folder / "last.pth").is_file()


def test_train_dynn_trains_only_ics_and_gates_and_logs(runs):
    work, _, dynn, uri = runs
    run_dir = work / "checkpoint" / "checkpoint_digits_t2t_vit_7_confEE" / "0.15"
    backbone = torch.load(work / "checkpoint" / "checkpoint_digits_t2t_vit_7" / "best.pth", weights_only=True)["net"]
    trained = torch.load(run_dir / "checkpoint.pth", weights_only=True)["model"]
    for key, value in backbone.items():
        assert torch.equal(trained[key[len("module."):]], value), key
    assert sorted(p.name for p in (work / "checkpoint" / "jeidnn_dynamic_warmup" / "digits_t2t_vit_7_32_1").iterdir()) \
        == [f"{level}.pth" for level in range(6)]
    assert dynn["epoch"] == 2
    test = dynn["test"]
    assert {"gated_acc", "total_cost", "total_macs", "gated_ece", "gated_ece_batch", "percent_exitfinal",
            "sets_general_C_0.05", "acc_exit", "exit_optimal_gate0"} <= set(test)
    assert 0.9 < test["total_cost"] < 4.3  # the original's Mul-Add of the 32 px T2T-ViT-7, in millions

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("jeidnn").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "0.15_boosted"
    assert {"train/loss", "val/gated_acc", "test/gated_acc", "test/acc0", "test_std/gated_acc"} <= set(run.data.metrics)
    (tl_run,) = client.search_runs([client.get_experiment_by_name("jeidnn_transfer").experiment_id])
    assert {"train/loss", "val/acc", "best/test_acc"} <= set(tl_run.data.metrics)


def test_both_scripts_resume_from_their_last_checkpoint(runs, capsys):
    work, _, _, _ = runs
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        tl = transfer_learning.main(transfer_learning.parse_args(TINY_TL[:4] + ["--epochs", "2", "--max-batches", "2",
                                                                  "--device", "cpu", "-r", "--no-mlflow"]))
        out = capsys.readouterr().out
        assert "continuing at epoch 1" in out and tl["epoch"] in (0, 1)
        dynn = train_dynn.main(train_dynn.parse_args(TINY_DYNN[:2] + ["--num_epoch", "4", "--max_warmup_epoch", "1",
                                                      "--max-batches", "2", "--bilevel_batch_count", "1",
                                                      "--ce_ic_tradeoff", "0.15", "--resume", "--no-mlflow"]))
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("Epoch ")]
    assert "Resumed from" in out and len(epochs) == 1 and epochs[0].startswith("Epoch 3/3") and dynn["epoch"] == 3


def test_parameter_groups_train_cls_token_and_norm_in_the_backbone_group():
    from jeidnn.models import create_model

    model = create_model("t2t_vit_7", num_classes=10, img_size=32)
    backbone, head = parameter_groups(model, 0.05, 0.01)
    ids = {id(p) for p in backbone["params"]}
    assert id(model.cls_token) in ids and id(model.norm.weight) in ids and id(model.pos_embed) not in ids
    assert backbone["lr"] == pytest.approx(5e-4) and head["lr"] == 0.05
    assert not ids & {id(p) for p in model.intermediate_heads.parameters()}


def test_original_flag_spellings_parse():
    args = transfer_learning.parse_args(["--lr", "0.05", "--b", "64", "--num-classes", "10", "--img-size", "224",
                                         "--transfer-learning", "True", "--weights-path", "w.pth.tar",
                                         "--use_mlflow", "False"])
    assert (args.batch, args.num_classes, args.img_size, args.transfer_learning, args.no_mlflow, args.dataset) == \
        (64, 10, 224, True, True, "cifar10")  # the README's command names no dataset: 10 classes at 224 px
    assert transfer_learning.parse_args([]).dataset == "cifar100LT"
    assert transfer_learning.parse_args(["--num-classes", "10", "--img-size", "32"]).dataset == "svhn"
    args = train_dynn.parse_args(["--ce_ic_tradeoff", "0.15", "--b", "32", "--gate_objective", "zeroOne"])
    assert (args.ce_ic_tradeoff, args.batch, args.dataset, args.num_epoch, args.seed) == (0.15, 32, "cifar10", 10, 322)


@pytest.mark.parametrize(("script", "args", "message"), [
    (DYNN, ["--ce_ic_tradeoff", "0.15"], "python jeidnn/transfer_learning.py --dataset cifar10 --arch t2t_vit_7"),
    (DYNN, ["--dataset", "digits", "--checkpoint", "nowhere.pth"], "nowhere.pth does not exist"),
    (DYNN, ["--dataset", "digits", "--bilevel_batch_count", "0"], "--bilevel_batch_count must be at least 1"),
    (DYNN, ["--dataset", "imagenet"], "invalid choice"),
    (TRANSFER, ["--dataset", "cifar10"], "download 71.7_T2T_ViT_7.pth.tar"),
    (TRANSFER, ["--dataset", "svhn", "--num-classes", "100", "--transfer-learning", "False"],
     "add --dataset cifar100 or --dataset cifar100LT"),
    (TRANSFER, ["--use_mlflow", "maybe"], "expected True or False"),
    (TRANSFER, ["--dataset", "digits", "--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
    (DYNN, ["--dataset", "digits", "--ce_ic_tradeoff=-0.5"], "argument --ce_ic_tradeoff: '-0.5' is negative"),
    (DYNN, ["--dataset", "digits", "--output-dir", "taken"], "--output-dir taken is an existing file, not a folder"),
    (TRANSFER, ["--dataset", "cifar10", "--transfer-learning", "False", "--data-root", "nowhere"], "nowhere"),
])
def test_bad_inputs_give_one_line_and_status_2(tmp_path, script, args, message):
    (tmp_path / "taken").write_text("a file where an output folder is asked for")
    result = _run(script, args + ["--no-mlflow"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_wrong_checkpoint_is_reported(tmp_path):
    bad = tmp_path / "bad.pth"
    torch.save({"net": {"module.head.weight": torch.zeros(3, 3)}, "acc": 1.0, "epoch": 0}, bad)
    result = _run(DYNN, ["--dataset", "digits", "--checkpoint", str(bad), "--no-mlflow"], tmp_path)
    assert result.returncode == 2 and "bad.pth" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_both_scripts_under_two_process_torchrun(tmp_path):
    """transfer_learning.py then train_dynn.py with 2 Gloo processes (gradients averaged by hand, rank 0 writes)."""
    def torchrun(script: Path, args: list[str]):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                               str(script)] + args + ["--no-mlflow", "--max-batches", "3"], cwd=tmp_path,
                              env=_env(tmp_path), capture_output=True, text=True, timeout=300)

    result = torchrun(TRANSFER, ["--dataset", "digits", "--transfer-learning", "False", "--epochs", "1"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "checkpoint" / "checkpoint_digits_t2t_vit_7" / "best.pth").is_file()
    result = torchrun(DYNN, ["--dataset", "digits", "--num_epoch", "2", "--max_warmup_epoch", "1"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "checkpoint").glob("checkpoint_digits_t2t_vit_7_confEE/*/checkpoint.pth"))
