"""benchmarks/adn_table.py: the quick end-to-end run, a drifted paper number failing it, and its user errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.adn_table import PAPER_TABLE, get_args_parser, main
from common.errors import run_cli

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _cli(args: list[str]) -> int:
    """Run the script's main in-process, as ``python -m benchmarks.adn_table`` would; return the exit code."""
    try:
        return run_cli(main, get_args_parser().parse_args(args), prog="adn_table")
    except SystemExit as exc:
        return exc.code


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_help_from_the_script_path():
    result = _run("benchmarks/adn_table.py", "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--paper-table", "--quick", "--no-proxy", "--seeds", "--weights", "--data-path"):
        assert flag in result.stdout


def test_quick_run_reproduces_the_table_and_writes_the_proxy(tmp_path):
    result = _run("-m", "benchmarks.adn_table", "--quick", "--models", "resnet50", "mobilenet_v2",
                  "--proxy-train-samples", "128", "--proxy-val-samples", "64", "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    flops = _rows(tmp_path / "adn_flops.csv")
    first = [(r["arch"], r["skip_cfg"]) for r in flops][:4]
    assert first == [("resnet50", c) for c in ("FFFF", "TFFF", "TTFF", "TTTT")]
    assert {r["arch"] for r in flops} == {"resnet50", "mobilenet_v2"}
    assert len(flops) == 11  # 4 ResNet50-ADN + 5 ResNet50-ADN (v2) + 2 MobileNetV2-ADN rows
    status = {(r["arch"], r["variant"], r["skip_cfg"]): r["status"] for r in flops}
    assert status["resnet50", "v1", "FFFF"] == "ok" and status["mobilenet_v2", "v1", "TTTTT"] == "ok"
    assert status["resnet50", "v1", "TFFF"] == "known"  # the README prints 3.90, fvcore gives 3.8907
    assert all(s in ("ok", "known") for s in status.values())
    by_cfg = {(r["arch"], r["skip_cfg"]): float(r["our_gflops"]) for r in flops}
    assert round(by_cfg["resnet50", "FFFF"], 4) == 4.1115 and round(by_cfg["mobilenet_v2", "FFFFF"], 4) == 0.3203
    assert "ResNet50-ADN" in result.stdout and "rel. diff" in result.stdout

    proxy = _rows(tmp_path / "adn.csv")
    per_method = {m: [r for r in proxy if r["method"] == m] for m in ("A", "B", "C", "D", "A*")}
    assert [len(rows) for rows in per_method.values()] == [16, 16, 16, 2, 16]
    macs = {r["skip_cfg"]: int(r["macs"]) for r in per_method["A"]}
    assert macs["FFFF"] > macs["TFFF"] > macs["TTFF"] > macs["TTTF"] > macs["TTTT"]
    assert all(0.0 <= float(r["acc1_mean"]) <= 100.0 and r["seeds"] == "1" for r in proxy)
    assert (tmp_path / "adn_proxy.png").stat().st_size > 1000
    report = (tmp_path / "adn.md").read_text()
    assert "## GFLOPs of the README model zoo" in report and "## Proxy experiment" in report
    assert "python -m benchmarks.adn_table --quick" in report


def test_a_drifted_paper_number_fails(tmp_path, capsys):
    table = yaml.safe_load(PAPER_TABLE.read_text())
    for row in table["rows"]:
        if row["arch"] == "resnet50" and row["skip_cfg"] == "FFFF":
            row["gflops"] = 4.13  # 0.0185 above what fvcore counts
    drifted = tmp_path / "drifted.yaml"
    drifted.write_text(yaml.safe_dump(table))

    assert _cli(["--paper-table", str(drifted), "--models", "resnet50", "--no-proxy",
                 "--output-dir", str(tmp_path / "out")]) == 1
    out, err = capsys.readouterr()
    assert "FAIL: ResNet50-ADN FFFF: paper 4.13, ours 4.1115" in out
    assert "2 row(s) differ from the paper by more than 0.01 GFLOPs" in err  # the v1 and v2 FFFF rows
    statuses = [r["status"] for r in _rows(tmp_path / "out" / "adn_flops.csv")]
    assert statuses.count("FAIL") == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--weights", "missing.pth", "--model", "resnet50", "--data-path", "x"], "--weights missing.pth: no such file"),
    (["--weights", "WEIGHTS"], "--weights needs --model NAME and --data-path DIR"),
    (["--model", "resnet50"], "only make sense with --weights"),
    (["--no-table", "--no-proxy"], "nothing to do"),
    (["--models", "resnet18", "--no-proxy"], "--models resnet18: not in the paper table"),
    (["--paper-table", "missing.yaml", "--no-proxy"], "paper table missing.yaml does not exist"),
    (["--paper-table", "BAD", "--no-proxy"], "row 1 lacks gflops"),
    (["--weights", "WEIGHTS", "--model", "resnet50", "--data-path", "NODATA", "--no-proxy"], "no 'val' folder"),
])
def test_user_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "WEIGHTS").write_bytes(b"")
    (tmp_path / "BAD").write_text("tolerance: {gflops_abs: 0.01}\nrows:\n  - {model: X, arch: resnet50, "
                                  "variant: v1, skip_cfg: FFFF, acc1: 1, source: s}\n")
    assert _cli([*args, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("adn_table: error: ") and message in err
    assert "\n" not in err and "Traceback" not in err
