"""Equivalence with the original MobileNetV2-ADN (``../shared/reference/adn/ref_mobilenet_v2_adn.pt``)."""

from __future__ import annotations

import pytest
import torch

from adn.models import create_model


@pytest.fixture(scope="module")
def reference(shared_dir):
    return torch.load(shared_dir / "reference" / "adn" / "ref_mobilenet_v2_adn.pt", weights_only=True)


@pytest.fixture(scope="module")
def model(reference):
    model = create_model("mobilenet_v2")
    model.load_state_dict(reference["state_dict"], strict=True)
    return model.eval()


def test_all_32_configurations_in_eval_mode(model, reference, shared_dir):
    outputs = reference["outputs_per_skip_cfg"]
    assert sorted(outputs) == sorted(model.configurations())
    with torch.no_grad():
        for cfg, expected in outputs.items():
            torch.testing.assert_close(model(reference["input"], cfg), expected, rtol=0, atol=1e-5, msg=cfg)
    torch.testing.assert_close(outputs["FFFFF"], reference["output"])
    torch.testing.assert_close(outputs["TTTTT"], reference["output_base"])


def test_the_original_default_was_the_base_net(model, reference, shared_dir):
    """The original MobileNetV2 ran the base-net when called without a configuration; ours runs the super-net
    (uniform with the other models) and reproduces the original default when told to."""
    with torch.no_grad():
        torch.testing.assert_close(model(reference["input"]), reference["output"], rtol=0, atol=1e-5)
        model.skip_cfg = "TTTTT"
        try:
            torch.testing.assert_close(model(reference["input"]), reference["output_forward_default_skip_None"],
                                       rtol=0, atol=1e-5)
        finally:
            model.skip_cfg = None


@pytest.mark.parametrize("cfg", ["FFFFF", "TTTTT"])
def test_train_mode_outputs(reference, cfg, shared_dir):
    """Train mode: batch statistics in the norms of the active configuration (classifier dropout off)."""
    model = create_model("mobilenet_v2", dropout=0.0)
    model.load_state_dict(reference["state_dict"])
    model.train()
    with torch.no_grad():
        out = model(reference["input"], cfg)
    torch.testing.assert_close(out, reference["train_mode_outputs_dropout0"][cfg], rtol=0, atol=1e-5)
