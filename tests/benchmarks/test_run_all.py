"""benchmarks/run_all.py and benchmarks/report.py: every stage called as ``main(argv)``, a drift or crash in one
stage propagating to the exit code while the others still run, the proxies' claims gathered into claims.csv, the
report opening with the claims table, the README section, and bad flags."""

from __future__ import annotations

import os
import sys

import pandas as pd
import pytest

from benchmarks import report, run_all
from benchmarks.tables import CLAIM_COLUMNS, PROXY_COLUMNS
from common.errors import run_cli

FAKE_TABLE = '''
import sys
from pathlib import Path


def main(argv):
    out = Path(argv[argv.index("--output-dir") + 1])
    (out / "{name}.md").write_text("# {name}\\n" + " ".join(sys.argv))
    {action}
'''

FAKE_PROXY = '''
from pathlib import Path

from benchmarks.tables import judge, write_proxy_results


def main(argv):
    out = Path(argv[argv.index("--output-dir") + 1])
    arms = [dict(paper="Fake", arm=" ".join(["{name}", *argv[:-2]]), dataset="digits", metric="top-1", mean=91.0,
                 std=1.0, seeds=2, macs=100)]
    write_proxy_results(out, "{name}", arms, [judge("Fake", "{name} beats the baseline", "top-1", "+1", {diffs})])
    return 0
'''


def _main(argv: list[str]) -> int:
    try:
        return run_cli(run_all.main, argv, prog="run_all")
    except SystemExit as exc:
        return exc.code


@pytest.fixture
def fake_papers(tmp_path, monkeypatch):
    """Papers whose table matches, drifts or crashes, each with a proxy whose claim holds or fails."""
    pkg = tmp_path / "fakebench"
    (pkg / "proxies").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "proxies" / "__init__.py").write_text("")
    tables = {"fake_ok": "return 0", "fake_drift": "return 1", "fake_crash": "raise RuntimeError('boom')"}
    diffs = {"fake_ok": "[1.0, 1.02]", "fake_drift": "[-2.0, -2.1]", "fake_crash": "[1.0, -1.0]"}
    for name, action in tables.items():
        (pkg / f"{name}_table.py").write_text(FAKE_TABLE.format(name=name, action=action))
        (pkg / "proxies" / f"{name}.py").write_text(FAKE_PROXY.format(name=name, diffs=diffs[name]))
    monkeypatch.syspath_prepend(str(tmp_path))
    papers = {n: run_all.Paper(n, n, f"fakebench.{n}_table", (f"fakebench.proxies.{n}",)) for n in tables}
    monkeypatch.setattr(run_all, "PAPERS", papers)
    yield
    for name in list(sys.modules):
        if name.startswith("fakebench"):
            sys.modules.pop(name)


def test_stages_run_in_order_failures_propagate_and_claims_are_gathered(tmp_path, fake_papers, capsys):
    out = tmp_path / "results"
    assert _main(["--no-speed", "--jobs", "1", "--output-dir", str(out)]) == 1
    captured = capsys.readouterr()
    assert "run_all: failed: fake_drift table, fake_crash table" in captured.err
    assert "RuntimeError: boom" in captured.err  # the crash's traceback is shown, and the next stages still ran
    # each table script saw its own command line
    assert (out / "fake_ok.md").read_text().endswith("fakebench/fake_ok_table.py --quick --output-dir " + str(out))
    claims = pd.read_csv(out / "claims.csv", keep_default_na=False)
    assert list(claims.columns) == CLAIM_COLUMNS
    assert dict(zip(claims["claim"], claims["verdict"], strict=True)) == {
        "fake_ok beats the baseline": "reproduced", "fake_drift beats the baseline": "not reproduced",
        "fake_crash beats the baseline": "inconclusive"}
    arms = pd.read_csv(out / "proxies.csv")
    assert list(arms.columns) == PROXY_COLUMNS and len(arms) == 3
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False)
    # the whole run's wall clock comes last and covers every stage
    assert runs["stage"].iloc[-1] == "wall clock, --jobs 1"
    assert runs["seconds"].iloc[-1] >= runs["seconds"].iloc[:-1].sum() - 0.5  # each rounded to 0.1 s
    runs = runs.iloc[:-1]
    assert list(zip(runs["stage"], runs["status"], strict=True)) == [
        ("table", "ok"), ("proxy fake_ok", "ok"), ("table", "drift"), ("proxy fake_drift", "ok"),
        ("table", "error"), ("proxy fake_crash", "ok")]


