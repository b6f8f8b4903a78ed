"""Equivalence with the original classes (``../shared/reference/dyt/ref_dyt_tiny_d4_e192.pt``, atol 1e-5)."""

from __future__ import annotations

import pytest
import torch

from dyt.flops import base_flops, block_flops_table, complete_flops, select_flops
from dyt.losses import DyTLoss
from dyt.models import build_model

ATOL = 1e-5


@pytest.fixture(scope="module")
def reference(shared_dir) -> dict:
    return torch.load(shared_dir / "reference" / "dyt" / "ref_dyt_tiny_d4_e192.pt", weights_only=True)


@pytest.fixture(scope="module")
def model(reference):
    model = build_model("vit_tiny_d4_e192", num_classes=10, ffn_num=16, adapter_scale=0.1)
    model.load_state_dict(reference["state_dict"], strict=True)
    return model.eval()


def _block_outputs(model, x, complete_model=False):
    tokens = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), model.patch_embed(x)), dim=1) + model.pos_embed
    outputs = []
    for blk in model.blocks:
        tokens, _ = blk(tokens, complete_model)
        outputs.append(tokens)
    return torch.stack(outputs, dim=1)


@pytest.mark.parametrize("execution", ["masked", "gather"])
def test_masked_and_gather_outputs(model, reference, execution):
    model.execution = execution
    with torch.no_grad():
        out, aux = model(reference["input"])
        blocks = _block_outputs(model, reference["input"])
    torch.testing.assert_close(aux["token_select"], reference["token_select"], rtol=0, atol=0)
    torch.testing.assert_close(out, reference["output"], rtol=0, atol=ATOL)
    torch.testing.assert_close(out, reference["output_speed_batch_forward"], rtol=0, atol=ATOL)
    # the reference's dispatcher weights are N(0, 3^2) (norm ~42), so the ~1e-6 float32 differences of the block
    # outputs (summation order) reach ~2e-5 in the logits (|logit| up to 85); the masks above are exact
    torch.testing.assert_close(aux["token_logits"], reference["token_logits"], rtol=0, atol=5 * ATOL)
    torch.testing.assert_close(blocks, reference["block_outputs"], rtol=0, atol=ATOL)


def test_batch_one_speed_path(model, reference):
    model.execution = "gather"
    with torch.no_grad():
        single = torch.cat([model(reference["input"][i:i + 1])[0] for i in range(2)])
    torch.testing.assert_close(single, reference["output_speed_single_forward"], rtol=0, atol=ATOL)


def test_complete_model(model, reference):
    with torch.no_grad():
        out, _ = model(reference["input"], complete_model=True)
        blocks = _block_outputs(model, reference["input"], complete_model=True)
    torch.testing.assert_close(out, reference["output_complete_model"], rtol=0, atol=ATOL)
    torch.testing.assert_close(blocks, reference["block_outputs_complete_model"], rtol=0, atol=ATOL)


def test_loss(reference):
    expected = reference["loss_reference"]
    loss, parts = DyTLoss(token_target_ratio=expected["token_target_ratio"], token_ratio=expected["token_loss_ratio"])(
        reference["output"], reference["token_select"], expected["targets"], reference["output_complete_model"])
    assert loss.item() == pytest.approx(expected["total"].item(), abs=ATOL)
    names = {"base_loss": "base_ce", "token_loss": "token_loss_weighted", "teacher_loss": "teacher_ce",
             "distillation_loss": "kl"}
    for ours, theirs in names.items():
        assert parts[ours] == pytest.approx(expected[theirs].item(), abs=ATOL), ours


def test_flops(model, reference):
    expected = reference["flops_reference"]
    table = block_flops_table(model)
    assert len(table) == 198
    torch.testing.assert_close(torch.tensor(table, dtype=torch.float64), expected["block_flops_dict_GFLOPs"].double(),
                               rtol=0, atol=ATOL)
    assert base_flops(model) == pytest.approx(expected["base_flops_GFLOPs"], abs=1e-12)
    per_sample = select_flops(reference["token_select"], table, base_flops(model))
    torch.testing.assert_close(per_sample, expected["per_sample_GFLOPs"].double(), rtol=0, atol=ATOL)
    assert per_sample.tolist() == pytest.approx([0.3280, 0.3250], abs=5e-5)
    assert complete_flops(model) == pytest.approx(expected["complete_GFLOPs"], abs=ATOL)
