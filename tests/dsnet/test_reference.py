"""Equivalence with the original DS-Net implementation (``../shared/reference/dsnet``, spec Sec. 12).

Static outputs to 1e-5; the masked dynamic path and Stage II to 1e-3 (absolute on logits and losses, relative on
the gate gradient), the tolerances the reference's README gives for fp32 summation order.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

import dsnet.models.blocks as blocks
from dsnet.engine import freeze_bn, gate_step, sandwich_step
from dsnet.madds import dynamic_madds
from dsnet.models import create_model

MODES = ["largest", "smallest"] + [f"uniform_{c}" for c in range(14)]
SANDWICH = [("largest", None), ("uniform", 4), ("uniform", 11), ("smallest", None)]


def _set(model, name: str) -> None:
    if name.startswith("uniform_"):
        model.set_mode("uniform", int(name.split("_")[1]))
    else:
        model.set_mode(name)


def test_state_dict_matches_manifest(reference_dir):
    manifest = json.loads((reference_dir / "manifest_supernet.json").read_text())
    model = create_model("slimmable_mbnet_v1_bn_uniform")
    ours = [[k, list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in model.state_dict().items()]
    assert ours == manifest["state_dict_layout"]
    assert len(ours) == manifest["n_state_dict_keys"] == 838
    assert sum(p.numel() for p in model.parameters()) == manifest["param_count"] == 7_676_204
    assert sum(b.numel() for b in model.buffers()) == manifest["buffer_numel"]


def test_eval_outputs_at_every_width(ref, ref_model):
    ref_model.eval()
    with torch.no_grad():
        for name in MODES:
            _set(ref_model, name)
            assert ref_model.widths() == list(ref["eval_widths"][name]), name
            features = ref_model.forward_head(ref_model.forward_features(ref["input"]), pre_logits=True)
            torch.testing.assert_close(features, ref["eval_pooled_features"][name], atol=1e-5, rtol=0, msg=name)
            torch.testing.assert_close(ref_model(ref["input"]), ref["eval_logits"][name], atol=1e-5, rtol=0,
                                       msg=name)
            # the same mode again without set_mode (the original needs set_mode before every forward)
            torch.testing.assert_close(ref_model(ref["input"]), ref["eval_logits"][name], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["largest", "smallest", "uniform_6"])
def test_train_mode_batch_statistics(ref, ref_model, name):
    ref_model.train()
    _set(ref_model, name)
    before = {k: v.clone() for k, v in ref_model.state_dict().items()}
    with torch.no_grad():
        logits = ref_model(ref["input"])
    torch.testing.assert_close(logits, ref["train_mode_logits"][name], atol=1e-5, rtol=0)
    changed = sorted(k for k, v in ref_model.state_dict().items() if not torch.equal(v, before[k]))
    assert changed == sorted(ref["train_mode_changed_state_keys"][name])


@pytest.mark.parametrize("variant", ["gumbel", "no_noise", "mixed"])
@pytest.mark.parametrize("grad", [True, False], ids=["masked", "sliced"])
def test_dynamic_gate(ref, ref_model, monkeypatch, variant, grad):
    expected = ref["dynamic"][variant]
    monkeypatch.setattr(blocks, "sample_gumbel", lambda logits: expected["gumbel_noise"].clone())
    ref_model.eval()
    ref_model.set_mode("dynamic")
    with torch.set_grad_enabled(grad):
        logits = ref_model(ref["input"])
    route = ref_model.route
    torch.testing.assert_close(route.y_soft, expected["y_soft(keep_gate)"], atol=1e-5, rtol=0)
    torch.testing.assert_close(route.st.detach(), expected["y_hard_st(print_gate)"], atol=1e-6, rtol=0)
    assert route.index.tolist() == expected["index"].tolist()
    torch.testing.assert_close(logits.detach(), expected["logits"], atol=1e-3, rtol=0)
    torch.testing.assert_close(logits.detach(), expected["static_uniform_logits_for_chosen_index"], atol=1e-5, rtol=0)
    madds = dynamic_madds(ref_model, route, original_dw_groups=True)
    torch.testing.assert_close(madds.detach().double(), expected["madds_per_sample_original_add_flops"].double(),
                               rtol=1e-6, atol=0)


def test_dynamic_madds_per_forced_route(ref, ref_model, monkeypatch):
    ref_model.eval()
    ref_model.set_mode("dynamic")
    for k in range(4):
        noise = torch.full((1, 4), -1e4)
        noise[:, k] = 1e4
        monkeypatch.setattr(blocks, "sample_gumbel", lambda logits, noise=noise: noise)
        with torch.no_grad():
            ref_model(ref["input"][:1])
        forced = ref["dynamic"]["forced_routes"][f"route_{k}"]
        original = dynamic_madds(ref_model, ref_model.route, original_dw_groups=True).item()
        exact = dynamic_madds(ref_model, ref_model.route).item()
        assert original == pytest.approx(forced["madds_dynamic_path"], rel=1e-6)
        assert exact == forced["madds_static_subnet"] + 264  # the sub-network plus the slimming head that ran


def test_stage1_sandwich_losses_and_gradients(ref, ref_model):
    stage1 = ref["stage1"]
    teacher = copy.deepcopy(ref_model).eval()
    ref_model.train()
    out = sandwich_step(ref_model, teacher, ref["input"], stage1["target"], LabelSmoothingCrossEntropy(0.1),
                        SoftTargetCrossEntropy(), sample_list=SANDWICH)
    for (mode, choice), loss, logits in zip(SANDWICH, out["losses"], out["logits"], strict=True):
        name = mode if choice is None else f"{mode}_{choice}"
        assert loss.item() == pytest.approx(stage1[f"loss_{name}"], abs=1e-5), name
        torch.testing.assert_close(logits, stage1[f"logits_{name}"], atol=1e-5, rtol=0)
    params = dict(ref_model.named_parameters())
    no_grad = sorted(n for n, p in params.items() if p.grad is None or not p.grad.any())
    assert no_grad == stage1["params_with_all_zero_or_none_grad"]
    for name, norm in stage1["grad_norms"].items():  # None: no gradient (the gate head, checked above)
        if norm is not None:
            assert params[name].grad.norm().item() == pytest.approx(norm, rel=1e-4, abs=1e-6), name
    for name in ("conv_stem.weight", "blocks.3.first_block.conv_pw.weight", "classifier.bias",
                 "blocks.4.residual_blocks.0.bn2.aux_bn.13.weight"):
        torch.testing.assert_close(params[name].grad, stage1[f"grad.{name}"], atol=1e-5, rtol=1e-4)


def test_stage1_ensemble_bootstrapping(ref, ref_model):
    teacher = copy.deepcopy(ref_model).eval()
    ref_model.train()
    out = sandwich_step(ref_model, teacher, ref["input"], ref["stage1"]["target"], LabelSmoothingCrossEntropy(0.1),
                        SoftTargetCrossEntropy(), ensemble_ib=True, sample_list=SANDWICH)
    assert out["loss_smallest"].item() == pytest.approx(ref["stage1"]["loss_smallest_if_ensemble_ib"], abs=1e-5)


def test_stage2_gate_losses_and_gradient(ref, ref_model, monkeypatch):
    stage2 = ref["stage2"]
    monkeypatch.setattr(blocks, "sample_gumbel", lambda logits: stage2["gumbel_noise(noise_mixed)"].clone())
    ref_model.train()
    freeze_bn(ref_model)
    out = gate_step(ref_model, ref["input"], stage2["target"], LabelSmoothingCrossEntropy(0.1),
                    original_dynamic_madds=True)
    assert out["gate_target"].tolist() == stage2["gate_target"].tolist()
    assert out["route"].index.tolist() == stage2["index"].tolist()
    torch.testing.assert_close(out["smallest"], stage2["smallest_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["output"].detach(), stage2["dynamic_logits"], atol=1e-3, rtol=0)
    for key, ref_key in [("gate_loss", "gate_loss"), ("ce_loss", "ce_loss"), ("flops_loss", "flops_loss"),
                         ("loss", "total_loss")]:
        assert out[key].item() == pytest.approx(stage2[ref_key], abs=1e-5), key
    assert out["running_flops"].item() == pytest.approx(stage2["running_flops_mean"], rel=1e-6)
    out["loss"].backward()
    grad = ref_model.get_gate()[0][0].weight.grad
    expected = stage2["grad.blocks.3.first_block.gate.gate.0.weight"]
    assert ((grad - expected).norm() / expected.norm()).item() < 1e-3
    trainable = [n for n, _ in ref_model.get_gate().named_parameters()]
    assert trainable == stage2["trainable_param_names(model.get_gate())"]
