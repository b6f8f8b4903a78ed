"""benchmarks/dsnet_table.py: the 16 MAdds rows (and a tampered one failing), the checkpoint evaluation, and its user
errors (spec dsnet.md Sec. 9-11)."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from benchmarks.dsnet_table import PAPER_TABLE, active_params, load_paper_table, main
from common.errors import run_cli
from dsnet.models import create_model

REPO = Path(__file__).resolve().parents[2]


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _cli(args: list[str]) -> int:
    """Run the script's main in-process, as ``python -m benchmarks.dsnet_table`` would; return the exit code."""
    try:
        return run_cli(main, args, prog="dsnet_table")
    except SystemExit as exc:
        return exc.code


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _image_folder(root: Path, classes: int = 2) -> Path:
    from PIL import Image

    for c in range(classes):
        folder = root / "val" / f"class{c}"
        folder.mkdir(parents=True)
        Image.new("RGB", (40, 32), color=(60 * c, 120, 200)).save(folder / "img.png")
    return root


def test_help_from_the_script_path():
    result = _run("benchmarks/dsnet_table.py", "--help", timeout=120)
    assert result.returncode == 0, result.stderr
    for flag in ("--paper-table", "--checkpoint", "--data-path", "--model-ema", "--quick", "--output-dir"):
        assert flag in result.stdout
    for gone in ("--speed", "--proxy", "--seeds"):  # timing: benchmarks/speed.py; training: benchmarks/proxies/dsnet.py
        assert gone not in result.stdout


def test_the_16_madds_rows_are_reproduced(tmp_path, capsys):
    assert _cli(["--quick", "--output-dir", str(tmp_path)]) == 0
    rows = _rows(tmp_path / "dsnet_madds.csv")
    assert [r["subnet"] for r in rows] == [str(c) for c in range(14)] + ["smallest", "largest"]
    assert all(r["status"] == "ok" and not r["problems"] for r in rows)
    by_name = {r["subnet"]: r for r in rows}
    assert int(by_name["largest"]["our_madds"]) == 819_883_136
    assert int(by_name["0"]["our_madds"]) == int(by_name["smallest"]["our_madds"]) == 132_890_144
    for r in rows:
        assert int(r["executed_conv_linear_macs"]) + int(r["avgpool_elements"]) == int(r["our_madds"])
    out = capsys.readouterr().out
    assert "819,883,136" in out and "565M" in out
    report = (tmp_path / "dsnet.md").read_text()
    assert "All 16 rows reproduced exactly." in report and "## The abstract's claims" in report
    assert "1.62x" in report and "SUSPECT" in report and "benchmarks/speed.py" in report
    assert "python -m benchmarks.dsnet_table --quick --output-dir" in report


def test_the_paper_table_matches_the_reference_manifest(shared_dir):
    """The YAML's exact figures are the original counter's (manifest_madds.json); active parameters too."""
    manifest = json.loads((shared_dir / "reference" / "dsnet" / "manifest_madds.json").read_text())
    reference = {(r["mode"] if not r["mode"].startswith("uniform_") else r["mode"].split("_")[1]): r
                 for r in manifest["rows"]}
    table = load_paper_table(PAPER_TABLE)
    model = create_model(table["model"])
    assert len(table["rows"]) == len(reference) == 16
    for row in table["rows"]:
        ref = reference[row["subnet"]]
        assert row["widths"] == ref["widths[conv_stem,blocks0..4]"]
        assert row["madds"] == ref["madds_add_flops"]
        assert row["conv_linear_macs"] == ref["of_which_conv_linear_macs"]
        assert row["avgpool_elements"] == ref["of_which_avgpool_elements"]
        assert (row["readme_madds_M"], row["top1"], row["top5"]) == (
            ref.get("readme_madds_M"), ref.get("readme_top1"), ref.get("readme_top5"))
        assert active_params(model, row["widths"]) == ref["active_params_analytic"], row["subnet"]
    assert table["released_routing_space"] == [0, 1, 2, 3]
    assert all(item["suspect"] for item in table["third_party"])


