"""benchmarks/jeidnn_table.py: the cost of every exit against the paper's table (exit 1 on drift), the evaluation of
a train_dynn.py checkpoint, and bad inputs as one-line errors. Every cost vector itself is checked by
tests/jeidnn/test_cost.py; here a one-configuration table (T2T-ViT-7 at 32 px) keeps the runs short."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml

from benchmarks import jeidnn_table
from benchmarks.jeidnn_table import COST_COLUMNS, PAPER_TABLE
from common.errors import run_cli
from jeidnn.models import create_model


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    """The paper table reduced to its 32 px configuration."""
    table = yaml.safe_load(PAPER_TABLE.read_text())
    table["configurations"] = [c for c in table["configurations"] if c["img_size"] == 32]
    assert len(table["configurations"]) == 1
    path = tmp_path_factory.mktemp("jeidnn_table") / "small.yaml"
    path.write_text(yaml.safe_dump(table))
    return path, table


def test_costs_reproduced_csv_and_checkpoint_evaluation(tmp_path, small_table, capsys):
    path, table = small_table
    torch.manual_seed(0)
    model = create_model("t2t_vit_7", num_classes=10, img_size=16)
    torch.save({"model": model.state_dict()}, tmp_path / "checkpoint.pth")
    code = jeidnn_table.main(["--paper-table", str(path), "--output-dir", str(tmp_path / "out"), "--quick",
                              "--checkpoint", str(tmp_path / "checkpoint.pth"), "--img-size", "16"])
    assert code == 0
    assert "every exit of every configuration reproduced exactly" in capsys.readouterr().out
    costs = pd.read_csv(tmp_path / "out" / "jeidnn_costs.csv")
    assert list(costs.columns) == COST_COLUMNS and len(costs) == 7
    assert costs["mul_add_ours"].tolist() == table["configurations"][0]["mul_add_per_exit"]
    report = (tmp_path / "out" / "jeidnn.md").read_text()
    assert "## Checkpoint evaluation" in report
    row = [line for line in report.splitlines() if "checkpoint.pth" in line and line.startswith("|")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1:3] == ["digits", "360"]
    assert 0.0 <= float(cells[3]) <= 100.0
    assert 0.868 <= float(cells[5]) <= 4.085  # between the 16 px network's first and last exit (Mul-Add, M)
    assert sum(float(x) for x in cells[8].split("/")) == pytest.approx(1.0, abs=0.02)


def test_drift_exits_1(tmp_path, small_table, capsys):
    _, table = small_table
    table = yaml.safe_load(yaml.safe_dump(table))
    table["configurations"][0]["mul_add_per_exit"][2] += 1
    tampered = tmp_path / "tampered.yaml"
    tampered.write_text(yaml.safe_dump(table))
    assert jeidnn_table.main(["--paper-table", str(tampered), "--output-dir", str(tmp_path)]) == 1
    assert "DIFFERS" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--paper-table", "nope.yaml"], "--paper-table nope.yaml does not exist"),
    (["--checkpoint", "nowhere.pth"], "--checkpoint nowhere.pth does not exist"),
    (["--img-size", "20"], "--img-size must be a positive multiple of 16"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--dataset", "imagenet"], "invalid choice"),
])
def test_bad_inputs_are_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(jeidnn_table.main, args + ["--output-dir", str(tmp_path)], prog="jeidnn_table")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jeidnn_table: error: ") and message in err[0]


def test_malformed_paper_table_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("configurations: [{arch: t2t_vit_7}]\n")
    with pytest.raises(SystemExit):
        run_cli(jeidnn_table.main, ["--paper-table", str(bad), "--output-dir", str(tmp_path)], prog="jeidnn_table")
    assert "configuration 0 lacks num_classes" in capsys.readouterr().err