def test_parallel_workers_give_the_same_outcomes_with_a_log_per_stage(tmp_path, fake_papers, capsys):
    out = tmp_path / "results"
    assert _main(["--no-speed", "--jobs", "2", "--output-dir", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "RuntimeError: boom" in printed  # the end of the failed stage's log, shown by the parent
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False)
    # the whole run's wall clock comes last and covers the longest stage (stages overlap in two workers)
    assert runs["stage"].iloc[-1] == "wall clock, --jobs 2"
    assert runs["seconds"].iloc[-1] >= runs["seconds"].iloc[:-1].max() - 0.1  # each rounded to 0.1 s
    runs = runs.iloc[:-1]
    assert list(zip(runs["stage"], runs["status"], strict=True)) == [
        ("table", "ok"), ("proxy fake_ok", "ok"), ("table", "drift"), ("proxy fake_drift", "ok"),
        ("table", "error"), ("proxy fake_crash", "ok")]
    assert "Traceback" in (out / "logs" / "fake_crash_table.log").read_text()
    assert (out / "fake_ok.md").read_text().endswith("fakebench/fake_ok_table.py --quick --output-dir " + str(out))
    assert len(pd.read_csv(out / "claims.csv")) == 3


def test_report_opens_with_the_claims_table(tmp_path, fake_papers):
    out = tmp_path / "results"
    assert _main(["--no-speed", "--jobs", "1", "--only", "fake_ok", "--output-dir", str(out)]) == 0
    text = (out / "README.md").read_text()
    claims_at, runs_at = text.index("## Claims and verdicts"), text.index("## Runs")
    assert claims_at < runs_at
    assert "1 claims: 1 reproduced, 0 not reproduced, 0 inconclusive." in text
    assert "| **reproduced** |" in text and "[+0.88, +1.14]" in text  # the 95 % interval of two seeds
    assert "Command: `python -m benchmarks.run_all --no-speed --jobs 1 --only fake_ok --output-dir" in text


@pytest.mark.parametrize("mode, proxy_flags", [([], []), (["--tiny"], ["--tiny"]), (["--full"], ["--full"])])
def test_mode_flags_reach_the_proxies(tmp_path, fake_papers, mode, proxy_flags):
    out = tmp_path / "results"
    assert _main([*mode, "--no-speed", "--jobs", "1", "--only", "fake_ok", "--output-dir", str(out)]) == 0
    arm = pd.read_csv(out / "proxies.csv", keep_default_na=False)["arm"].item()
    assert arm == " ".join(["fake_ok", *proxy_flags])


def test_gather_ignores_stale_files_of_proxies_not_run(tmp_path):
    stale = pd.DataFrame([dict.fromkeys(CLAIM_COLUMNS, "old")])
    stale.to_csv(tmp_path / "adn_claims.csv", index=False)
    run_all.gather(tmp_path, [])
    assert pd.read_csv(tmp_path / "claims.csv").empty


def test_update_readme_replaces_only_the_results_section(tmp_path, fake_papers):
    out = tmp_path / "results"
    assert _main(["--no-speed", "--jobs", "1", "--only", "fake_ok", "--output-dir", str(out)]) == 0
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n\n## Results\n\nold numbers\n\n## Licence\n\nMIT\n")
    report.main(["--output-dir", str(out), "--update-readme", "--readme", str(readme)])
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("# Title\n\nintro\n\n## Results\n")
    assert "### Claims and verdicts" in text and text.rstrip().endswith("## Licence\n\nMIT")
    assert "(results/fake_ok_proxy.md)" not in text  # links only to files that exist


@pytest.mark.parametrize("argv, message", [
    (["--only", "adn,nope"], "--only 'adn,nope': unknown paper(s) nope"),
    (["--only", ","], "unknown paper(s) (none given)"),
    (["--quick", "--full"], "not allowed with argument"),
    (["--jobs", "0"], "--jobs must be at least 1"),
])
def test_bad_flags_are_one_line_errors(argv, message, capsys):
    assert _main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_output_dir_that_is_a_file_is_refused_before_any_stage(tmp_path, capsys):
    target = tmp_path / "results"
    target.write_text("not a folder")
    assert _main(["--output-dir", str(target)]) == 2
    assert "--output-dir" in capsys.readouterr().err
    assert target.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only folder")
def test_read_only_output_dir_is_refused(tmp_path, capsys):
    target = tmp_path / "results"
    target.mkdir()
    target.chmod(0o500)
    assert _main(["--output-dir", str(target)]) == 2
    assert "not writable" in capsys.readouterr().err


def test_report_of_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(report.main, ["--output-dir", str(tmp_path / "nope")], prog="report")
    assert exc.value.code == 2
    assert "no such folder" in capsys.readouterr().err
