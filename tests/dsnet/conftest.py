"""Fixtures of the DS-Net tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from dsnet.models import create_model

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "dsnet"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """``../shared/reference/dsnet``; skipped when absent on a user's clone, a failure in CI."""
    if not REFERENCE.is_dir():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{REFERENCE} is missing; CI runs with ../shared beside the checkout")
        pytest.skip(f"{REFERENCE} is absent")
    return REFERENCE


@pytest.fixture(scope="session")
def ref(reference_dir) -> dict:
    """``ref_dsnet_supernet.pt``: the original's weights, input and outputs (spec Sec. 12)."""
    return torch.load(reference_dir / "ref_dsnet_supernet.pt", weights_only=True)


@pytest.fixture
def ref_model(ref):
    """The full supernet with the reference weights (a fresh copy per test)."""
    model = create_model("slimmable_mbnet_v1_bn_uniform")
    model.load_state_dict(ref["state_dict"], strict=True)
    return model
