"""benchmarks/padnet_table.py: every parameter / MAC count reproduced (exit 1 on drift), a tiny proxy, errors."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from benchmarks.padnet_table import PAPER_TABLE, format_proxy, main, proxy_arms, run_proxy_arm
from common.data import build_dataset
from common.errors import run_cli


def test_counts_reproduced_and_drift_fails(tmp_path, capsys):
    assert main(["--quick", "--no-proxy", "--output-dir", str(tmp_path / "ok")]) == 0
    out = capsys.readouterr().out
    assert "every count of every model reproduced exactly" in out
    assert "| pad_resnet50 | 120,583,980 | 120,583,980 | 33.84 / 47.90 / 61.97 / 97.14 |" in out
    report = (tmp_path / "ok" / "padnet.md").read_text()
    assert "Command: `python -m benchmarks.padnet_table --quick --no-proxy" in report
    rows = (tmp_path / "ok" / "padnet_counts.csv").read_text().splitlines()
    assert rows[0].startswith("variant,type,kappa,stored_params") and len(rows) == 1 + 4 * 2 + 4

    table = yaml.safe_load(PAPER_TABLE.read_text())
    pad50 = next(m for m in table["models"] if m["variant"] == "pad_resnet50")
    pad50["deployed"][0.3] += 1
    tampered = tmp_path / "tampered.yaml"
    tampered.write_text(yaml.safe_dump(table))
    assert main(["--quick", "--no-proxy", "--paper-table", str(tampered), "--output-dir", str(tmp_path / "bad")]) == 1
    assert "DIFFERS" in capsys.readouterr().out


def test_tiny_proxy_arm_trains_and_partitions(tmp_path):
    """One PAD arm with SNIP-IMP at kappa 0.3 for one epoch on digits: the mask holds 30% dynamic positions and
    the deployed count sits between the static and the fully dynamic model's."""
    args = SimpleNamespace(epochs=1, lr=0.1, batch_size=128, prune_batches=1, scale=0.0625)
    data = (build_dataset("digits", split="train", img_size=16, transform=None),
            build_dataset("digits", split="val", img_size=16, transform=None))
    arm = next(a for a in proxy_arms([0.3]) if a["arm"] == "PAD SNIP-IMP kappa=0.3")
    run = run_proxy_arm(arm, 0, data, args)
    assert run["kappa_realised"] == pytest.approx(0.3, abs=1e-3)
    assert run["deployed_params"] < run["stored_params"] and 0.0 <= run["acc1"] <= 100.0
    assert "PAD SNIP-IMP kappa=0.3 | " in format_proxy([run])


def test_bad_paper_table_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kappas: [0.3]\nmodels: [{variant: x}]\n")
    for table, message in ((tmp_path / "nope.yaml", "does not exist"), (bad, "model 0 lacks type")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(main, ["--no-proxy", "--paper-table", str(table), "--output-dir", str(tmp_path)],
                    prog="padnet_table")
        err = capsys.readouterr().err.strip()
        assert exit_info.value.code == 2 and err.startswith("padnet_table: error:") and message in err
