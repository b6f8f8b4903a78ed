"""Equivalence with the original JEI-DNN implementation (``../shared/reference/jeidnn/ref_t2t_vit_7.pt``, spec Sec. g).

The reference holds random-init T2T-ViT-7 weights (C=10, 224 px), an input of two images and the original's outputs
in eval mode; ours must match to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from jeidnn.cost import normalized_costs, original_mul_add_per_exit
from jeidnn.models import create_model, sinusoid_table, uncertainty_features

GATE_FEATURES = "gate_input_features_[pmax,entropy,margin,entropy_pow]"


def close(actual, expected, name: str = "") -> None:
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0, msg=name or None)


@pytest.fixture(scope="module")
def model(ref):
    meta = ref["meta"]
    model = create_model(meta["arch"], num_classes=meta["num_classes"], img_size=meta["img_size"])
    model.load_state_dict(ref["state_dict"], strict=True)
    assert model.num_exits == meta["G"] == 6
    return model.eval()


@pytest.fixture(scope="module")
def outputs(ref, model) -> dict:
    with torch.no_grad():
        final, ics = model(ref["input"])
        features = model.forward_features(ref["input"])
        gates = model.gate_logits(ics)
    return {"final": final, "ics": ics, "features": features, "gates": gates}


def test_forward_logits(ref, outputs):
    close(outputs["final"], ref["output"]["final_logits"])
    close(outputs["final"], ref["output"]["forward_for_inference_final_logits"])
    assert len(outputs["ics"]) == len(ref["output"]["intermediate_logits"]) == 6
    for i, (ours, theirs) in enumerate(zip(outputs["ics"], ref["output"]["intermediate_logits"], strict=True)):
        close(ours, theirs, f"IC {i}")


def test_normed_cls_features(ref, outputs):
    features = outputs["features"]
    assert len(features) == 7
    for i, theirs in enumerate(ref["output"]["forward_for_inference_normed_cls_per_block"]):
        close(features[i], theirs, f"block {i}")
    for i, theirs in enumerate(ref["output"]["intermediate_cls_features"]):
        close(features[i], theirs, f"IC feature {i}")
    close(features[-1], ref["output"]["final_cls_feature"])


def test_gate_features_and_logits(ref, outputs):
    for i, theirs in enumerate(ref["output"][GATE_FEATURES]):
        ours = uncertainty_features(outputs["ics"][i])
        assert ours.dtype == torch.float32 and ours.shape == (2, 4)
        close(ours, theirs, f"gate {i} features (ours)")
        close(uncertainty_features(ref["output"]["intermediate_logits"][i]), theirs, f"gate {i} features")
    for i, theirs in enumerate(ref["output"]["gate_logits"]):
        close(outputs["gates"][i], theirs, f"gate {i} logit")


def test_cost_vectors(ref, model):
    costs = original_mul_add_per_exit(model)
    close(torch.tensor([c / 1e6 for c in costs]), torch.tensor(ref["output"]["mult_add_at_exits_millions"]))
    close(torch.tensor(normalized_costs(costs)), torch.tensor(ref["output"]["normalized_cost_per_exit"]))


def test_fixed_tables(ref):
    """``pos_embed`` is the sinusoid table and the Performer ``w`` has orthogonal rows of norm sqrt(m)."""
    torch.testing.assert_close(ref["state_dict"]["pos_embed"], sinusoid_table(197, 256), atol=1e-6, rtol=0)
    ours = create_model("t2t_vit_7", img_size=32)
    for name in ("attention1", "attention2"):
        for w in (ref["state_dict"][f"tokens_to_token.{name}.w"], getattr(ours.tokens_to_token, name).w):
            m = w.shape[0]
            torch.testing.assert_close(w @ w.T, m * torch.eye(m), atol=1e-4, rtol=0)
            assert m == 32


def test_seeded_init_equals_original(ref):
    """Built after ``torch.manual_seed(0)`` (as the reference was), our model draws exactly the original's weights."""
    torch.manual_seed(0)
    ours = create_model("t2t_vit_7", num_classes=10, img_size=224).state_dict()
    assert list(ours) == list(ref["state_dict"])
    for key, value in ref["state_dict"].items():
        torch.testing.assert_close(ours[key], value, atol=1e-5, rtol=0, msg=key)  # QR of w: ~1e-6
