"""The deployment form (spec a, f): identical outputs, the deployed parameter and MAC counts."""

from __future__ import annotations

import pytest
import torch

from padnet.dyconv import imp_masks
from padnet.dyconv.counting import (
    count_model_macs,
    deployed_params,
    dynamic_params,
    param_breakdown,
    stored_params,
)
from padnet.dyconv.deploy import DeployedPADConv, deploy
from padnet.dyconv.layers import dynamic_layers, pad_layers, set_temperature
from padnet.dyconv.models import build_model
from padnet.imp import iterative_mode_partition, rand_scores


def _partition(model, kappa: float, seed: int = 0) -> None:
    generator = torch.Generator().manual_seed(seed)
    iterative_mode_partition(model, imp_masks(model), lambda m, masks: rand_scores(m, masks, generator),
                             sparsity=kappa)


def _randomise(model) -> None:
    """Non-trivial BN statistics and phi, so that every part of the layer shows in the output."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        for _, layer in pad_layers(model):
            layer.phi_d.normal_()


def _expected_deployed(model) -> int:
    parts = param_breakdown(model)
    kernel_entries = 0
    for _, layer in pad_layers(model):
        dynamic = int(layer.kernels_weights_mask.sum())
        kernel_entries += layer.nof_kernels * dynamic + layer.kernels_weights_mask.numel() - dynamic
    return parts.other + parts.attention + parts.phi + kernel_entries


RESNET, MOBILENET = ("DyResNet10_PAD", {"scale": 0.25}), ("Dymobilenetv2_PAD", {"width_multiplier": 0.35})


@pytest.mark.parametrize("type_name,kwargs,Lambda", [(*RESNET, Lambda) for Lambda in (None, "both", "s", "d")]
                         + [(*MOBILENET, Lambda) for Lambda in (None, "both")])
def test_deployed_outputs_match(type_name, kwargs, Lambda):
    torch.manual_seed(0)
    model = build_model(type_name, num_classes=10, Lambda=Lambda, **kwargs).eval()
    _randomise(model)
    x = torch.randn(2, 3, 32, 32)
    for kappa in (0.0, 0.3, 1.0):
        _partition(model, kappa)
        compact = deploy(model)
        assert not compact.training and len(pad_layers(compact)) == 0
        assert all(isinstance(layer, DeployedPADConv) for _, layer in dynamic_layers(compact))
        for temperature in (31.0, 1.0):
            set_temperature(model, temperature)
            set_temperature(compact, temperature)
            with torch.no_grad():
                torch.testing.assert_close(compact(x), model(x), atol=1e-5, rtol=1e-5)
        assert stored_params(compact) == deployed_params(model) == deployed_params(compact)
        assert stored_params(compact) == _expected_deployed(model)
        assert dynamic_params(compact) == dynamic_params(model)
        # the manifests' analytic value differs from the integer count by the rounding of kappa * N only
        assert abs(deployed_params(model) - deployed_params(model, kappa)) < pad_layers(model)[0][1].nof_kernels


def test_deploy_leaves_model_alone_and_copies_non_pad_models():
    torch.manual_seed(0)
    model = build_model("DyResNet10_PAD", num_classes=3, scale=0.125).train()
    _partition(model, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compact = deploy(model)
    assert model.training and len(pad_layers(model)) == len(dynamic_layers(compact))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        next(compact.parameters()).add_(1.0)  # the copy shares no storage with the model
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    dy = build_model("DyResNet10", num_classes=3, scale=0.125)
    assert stored_params(deploy(dy)) == deployed_params(dy) == stored_params(dy)


def test_deployed_macs_aggregate_only_dynamic_entries():
    torch.manual_seed(0)
    model = build_model("Dymobilenetv2_PAD", num_classes=10)
    _partition(model, 0.3)
    dense, sparse = count_model_macs(model, (3, 64, 64)), count_model_macs(deploy(model), (3, 64, 64))
    assert sparse.aggregation == dynamic_params(model) < dense.aggregation
    assert sparse.conv_and_attention == dense.conv_and_attention
    assert dense.total - sparse.total == dense.aggregation - sparse.aggregation


def test_pad_mobilenetv2_x1_deployed_counts():
    """Spec a: PAD MobileNetV2 x1.0 deploys to 6,057,313 (kappa 0.3) / 7,370,651 (kappa 0.5) params; a real mask
    gives the integer count, within K - 1 of the analytic value."""
    torch.manual_seed(0)
    model = build_model("Dymobilenetv2_PAD", num_classes=1000, width_multiplier=1.0)
    for kappa, value in ((0.3, 6_057_313), (0.5, 7_370_651)):
        _partition(model, kappa)
        compact = deploy(model)
        assert deployed_params(model, kappa) == value
        assert abs(stored_params(compact) - value) < 4


@pytest.mark.slow
def test_pad_resnet50_deployed_counts():
    """Spec a: PAD ResNet-50 at kappa 0.3 / 0.5 deploys to 47,902,918 / 61,970,220 params (analytic)."""
    torch.manual_seed(0)
    model = build_model("DyResNet50_PAD", num_classes=1000, Lambda="both")
    for kappa, value in ((0.3, 47_902_918), (0.5, 61_970_220)):
        _partition(model, kappa)
        assert deployed_params(model, kappa) == value
        assert abs(stored_params(deploy(model)) - value) < 4


def test_deploy_puts_odconv_pad_layers_in_their_compact_form():
    from padnet.dyconv.odconv import DeployedODConv2d_PAD

    torch.manual_seed(0)
    model = build_model("od_resnet10_pad", num_classes=3, scale=0.125).eval()
    compact = deploy(model)
    assert any(isinstance(m, DeployedODConv2d_PAD) for m in compact.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), model(x), atol=1e-5, rtol=1e-4)
