"""benchmarks/adn_table.py: the table run, a drifted paper number failing it, and its user errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.adn_table import PAPER_TABLE, main
from common.errors import run_cli

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _cli(args: list[str]) -> int:
    """Run the script's main in-process, as ``python -m benchmarks.adn_table`` would; return the exit code."""
    try:
        return run_cli(main, args, prog="adn_table")
    except SystemExit as exc:
        return exc.code


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_help_from_the_script_path():
    result = _run("benchmarks/adn_table.py", "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--paper-table", "--quick", "--models", "--weights", "--data-path", "--output-dir"):
        assert flag in result.stdout
    assert "--seeds" not in result.stdout and "--proxy" not in result.stdout  # the proxy is benchmarks.proxies.adn


def test_quick_run_reproduces_the_table(tmp_path):
    result = _run("-m", "benchmarks.adn_table", "--quick", "--models", "resnet50", "mobilenet_v2",
                  "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    flops = _rows(tmp_path / "adn_flops.csv")
    assert list(flops[0]) == ["model", "arch", "variant", "skip_cfg", "counter", "paper_gflops", "our_gflops",
                              "rel_diff", "executed_gmacs", "paper_acc1", "our_acc1", "status", "note"]
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
    assert all(r["our_acc1"] == "" for r in flops)  # no --weights: nothing evaluated
    assert "ResNet50-ADN" in result.stdout and "rel. diff" in result.stdout
    report = (tmp_path / "adn.md").read_text()
    assert "## GFLOPs of the README model zoo" in report and "| ResNet50-ADN" in report
    assert "python -m benchmarks.adn_table --quick" in report
    assert not (tmp_path / "adn.csv").exists() and not (tmp_path / "adn_proxy.png").exists()


def test_a_drifted_paper_number_fails(tmp_path, capsys):
    table = yaml.safe_load(PAPER_TABLE.read_text())
    for row in table["rows"]:
        if row["arch"] == "resnet50" and row["skip_cfg"] == "FFFF":
            row["gflops"] = 4.13  # 0.0185 above what fvcore counts
    drifted = tmp_path / "drifted.yaml"
    drifted.write_text(yaml.safe_dump(table))

    assert _cli(["--paper-table", str(drifted), "--models", "resnet50", "--output-dir", str(tmp_path / "out")]) == 1
    out, err = capsys.readouterr()
    assert "FAIL: ResNet50-ADN FFFF: paper 4.13, ours 4.1115" in out
    assert "2 row(s) differ from the paper by more than 0.01 GFLOPs" in err  # the v1 and v2 FFFF rows
    statuses = [r["status"] for r in _rows(tmp_path / "out" / "adn_flops.csv")]
    assert statuses.count("FAIL") == 2


@pytest.mark.parametrize(("args", "message"), [
    (["--weights", "missing.pth", "--model", "resnet50", "--data-path", "x"], "--weights missing.pth: no such file"),
    (["--weights", "WEIGHTS"], "--weights needs --model NAME and --data-path DIR"),
    (["--model", "resnet50"], "only make sense with --weights"),
    (["--no-proxy"], "unrecognized arguments: --no-proxy"),
    (["--models", "resnet18"], "--models resnet18: not in the paper table"),
    (["--paper-table", "missing.yaml"], "paper table missing.yaml does not exist"),
    (["--paper-table", "BAD"], "row 1 lacks gflops"),
    (["--weights", "WEIGHTS", "--model", "resnet50", "--data-path", "NODATA"], "no 'val' folder"),
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
