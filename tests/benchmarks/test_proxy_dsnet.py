"""benchmarks/proxies/dsnet.py at --tiny size: dsnet/train.py's three runs per seed learn, the tables have the shared
columns and every claim a verdict of the rule; bad flags are one-line errors."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from benchmarks import tables
from benchmarks.proxies import dsnet as proxy
from common.errors import run_cli

VERDICTS = {"reproduced", "not reproduced", "inconclusive"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("dsnet_proxy")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert proxy.main(["--tiny", "--output-dir", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_tiny_run_learns_and_writes_the_tables(tiny_run):
    arms = pd.read_csv(tiny_run / "dsnet_proxies.csv")
    assert list(arms.columns) == tables.PROXY_COLUMNS
    assert len(arms) == 14 + 2 + 1  # sub-networks 0-13 bootstrapped, 0 and 13 without, the gated model
    assert (arms["paper"] == "DS-Net").all() and (arms["seeds"] == 1).all()
    by_arm = arms.set_index("arm")
    # learning at a fixed seed: chance on digits is 10 %
    assert by_arm.loc["sub-network 13, no bootstrapping", "mean"] > 25.0
    assert arms["mean"].between(0, 100).all()
    static = arms[arms["arm"].str.contains("in-place bootstrapping")]
    assert static["macs"].is_monotonic_increasing and static["macs"].iloc[0] < static["macs"].iloc[-1]
    gated = arms[arms["arm"].str.startswith("gated dynamic")]["macs"].item()
    assert static["macs"].iloc[0] < gated <= static["macs"].iloc[3] + 1000  # routes 0-3 plus the slimming head

    claims = pd.read_csv(tiny_run / "dsnet_claims.csv")
    assert list(claims.columns) == tables.CLAIM_COLUMNS
    assert len(claims) == 2 and set(claims["verdict"]) <= VERDICTS
    assert (claims["seeds"] == 1).all()
    assert (claims["verdict"] == "inconclusive").all()  # one seed cannot tell (interval of infinite width)
    assert "routes 0/1/2/3 taken" in claims["evidence"][0] and "sub-network 0:" in claims["evidence"][1]

    report = (tiny_run / "dsnet_proxy.md").read_text()
    assert "python -m benchmarks.proxies.dsnet --tiny --output-dir" in report
    assert tables.VERDICT_RULE in report and "## Claims" in report
    assert (tiny_run / "dsnet_proxy.png").stat().st_size > 1000


def test_the_argv_runs_the_configs_with_the_added_flags(tmp_path):
    settings = proxy.DEMO
    boot = proxy.stage1_argv(settings, 2, tmp_path, bootstrap=True)
    plain = proxy.stage1_argv(settings, 2, tmp_path, bootstrap=False)
    assert boot[:2] == ["-c", str(proxy.CONFIGS / "supernet.yml")] and "--reset_bn_cumulative" in boot
    assert "--no-inplace_bootstrap" not in boot and plain == [*boot, "--no-inplace_bootstrap"]
    assert boot[boot.index("--seed") + 1] == "2" and boot[boot.index("--dataset") + 1] == "digits"
    gate = proxy.gate_argv(settings, 2, tmp_path, "ckpt.pth.tar")
    assert gate[:2] == ["-c", str(proxy.CONFIGS / "gate.yml")] and gate[gate.index("--resume") + 1] == "ckpt.pth.tar"


@pytest.mark.parametrize(("argv", "message"), [
    (["--full", "--tiny"], "--full and --tiny exclude each other"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--seeds", "two"], "invalid int value"),
])
def test_bad_flags_are_one_line(capsys, tmp_path, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(proxy.main, [*argv, "--output-dir", str(tmp_path)], prog="dsnet proxy")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsnet proxy: error: ") and message in err and "\n" not in err
