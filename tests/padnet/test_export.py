"""Configurations, kernel forms and static export of the DY-Conv / PAD models (padnet/README.md, "Configurations and
static export"): every form equals the reference per-sample computation, the deployed form and the export equal the
training form at the partition IMP chose."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import padnet.dyconv.layers as layers
from common.configurations import ConfigurationError
from padnet.dyconv.deploy import deploy, partition
from padnet.dyconv.layers import (
    DynamicConvBase,
    PAD_DynamicConvolution,
    PartitionedConv2d,
    pad_layers,
    per_sample_conv,
    set_temperature,
)
from padnet.dyconv.models import build_model
from padnet.export import to_static

PAD_MODELS = [("DyResNet10_PAD", {"scale": 0.125, "Lambda": "both"}),
              ("Dymobilenetv2_PAD", {"width_multiplier": 0.35})]


def _reference(x, alphas, dynamic, static, bias, stride, padding, dilation, groups):
    """One F.conv2d per sample with the kernel written out (Eq. 5 with the scale factors applied)."""
    kernels = torch.einsum("bk,k...->b...", alphas, dynamic) + (0 if static is None else static)
    return torch.cat([F.conv2d(x[b:b + 1], kernels[b], None if bias is None else alphas[b] @ bias, stride, padding,
                               dilation, groups) for b in range(x.shape[0])])


@pytest.mark.parametrize("chunk", [1 << 22, 300])  # whole batch in one chunk / chunks of 1-2 samples + remainder
@pytest.mark.parametrize("in_ch,out_ch,k,stride,padding,groups", [
    (8, 12, 1, 1, 0, 1), (8, 12, 1, 2, 0, 1), (8, 12, 3, 1, 1, 1), (8, 12, 3, 2, 1, 4), (8, 8, 3, 1, 1, 8)])
def test_per_sample_conv_forms_equal_the_reference(monkeypatch, chunk, in_ch, out_ch, k, stride, padding, groups):
    monkeypatch.setattr(layers, "KERNEL_CHUNK", chunk)
    generator = torch.Generator().manual_seed(0)
    shape = (out_ch, in_ch // groups, k, k)
    x = torch.randn(5, in_ch, 9, 9, generator=generator)
    alphas = torch.softmax(torch.randn(5, 4, generator=generator), 1)
    dynamic, static = torch.randn(4, *shape, generator=generator), torch.randn(shape, generator=generator)
    bias = torch.randn(4, out_ch, generator=generator)
    mask = torch.rand(shape, generator=generator) < 0.3
    index = torch.nonzero(mask.flatten()).flatten()
    conv = (stride, stride), (padding, padding), (1, 1), groups
    for b in (5, 1):
        expected = _reference(x[:b], alphas[:b], dynamic * mask, static * ~mask, bias, *conv)
        compact = per_sample_conv(x[:b], alphas[:b], dynamic.flatten(1)[:, index], static * ~mask, index, bias,
                                  *conv)
        dense = per_sample_conv(x[:b], alphas[:b], dynamic * mask, static * ~mask, None, bias, *conv)
        torch.testing.assert_close(compact, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(per_sample_conv(x[:b], alphas[:b], dynamic, None, None, None, *conv),
                                   _reference(x[:b], alphas[:b], dynamic, None, None, *conv), atol=1e-5, rtol=1e-5)


def _randomise(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and phi, set before .eval(), so every part shows in the output."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
        for _, layer in pad_layers(model):
            layer.phi_d.normal_()
    return model.eval()


@pytest.fixture(scope="module", params=PAD_MODELS, ids=[name for name, _ in PAD_MODELS])
def pad_model(request):
    torch.manual_seed(0)
    name, kwargs = request.param
    model = _randomise(build_model(name, num_classes=10, **kwargs))
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return model, images, lambda: _randomise(build_model(name, num_classes=10, **kwargs))


def test_configurations_and_unknown_names():
    pad, dy = build_model("DyResNet10_PAD", num_classes=3, scale=0.125), build_model("DyResNet10", num_classes=3,
                                                                                      scale=0.125)
    assert pad.configurations() == ["deployed", "training"] and pad.configuration == "training"
    assert dy.configurations() == ["dynamic"] and dy.configuration == "dynamic"
    assert deploy(pad).configurations() == ["deployed"]
    with pytest.raises(ConfigurationError, match="deployed, training"):
        pad.set_configuration("static")
    with pytest.raises(ConfigurationError, match="dynamic"):
        to_static(dy.eval(), "deployed")
    with pytest.raises(ConfigurationError, match="eval"):
        to_static(pad.train(), "training")
    pad.set_configuration("deployed")
    with pytest.raises(ConfigurationError, match="inference"):
        pad.train()(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="no PAD layers"):
        partition(dy, 0.3, torch.randn(2, 3, 16, 16))


@pytest.mark.parametrize("kappa", [0.0, 0.3, 1.0])
def test_deployed_and_export_equal_the_training_form(pad_model, kappa):
    model, images, _ = pad_model
    ratios = partition(model, kappa, images)
    realised = sum(int(m.kernels_weights_mask.sum()) for _, m in pad_layers(model)) / sum(
        m.kernels_weights_mask.numel() for _, m in pad_layers(model))
    assert abs(realised - kappa) < 1e-3 and len(ratios) == len(pad_layers(model))
    assert model.configuration == "training" and not model.training
    x = images[:3]
    with torch.no_grad():
        reference = model(x)
        exports = {}
        for name in model.configurations():
            model.set_configuration(name)
            torch.testing.assert_close(model(x), reference, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(model(x[:1]), reference[:1], atol=1e-5, rtol=1e-5)
            exports[name] = to_static(model, name)
            torch.testing.assert_close(exports[name](x), reference, atol=1e-5, rtol=1e-5)
        model.set_configuration("training")
    kinds = {type(m) for m in exports["deployed"].modules()}
    assert not any(issubclass(k, DynamicConvBase) for k in kinds)
    # kappa 0: every dynamic layer is a plain conv (the static part folded into one constant kernel)
    assert (PartitionedConv2d in kinds) == (kappa > 0)


def test_export_state_dict_fold_bn_and_torch_export(pad_model):
    model, images, build_another = pad_model
    partition(model, 0.3, images)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exported = to_static(model, "deployed")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    x = images[:2]
    with torch.no_grad():
        expected = model(x)
        buffer = io.BytesIO()
        torch.save(exported.state_dict(), buffer)
        # a fresh export of another model with the same partition, then the saved state
        other = build_another()
        for (_, mine), (_, theirs) in zip(pad_layers(model), pad_layers(other), strict=True):
            theirs.kernels_weights_mask.copy_(mine.kernels_weights_mask)
        fresh = to_static(other, "deployed")
        assert not torch.allclose(fresh(x), expected, atol=1e-3)
        buffer.seek(0)
        fresh.load_state_dict(torch.load(buffer))
        torch.testing.assert_close(fresh(x), expected, atol=1e-5, rtol=1e-5)
        folded = to_static(model, "deployed", fold_bn=True)
        torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=1e-5)
    program = torch.export.export(exported, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name,kwargs", [("DyResNet10", {"scale": 0.125}),
                                         ("Dymobilenetv2", {"width_multiplier": 0.35})])
def test_dy_conv_export_and_temperature(name, kwargs):
    torch.manual_seed(0)
    model = _randomise(build_model(name, num_classes=10, **kwargs))
    x = torch.randn(3, 3, 32, 32)
    for temperature in (31.0, 1.0):
        set_temperature(model, temperature)
        with torch.no_grad():
            torch.testing.assert_close(to_static(model, "dynamic")(x), model(x), atol=1e-5, rtol=1e-5)


def test_deployed_form_follows_weight_mask_and_temperature_changes():
    torch.manual_seed(0)
    layer = PAD_DynamicConvolution(6, 8, 3, padding=1, bias=True, Lambda="both").eval()
    with torch.no_grad():
        layer.kernels_weights_mask.bernoulli_(0.4)
        layer.kernels_bias.normal_()
    x = torch.randn(2, 6, 7, 7)

    def both() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            layer.form = "training"
            training = layer(x)
            layer.form = "deployed"
            return training, layer(x)

    torch.testing.assert_close(*both(), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        layer.weight.mul_(2.0)                           # in place, as an optimizer step
        layer.kernels_weights_mask.bernoulli_(0.7)      # a new partition
    torch.testing.assert_close(*both(), atol=1e-5, rtol=1e-5)
    layer.load_state_dict({k: v if k == "kernels_weights_mask" else v + 0.1 for k, v in layer.state_dict().items()})
    set_temperature(layer, 2.0)
    training, deployed = both()
    torch.testing.assert_close(deployed, training, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(layer(x, 5.0), layer.static_form(5.0)(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("batch", [2, 5])  # fewer samples than K = 4 (scaled per sample) / more (factors scaled once)
@pytest.mark.parametrize("Lambda", [None, "both"])
def test_training_form_equals_eq5_at_every_batch_size(batch, Lambda):
    torch.manual_seed(0)
    layer = PAD_DynamicConvolution(6, 8, 3, stride=2, padding=1, bias=True, Lambda=Lambda)
    with torch.no_grad():
        layer.kernels_weights_mask.bernoulli_(0.4)
        layer.kernels_bias.normal_()
        layer.phi_d.fill_(0.3)
    x = torch.randn(batch, 6, 9, 9)
    lambda_d, lambda_s = layers.scale_factors(Lambda, layer.phi_d)
    mask, alphas = layer.kernels_weights_mask, layer._attention(x, None)
    dynamic, static = lambda_d * mask * layer.kernels_weights, lambda_s * (1 - mask[0]) * layer.weight[0]
    expected = _reference(x, alphas, dynamic, static, layer.kernels_bias, layer.stride, layer.padding,
                          layer.dilation, 1)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    layer(x).square().mean().backward()
    trained = [layer.kernels_weights, layer.weight, layer.kernels_bias] + [layer.phi_d] * bool(Lambda)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in trained)
