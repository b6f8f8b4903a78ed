"""The three entry points end to end on embedded data with a tiny ViT: main_image.py (training from a pretrained
backbone, checkpoints in the original format, MLflow, exact resume, --eval), main_vtab.py (both protocols, the
honoured lr / weight decay, the working --eval), measure_speed.py, a two-process Gloo run, bad inputs (one line
on stderr, exit status 2), and the transfer proxy's flags (digits class subset and shift, token-mask controls)."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dyt.main_image
from dyt.main_image import cli as image_cli
from dyt.main_image import main as image_main
from dyt.main_image import parse_args as image_args
from dyt.main_vtab import cli as vtab_cli
from dyt.main_vtab import main as vtab_main
from dyt.main_vtab import parse_args as vtab_args
from dyt.measure_speed import cli as speed_cli
from dyt.measure_speed import measure
from dyt.measure_speed import parse_args as speed_args
from dyt.models import build_model

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "dyt" / "main_image.py"
# vit_digits on the 256 / 128 synthetic images at 8x8 pixels (4 patches + CLS): about a second per epoch.
TINY = ["--dataset", "synthetic", "--model", "vit_digits", "--input_size", "8", "--device", "cpu", "--batch_size",
        "64", "--num_workers", "0", "--warmup_epochs", "1", "--ffn_num", "8"]


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp}/mlflow.db"
    env["OMP_NUM_THREADS"] = "1"
    return env


def _epochs(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("Epoch ")]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A vit_digits backbone saved as a raw timm-style state dict (no adapters, dispatchers or head)."""
    torch.manual_seed(1)
    model = build_model("vit_digits", num_classes=10, ffn_num=0, dispatch="none", img_size=8)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    path = tmp_path_factory.mktemp("weights") / "backbone.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, pretrained):
    """main_image: 2 epochs from the pretrained backbone, with MLflow (a store of its own) and --auto_remove."""
    work = tmp_path_factory.mktemp("dyt_image")
    out = work / "out"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        image_main(image_args(TINY + ["--epochs", "2", "--finetune", str(pretrained), "--output_dir", str(out),
                                      "--auto_remove", "--mlflow-uri", f"sqlite:///{work}/mlflow.db"]))
    return work, out, stdout.getvalue()


def test_training_writes_the_original_checkpoints_and_tracks(trained, pretrained):
    work, out, result = trained
    epochs = _epochs(result)
    assert len(epochs) == 2 and "test Acc@1" in epochs[1] and "GFLOPs" in epochs[1] and "rate" in epochs[1]
    # adapters 6 x (192*8 + 8 + 8*192 + 192) = 19,632 logged; + dispatchers 6 x 193 + head 1,930 trainable
    assert "Loaded pre-trained weights" in result
    assert "number of params (M): 0.02 (trainable in all: 22,720)" in result
    names = {p.name for p in out.iterdir()}
    best = [n for n in names if re.fullmatch(r"checkpoint-\d+\.pth", n)]
    assert len(best) == 1 and {"checkpoint.pth", "final_checkpoint.pth"} <= names  # --auto_remove kept one
    ckpt = torch.load(out / best[0], weights_only=True)
    assert {"model", "optimizer", "epoch", "scaler", "args"} <= set(ckpt)
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert set(torch.load(out / "final_checkpoint.pth", weights_only=True)) == {"model"}
    # the backbone stayed frozen, the adapters trained
    backbone = torch.load(pretrained, weights_only=True)
    final = torch.load(out / "final_checkpoint.pth", weights_only=True)["model"]
    assert torch.equal(final["blocks.0.attn.qkv.weight"], backbone["blocks.0.attn.qkv.weight"])
    assert final["blocks.0.adaptmlp.up_proj.weight"].abs().sum() > 0

    db = sqlite3.connect(work / "mlflow.db")
    keys = {k for (k,) in db.execute("select distinct key from metrics")}
    assert {"loss", "base_loss", "token_loss", "teacher_loss", "distillation_loss", "lr", "acc1", "acc5", "flops",
            "activation_rate", "layer_rate_0", "layer_rate_5", "max_metric"} <= keys
    steps = db.execute("select distinct step from metrics where key = 'acc1'").fetchall()
    assert sorted(s for (s,) in steps) == [0, 1]


