"""benchmarks/proxies/jeidnn.py: the tiny proxy runs both entry points, learns, and writes the two tables with the
shared columns and a verdict per claim; the matched-cost comparison interpolates and clamps as documented."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from benchmarks import tables
from benchmarks.proxies import jeidnn as proxy
from common.errors import run_cli

VERDICTS = {"reproduced", "not reproduced", "inconclusive"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("jeidnn_proxy")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert proxy.main(["--tiny", "--output-dir", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_tiny_proxy_learns_and_writes_the_tables(tiny):
    arms = pd.read_csv(tiny / "jeidnn_proxies.csv")
    claims = pd.read_csv(tiny / "jeidnn_claims.csv")
    assert list(arms.columns) == tables.PROXY_COLUMNS and list(claims.columns) == tables.CLAIM_COLUMNS
    by_arm = arms.set_index("arm")
    assert by_arm.loc[proxy.STRONGEST, "mean"] > 40  # 10 classes: chance is 10 %
    lambdas = [f"lambda {lam:g}" for lam in proxy.TINY.lambdas]
    gates = [a for a in arms["arm"] if a.startswith("JEI-DNN gates")]
    assert [g.rsplit(", ", 1)[1] for g in gates] == lambdas
    assert all(by_arm.loc[g, "mean"] > 20 for g in gates)
    full_macs = by_arm.loc[proxy.STRONGEST, "macs"]
    assert all(0 < by_arm.loc[a, "macs"] <= full_macs for a in arms["arm"])
    assert len(claims) == 2 and set(claims["verdict"]) <= VERDICTS and (claims["seeds"] == 1).all()
    assert claims["evidence"].str.contains("difference per seed").all()
    report = (tiny / "jeidnn_proxy.md").read_text()
    assert "Verdict rule:" in report and "## Claims" in report and (tiny / "jeidnn_proxy.png").stat().st_size > 0


def test_matched_interpolates_and_clamps():
    curve = pd.DataFrame({"cost": [1.0, 2.0, 3.0], "acc": [80.0, 90.0, 94.0], "ece": [6.0, 4.0, 2.0],
                          "macs": [10.0, 20.0, 30.0]})
    gate = {"lambda": 0.1, "acc": 91.0, "cost": 1.5, "macs": 15.0, "ece": 3.0, "exit0": 0.5, "ic0": 90.0,
            "oracle0": 0.9}
    result = proxy.SeedResult(final_acc=94.0, warmup_ic_acc=[94.0], full_macs=30.0,
                              gates=[gate, {**gate, "cost": 0.5}, {**gate, "cost": 3.5}], curve=curve)
    inside, below, above = proxy.matched(result)
    assert (inside["base_acc"], inside["base_ece"], inside["base_macs"], inside["outside"]) == (85.0, 5.0, 15.0, False)
    assert (below["base_acc"], below["outside"]) == (80.0, True)
    assert (above["base_acc"], above["outside"]) == (94.0, True)
    claims = proxy.judge_claims([result, result])
    assert [c.ours for c in claims] == [f"{(6.0 + 11.0 - 3.0) / 3:+.2f}", f"{(2.0 + 3.0 - 1.0) / 3:+.2f}"]


@pytest.mark.parametrize(("args", "message"), [
    (["--full", "--tiny"], "--full and --tiny exclude each other"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--lambdas", "-1"], "--lambdas must be 0 or more"),
])
def test_bad_flags_are_one_line(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(proxy.main, args, prog="proxies.jeidnn")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
