"""benchmarks/proxies/padnet.py: the tiny run learns, is deterministic, and writes the proxy tables, the claims,
the report and the plot; bad flags are one line."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from benchmarks import tables
from benchmarks.proxies.padnet import ARMS, DY, PAD3, PAD5, RAND3, STATIC, TINY, main, run_arm
from common.errors import run_cli

VERDICTS = {"reproduced", "not reproduced", "inconclusive"}


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread, as ``make demo`` runs every proxy (``run_all --jobs 2``): at one thread a run is
    bit-reproducible; at two, the DY-Conv kernels' parallel reductions may round differently from run to run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("padnet_proxy")
    assert run_cli(main, ["--tiny", "--output-dir", str(out)], prog="proxies.padnet") == 0
    return out


def _csv(path) -> pd.DataFrame:
    return pd.read_csv(path, keep_default_na=False)


def test_tiny_run_learns_and_is_deterministic(tiny):
    arms = _csv(tiny / "padnet_proxies.csv").set_index("arm")
    # two epochs: the static net is far above chance (10 % on 10 classes), and every arm has learnt something
    assert arms.loc[STATIC, "mean"] > 60
    assert arms["mean"].min() > 15
    # the same seed gives the same accuracy again (seeded through the entry point's --seed, -j 0)
    assert round(run_arm(TINY, STATIC, 0)["acc1"], 2) == arms.loc[STATIC, "mean"]


def test_tiny_run_writes_the_tables(tiny):
    arms = _csv(tiny / "padnet_proxies.csv")
    assert list(arms.columns) == tables.PROXY_COLUMNS
    assert list(arms["arm"]) == list(ARMS) and set(arms["paper"]) == {"PAD-Net"} and set(arms["seeds"]) == {1}
    macs = arms.set_index("arm")["macs"]
    # deployed forms: PAD aggregates only its dynamic positions, so it costs less than DY-Conv, more than static
    assert macs[STATIC] < macs[PAD3] == macs[RAND3] < macs[PAD5] < macs[DY]

    claims = _csv(tiny / "padnet_claims.csv")
    assert list(claims.columns) == tables.CLAIM_COLUMNS
    assert len(claims) == 4 and set(claims["verdict"]) <= VERDICTS and set(claims["seeds"]) == {1}
    assert claims["claim"].str.contains("kappa 0.3").any() and claims["claim"].str.contains("kappa 0.5").any()
    assert claims["evidence"].str.contains("final train top-1").all()

    report = (tiny / "padnet_proxy.md").read_text()
    assert "python -m benchmarks.proxies.padnet --tiny" in report and tables.VERDICT_RULE in report
    assert "## Claims" in report and " dynamic ratio " in report and " 0.300 " in report
    assert (tiny / "padnet_proxy.png").stat().st_size > 1000


@pytest.mark.parametrize(("args", "message"), [
    (["--full", "--tiny"], "--full and --tiny exclude each other"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--epochs", "0"], "--epochs must be at least 1"),
])
def test_bad_flags_are_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main, [*args, "--output-dir", str(tmp_path)], prog="proxies.padnet")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and err.startswith("proxies.padnet: error:") and message in err
    assert "\n" not in err and not list(tmp_path.iterdir())
