"""main_video.py end to end: training on the embedded videos with multi-view testing, per-frame FLOPs, per-layer
rates, checkpoints and MLflow; --eval; exact resume; a tiny K400 / SSv2 folder of real video files decoded with
PyAV from a pretrained backbone; a two-process Gloo run; bad inputs (one line on stderr, exit status 2)."""

from __future__ import annotations

import contextlib
import copy
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dyt.main_video
from common.tracking import Tracker
from dyt.main_video import cli, main, parse_args
from dyt.models import build_model

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "dyt" / "main_video.py"
# vit_digits_tiny on 2-frame clips of 8x8 pixels (4 patches + CLS per frame), 3 test views: seconds per epoch
TINY = ["--model", "vit_digits_tiny", "--input_size", "8", "--num_frames", "2", "--device", "cpu", "--batch_size",
        "64", "--num_workers", "0", "--warmup_epochs", "1", "--ffn_num", "8"]
SYNTHETIC = ["--dataset", "synthetic", *TINY]


def _run(argv: list[str]) -> tuple[dict, str]:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        result = main(parse_args(argv))
    return result, stdout.getvalue()


class RecordingTracker(Tracker):
    """The MLflow tracker with the store replaced by a list (MLflow itself is exercised by test_cli.py)."""

    def __init__(self, *args, **kwargs):
        super().__init__(False)
        self.metrics: list[tuple[dict, int | None]] = []
        self.params: dict = {}

    def log_metrics(self, metrics, step=None):
        self.metrics.append((dict(metrics), step))

    def log_params(self, params):
        self.params.update(vars(params) if not isinstance(params, dict) else params)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("dyt_video") / "out"
    tracker = RecordingTracker()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dyt.main_video, "start_tracking", lambda args, run_name=None: tracker)
        result, text = _run(SYNTHETIC + ["--epochs", "2", "--output_dir", str(out), "--auto_remove"])
    return tracker, out, result, text


def test_training_evaluates_views_and_logs_frame_flops_and_layer_rates(trained):
    tracker, out, result, text = trained
    test = result["test"]
    assert test["samples"] == 128 and test["views"] == 3 and test["frames"] == 128 * 3 * 2
    assert "test views 3 temporal x 1 spatial" in text and "(128 videos x 3 views)" in text
    flops = re.findall(r"Average flops: ([\d.e-]+) GFLOPs per frame \| Rate = flops / 17.6: ([\d.e-]+)", text)
    assert len(flops) == 2 and float(flops[-1][1]) == pytest.approx(float(flops[-1][0]) / 17.6, rel=1e-3)
    layers = re.findall(r"Select rate per layer: ((?:[\d.]+ ){4})\| overall", text)
    assert len(layers) == 2 and [float(r) for r in layers[-1].split()] == pytest.approx(test["layer_rates"], abs=1e-3)
    assert test["video_flops"] == pytest.approx(3 * test["clip_flops"])
    names = {p.name for p in out.iterdir()}
    assert len([n for n in names if re.fullmatch(r"checkpoint-\d+\.pth", n)]) == 1  # --auto_remove
    assert {"checkpoint.pth", "final_checkpoint.pth"} <= names
    final = torch.load(out / "final_checkpoint.pth", weights_only=True)["model"]
    assert final["query_token"].shape == (1, 1, 48) and "attentive_blocks.cross_attn.q_bias" in final
    epochs = [(m, step) for m, step in tracker.metrics if step is not None]
    assert [step for _, step in epochs] == [0, 1] and tracker.params["num_frames"] == 2
    assert {"loss", "distillation_loss", "acc1", "flops", "rate", "clip_flops", "video_flops", "activation_rate",
            "layer_rate_0", "layer_rate_3", "max_metric"} <= set(epochs[-1][0])
    assert epochs[-1][0]["flops"] == pytest.approx(test["flops"])


def test_eval_reproduces_the_last_accuracy(trained, tmp_path):
    _, out, result, _ = trained
    stats = main(parse_args(SYNTHETIC + ["--eval", "--eval_ckpt", str(out / "final_checkpoint.pth"), "--no-mlflow",
                                         "--output_dir", str(tmp_path)]))["test"]
    assert stats["acc1"] == pytest.approx(result["test"]["acc1"], abs=0.01)
    assert stats["flops"] == pytest.approx(result["test"]["flops"])
    assert not list(tmp_path.iterdir())


