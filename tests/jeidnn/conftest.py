"""Fixtures of the JEI-DNN tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def reference_dir(shared_dir) -> Path:
    """``../shared/reference/jeidnn``: the original's manifests and reference outputs."""
    return shared_dir / "reference" / "jeidnn"


@pytest.fixture(scope="session")
def ref(reference_dir) -> dict:
    """``ref_t2t_vit_7.pt``: random-init weights, an input and the original's outputs (its README)."""
    return torch.load(reference_dir / "ref_t2t_vit_7.pt", weights_only=True)
