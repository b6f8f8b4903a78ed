"""benchmarks/dyt_table.py: the params/FLOPs table reproduced (exit 1 on drift), a given checkpoint evaluated through
dyt/main_image.py, user errors in one line."""

from __future__ import annotations

import contextlib
import csv
import io
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks.dyt_table import PAPER_TABLE, main
from common.errors import UserError
from dyt.main_image import main as image_main
from dyt.main_image import parse_args as image_args

REPO = Path(__file__).resolve().parents[2]
# vit_digits on the synthetic images at 8x8 pixels (4 patches + CLS): about a second per epoch
EVAL_ARGS = "--dataset synthetic --model vit_digits --input_size 8 --device cpu --num_workers 0 --ffn_num 8"


def test_table_reproduced_and_drift_fails(tmp_path):
    assert main(["--output-dir", str(tmp_path / "ok"), "--quick"]) == 0
    rows = list(csv.DictReader((tmp_path / "ok" / "dyt_params_flops.csv").open()))
    assert list(rows[0]) == ["model", "column", "ours", "paper", "ok"]
    assert {"DyT-64 (image recipe, scale 0.1)", "AdaptFormer-64"} <= {r["model"] for r in rows}
    assert all(r["ok"] == "True" for r in rows)
    assert "GFLOPs r=0.5" in (tmp_path / "ok" / "dyt.md").read_text()
    table = yaml.safe_load(PAPER_TABLE.read_text())
    dyt64 = next(m for m in table["models"] if m["name"].startswith("DyT-64"))
    dyt64["gflops"]["0.5"] = 12.27  # one hundredth off
    tampered = tmp_path / "tampered.yaml"
    tampered.write_text(yaml.safe_dump(table))
    assert main(["--paper-table", str(tampered), "--output-dir", str(tmp_path / "bad")]) == 1
    assert "DIFFERS" in (tmp_path / "bad" / "dyt.md").read_text()


def test_checkpoint_is_evaluated_through_the_entry_point(tmp_path):
    with contextlib.redirect_stdout(io.StringIO()):
        trained = image_main(image_args(EVAL_ARGS.split() + ["--epochs", "1", "--warmup_epochs", "0", "--batch_size",
                                                             "64", "--no-mlflow", "--output_dir", str(tmp_path)]))
    assert main(["--output-dir", str(tmp_path / "report"), "--checkpoint", str(tmp_path / "final_checkpoint.pth"),
                 "--eval-args", EVAL_ARGS]) == 0
    row = next(csv.DictReader((tmp_path / "report" / "dyt_checkpoint.csv").open()))
    assert float(row["acc1"]) == pytest.approx(trained["test"]["acc1"], abs=0.01)
    assert float(row["activation_rate"]) == pytest.approx(trained["test"]["activation_rate"], abs=1e-4)
    assert row["images"] == "128" and "Checkpoint evaluated" in (tmp_path / "report" / "dyt.md").read_text()
    with pytest.raises(UserError, match="--checkpoint .* does not exist"):
        main(["--output-dir", str(tmp_path / "report"), "--checkpoint", str(tmp_path / "nope.pth")])


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks.dyt_table", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_bad_paper_tables_are_one_line(tmp_path):
    result = _run("--paper-table", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("dyt_table: error: --paper-table") and "Traceback" not in result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("tolerance: {}\nmodels: [{name: x}]\n")
    with pytest.raises(UserError, match="model 0 lacks ffn_num"):
        main(["--paper-table", str(bad), "--output-dir", str(tmp_path / "out")])