def test_resume_is_exact(tmp_path, monkeypatch):
    states = {}
    real_save = dyt.main_video.save_checkpoint

    def spy(state, path):
        if Path(path).name == "checkpoint.pth":
            states[state["epoch"]] = copy.deepcopy(state)
        return real_save(state, path)

    monkeypatch.setattr(dyt.main_video, "save_checkpoint", spy)
    common = SYNTHETIC + ["--epochs", "2", "--no-mlflow"]
    main(parse_args(common + ["--output_dir", str(tmp_path / "straight")]))
    torch.save(states[0], tmp_path / "epoch0.pth")
    result = main(parse_args(common + ["--output_dir", str(tmp_path / "resumed"), "--resume",
                                       str(tmp_path / "epoch0.pth")]))
    assert result["epoch"] == 1
    resumed = torch.load(tmp_path / "resumed" / "checkpoint.pth", weights_only=True)
    for key, value in states[1]["model"].items():
        assert torch.equal(resumed["model"][key], value), key


# ------------------------------------------------------------------------------------------ real video files
@pytest.fixture(scope="module")
def video_folder(tmp_path_factory) -> Path:
    """Six small mpeg4 videos of random frames written with PyAV, listed in train.txt (4) and val.txt (2)."""
    av = pytest.importorskip("av")
    root = tmp_path_factory.mktemp("videos")
    (root / "clips").mkdir()
    gen = torch.Generator().manual_seed(0)
    lines = []
    for i, frames in enumerate((12, 9, 15, 10, 11, 13)):
        with av.open(str(root / "clips" / f"v{i}.mp4"), "w") as container:
            stream = container.add_stream("mpeg4", rate=10)
            stream.width, stream.height, stream.pix_fmt = 16, 12, "yuv420p"
            for _ in range(frames):
                image = torch.randint(0, 256, (12, 16, 3), generator=gen, dtype=torch.uint8).numpy()
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode())
        lines.append(f"clips/v{i}.mp4 {i * 30 % 174}")
    (root / "train.txt").write_text("\n".join(lines[:4]) + "\n")
    (root / "val.txt").write_text("\n".join(lines[4:]) + "\n")
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    torch.manual_seed(1)
    model = build_model("vit_digits_tiny", num_classes=10, ffn_num=0, dispatch="none", img_size=8)
    path = tmp_path_factory.mktemp("weights") / "backbone.pth"
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("head.")}, path)
    return path


@pytest.mark.parametrize("dataset, classes, views", [("K400", 400, "3 temporal x 1 spatial"),
                                                      ("SSV2", 174, "1 temporal x 3 spatial")])
def test_real_videos_are_decoded_and_trained_from_the_backbone(video_folder, backbone, tmp_path, dataset, classes,
                                                               views):
    result, text = _run(TINY + ["--dataset", dataset, "--data_path", str(video_folder), "--finetune", str(backbone),
                                "--epochs", "1", "--warmup_epochs", "0", "--no-mlflow", "--output_dir",
                                str(tmp_path)])
    assert "4 training / 2 validation videos" in text and views in text and "(2 videos x 3 views)" in text
    assert result["test"]["samples"] == 2 and result["test"]["views"] == 3
    final = torch.load(tmp_path / "final_checkpoint.pth", weights_only=True)["model"]
    before = torch.load(backbone, weights_only=True)
    assert final["head.weight"].shape == (classes, 48)
    assert torch.equal(final["blocks.1.attn.qkv.weight"], before["blocks.1.attn.qkv.weight"])  # frozen
    assert final["query_token"].abs().sum() > 0  # initialised to 0, missing from the backbone, so trained


def test_moe_adapter_trains(tmp_path):
    result, text = _run(SYNTHETIC + ["--moe_experts", "2", "--epochs", "1", "--no-mlflow", "--output_dir",
                                     str(tmp_path)])
    final = torch.load(tmp_path / "final_checkpoint.pth", weights_only=True)["model"]
    assert final["blocks.0.adaptmlp.router.weight"].shape == (2, 48) and "blocks.0.adaptmlp.experts.1.up_proj.weight" \
        in final
    assert result["test"]["samples"] == 128 and "Average flops" in text


