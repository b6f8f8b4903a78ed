"""Fixtures of the DS-Net tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsnet.models import create_model


@pytest.fixture(scope="session")
def reference_dir(shared_dir) -> Path:
    """``../shared/reference/dsnet``: the original's manifests and reference outputs."""
    return shared_dir / "reference" / "dsnet"


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