@pytest.mark.parametrize(("key", "value", "message"), [
    ("madds", 226_244_769, "MAdds 226,244,768 != original counter 226,244,769"),
    ("readme_madds_M", 227, "226.24M does not round to the README's 227M"),
])
def test_a_tampered_paper_value_fails(tmp_path, capsys, key, value, message):
    table = yaml.safe_load(PAPER_TABLE.read_text())
    row = next(r for r in table["rows"] if r["subnet"] == "4")
    row[key] = value
    tampered = tmp_path / "tampered.yaml"
    tampered.write_text(yaml.safe_dump(table))

    assert _cli(["--paper-table", str(tampered), "--output-dir", str(tmp_path / "out")]) == 1
    out, err = capsys.readouterr()
    assert f"FAIL: sub-network 4: {message}" in out
    assert "1 of 16 MAdds row(s) differ" in err
    statuses = [r["status"] for r in _rows(tmp_path / "out" / "dsnet_madds.csv")]
    assert statuses.count("FAIL") == 1


def test_a_checkpoint_fills_our_accuracy(tmp_path):
    """The original's checkpoint format: state_dict / state_dict_ema with a 'module.' prefix, args a Namespace."""
    torch.manual_seed(0)
    model = create_model("slimmable_mbnet_v1_bn_uniform", num_classes=2)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    checkpoint = tmp_path / "supernet.pth.tar"
    torch.save({"epoch": 1, "arch": "slimmable_mbnet_v1_bn_uniform", "state_dict": state, "state_dict_ema": state,
                "args": argparse.Namespace(model="slimmable_mbnet_v1_bn_uniform"), "version": 2}, checkpoint)
    data = _image_folder(tmp_path / "imagenet")

    assert _cli(["--checkpoint", str(checkpoint), "--data-path", str(data), "--model-ema", "-j", "0",
                 "--output-dir", str(tmp_path / "out")]) == 0
    rows = {r["subnet"]: r for r in _rows(tmp_path / "out" / "dsnet_madds.csv")}
    for name in [str(c) for c in range(14)] + ["smallest"]:
        assert float(rows[name]["our_top1"]) in (0.0, 50.0, 100.0) and float(rows[name]["our_top5"]) == 100.0
    assert rows["largest"]["our_top1"] == ""  # reset statistics after the BN recalibration (spec Sec. 5)


@pytest.mark.parametrize(("args", "message"), [
    (["--checkpoint", "missing.pth", "--data-path", "DATA"], "--checkpoint missing.pth: no such file"),
    (["--checkpoint", "GARBAGE"], "--checkpoint needs --data-path DIR"),
    (["--checkpoint", "GARBAGE", "--data-path", "GARBAGE"], "--data-path GARBAGE: no 'val' folder"),
    (["--checkpoint", "GARBAGE", "--data-path", "DATA"], "checkpoint GARBAGE is corrupt or truncated"),
    (["--checkpoint", "WRONG", "--data-path", "DATA"], "holds no DS-Net supernet"),
    (["--data-path", "DATA"], "only make sense with --checkpoint"),
    (["--no-table"], "unrecognized arguments: --no-table"),
    (["--paper-table", "missing.yaml"], "paper table missing.yaml does not exist"),
    (["--paper-table", "BAD"], "row 1 lacks madds"),
])
def test_user_errors_are_one_line(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "GARBAGE").write_bytes(b"not a checkpoint")
    torch.save({"state_dict": {"conv.weight": torch.zeros(1)}}, tmp_path / "WRONG")
    _image_folder(tmp_path / "DATA")
    (tmp_path / "BAD").write_text("model: slimmable_mbnet_v1_bn_uniform\nimg_size: 224\nrows:\n  - {subnet: 0, "
                                  "mode: uniform, choice: 0, widths: [], conv_linear_macs: 1, avgpool_elements: 1, "
                                  "readme_madds_M: 1, top1: 1, top5: 1}\n")
    assert _cli([*args, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsnet_table: error: ") and message in err
    assert "\n" not in err and "Traceback" not in err