def test_eval_reproduces_the_last_test_accuracy(trained, tmp_path):
    _, out, result = trained
    last_acc = float(re.search(r"test Acc@1 ([\d.]+)", _epochs(result)[-1]).group(1))
    stats = image_main(image_args(TINY + ["--eval", "--eval_ckpt", str(out / "final_checkpoint.pth"),
                                          "--no-mlflow", "--output_dir", str(tmp_path)]))["test"]
    assert stats["acc1"] == pytest.approx(last_acc, abs=0.01)
    assert not list(tmp_path.iterdir())  # evaluation writes nothing


def test_resume_is_exact(tmp_path, monkeypatch):
    """Two epochs straight equal a run resumed from the straight run's state after epoch 0 (weights, AdamW
    state, RNG of the Gumbel noise and dropout, loader order)."""
    states = {}
    real_save = dyt.main_image.save_checkpoint

    def spy(state, path):
        if Path(path).name == "checkpoint.pth":
            states[state["epoch"]] = copy.deepcopy(state)
        return real_save(state, path)

    monkeypatch.setattr(dyt.main_image, "save_checkpoint", spy)
    common = TINY + ["--epochs", "2", "--no-mlflow"]
    image_main(image_args(common + ["--output_dir", str(tmp_path / "straight")]))
    assert sorted(states) == [0, 1]
    torch.save(states[0], tmp_path / "epoch0.pth")
    result = image_main(image_args(common + ["--output_dir", str(tmp_path / "resumed"), "--resume",
                                             str(tmp_path / "epoch0.pth")]))
    assert result["epoch"] == 1
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pth", weights_only=True)
    assert resumed["epoch"] == 1 and resumed["max_metric"] == states[1]["max_metric"]
    for key, value in states[1]["model"].items():
        assert torch.equal(resumed["model"][key], value), key


def test_vtab_val200_protocol_and_honoured_flags(tmp_path):
    out = tmp_path / "vtab"
    result = vtab_main(vtab_args(TINY + ["--epochs", "2", "--vtab_protocol", "val200", "--lr", "0.01",
                                         "--weight_decay", "0.05", "--no-mlflow", "--output_dir", str(out)]))
    best = result["best"]
    assert best["epoch"] in (0, 1) and "test_metric" in best and "val" in result
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    group = ckpt["optimizer"]["param_groups"][0]
    assert group["weight_decay"] == 0.05 and ckpt["args"]["lr"] == 0.01 and ckpt["args"]["scale"] == 1.0
    assert ckpt["best"] == best
    stats = vtab_main(vtab_args(TINY + ["--eval", "--resume", str(out / "final_checkpoint.pth"), "--no-mlflow"]))
    assert 0.0 <= stats["test"]["acc1"] <= 100.0


def test_vtab_defaults_are_the_original_hard_coded_values():
    args = vtab_args([])
    assert (args.lr, args.weight_decay, args.scale, args.ffn_num, args.min_lr, args.warmup_epochs) == \
        (1e-3, 1e-4, 1.0, 8, 1e-5, 10)
    assert args.vtab_protocol == "original"
    image = image_args([])
    assert (image.lr, image.blr, image.weight_decay, image.scale, image.ffn_num, image.batch_size) == \
        (None, 0.1, 0.01, 0.1, 64, 512)
    assert (image.model, image.dataset, image.device, image.token_target_ratio) == \
        ("vit_base_patch16", "imagenet", "cuda", 0.5)


