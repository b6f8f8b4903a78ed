"""benchmarks/proxies/dyt.py at test size: every stage through dyt/main_image.py learns, the two tables have their
columns and a verdict per claim, DyT at r = 0.5 costs fewer MACs than AdaptFormer, and bad flags are one line."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks.proxies import dyt as proxy
from benchmarks.tables import CLAIM_COLUMNS, PROXY_COLUMNS
from common.errors import UserError

CHANCE = 20.0  # five target classes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("dyt_proxy")
    assert proxy.main(["--tiny", "--output-dir", str(out)]) == 0
    return out


def test_tiny_proxy_learns_and_writes_the_tables(tiny):
    arms = pd.read_csv(tiny / "dyt_proxies.csv")
    assert list(arms.columns) == PROXY_COLUMNS
    assert list(arms["arm"]) == list(proxy.ARMS) and (arms["seeds"] == 1).all()
    acc = dict(zip(arms["arm"], arms["mean"], strict=True))
    assert acc[proxy.FULL_FT] > CHANCE + 20  # learns after a 2-epoch source and a 1-epoch target run (51 %)
    assert all(value > CHANCE + 10 for value in acc.values())
    macs = dict(zip(arms["arm"], arms["macs"], strict=True))
    assert macs[proxy.DYT] < 0.9 * macs[proxy.ADAPTFORMER]
    assert macs[proxy.RANDOM] < 0.9 * macs[proxy.ADAPTFORMER] and macs[proxy.CENTRE] < 0.9 * macs[proxy.ADAPTFORMER]
    claims = pd.read_csv(tiny / "dyt_claims.csv")
    assert list(claims.columns) == CLAIM_COLUMNS and len(claims) == 3
    assert set(claims["verdict"]) <= {"reproduced", "not reproduced", "inconclusive"}
    assert "ratio" in claims["evidence"][0] and "margin 1" in claims["ci95"][0]
    report = (tiny / "dyt_proxy.md").read_text()
    assert "Verdict rule" in report and "python -m benchmarks.proxies.dyt --tiny" in report
    assert "kept tokens on the digit" in report  # where the masks fall, for the diagnostics
    assert (tiny / "dyt_proxy.png").stat().st_size > 0


def test_bad_flags():
    with pytest.raises(UserError, match="exclude each other"):
        proxy.main(["--tiny", "--full"])
    with pytest.raises(UserError, match="--seeds must be at least 1"):
        proxy.main(["--seeds", "0"])
