"""benchmarks/proxies/adn.py: the tiny run learns and writes the proxy tables, the claims and the report."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks import tables
from benchmarks.proxies.adn import main
from common.errors import run_cli

VERDICTS = {"reproduced", "not reproduced", "inconclusive"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("adn_proxy")
    assert run_cli(main, ["--tiny", "--output-dir", str(out)], prog="proxies.adn") == 0
    return out


def _csv(path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


def test_tiny_run_learns(tiny):
    arms = _csv(tiny / "adn_proxies.csv").set_index("arm")
    # One epoch is too short for ADN's running BN statistics, but the weights have learnt: with the statistics
    # re-estimated, the super-net and the base-net are far above chance (10 % on 10 classes).
    assert arms.loc["ADN FFFF (super-net), BN re-estimated (diagnostic)", "mean"] > 50
    assert arms.loc["ADN TTTT (base-net), BN re-estimated (diagnostic)", "mean"] > 50
    assert arms["mean"].max() > 30


def test_tiny_run_writes_the_tables(tiny):
    arms = _csv(tiny / "adn_proxies.csv")
    assert list(arms.columns) == tables.PROXY_COLUMNS
    assert len(arms) == 16 + 2 + 2 + 2 and set(arms["paper"]) == {"ADN"} and set(arms["seeds"]) == {1}
    macs = arms.set_index("arm")["macs"]
    assert macs["ADN FFFF (super-net)"] == macs["individually trained FFFF (super-net)"] > macs["ADN TFFF"]
    assert macs["ADN TTTF"] > macs["ADN TTTT (base-net)"] == macs["ADN, shared norms TTTT (base-net)"]

    claims = _csv(tiny / "adn_claims.csv")
    assert list(claims.columns) == tables.CLAIM_COLUMNS
    assert len(claims) == 4 and set(claims["verdict"]) <= VERDICTS and set(claims["seeds"]) == {1}
    assert claims["claim"].str.contains("individually trained super-net").any()
    assert claims["evidence"].str.len().min() > 20

    report = (tiny / "adn_proxy.md").read_text()
    assert "python -m benchmarks.proxies.adn --tiny" in report and tables.VERDICT_RULE in report
    assert "## Claims" in report and "BN re-estimated" in report
    assert (tiny / "adn_proxy.png").stat().st_size > 1000


@pytest.mark.parametrize(("args", "message"), [
    (["--full", "--tiny"], "--full and --tiny exclude each other"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--epochs", "0"], "--epochs must be at least 1"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*args, "--output-dir", str(tmp_path)], prog="proxies.adn")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("proxies.adn: error: ") and message in err and "\n" not in err