def test_measure_speed_loads_the_fine_tuned_checkpoint(trained, tmp_path):
    _, out, _ = trained
    csv = tmp_path / "speed.csv"
    rows = measure(speed_args(TINY + ["--eval_ckpt", str(out / "final_checkpoint.pth"), "--batch_size", "16",
                                      "--warmup_iters", "1", "--timed_iters", "2", "--csv", str(csv)]))
    assert [r["variant"] for r in rows] == ["dyt_gather", "dyt_masked", "complete", "adaptformer"]
    rates = {r["variant"]: r["activation_rate"] for r in rows}
    assert rates["dyt_gather"] == rates["dyt_masked"] < 1.0 and rates["complete"] == rates["adaptformer"] == 1.0
    assert all(r["img_per_s"] > 0 for r in rows)
    assert csv.read_text().splitlines()[0] == "variant,batch_size,img_per_s,ms_per_batch,activation_rate," \
                                               "speedup_vs_complete"


# ------------------------------------------------------------------------------- flags of the transfer proxy
def test_digits_class_subset_shift_and_backbone_from_a_checkpoint(tmp_path):
    """--digits_classes / --digits_shift (the proxy's source and target tasks) and --finetune from a
    final_checkpoint.pth of this script: the head is dropped, the backbone loads and stays frozen."""
    common = ["--dataset", "digits", "--digits_shift", "canvas", "--model", "vit_digits_tiny", "--device", "cpu",
              "--batch_size", "64", "--num_workers", "0", "--warmup_epochs", "0", "--epochs", "1", "--no-mlflow"]
    source = image_main(image_args(common + ["--digits_classes", "0-4", "--ffn_num", "0", "--dispatch", "none",
                                             "--no_distill", "--output_dir", str(tmp_path / "source")]))
    assert source["test"]["samples"] == 180
    backbone = tmp_path / "source" / "final_checkpoint.pth"
    target = image_main(image_args(common + ["--digits_classes", "5,6,7", "--ffn_num", "8", "--finetune",
                                             str(backbone), "--output_dir", str(tmp_path / "target")]))
    assert target["test"]["samples"] == 109  # the val images of digits 5, 6 and 7
    before = torch.load(backbone, weights_only=True)["model"]
    after = torch.load(tmp_path / "target" / "final_checkpoint.pth", weights_only=True)["model"]
    assert after["head.weight"].shape == (3, 48) and before["head.weight"].shape == (5, 48)
    assert torch.equal(after["blocks.3.mlp.fc1.weight"], before["blocks.3.mlp.fc1.weight"])
    assert after["blocks.0.adaptmlp.up_proj.weight"].abs().sum() > 0


