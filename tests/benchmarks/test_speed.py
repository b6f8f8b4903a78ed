"""benchmarks/speed.py on tiny models: the CSV's structure and ratios, the controlled JEI-DNN exit distribution and
DyT keep rate, the training rows, the plot, and bad flags (issue 8, item 2)."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from benchmarks import speed
from common.errors import run_cli

TINY = ["--tiny", "--quick", "--threads", "1", "--batch-sizes", "1", "2", "--batch1-images", "2", "--repeats", "1",
        "--warmup", "0"]


def _cli(argv: list[str]) -> int:
    try:
        return run_cli(speed.main, speed.get_args_parser().parse_args(argv), prog="speed")
    except SystemExit as exc:
        return exc.code


def _rows(path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_tiny_run_writes_csv_markdown_and_plot_with_consistent_ratios(tmp_path):
    assert _cli([*TINY, "--only", "jeidnn,adn", "--train-batch-size", "2", "--output-dir", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "speed.csv")
    assert list(rows[0]) == list(speed.CSV_FIELDS)
    inference = [r for r in rows if r["kind"] == "inference"]
    assert {r["paper"] for r in inference} == {"adn", "jeidnn"}
    assert {int(r["batch_size"]) for r in inference} == {1, 2}
    for r in inference:
        realised = float(r["baseline_s"]) / float(r["median_s"])
        ideal = float(r["baseline_macs_per_image"]) / float(r["macs_per_image"])
        assert math.isclose(float(r["realised_speedup"]), realised, rel_tol=1e-9)
        assert math.isclose(float(r["ideal_speedup"]), ideal, rel_tol=1e-9)
        assert math.isclose(float(r["efficiency"]), realised / ideal, rel_tol=1e-9)
        if r["config"] == r["baseline"]:
            assert float(r["ideal_speedup"]) == 1.0
        if r["meets_target"]:
            assert r["batch_size"] != "1" and r["meets_target"] == ("yes" if float(r["efficiency"]) >=
                                                                    float(r["target"]) else "no")
    adn = {r["config"]: r for r in inference if r["paper"] == "adn" and r["batch_size"] == "2"}
    assert set(adn) == {"FFFF (static stand-in)", "FFFF", "TFFF", "TTTT"}  # --quick: first, middle, last
    assert float(adn["FFFF"]["ideal_speedup"]) == 1.0 and float(adn["TTTT"]["ideal_speedup"]) > 1.3
    jei = {r["config"]: r for r in inference if r["paper"] == "jeidnn" and r["batch_size"] == "2"}
    assert jei["all samples exit at 0"]["realised"] == "exits 1.00 0.00 0.00 0.00 0.00 0.00 0.00"
    assert float(jei["all samples exit at 0"]["ideal_speedup"]) > 2  # the exited samples' blocks did not run
    assert jei["default lambda stand-in (exit mix)"]["target"] == "0.8"
    train = [r for r in rows if r["kind"] == "train"]
    assert {r["config"] for r in train} == {"ADN two-pass self-distillation", "JEI-DNN GATE phase",
                                            "JEI-DNN CLASSIFIER phase"}
    for r in train:
        assert math.isclose(float(r["overhead"]), float(r["median_s"]) / float(r["baseline_s"]), rel_tol=1e-9)
    report = (tmp_path / "speed.md").read_text()
    assert "Command: `python -m benchmarks.speed" in report and "| realised / ideal |" in report
    for r in inference:  # exactly the configurations below their target carry a profile
        assert bool(r["profile"]) == (r["meets_target"] == "no")
        if r["profile"]:
            assert "MAC-bearing ops run" in r["profile"] and r["profile"] in report
    assert (tmp_path / "speed.png").stat().st_size > 1000


def test_op_times_and_explain_shortfall_split_mac_ops_from_the_rest():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
    ops = speed.op_times(conv, torch.randn(2, 3, 16, 16), torch.device("cpu"))
    assert any("conv" in name for name in ops) and any("batch_norm" in name for name in ops)
    baseline = {"aten::mkldnn_convolution": 0.8, "aten::batch_norm": 0.2}
    config = {"aten::mkldnn_convolution": 0.2, "aten::batch_norm": 0.1, "aten::silu": 0.1}
    text = speed.explain_shortfall(baseline, config, ideal=6.0)
    assert text.startswith("MAC-bearing ops run 4.00x faster than the full model's for 6.00x fewer MACs")
    assert "ops without MACs take 50% of the time (full model: 20%) and shrink only 1.00x" in text
    assert "top ops: aten::mkldnn_convolution 50%, aten::batch_norm 25%, aten::silu 25%" in text


def test_exit_gates_realise_the_requested_distribution():
    from jeidnn.dynn import early_exit_forward
    from jeidnn.models import create_model

    torch.manual_seed(0)
    model = create_model("t2t_vit_7", num_classes=10, img_size=32, drop_path_rate=0.0).eval()
    x = torch.randn(8, 3, 32, 32)
    speed.exit_gates(model, x, [0.25, 0.0, 0.25, 0.0, 0.0, 0.0, 0.5])
    levels = early_exit_forward(model, x)[1]
    assert torch.bincount(levels, minlength=7).tolist() == [2, 0, 2, 0, 0, 0, 4]
    # one image at a time (batch 1) takes the same exits
    assert [int(early_exit_forward(model, x[i:i + 1])[1]) for i in range(8)] == levels.tolist()


def test_dyt_dispatchers_keep_the_requested_rate():
    pytest.importorskip("dyt.models")
    from dyt.models import build_model

    torch.manual_seed(0)
    model = build_model("vit_digits", num_classes=10, ffn_num=8, dispatch="mlp").eval()
    x = torch.randn(4, 3, 32, 32)
    for rate in (0.25, 0.5):
        speed.set_dispatch_rate(model, x, rate)
        with torch.no_grad():
            kept = model(x)[1]["token_select"].float()
        assert abs(float(kept.mean()) - rate) < 0.01
        assert float(kept.mean(dim=(0, 2, 3)).std()) < 0.02  # every block, not only on average


@pytest.mark.parametrize("argv, message", [
    (["--only", "adn,vgg"], "--only 'adn,vgg': unknown model(s) vgg"),
    (["--batch-sizes", "0"], "must be positive"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--jeidnn-exit-fractions", "0.5,0.6"], "sum to 1"),
    (["--tiny", "--only", "jeidnn", "--jeidnn-exit-fractions", "0.5,0.5"], "needs 7 values"),
    (["--dyt-rate", "0"], "--dyt-rate 0.0"),
])
def test_bad_flags_are_one_line_exit_2(argv, message, tmp_path, capsys):
    assert _cli([*argv, "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # progress bars may come first
    assert "Traceback" not in err and last.startswith("speed: error:") and message in last
