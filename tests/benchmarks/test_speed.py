"""benchmarks/speed.py on the tiny models: the CSV's columns and exact ratios, the configurations of every paper
(DS-Net sub-networks, DyT gather vs masked, JEI-DNN early exits), the controlled exit distribution and keep rate,
the profiles of the configurations below target, the report files, and bad flags. No assertion on a timing."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from benchmarks import speed
from common.errors import run_cli

TINY = ["--tiny", "--threads", "1", "--batch-sizes", "1", "2", "--batch1-images", "2", "--repeats", "1",
        "--warmup", "0"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("speed")
    assert speed.main([*TINY, "--output-dir", str(out)]) == 0
    return out, pd.read_csv(out / "speed.csv", keep_default_na=False, dtype=str)


def test_csv_has_the_columns_and_exact_ratios(tiny_run):
    _, rows = tiny_run
    assert list(rows.columns) == list(speed.CSV_FIELDS)
    assert set(rows["paper"]) == set(speed.PAPERS) and set(rows["batch_size"]) == {"1", "2"}
    assert set(rows["kind"]) == {"inference"} and set(rows["threads"]) == {"1"} and set(rows["repeats"]) == {"1"}
    for _, r in rows.iterrows():
        realised = float(r["baseline_s"]) / float(r["median_s"])
        ideal = float(r["baseline_macs_per_image"]) / float(r["macs_per_image"])
        assert math.isclose(float(r["realised_speedup"]), realised, rel_tol=1e-9)
        assert math.isclose(float(r["ideal_speedup"]), ideal, rel_tol=1e-9)
        assert math.isclose(float(r["efficiency"]), realised / ideal, rel_tol=1e-9)
        images = 2  # --batch1-images 2 and batch 2
        assert math.isclose(float(r["images_per_s"]), images / float(r["median_s"]), rel_tol=1e-9)
        assert float(r["images_per_s_low"]) <= float(r["images_per_s"]) <= float(r["images_per_s_high"])
        if r["config"] == r["baseline"]:
            assert float(r["ideal_speedup"]) == 1.0 and float(r["realised_speedup"]) == 1.0
        if r["batch_size"] == "1" or not r["target"]:
            assert r["meets_target"] == ""
        else:
            assert r["meets_target"] == ("yes" if float(r["efficiency"]) >= float(r["target"]) else "no")


def test_every_paper_times_its_configurations(tiny_run):
    _, rows = tiny_run
    at2 = rows[rows["batch_size"] == "2"]

    def configs(paper: str) -> dict[str, pd.Series]:
        return {r["config"]: r for _, r in at2[at2["paper"] == paper].iterrows()}

    adn = configs("adn")  # --tiny takes --quick's first and last configurations
    assert list(adn) == ["FFFF (static stand-in)", "FFFF", "TTTT"]
    assert float(adn["FFFF"]["ideal_speedup"]) == 1.0 and float(adn["TTTT"]["ideal_speedup"]) > 1.3
    dsnet = configs("dsnet")
    assert list(dsnet) == ["largest", "sub-network 0", "sub-network 13", "dynamic (gate, argmax routes 0-3)"]
    assert float(dsnet["sub-network 0"]["ideal_speedup"]) > float(dsnet["sub-network 13"]["ideal_speedup"]) > 1
    assert dsnet["dynamic (gate, argmax routes 0-3)"]["realised"].startswith("routes 0: ")
    dyt = configs("dyt")
    assert list(dyt) == ["no dispatcher (AdaptFormer)", "r=0.5 gather", "r=0.5 masked"]
    assert float(dyt["r=0.5 gather"]["ideal_speedup"]) > 1.2  # half the tokens skip the MLPs
    assert float(dyt["r=0.5 masked"]["ideal_speedup"]) <= 1.0  # every token still computed
    assert dyt["r=0.5 gather"]["target"] == "0.8" and dyt["r=0.5 masked"]["target"] == ""
    assert dyt["r=0.5 gather"]["realised"].startswith("tokens kept 0.50")
    jei = configs("jeidnn")
    assert list(jei) == ["backbone alone", "all samples exit at 0", "final head (all blocks, gates on)",
                         "default lambda stand-in (exit mix)"]
    assert jei["all samples exit at 0"]["realised"] == "exits 1.00 0.00 0.00 0.00 0.00 0.00 0.00"
    assert float(jei["all samples exit at 0"]["ideal_speedup"]) > 2  # the exited samples' blocks did not run
    assert jei["default lambda stand-in (exit mix)"]["target"] == "0.8"
    assert list(configs("padnet")) == ["static network", "PAD-Net deployed", "DY-Conv (fully dynamic)"]


def test_report_files_and_profiles_of_the_rows_below_target(tiny_run):
    out, rows = tiny_run
    report = (out / "speed.md").read_text()
    assert "Command: `python -m benchmarks.speed --tiny --threads 1" in report and "realised / ideal" in report
    for _, r in rows.iterrows():  # exactly the configurations below their target carry a profile
        assert bool(r["profile"]) == (r["meets_target"] == "no")
        if r["profile"]:
            assert r["profile"].startswith("MAC-bearing ops run") and r["profile"] in report
    assert (out / "speed.png").stat().st_size > 1000


def test_pick_takes_the_first_and_last_when_quick():
    assert speed.pick(range(14), quick=True) == [0, 13]
    assert speed.pick(["a", "b"], quick=True) == ["a", "b"] and speed.pick(range(3), quick=False) == [0, 1, 2]


def test_op_times_and_explain_shortfall_split_mac_ops_from_the_rest():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
    ops = speed.op_times(conv, torch.randn(2, 3, 16, 16), torch.device("cpu"), threads=1)
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
    with torch.no_grad():
        levels = early_exit_forward(model, x)[1]
        assert torch.bincount(levels, minlength=7).tolist() == [2, 0, 2, 0, 0, 0, 4]
        # one image at a time (batch 1) takes the same exits
        assert [int(early_exit_forward(model, x[i:i + 1])[1]) for i in range(8)] == levels.tolist()


def test_dyt_dispatchers_keep_the_requested_rate():
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
    (["--threads", "-1"], "--threads >= 0"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--jeidnn-exit-fractions", "0.5,0.6"], "sum to 1"),
    (["--jeidnn-exit-fractions", "1/0,1"], "expected comma-separated numbers or fractions"),
    (["--tiny", "--only", "jeidnn", "--jeidnn-exit-fractions", "1/2,1/2"], "needs 7 values"),
    (["--dyt-rate", "0"], "--dyt-rate 0.0"),
    (["--repeats", "x"], "argument --repeats: invalid int value"),
])
def test_bad_flags_are_one_line_exit_2(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(speed.main, [*argv, "--output-dir", str(tmp_path)], prog="speed")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # progress bars may come first
    assert "Traceback" not in err and last.startswith("speed: error:") and message in last
