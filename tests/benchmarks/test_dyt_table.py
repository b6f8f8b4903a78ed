"""benchmarks/dyt_table.py: the params/FLOPs table reproduced (exit 1 on drift), a tiny proxy run, user errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.dyt_table import PAPER_TABLE

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.dyt_table", "--threads", "1", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_table_reproduced_and_drift_fails(tmp_path):
    result = _run("--no-proxy", "--no-speed", "--output-dir", str(tmp_path / "ok"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "params/FLOPs table: every number reproduced" in result.stdout
    rows = list(csv.DictReader((tmp_path / "ok" / "dyt_params_flops.csv").open()))
    assert {"DyT-64 (image recipe, scale 0.1)", "AdaptFormer-64"} <= {r["model"] for r in rows}
    assert (tmp_path / "ok" / "dyt.md").is_file()
    table = yaml.safe_load(PAPER_TABLE.read_text())
    dyt64 = next(m for m in table["models"] if m["name"].startswith("DyT-64"))
    dyt64["gflops"]["0.5"] = 12.27  # one hundredth off
    tampered = tmp_path / "tampered.yaml"
    tampered.write_text(yaml.safe_dump(table))
    result = _run("--no-proxy", "--no-speed", "--paper-table", str(tampered), "--output-dir", str(tmp_path / "bad"))
    assert result.returncode == 1 and "DIFFERS" in result.stdout


def test_tiny_proxy_writes_the_report(tmp_path):
    result = _run("--quick", "--pretrain-epochs", "1", "--adapt-epochs", "1", "--train-samples", "64",
                  "--embed-dim", "48", "--depth", "2", "--no-speed", "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("dyt.md", "dyt_params_flops.csv", "dyt.csv", "dyt_proxy.png"):
        assert (tmp_path / name).is_file(), name
    report = (tmp_path / "dyt.md").read_text()
    assert "random mask" in report and "centre mask" in report and "speed-up" in report
    runs = {r["method"]: r for r in csv.DictReader((tmp_path / "dyt.csv").open())}
    assert float(runs["DyT"]["macs_m"]) < float(runs["AdaptFormer-8"]["macs_m"])


def test_missing_paper_table_is_one_line(tmp_path):
    result = _run("--no-proxy", "--paper-table", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("dyt_table: error: --paper-table") and "Traceback" not in result.stderr


def test_malformed_paper_table_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tolerance: {}\nmodels: [{name: x}]\n")
    result = _run("--no-proxy", "--paper-table", str(bad), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "model 0 lacks ffn_num" in result.stderr.strip().splitlines()[-1]
