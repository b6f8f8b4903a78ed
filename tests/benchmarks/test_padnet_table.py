"""benchmarks/padnet_table.py: every parameter / MAC count reproduced (exit 1 on drift), the evaluation of a given
checkpoint through padnet/dyconv/main.py, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.padnet_table import COUNT_COLUMNS, PAPER_TABLE, count_od_row, main
from common.errors import run_cli
from padnet.dyconv import main as dyconv_main

PAD_CONFIG = Path(__file__).resolve().parents[2] / "padnet" / "dyconv" / "configs" / "digits_pad_resnet10_s0.0625.yml"


def _cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def test_counts_reproduced_and_drift_fails(tmp_path, capsys):
    assert main(["--quick", "--output-dir", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "every count of every model reproduced exactly" in out
    row = next(line for line in out.splitlines() if line.startswith("| pad_resnet50 "))
    assert _cells(row)[:4] == ["pad_resnet50", "120,583,980", "120,583,980", "33.84 / 47.90 / 61.97 / 97.14"]
    assert _cells(row)[-1] == "ok"
    od_row = next(line for line in out.splitlines() if line.startswith("| od_resnet50_pad "))
    assert _cells(od_row)[:4] == ["od_resnet50_pad", "111,391,160", "111,391,160", "34.89 / 47.29 / 59.70 / 90.71"]
    assert _cells(od_row)[-1] == "ok"
    report = (tmp_path / "ok" / "padnet.md").read_text()
    assert "Command: `python -m benchmarks.padnet_table --quick" in report and "benchmarks.proxies.padnet" in report
    assert "## ODConv and ODConv-PAD at 224x224" in report
    rows = (tmp_path / "ok" / "padnet_counts.csv").read_text().splitlines()
    assert rows[0] == ",".join(COUNT_COLUMNS) and len(rows) == 1 + (4 * 2 + 4) + (4 * 2 + 2)
    assert any(r.startswith("od_mobilenetv2_100_pad,od_mobilenetv2_100_pad,0.3,7155102,7155102,4966206,4966206,")
               for r in rows)
    pad50 = "pad_resnet50,DyResNet50_PAD,0.3,120583980,120583980,47902918,47902918,28134605,"
    assert any(r.startswith(pad50) for r in rows)

    table = yaml.safe_load(PAPER_TABLE.read_text())
    pad50 = next(m for m in table["models"] if m["variant"] == "pad_resnet50")
    pad50["deployed"][0.3] += 1
    tampered = tmp_path / "tampered.yaml"
    tampered.write_text(yaml.safe_dump(table))
    assert main(["--quick", "--paper-table", str(tampered), "--output-dir", str(tmp_path / "bad")]) == 1
    assert "DIFFERS" in capsys.readouterr().out


def test_odconv_drift_is_caught():
    """An ODConv row whose MAC or deployed count is off by one no longer reproduces."""
    table = yaml.safe_load(PAPER_TABLE.read_text())
    row = next(m for m in table["od_models"] if m["variant"] == "od_mobilenetv2_050_pad")
    assert count_od_row(row, table["kappas"])["ok"]
    assert not count_od_row({**row, "macs": row["macs"] + 1}, table["kappas"])["ok"]
    assert not count_od_row({**row, "deployed": {**row["deployed"], 0.5: row["deployed"][0.5] + 1}},
                            table["kappas"])["ok"]


def test_evaluates_a_given_checkpoint(tmp_path, capsys):
    """A PAD ResNet-10 trained for one epoch at kappa 0.3 by main.py: its top-1 comes from main.py -e, its deployed
    parameters and dynamic ratio from its own mask."""
    ckpt = tmp_path / "ckpt"
    dyconv_main.main(dyconv_main.parse_args([
        "--dataset", "digits", "--input-size", "16", "--config_file", str(PAD_CONFIG), "-j", "0", "-b", "128",
        "--epochs", "1", "--lr-decay", "cos", "--temp_epoch", "1", "--pruner", "snip", "--sparsity", "0.3",
        "--prune_dataset_ratio", "1", "--device", "cpu", "--no-mlflow", "-c", str(ckpt)]))
    capsys.readouterr()
    assert main(["--quick", "--output-dir", str(tmp_path / "out"), "--weight", str(ckpt / "checkpoint.pth.tar"),
                 "--config-file", str(PAD_CONFIG), "--dataset", "digits", "--input-size", "16", "-j", "0"]) == 0
    report = (tmp_path / "out" / "padnet.md").read_text()
    assert "## Checkpoint evaluated with padnet/dyconv/main.py -e" in report
    row = next(line for line in report.splitlines() if "checkpoint.pth.tar |" in line)
    cells = _cells(row)
    assert cells[1] == "DyResNet10_PAD" and cells[2] == "digits 16 px"
    assert 10 < float(cells[3]) <= 100 and float(cells[9]) == 0.3
    assert int(cells[8].replace(",", "")) < int(cells[7].replace(",", ""))  # deployed < stored


@pytest.mark.parametrize(("args", "message"), [
    (["--paper-table", "nope.yaml"], "does not exist"),
    (["--paper-table", "BAD"], "model 0 lacks type"),
    (["--weight", "x.pth.tar"], "--weight needs --config-file"),
    (["--config-file", "x.yml"], "--config-file is read with --weight only"),
    (["--weight", "missing.pth.tar", "--config-file", str(PAD_CONFIG), "--dataset", "digits"], "does not exist"),
])
def test_bad_input_is_one_line(tmp_path, capsys, args, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kappas: [0.3]\nmodels: [{variant: x}]\n")
    args = [str(bad) if a == "BAD" else str(tmp_path / a) if a in ("nope.yaml", "missing.pth.tar") else a
            for a in args]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, ["--quick", *args, "--output-dir", str(tmp_path / "out")], prog="padnet_table")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("padnet_table: error:") and message in err and "\n" not in err
