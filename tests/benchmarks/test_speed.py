"""benchmarks/speed.py on the tiny models: the CSV's columns and exact ratios, every paper's configurations next
to their static exports (same MACs), the targets and the profiles of the rows that miss them, the report files,
and bad flags. No assertion on a timing."""

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
    assert set(rows["threads"]) == {"1"} and set(rows["repeats"]) == {"1"}
    for _, r in rows.iterrows():
        realised = float(r["images_per_s"]) / float(r["static_images_per_s"])
        ideal = float(r["static_macs_per_image"]) / float(r["macs_per_image"])
        assert math.isclose(float(r["realised"]), realised, rel_tol=1e-9)
        assert math.isclose(float(r["ideal"]), ideal, rel_tol=1e-9)
        assert math.isclose(float(r["efficiency"]), realised / ideal, rel_tol=1e-9)
        assert float(r["images_per_s_low"]) <= float(r["images_per_s"]) <= float(r["images_per_s_high"])
        if r["config"] == "full static":
            assert float(r["ideal"]) == 1.0 and float(r["realised"]) == 1.0 and r["export_images_per_s"] == ""
        if r["export_images_per_s"]:
            assert math.isclose(float(r["vs_export"]), float(r["images_per_s"]) / float(r["export_images_per_s"]),
                                rel_tol=1e-9)


def test_every_configuration_sits_next_to_a_static_export_of_the_same_macs(tiny_run):
    _, rows = tiny_run
    at2 = rows[(rows["batch_size"] == "2") & (rows["config"] != "full static")]
    for paper in speed.PAPERS:
        assert len(at2[at2["paper"] == paper]) >= 2, paper
    exported = at2[at2["export_images_per_s"] != ""]
    assert len(exported) >= 8
    for _, r in exported.iterrows():  # the export is the same network: it executes the same MACs
        assert math.isclose(float(r["export_macs_per_image"]), float(r["macs_per_image"]), rel_tol=1e-6), (
            r["model"], r["config"])
    for paper in ("adn", "dsnet", "jeidnn"):  # their cheapest configuration saves MACs
        assert at2[at2["paper"] == paper]["ideal"].astype(float).max() > 1.3, paper


def test_targets_meets_and_profiles_agree(tiny_run):
    out, rows = tiny_run
    report = (out / "speed.md").read_text()
    assert "Command: `python -m benchmarks.speed --tiny --threads 1" in report and "dynamic / export" in report
    for _, r in rows.iterrows():
        expected = speed.row_targets(r["paper"], r["model"], r["config"], int(r["batch_size"]))
        if r["config"] == "full static" or not expected:
            assert r["meets"] == "" and r["profile"] == ""
            continue
        if r["paper"] != "padnet":
            assert "efficiency >= 0.9" in r["targets"]
            assert ("vs export >= 0.95" in r["targets"]) == bool(r["export_images_per_s"])
        assert bool(r["profile"]) == (r["meets"] == "no")
        if r["profile"]:
            assert r["profile"].startswith("against ") and r["profile"] in report
    assert (out / "speed.png").stat().st_size > 1000


def test_judge_checks_every_target_with_a_value():
    r = {"vs_export": 0.97, "efficiency": 0.85}
    speed.judge(r, {"vs_export": 0.95, "efficiency": 0.9})
    assert r["targets"] == "vs export >= 0.95, efficiency >= 0.9" and r["meets"] == "no"
    r = {"vs_export": "", "efficiency": 0.95}  # no export: only the MAC ratio is judged
    speed.judge(r, {"vs_export": 0.95, "efficiency": 0.9})
    assert r["targets"] == "efficiency >= 0.9" and r["meets"] == "yes"
    assert speed.row_targets("padnet", "DyResNet50 (DY-Conv)", "training", 1) == {"realised": 0.7}
    assert speed.row_targets("padnet", "DyResNet50 (DY-Conv)", "training", 32) == {"realised": 0.6}


def test_pick_takes_the_first_and_last_when_quick():
    assert speed.pick(list("abcd"), quick=True) == ["a", "d"]
    assert speed.pick(["a", "b"], quick=True) == ["a", "b"] and speed.pick(list("abc"), quick=False) == list("abc")


def test_op_times_and_the_explanations():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).eval()
    ops = speed.op_times(conv, torch.randn(2, 3, 16, 16), torch.device("cpu"), threads=1)
    assert any("conv" in name for name in ops) and any("batch_norm" in name for name in ops)
    static = {"aten::mkldnn_convolution": 0.8, "aten::batch_norm": 0.2}
    config = {"aten::mkldnn_convolution": 0.2, "aten::batch_norm": 0.1, "aten::silu": 0.1}
    text = speed.explain_shortfall(static, config, ideal=6.0)
    assert text.startswith("against the full static model: MAC-bearing ops run 4.00x faster for 6.00x fewer MACs")
    assert "ops without MACs take 50% of the time (full model: 20%) and shrink only 1.00x" in text
    assert "top ops: aten::mkldnn_convolution 50%, aten::batch_norm 25%, aten::silu 25%" in text
    gap = speed.explain_gap("its static export", {"aten::conv": 0.2, "aten::bn": 0.1}, config | {"aten::conv": 0.2})
    assert gap.startswith("against its static export: +300.0 ms per call (2.00x its time)")
    assert "aten::mkldnn_convolution +200.0 ms" in gap and "aten::silu +100.0 ms" in gap


@pytest.mark.parametrize("argv, message", [
    (["--only", "adn,vgg"], "--only 'adn,vgg': unknown paper(s) vgg"),
    (["--batch-sizes", "0"], "must be positive"),
    (["--threads", "-1"], "--threads >= 0"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "--device"),
    (["--repeats", "x"], "argument --repeats: invalid int value"),
])
def test_bad_flags_are_one_line_exit_2(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(speed.main, [*argv, "--output-dir", str(tmp_path)], prog="speed")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # progress bars may come first
    assert "Traceback" not in err and last.startswith("speed: error:") and message in last
