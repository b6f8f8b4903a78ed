"""common.tracking: an MLflow run read back with MlflowClient; off by flag and on ranks other than 0."""

from __future__ import annotations

import argparse
import time

import pytest
from mlflow.tracking import MlflowClient

from common import tracking
from common.tracking import TrackingError, add_tracking_args, start_tracking


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    add_tracking_args(parser, experiment="unit-test")
    return parser.parse_args(argv)


def test_a_run_logs_params_metrics_and_artifacts(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = parse(["--mlflow-uri", uri, "--lr", "0.05"])
    artifact = tmp_path / "results.csv"
    artifact.write_text("epoch,acc\n0,0.5\n")
    with start_tracking(args, run_name="tiny") as tracker:
        tracker.log_params(args)
        tracker.log_params({"model": {"depth": 50}})
        for epoch, acc in enumerate([0.5, 0.75]):
            tracker.log_metrics({"val/acc1": acc, "train/loss": float("nan")}, step=epoch)
        tracker.log_artifact(artifact)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params["lr"] == "0.05" and run.data.params["model.depth"] == "50"
    assert client.get_experiment(run.info.experiment_id).name == "unit-test"
    history = client.get_metric_history(run.info.run_id, "val/acc1")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(0, 0.5), (1, 0.75)]
    assert "train/loss" not in run.data.metrics  # non-finite values are skipped
    assert [f.path for f in client.list_artifacts(run.info.run_id)] == ["results.csv"]


def test_a_failing_run_is_marked_failed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with pytest.raises(RuntimeError):
        with start_tracking(parse(["--mlflow-uri", uri])) as tracker:
            raise RuntimeError("diverged")
    assert MlflowClient(tracking_uri=uri).get_run(tracker.run_id).info.status == "FAILED"


def test_no_mlflow_logs_nothing(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with start_tracking(parse(["--mlflow-uri", uri, "--no-mlflow"])) as tracker:
        tracker.log_params({"a": 1})
        tracker.log_metrics({"acc": 1.0}, step=0)
    assert tracker.run_id is None and not (tmp_path / "mlflow.db").exists()


def test_only_rank_zero_logs(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking, "is_main_process", lambda: False)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with start_tracking(parse(["--mlflow-uri", uri])) as tracker:
        tracker.log_metrics({"acc": 1.0}, step=0)
    assert tracker.run_id is None and not (tmp_path / "mlflow.db").exists()


def test_default_store_is_the_environment_or_mlflow_db(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert start_tracking(parse([])).uri == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    assert start_tracking(parse([])).uri == "sqlite:///elsewhere.db"


def test_unusable_store_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TrackingError, match="--no-mlflow"):
        with start_tracking(parse(["--mlflow-uri", f"sqlite:///{blocker}/sub/mlflow.db"])):
            pass


def test_an_unreachable_server_fails_in_seconds_with_one_line(monkeypatch):
    for name in tracking.FAIL_FAST_ENV:
        monkeypatch.delenv(name, raising=False)
    start = time.monotonic()
    with pytest.raises(TrackingError, match="cannot open the MLflow tracking store 'http://127.0.0.1:9'") as err:
        with start_tracking(parse(["--mlflow-uri", "http://127.0.0.1:9"])):
            pass
    assert time.monotonic() - start < 60  # MLflow's own retries take minutes
    assert "--no-mlflow" in str(err.value)


def test_a_read_only_local_store_is_refused_before_mlflow_opens_it(tmp_path, monkeypatch):
    monkeypatch.setattr(tracking.os, "access", lambda path, mode: False)
    with pytest.raises(TrackingError, match="is not a writable folder"):
        with start_tracking(parse(["--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"])):
            pass
    assert not (tmp_path / "mlflow.db").exists()


def test_a_failed_artifact_upload_is_reported_and_the_file_kept(tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "checkpoint.pth"
    checkpoint.write_bytes(b"weights")
    with start_tracking(parse(["--mlflow-uri", f"sqlite:///{tmp_path}/mlflow.db"])) as tracker:
        def full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(tracker._mlflow, "log_artifact", full)
        tracker.log_artifact(checkpoint)
    err = capsys.readouterr().err
    assert "MLflow could not store" in err and "No space left on device" in err and str(checkpoint) in err
    assert checkpoint.read_bytes() == b"weights"
