"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout; tests using it skip when it is absent (a user's fresh clone).

    In CI (``CI=true``) the folder is always there, so its absence is a failure rather than a skip.
    """
    if not SHARED.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{SHARED} is missing; CI runs with ../shared beside the checkout")
        pytest.skip(f"{SHARED} is absent")
    return SHARED


@pytest.fixture(autouse=True)
def _isolated_mlflow(monkeypatch, tmp_path_factory):
    """No test writes to the repository's own MLflow store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db")


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread per test: on 2 shared cores, OpenMP threads waiting on each other make the small steps of
    the tests up to 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
