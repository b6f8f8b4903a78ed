"""``benchmarks/proxies/padnet_moe.py``: the tiny run learns and writes the tables; the SST-2 setting; bad flags."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks import tables
from benchmarks.proxies import padnet_moe
from common.errors import run_cli
from padnet.moe import run_glue_pad

VERDICTS = {"reproduced", "not reproduced", "inconclusive"}


def test_tiny_run_learns_and_writes_the_tables(tmp_path):
    assert padnet_moe.main(["--tiny", "--output-dir", str(tmp_path)]) == 0
    arms = pd.read_csv(tmp_path / "padnet_moe_proxies.csv")
    claims = pd.read_csv(tmp_path / "padnet_moe_claims.csv")
    assert list(arms.columns) == tables.PROXY_COLUMNS and list(claims.columns) == tables.CLAIM_COLUMNS
    assert list(arms["arm"]) == list(padnet_moe.ARMS)
    assert (arms["mean"] >= 65).all(), arms  # chance is 50 % on the balanced generated dev set
    assert arms.loc[0, "macs"] < arms.loc[1, "macs"] == arms.loc[2, "macs"]  # top-2 experts cost more than dense
    assert len(claims) == 1 and claims.loc[0, "verdict"] in VERDICTS and claims.loc[0, "seeds"] == 1
    assert "PAD-MoE dynamic ratio 0.500" in claims.loc[0, "evidence"]
    for suffix in ("_proxy.md", "_proxy.png"):
        assert (tmp_path / f"padnet_moe{suffix}").stat().st_size > 0


def test_demo_runs_the_entry_point_on_the_real_sst2_dev_set(shared_dir, tmp_path):
    sst2 = shared_dir / "data" / "glue" / "SST-2"
    if not (sst2 / "train.tsv").is_file():
        pytest.skip(f"{sst2} is absent")
    assert padnet_moe.SST2.resolve() == sst2.resolve()
    for arm in padnet_moe.ARMS:
        model_args, data_args, training_args, prune_args, _ = run_glue_pad.parse_args(
            padnet_moe.run_argv(padnet_moe.DEMO, arm, 1, tmp_path))
        assert data_args.task_name == "sst2" and data_args.max_eval_samples is None  # all 872 dev sentences
        assert data_args.max_train_samples == padnet_moe.DEMO.train_samples and training_args.seed == 1
    assert model_args.use_moe == "PadMoE" and prune_args.sparsity == 0.5 and prune_args.pruner == "snip"
    task, splits = run_glue_pad.load_splits(data_args, ("validation",))
    assert task == "sst2" and len(splits["validation"]) == 872


def test_missing_sst2_prints_one_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(padnet_moe, "SST2", tmp_path / "absent")
    assert padnet_moe.main(["--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out.strip()
    assert "skipped" in out and "\n" not in out and not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv, message", [(["--tiny", "--full"], "exclude"), (["--seeds", "0"], "--seeds")])
def test_bad_flags_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        run_cli(padnet_moe.main, argv, prog="proxies.padnet_moe")
    assert exc.value.code == 2 and message in capsys.readouterr().err
