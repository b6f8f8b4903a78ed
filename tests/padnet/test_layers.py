"""DY-Conv and PAD conv layers (PAD-Net Sec. 3.1-3.2; spec b.1-b.2) against direct per-sample computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from padnet.dyconv.layers import (
    INITIAL_TEMPERATURE,
    DynamicConvolution,
    PAD_DynamicConvolution,
    scale_factors,
    set_temperature,
)


def _per_sample(layer, x, kernels):
    """Reference: each sample convolved with its own kernel, one F.conv2d per sample."""
    return torch.cat([F.conv2d(x[b:b + 1], kernels[b], None, layer.stride, layer.padding, layer.dilation,
                               layer.groups) for b in range(x.shape[0])])


def _alphas(layer, x, temperature):
    z = layer.attention.fc2(torch.relu(layer.attention.fc1(x.mean((2, 3), keepdim=True)))).flatten(1)
    return torch.softmax(z / temperature, 1)


@pytest.mark.parametrize("groups,stride", [(1, 1), (1, 2), (8, 1)])
def test_dynamic_convolution_is_attention_weighted_kernel(groups, stride):
    torch.manual_seed(0)
    layer = DynamicConvolution(8, 16, 3, stride=stride, padding=1, groups=groups, bias=False)
    x = torch.randn(3, 8, 9, 9)
    alphas = _alphas(layer, x, 2.0)
    kernels = torch.einsum("bk,koihw->boihw", alphas, layer.weight)
    torch.testing.assert_close(layer(x, 2.0), _per_sample(layer, x, kernels), atol=1e-5, rtol=1e-5)
    assert layer.weight.shape == (4, 16, 8 // groups, 3, 3)
    assert set(dict(layer.named_parameters())) == {"weight", "attention.fc1.weight", "attention.fc2.weight",
                                                    "attention.fc2.bias"}


def test_pad_kernel_formula_all_lambda_modes():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 7, 7)
    for Lambda in (None, "both", "s", "d"):
        layer = PAD_DynamicConvolution(6, 5, 3, padding=1, bias=False, Lambda=Lambda)
        with torch.no_grad():
            layer.phi_d.fill_(0.7)
            layer.kernels_weights_mask.bernoulli_(0.4)
        lambda_d, lambda_s = scale_factors(Lambda, layer.phi_d)
        mask, alphas = layer.kernels_weights_mask, _alphas(layer, x, INITIAL_TEMPERATURE)
        dynamic = torch.einsum("bk,koihw->boihw", alphas, layer.kernels_weights)
        kernels = lambda_d * mask * dynamic + lambda_s * (1 - mask) * layer.weight
        torch.testing.assert_close(layer(x), _per_sample(layer, x, kernels), atol=1e-5, rtol=1e-5)


def test_scale_factors():
    phi = torch.tensor([0.7])
    s = 2 * torch.sigmoid(phi)
    assert scale_factors(None, phi) == (1.0, 1.0)
    d_both, s_both = scale_factors("both", phi)
    torch.testing.assert_close(d_both + s_both, torch.tensor([2.0]))
    torch.testing.assert_close(d_both, s)
    assert scale_factors("s", phi)[0] == 1.0 and torch.allclose(scale_factors("s", phi)[1], 2 - s)
    assert scale_factors("d", phi)[1] == 1.0 and torch.allclose(scale_factors("d", phi)[0], s)
    both_at_init = scale_factors("both", torch.zeros(1))
    assert float(both_at_init[0]) == float(both_at_init[1]) == 1.0


def test_pad_all_dynamic_is_scaled_dy_conv_and_all_static_is_scaled_static_conv():
    torch.manual_seed(0)
    pad = PAD_DynamicConvolution(4, 6, 3, padding=1, bias=False, Lambda="both")
    dy = DynamicConvolution(4, 6, 3, padding=1, bias=False)
    dy.attention.load_state_dict(pad.attention.state_dict())
    with torch.no_grad():
        dy.weight.copy_(pad.kernels_weights)
        pad.phi_d.fill_(-0.3)
    lambda_d, lambda_s = scale_factors("both", pad.phi_d)
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(pad(x, 5.0), lambda_d * dy(x, 5.0), atol=1e-5, rtol=1e-5)
    pad.kernels_weights_mask.zero_()
    torch.testing.assert_close(pad(x, 5.0), F.conv2d(x, lambda_s * pad.weight[0], padding=1), atol=1e-5, rtol=1e-5)


def test_pad_init_and_gradients():
    torch.manual_seed(0)
    layer = PAD_DynamicConvolution(64, 128, 3, padding=1, bias=False)
    assert layer.Lambda is None
    assert layer.kernels_weights_mask.shape == (1, 128, 64, 3, 3) and bool((layer.kernels_weights_mask == 1).all())
    assert float(layer.phi_d.detach()) == 0.0
    expected_std = math.sqrt(2.0 / (9 * 128))
    for tensor in (layer.kernels_weights, layer.weight):
        assert abs(float(tensor.detach().std()) / expected_std - 1) < 0.02
    assert not torch.equal(layer.kernels_weights[0:1], layer.weight)  # drawn independently
    assert "kernels_weights_mask" in dict(layer.named_buffers())
    assert layer.attention.fc1.weight.shape == (4, 64, 1, 1)
    assert float(layer.attention.fc2.bias.detach().abs().sum()) == 0
    layer.Lambda = "both"
    with torch.no_grad():
        layer.kernels_weights_mask.bernoulli_(0.5)
    layer(torch.randn(2, 64, 5, 5)).square().mean().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, name


def test_bias_is_aggregated_and_not_masked():
    torch.manual_seed(0)
    layer = PAD_DynamicConvolution(3, 4, 1, bias=True)
    with torch.no_grad():
        layer.kernels_bias.normal_()
    layer.kernels_weights_mask.zero_()
    x = torch.randn(2, 3, 4, 4)
    alphas = _alphas(layer, x, INITIAL_TEMPERATURE)
    expected = F.conv2d(x, layer.weight[0]) + (alphas @ layer.kernels_bias)[:, :, None, None]
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_bad_lambda_and_groups():
    with pytest.raises(ValueError, match="both, s, d"):
        PAD_DynamicConvolution(4, 4, 3, Lambda="p")
    assert PAD_DynamicConvolution(4, 4, 3, Lambda="none").Lambda is None
    with pytest.raises(ValueError, match="groups"):
        DynamicConvolution(6, 4, 3, groups=4)


def test_temperature_flattens_attention():
    torch.manual_seed(0)
    layer = DynamicConvolution(8, 8, 3, padding=1)
    assert layer.temperature == INITIAL_TEMPERATURE == 31
    with torch.no_grad():
        layer.attention.fc2.bias.copy_(torch.tensor([5.0, 0.0, -5.0, 1.0]))
    x = torch.randn(2, 8, 4, 4)
    hot, cold = layer._attention(x, 1.0), layer._attention(x, 1e4)
    assert float(hot.detach().max()) > 0.9
    torch.testing.assert_close(cold, torch.full_like(cold, 0.25), atol=1e-3, rtol=0)
    set_temperature(layer, 1e4)
    torch.testing.assert_close(layer(x), layer(x, 1e4))
