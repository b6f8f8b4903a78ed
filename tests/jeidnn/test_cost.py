"""The original repository's Mul-Add per exit and the executed MACs per exit (spec Sec. e), against the manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from jeidnn.cost import (
    count_original_mul_add,
    executed_macs_per_exit,
    normalized_costs,
    original_mul_add_per_exit,
)
from jeidnn.models import IdentityGate, LearnableUncGate, create_model

VARIANTS = {  # manifest suffix: (arch, num_classes, img_size)
    "7": ("t2t_vit_7", 10, 224),
    "7_c100": ("t2t_vit_7", 100, 224),
    "7_svhn32": ("t2t_vit_7", 10, 32),
    "14": ("t2t_vit_14", 10, 224),
    "14_c100": ("t2t_vit_14", 100, 224),
}



@pytest.fixture(scope="module")
def models():
    """One model per (variant, gate), built on first use and shared by the module (T2T-ViT-14 is large)."""
    cache: dict[tuple[str, str], nn.Module] = {}

    def get(variant: str, gate: str = "unc") -> nn.Module:
        if (variant, gate) not in cache:
            arch, num_classes, img_size = VARIANTS[variant]
            cache[variant, gate] = create_model(arch, num_classes=num_classes, img_size=img_size, gate=gate)
        return cache[variant, gate]

    return get


def _flops(reference_dir: Path, variant: str) -> dict:
    return json.loads((reference_dir / f"manifest_t2t_vit_{variant}.json").read_text())["flops"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_original_mul_add_matches_manifest(reference_dir, models, variant):
    flops = _flops(reference_dir, variant)
    result = count_original_mul_add(models(variant))
    assert result.at_exits == flops["original_mult_add_at_exits_full_jeidnn"]
    assert result.at_every_linear == flops["original_cls_ops_cumulative_at_every_Linear_full"]
    assert original_mul_add_per_exit(models(variant)) == result.at_exits
    assert normalized_costs(result.at_exits) == pytest.approx(flops["original_normalized_cost_per_exit"], rel=1e-12)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_original_mul_add_identity_gates(reference_dir, models, variant):
    flops = _flops(reference_dir, variant)
    model = models(variant, "identity")
    assert original_mul_add_per_exit(model) == flops["original_mult_add_at_exits_backbone_plus_ICs_identity_gates"]
    assert original_mul_add_per_exit(model, intermediate_heads=False) == \
        flops["original_mult_add_at_exits_backbone_identity_gates_no_ICs"]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_executed_macs_match_manifest(reference_dir, models, variant):
    assert executed_macs_per_exit(models(variant)) == _flops(reference_dir, variant)[
        "standard_macs_per_exit_torch_flop_counter"]


def test_normalized_costs_t2t_vit_7(models):
    costs = normalized_costs(original_mul_add_per_exit(models("7")))
    assert [round(c, 3) for c in costs] == [0.409, 0.506, 0.603, 0.7, 0.797, 0.894, 1.0]
    millions = [c / 1e6 for c in original_mul_add_per_exit(models("7"))]
    assert millions[0] == pytest.approx(5.533706) and millions[-1] == pytest.approx(13.517734)


def test_gate_costs():
    assert LearnableUncGate.mul_add(10) == 96  # C + (C + 1) + 2C + 5C + 5
    assert LearnableUncGate.mul_add(100) == 906
    assert IdentityGate.mul_add(10) == 0


def test_counter_leaves_model_as_it_was(models):
    model = models("7_svhn32")
    model.train()
    original_mul_add_per_exit(model)
    executed_macs_per_exit(model)
    assert model.training
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_counter_rejects_unknown_layers():
    model = create_model("t2t_vit_7", img_size=32)
    model.blocks[0].mlp.act = nn.SiLU()
    with pytest.raises(TypeError, match="SiLU"):
        original_mul_add_per_exit(model)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_executed_macs_count_only_what_runs(models):
    """Each exit adds one block, and the IC of exit l, not those of earlier exits, is counted."""
    model = models("7_svhn32")
    macs = executed_macs_per_exit(model)
    steps = {b - a for a, b in zip(macs[:-1], macs[1:], strict=True)}
    assert len(steps) == 1
    assert macs == sorted(macs)


def test_normalized_costs_rejects_bad_input():
    with pytest.raises(ValueError):
        normalized_costs([])
    with pytest.raises(ValueError):
        normalized_costs([1.0, 0.0])
    assert normalized_costs(torch.tensor([1.0, 4.0]).tolist()) == [0.25, 1.0]
