"""benchmarks/jeidnn_table.py: the cost of every exit reproduced exactly (exit 1 on drift), the quick proxy, errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from benchmarks.jeidnn_table import PAPER_TABLE

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.jeidnn_table", "--threads", "1", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def test_cost_table_reproduced_and_drift_fails(tmp_path):
    result = _run("--no-proxy", "--output-dir", str(tmp_path / "ok"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "every exit of every configuration reproduced exactly" in result.stdout
    assert (tmp_path / "ok" / "jeidnn.md").is_file() and (tmp_path / "ok" / "jeidnn_costs.csv").is_file()
    table = yaml.safe_load(PAPER_TABLE.read_text())
    table["configurations"][0]["mul_add_per_exit"][2] += 1
    tampered = tmp_path / "tampered.yaml"
    tampered.write_text(yaml.safe_dump(table))
    result = _run("--no-proxy", "--paper-table", str(tampered), "--output-dir", str(tmp_path / "bad"))
    assert result.returncode == 1 and "DIFFERS" in result.stdout


def test_quick_proxy_writes_the_report(tmp_path):
    result = _run("--quick", "--output-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("jeidnn.md", "jeidnn_costs.csv", "jeidnn.csv", "jeidnn_proxy.png"):
        assert (tmp_path / name).is_file(), name
    assert "threshold baseline" in (tmp_path / "jeidnn.md").read_text()


def test_missing_paper_table_is_one_line(tmp_path):
    result = _run("--no-proxy", "--paper-table", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("jeidnn_table: error: --paper-table") and "Traceback" not in result.stderr


def test_malformed_paper_table_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("configurations: [{arch: t2t_vit_7}]\n")
    result = _run("--no-proxy", "--paper-table", str(bad), "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "configuration 0 lacks num_classes" in result.stderr.strip().splitlines()[-1]
