"""MLflow tracking for the training scripts: params, per-epoch metrics and artifacts, rank 0 only.

Where runs go: ``--mlflow-uri`` if given, else ``$MLFLOW_TRACKING_URI``, else MLflow's own local default, the
SQLite store ``./mlflow.db`` with artifacts under ``./mlruns/`` (MLflow 3 refuses its older ``./mlruns`` file
store unless ``MLFLOW_ALLOW_FILE_STORE=true``). ``mlflow ui`` started in the same folder shows the runs.
``--no-mlflow`` turns tracking off; every method is then a no-op, as it is on ranks other than 0::

    with start_tracking(args, experiment="adn") as tracker:
        tracker.log_params(vars(args))
        for epoch in range(args.epochs):
            tracker.log_metrics({"train/loss": loss, "val/acc1": acc1}, step=epoch)
        tracker.log_artifact(checkpoint_path)
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from common.distributed import is_main_process
from common.errors import UserError

DEFAULT_URI = "sqlite:///mlflow.db"
MAX_PARAM_CHARS = 6000


FAIL_FAST_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}


class TrackingError(UserError):
    """The tracking store cannot be opened or written."""


def check_store(uri: str) -> None:
    """Fail at once, with the fix, when a local store (``sqlite:///FILE``, ``file:DIR`` or a plain folder) cannot be
    written: its folder is missing and cannot be created, or is read-only. Remote stores are checked on open."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https", "databricks") or (parsed.scheme and parsed.scheme not in ("sqlite", "file")):
        return
    if parsed.scheme == "sqlite":
        target = Path(uri.removeprefix("sqlite:///")).parent
    else:
        target = Path(parsed.path if parsed.scheme == "file" else uri)
    existing = next((p for p in (target, *target.parents) if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise TrackingError(f"the MLflow tracking store {uri!r} cannot be written ({existing} is not a writable "
                            "folder); fix --mlflow-uri, or pass --no-mlflow to train without tracking")


def add_tracking_args(parser: argparse.ArgumentParser, experiment: str) -> None:
    """Add ``--mlflow-uri``, ``--no-mlflow`` and ``--experiment-name`` (default ``experiment``)."""
    group = parser.add_argument_group("MLflow tracking")
    group.add_argument("--mlflow-uri", default=None, metavar="URI",
                       help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the "
                            "current folder with artifacts in ./mlruns; view with `mlflow ui`)")
    group.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    group.add_argument("--experiment-name", default=experiment, help="MLflow experiment (default: %(default)s)")


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


class Tracker:
    """One MLflow run; a no-op when disabled. Use as a context manager (a failure marks the run FAILED)."""

    def __init__(self, enabled: bool, uri: str | None = None, experiment: str = "default",
                 run_name: str | None = None):
        self.enabled = enabled
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
        self.experiment, self.run_name = experiment, run_name
        self.run_id: str | None = None
        self._mlflow = None

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        check_store(self.uri)
        # an unreachable server fails in seconds, not after MLflow's minutes of retries (a user's setting wins)
        for name, value in FAIL_FAST_ENV.items():
            os.environ.setdefault(name, value)
        try:
            mlflow.set_tracking_uri(self.uri)
            mlflow.set_experiment(self.experiment)
            self.run_id = mlflow.start_run(run_name=self.run_name).info.run_id
        except Exception as err:  # mlflow raises many types for an unusable store
            reason = " ".join(str(err).split())
            raise TrackingError(f"cannot open the MLflow tracking store {self.uri!r} ({reason[:300]}); fix "
                                "--mlflow-uri, or pass --no-mlflow to train without tracking") from None
        self._mlflow = mlflow
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._mlflow is not None:
            self._mlflow.end_run(status="FINISHED" if exc_type is None else "FAILED")
            self._mlflow = None

    def log_params(self, params: Mapping[str, Any] | argparse.Namespace) -> None:
        """Log parameters (a Namespace or nested dict, flattened with dots; values as strings)."""
        if self._mlflow is not None:
            params = vars(params) if isinstance(params, argparse.Namespace) else params
            self._mlflow.log_params(_flatten(params))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric metrics at ``step`` (the epoch, for per-epoch metrics); non-finite values are skipped."""
        if self._mlflow is not None:
            values = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}
            self._mlflow.log_metrics(values, step=step)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file (checkpoint, table, plot) into the run's artifacts. A failure (a full or unwritable artifact
        store) is reported on one line and the run goes on: the file itself stays where it was saved."""
        if self._mlflow is not None:
            try:
                self._mlflow.log_artifact(str(path), artifact_path=artifact_path)
            except Exception as err:  # mlflow raises many types for an unusable artifact store
                reason = " ".join(str(err).split())[:300]
                print(f"warning: MLflow could not store {path} as an artifact ({reason}); the file is kept at "
                      f"{path}", file=sys.stderr)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self._mlflow is not None:
            self._mlflow.set_tags({k: str(v) for k, v in tags.items()})


def start_tracking(args: argparse.Namespace, experiment: str | None = None, run_name: str | None = None) -> Tracker:
    """A :class:`Tracker` configured from the flags of :func:`add_tracking_args`; enabled on rank 0 only."""
    enabled = not getattr(args, "no_mlflow", False) and is_main_process()
    return Tracker(enabled, getattr(args, "mlflow_uri", None),
                   experiment or getattr(args, "experiment_name", "default"), run_name)