@pytest.mark.slow
def test_two_process_gloo_run(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
               *SYNTHETIC, "--batch_size", "32", "--epochs", "1", "--output_dir", str(out), "--no-mlflow"]
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ddp_acc = float(re.findall(r"\* Acc@1 ([\d.]+)", run.stdout)[-1])
    single = main(parse_args(SYNTHETIC + ["--eval", "--eval_ckpt", str(out / "final_checkpoint.pth"),
                                          "--no-mlflow"]))["test"]
    assert single["samples"] == 128 and single["acc1"] == pytest.approx(ddp_acc, abs=0.01)


# ------------------------------------------------------------------------------------------------ bad inputs
def _cli_error(argv: list[str], capsys) -> str:
    """The one error line; a progress bar may precede it when the error comes from a video met in training."""
    with pytest.raises(SystemExit) as exit_info:
        cli(argv)
    assert exit_info.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "it/s]" not in line]
    assert len(lines) == 1 and lines[0].startswith("main_video.py: error: "), lines
    return lines[0]


@pytest.mark.parametrize("extra, needle", [
    (["--dataset", "HMDB51"], "unknown dataset 'HMDB51'"),
    (["--dataset", "K400"], "--dataset K400 needs --data_path"),
    (["--dataset", "K400", "--data_path", "/nonexistent/k400"], "--data_path /nonexistent/k400 does not exist"),
    (["--blr", "nan"], "argument --blr: 'nan' is not a finite number"),
    (["--token_target_ratio", "nan"], "argument --token_target_ratio: 'nan' is not a finite number"),
    (["--drop", "inf"], "argument --drop: 'inf' is not a finite number"),
    (["--num_frames", "0"], "--num_frames must be at least 1"),
    (["--sampling_rate", "-1"], "--sampling_rate must be 0"),
    (["--test_num_crop", "0"], "--test_num_crop must be at least 1"),
    (["--sampling_rate", "0", "--test_num_segment", "2"], "--test_num_segment 2 needs windows of frames"),
    (["--digits_shift", "canvas"], "apply to --dataset digits only"),
    (["--eval"], "--eval needs the fine-tuned checkpoint"),
])
def test_bad_flags(extra, needle, capsys, tmp_path):
    line = _cli_error(SYNTHETIC + ["--no-mlflow", "--output_dir", str(tmp_path / "o")] + extra, capsys)
    assert needle in line and not (tmp_path / "o").exists()


def test_missing_lists_and_corrupt_videos(video_folder, backbone, capsys, tmp_path):
    common = TINY + ["--finetune", str(backbone), "--epochs", "1", "--no-mlflow"]
    line = _cli_error(common + ["--dataset", "K400", "--data_path", str(tmp_path), "--output_dir",
                                str(tmp_path / "o")], capsys)
    assert "no k400_train.txt (or train.txt)" in line and not (tmp_path / "o").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mp4").write_bytes(b"not a video at all" * 8)
    (bad / "train.txt").write_text("x.mp4 1\n")
    (bad / "val.txt").write_text("x.mp4 1\n")
    line = _cli_error(common + ["--dataset", "K400", "--data_path", str(bad), "--output_dir", ""], capsys)
    assert "corrupt video" in line and "x.mp4" in line and "--skip_corrupt_videos" in line


def test_output_dir_checks_and_lock(capsys, tmp_path):
    target = tmp_path / "file"
    target.write_text("mine")
    line = _cli_error(SYNTHETIC + ["--no-mlflow", "--output_dir", str(target)], capsys)
    assert "is an existing file, not a folder" in line and target.read_text() == "mine"
    held = tmp_path / "held"
    held.mkdir()
    (held / ".run.lock").write_text(f"{os.getppid()}\n")  # a live process other than this one
    line = _cli_error(SYNTHETIC + ["--no-mlflow", "--output_dir", str(held)], capsys)
    assert "is in use by another run" in line


def test_defaults_are_the_original_ones():
    args = parse_args([])
    assert (args.dataset, args.epochs, args.batch_size, args.blr, args.weight_decay, args.warmup_epochs) == \
        ("SSV2", 90, 512, 0.1, 0.0, 10)
    assert (args.num_frames, args.num_segments, args.ffn_num, args.scale, args.token_target_ratio) == \
        (8, 1, 64, 0.1, 0.5)
    recipe = parse_args(["--dataset", "K400", "--batch_size", "16", "--blr", "1e-3", "--epochs", "12",
                         "--warmup_epochs", "2", "--weight_decay", "0.01"])
    assert (recipe.batch_size, recipe.blr, recipe.epochs, recipe.warmup_epochs) == (16, 1e-3, 12, 2)