def test_token_mask_controls_keep_the_target_rate_and_are_deterministic():
    argv = TINY + ["--model", "vit_digits_tiny", "--input_size", "16", "--epochs", "1", "--token_target_ratio", "0.25",
                   "--no-mlflow", "--output_dir", ""]
    centre = image_main(image_args(argv + ["--token_mask", "centre"]))["test"]
    assert centre["activation_rate"] == 0.25 and centre["layer_rates"] == [0.25] * 4  # the 4 of 16 central patches
    first, second = (image_main(image_args(argv + ["--token_mask", "random"]))["test"] for _ in range(2))
    assert first["activation_rate"] == pytest.approx(0.25, abs=0.03)
    assert first["acc1"] == second["acc1"] and first["activation_rate"] == second["activation_rate"]


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
               *TINY, "--batch_size", "32", "--epochs", "1", "--output_dir", str(out), "--no-mlflow"]
    result = subprocess.run(command, cwd=tmp_path, env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    epochs = _epochs(result.stdout)
    assert len(epochs) == 1  # rank 0 prints
    ckpt = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ckpt["epoch"] == 0 and not any(k.startswith("module.") for k in ckpt["model"])
    # the sharded evaluation (64 + 64 images, summed over ranks) equals one process evaluating everything
    ddp_acc = float(re.search(r"test Acc@1 ([\d.]+)", epochs[0]).group(1))
    single = image_main(image_args(TINY + ["--eval", "--eval_ckpt", str(out / "final_checkpoint.pth"),
                                           "--no-mlflow"]))["test"]
    assert single["samples"] == 128 and single["acc1"] == pytest.approx(ddp_acc, abs=0.01)


# ------------------------------------------------------------------------------------------------ bad inputs
def _cli_error(cli, argv: list[str], capsys, prog: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


@pytest.mark.parametrize("extra, needle", [
    (["--dataset", "cifar1000"], "unknown dataset 'cifar1000'"),
    (["--dataset", "cifar100_full", "--data_path", "/nonexistent/cifar"], "--data_path /nonexistent/cifar"),
    (["--finetune", "/nonexistent/jx.pth"], "--finetune /nonexistent/jx.pth does not exist"),
    (["--model", "resnet50"], "--model resnet50 is not a DyT model"),
    (["--eval"], "--eval needs the fine-tuned checkpoint"),
    (["--token_target_ratio", "1.5"], "--token_target_ratio must lie in [0, 1]"),
    (["--dispatch", "tokens"], "argument --dispatch: invalid choice"),
    (["--epochs", "two"], "argument --epochs: invalid int value"),
    (["--token_mask", "random", "--dispatch", "none"], "--token_mask random replaces the dispatchers' masks"),
    (["--token_mask", "learnt"], "argument --token_mask: invalid choice"),
    (["--digits_classes", "5"], "must name at least two distinct digits"),
    (["--digits_classes", "a-b"], "is not a list of digits"),
    (["--digits_shift", "canvas"], "apply to --dataset digits only"),
    (["--lr", "nan"], "argument --lr: 'nan' is not a finite number"),
    (["--lr=-1e-3"], "argument --lr: '-1e-3' must be > 0"),
    (["--weight_decay", "inf"], "argument --weight_decay: 'inf' is not a finite number"),
])
def test_bad_inputs(extra, needle, capsys, tmp_path):
    line = _cli_error(image_cli, TINY + ["--no-mlflow", "--output_dir", str(tmp_path)] + extra, capsys,
                      "main_image.py")
    assert needle in line


def test_an_output_dir_that_is_a_file_is_refused_before_any_work(capsys, tmp_path):
    target = tmp_path / "out"
    target.write_text("mine")
    line = _cli_error(image_cli, TINY + ["--no-mlflow", "--output_dir", str(target)], capsys, "main_image.py")
    assert "--output_dir" in line and "is an existing file, not a folder" in line and target.read_text() == "mine"


def test_real_data_without_finetune_says_what_to_pass(capsys, tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    line = _cli_error(vtab_cli, TINY + ["--dataset", "eurosat", "--data_path", str(tmp_path), "--no-mlflow"], capsys,
                      "main_vtab.py")
    assert "--finetune is needed" in line and "VIT_BASE_IN21K" in line


def test_checkpoint_of_another_model_and_corrupt_checkpoint(trained, capsys, tmp_path):
    _, out, _ = trained
    other = TINY[:-1] + ["16"]  # --ffn_num 16: another adapter shape
    line = _cli_error(image_cli, other + ["--eval", "--eval_ckpt", str(out / "final_checkpoint.pth"),
                                          "--no-mlflow"], capsys, "main_image.py")
    assert "does not fit this model" in line and "adaptmlp" in line
    line = _cli_error(speed_cli, other + ["--eval_ckpt", str(out / "final_checkpoint.pth")], capsys,
                      "measure_speed.py")
    assert "does not fit this model" in line
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02 not a checkpoint")
    line = _cli_error(image_cli, TINY + ["--resume", str(corrupt), "--no-mlflow", "--output_dir",
                                         str(tmp_path / "o")], capsys, "main_image.py")
    assert "corrupt" in line and not (tmp_path / "o").exists()


def test_help_lists_the_original_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        vtab_cli(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--blr", "--ffn_num", "--token_target_ratio", "--auto_remove", "--vtab_protocol", "--finetune",
                 "--mlflow-uri", "--dispatch", "--token_mask", "--digits_classes", "--digits_shift"):
        assert flag in text
