"""The deployment form of a PAD model (PAD-Net Sec. 3.1; spec a "deployed params", f).

After Iterative Mode Partition the mode mask is fixed, so inference needs, per PAD layer, only the ``K`` dynamic
factors at the ``D`` positions with ``M = 1`` and the static value at the ``N - D`` others: ``K D + (N - D)``
kernel entries instead of the ``(K + 1) N`` a training-form layer stores. :func:`deploy` replaces every
:class:`~padnet.dyconv.layers.PAD_DynamicConvolution` by a :class:`DeployedPADConv` holding just those (plus the
attention and ``phi_d``), which computes the same outputs; its aggregation costs ``K D`` MACs per sample.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from padnet.dyconv.layers import DynamicConvBase, PAD_DynamicConvolution, pad_layers, scale_factors

__all__ = ["DeployedPADConv", "deploy"]


class DeployedPADConv(DynamicConvBase):
    """A PAD conv in compact form: ``dynamic_factors`` (K, D) at the dynamic positions ``dynamic_index`` and
    ``static_values`` (N - D) at ``static_index`` (index buffers into the flattened kernel), the attention and
    ``phi_d``; ``W_hat(x) = lambda_d * sum_k alpha_k Theta_k`` at dynamic and ``lambda_s * Theta_bar`` at static
    positions (Eq. 5 with the masked-out entries dropped)."""

    def __init__(self, layer: PAD_DynamicConvolution):
        super().__init__(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                         layer.nof_kernels, layer.dilation, layer.groups, attention=copy.deepcopy(layer.attention))
        self.Lambda = layer.Lambda
        self.temperature = layer.temperature
        mask = layer.kernels_weights_mask.detach().flatten() != 0
        dynamic_index, static_index = torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()
        with torch.no_grad():
            self.dynamic_factors = nn.Parameter(layer.kernels_weights.flatten(1)[:, dynamic_index].clone())
            self.static_values = nn.Parameter(layer.weight.flatten()[static_index].clone())
            self.phi_d = nn.Parameter(layer.phi_d.detach().clone())
            bias = layer.kernels_bias
            self.kernels_bias = None if bias is None else nn.Parameter(bias.detach().clone())
        self.register_buffer("dynamic_index", dynamic_index)
        self.register_buffer("static_index", static_index)

    def forward(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        alphas = self._attention(x, temperature)
        lambda_d, lambda_s = scale_factors(self.Lambda, self.phi_d)
        kernel = alphas.new_empty(alphas.shape[0], self.dynamic_index.numel() + self.static_index.numel())
        kernel[:, self.static_index] = lambda_s * self.static_values
        kernel[:, self.dynamic_index] = lambda_d * (alphas @ self.dynamic_factors)
        bias = None if self.kernels_bias is None else alphas @ self.kernels_bias
        return self._grouped_conv(x, kernel.view(-1, *self.kernel_shape), bias)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, Lambda={self.Lambda}, dynamic={self.dynamic_index.numel()}, "
                f"static={self.static_index.numel()}")


def deploy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every PAD layer in :class:`DeployedPADConv` form (the model itself is not
    changed; its big kernel tensors are not copied). A model without PAD layers is copied unchanged.

    The copy is for inference only: the partition is baked into its shapes, so it cannot be re-partitioned."""
    memo = {id(layer): DeployedPADConv(layer) for _, layer in pad_layers(model)}
    return copy.deepcopy(model, memo).eval()
