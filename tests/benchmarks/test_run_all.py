"""benchmarks/run_all.py and benchmarks/report.py: a tiny real run, drift and crashes propagating to the exit code
while the other papers still run, skipped subprojects, the README section, and bad flags (issue 8)."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import yaml

from benchmarks import report, run_all
from benchmarks.dsnet_table import PAPER_TABLE as DSNET_TABLE
from common.errors import run_cli

FAKE_TABLES = '''
import sys
from pathlib import Path


def get_args_parser():  # present beside main(argv), as in padnet_table: main must get the argv list
    raise AssertionError("main(argv) parses its own arguments")


def main(argv):
    out = Path(argv[argv.index("--output-dir") + 1])
    (out / "{name}.md").write_text("# {name}\\n" + " ".join(sys.argv))
    {action}
'''


def _cli(argv: list[str]) -> int:
    try:
        return run_cli(run_all.cli, argv, prog="run_all")
    except SystemExit as exc:
        return exc.code


@pytest.fixture
def fake_papers(tmp_path, monkeypatch):
    """Three table scripts of the ``main(argv)`` shape that match, drift and crash, registered as papers."""
    actions = {"fake_ok": "return 0", "fake_drift": "return 1", "fake_crash": "raise RuntimeError('boom')"}
    for name, action in actions.items():
        (tmp_path / f"{name}_table.py").write_text(FAKE_TABLES.format(name=name, action=action))
    monkeypatch.syspath_prepend(str(tmp_path))
    papers = {name: run_all.Paper(name, name, f"{name}_table", "json") for name in actions}
    papers["fake_missing"] = run_all.Paper("fake_missing", "fake_missing", "fake_missing_table", "no_such_module_x")
    monkeypatch.setattr(run_all, "PAPERS", {**run_all.PAPERS, **papers})
    yield
    for name in actions:
        sys.modules.pop(f"{name}_table", None)


def test_tiny_quick_run_of_one_paper_writes_its_report_and_the_combined_one(tmp_path):
    out = tmp_path / "results"
    assert _cli(["--quick", "--tiny", "--only", "dsnet", "--output-dir", str(out)]) == 0
    for name in ("dsnet.md", "dsnet.csv", "dsnet_madds.csv", "dsnet_proxy.png", "speed.csv", "speed.png", "README.md"):
        assert (out / name).is_file(), name
    # the script saw its own command line, not run_all's
    assert "python -m benchmarks.dsnet_table --quick --no-speed" in (out / "dsnet.md").read_text()
    combined = (out / "README.md").read_text()
    assert "Command: `python -m benchmarks.run_all --quick --tiny --only dsnet --output-dir" in combined
    assert "Machine: " in combined and "torch " in combined
    assert "| DS-Net (CVPR 2021) | ok |" in combined and "| ADN (NeurIPS 2024) | not run |" in combined
    assert "16 rows, 0 off the paper beyond tolerance" in combined
    assert "| sub-network 13 | 565 | 565.4457 | +0.08% | ok |" in combined
    assert "![dsnet_proxy](dsnet_proxy.png)" in combined
    # the speed stage ran on the same paper's models and its table is in the report
    assert "| speed | ok |" in combined and "Command: `python -m benchmarks.speed --quick --no-train --tiny" in combined
    assert "| dsnet | slimmable_mbnet_v1_bn_uniform_tiny | sub-network 0 | 2 |" in combined


def test_real_drift_exits_nonzero(tmp_path, monkeypatch):
    table = yaml.safe_load(DSNET_TABLE.read_text())
    table["rows"][4]["madds"] += 1
    tampered = tmp_path / "tampered.yaml"
    tampered.write_text(yaml.safe_dump(table))
    paper = run_all.PAPERS["dsnet"]
    monkeypatch.setitem(run_all.PAPERS, "dsnet", run_all.Paper(
        paper.name, paper.title, paper.module, paper.requires, ("--no-speed", "--no-proxy", "--paper-table",
                                                                str(tampered))))
    assert _cli(["--tiny", "--only", "dsnet", "--no-speed", "--output-dir", str(tmp_path / "out")]) == 1
    combined = (tmp_path / "out" / "README.md").read_text()
    assert "| DS-Net (CVPR 2021) | drift |" in combined and "1 off the paper beyond tolerance" in combined


def test_drift_and_crash_fail_the_run_but_the_others_still_run(tmp_path, fake_papers, capsys):
    out = tmp_path / "out"
    code = _cli(["--only", "fake_drift,fake_crash,fake_ok,fake_missing", "--no-speed", "--output-dir", str(out)])
    assert code == 1
    captured = capsys.readouterr()
    assert "run_all: failed: fake_drift, fake_crash" in captured.err
    assert "RuntimeError: boom" in captured.err  # the crash's traceback is shown, then the next paper runs
    assert (out / "fake_ok.md").is_file() and (out / "fake_drift.md").is_file()
    assert "fake_ok_table.py --quick --output-dir" in (out / "fake_ok.md").read_text()
    summary = captured.out[captured.out.index("summary:"):]
    assert "fake_drift: drift" in summary and "fake_crash: error" in summary and "fake_ok: ok" in summary
    assert "fake_missing: skipped" in summary and "no_such_module_x does not import yet" in summary


def test_a_skipped_paper_alone_is_not_a_failure(tmp_path, fake_papers):
    assert _cli(["--only", "fake_missing", "--no-speed", "--output-dir", str(tmp_path)]) == 0


def test_full_drops_quick_and_only_keeps_order(tmp_path, fake_papers):
    assert _cli(["--full", "--only", "fake_ok", "--no-speed", "--output-dir", str(tmp_path)]) == 0
    assert "--quick" not in (tmp_path / "fake_ok.md").read_text()
    assert run_all.parse_only(" dsnet, adn ,dsnet") == ["dsnet", "adn"]
    assert run_all.parse_only(None) == list(run_all.PAPERS)


@pytest.mark.parametrize("argv, message", [
    (["--only", "adn,resnet"], "--only 'adn,resnet': unknown paper(s) resnet; choose from adn, dsnet, jeidnn"),
    (["--only", ","], "unknown paper(s) (none given)"),
    (["--quick", "--full"], "not allowed with argument"),
])
def test_bad_flags_are_one_line_exit_2(argv, message, capsys):
    assert _cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("run_all: error:") and message in err


def _speed_csv(path: Path) -> None:
    fields = ["paper", "model", "config", "kind", "batch_size", "device", "threads", "repeats", "baseline",
              "median_s", "baseline_s", "images_per_s", "realised_speedup", "ideal_speedup", "efficiency", "target",
              "meets_target", "overhead", "realised", "profile"]
    row = {"paper": "adn", "model": "resnet50-ADN", "config": "TTTT", "kind": "inference", "batch_size": "32",
           "device": "cpu", "threads": "2", "repeats": "5", "baseline": "torchvision static", "median_s": "1.0",
           "baseline_s": "1.5", "images_per_s": "32.0", "realised_speedup": "1.5", "ideal_speedup": "1.6",
           "efficiency": "0.9375", "target": "0.9", "meets_target": "yes", "overhead": "", "realised": "",
           "profile": ""}
    short = {**row, "config": "TFFF", "efficiency": "0.85", "meets_target": "no", "profile": "ops without MACs"}
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows([row, short])


def test_readme_section_is_replaced_in_place_or_appended(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    _speed_csv(out / "speed.csv")
    (out / "speed_all_configs.md").write_text("# another speed run\n")
    readme = tmp_path / "README.md"
    readme.write_text("# project\n\nintro\n\n## Results\n\nold numbers\n\n## Tests\n\nmake test\n")
    report.update_readme(readme, out, "python -m benchmarks.run_all --quick")
    text = readme.read_text()
    assert "old numbers" not in text and text.count("## Results") == 1
    assert text.index("## Results") < text.index("### Speed") < text.index("## Tests") and "make test" in text
    assert "| adn | resnet50-ADN | TTTT | 32 | 32.0 | 1.50x | 1.60x | 0.94 | 0.9 | yes |" in text
    assert "`python -m benchmarks.run_all --quick`" in text and "results/" in text
    assert "- resnet50-ADN TFFF, batch 32 (0.85 of ideal): ops without MACs" in text  # only the row below target
    assert "resnet50-ADN TTTT, batch 32 (" not in text
    assert "Further speed runs, each with its own command: [speed_all_configs.md](results/speed_all_configs.md)" in text
    readme.write_text("# project\n\nintro\n")
    report.update_readme(readme, out, "cmd")
    assert readme.read_text().startswith("# project\n\nintro\n\n## Results\n")


def test_a_regenerated_report_keeps_the_run_s_statuses_and_seconds(tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    _speed_csv(out / "speed.csv")
    outcomes = [run_all.Outcome("adn", "ok", 30.4), run_all.Outcome("dyt", "drift", 93.0, 1, "a column drifted")]
    report.write_report(out, "python -m benchmarks.run_all --quick", outcomes)
    readme = tmp_path / "README.md"
    readme.write_text("# project\n")
    assert report.main(report.get_args_parser().parse_args(
        ["--output-dir", str(out), "--update-readme", "--readme", str(readme)])) == 0
    for text in (readme.read_text(), (out / "README.md").read_text()):
        assert "| ADN (NeurIPS 2024) | ok | 30 |" in text
        assert "| DyT (NeurIPS 2024) | drift | 93 |" in text and "a column drifted" in text
