"""The deployment form of a PAD model (PAD-Net Sec. 3.1; spec a "deployed params", f).

After Iterative Mode Partition the mode mask is fixed, so inference needs, per PAD layer, only the ``K`` dynamic
factors at the ``D`` positions with ``M = 1`` and the static value at the ``N - D`` others: ``K D + (N - D)``
kernel entries instead of the ``(K + 1) N`` a training-form layer stores. :func:`deploy` replaces every
:class:`~padnet.dyconv.layers.PAD_DynamicConvolution` by a :class:`DeployedPADConv` holding just those (plus the
attention and ``phi_d``), which computes the same outputs; its aggregation costs ``K D`` MACs per sample.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn

from padnet.dyconv.layers import DynamicConvBase, PAD_DynamicConvolution, imp_masks, pad_layers, scale_factors
from padnet.imp import classification_loss, iterative_mode_partition, snip_scores

__all__ = ["DeployedPADConv", "deploy", "partition"]


class DeployedPADConv(DynamicConvBase):
    """A PAD conv in compact form: ``dynamic_factors`` (K, D) at the dynamic positions ``dynamic_index`` and
    ``static_values`` (N - D) at ``static_index`` (index buffers into the flattened kernel), the attention and
    ``phi_d``; ``W_hat(x) = lambda_d * sum_k alpha_k Theta_k`` at dynamic and ``lambda_s * Theta_bar`` at static
    positions (Eq. 5 with the masked-out entries dropped). It runs its :meth:`static_form` (one form,
    ``"deployed"``): the scale factors folded into the constants, the static kernel built once, and per forward
    only the dynamic entries aggregated (K D MACs) and scattered into it. The model's ``"deployed"`` configuration
    keeps the factors dense instead, as fast or faster (``padnet/README.md``)."""

    forms = ("deployed",)

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
        return self._deployed(x, temperature)

    def static_form(self, temperature: float | None = None) -> nn.Module:
        """The :class:`~padnet.dyconv.layers.PartitionedConv2d` of this layer (or a plain ``nn.Conv2d`` when no
        position is dynamic and there is no bias), the scale factors folded in."""
        lambda_d, lambda_s = scale_factors(self.Lambda, self.phi_d)
        static = self.static_values.new_zeros(self.kernel_shape)
        static.view(-1)[self.static_index] = lambda_s * self.static_values
        dynamic = lambda_d * self.dynamic_factors
        if self.static_index.numel() == 0:
            return self._partitioned(temperature, dynamic.view(-1, *self.kernel_shape), bias=self.kernels_bias)
        if self.dynamic_index.numel() == 0 and self.kernels_bias is None:
            return self._plain_conv(static)
        return self._partitioned(temperature, dynamic, static, self.dynamic_index, self.kernels_bias)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, Lambda={self.Lambda}, dynamic={self.dynamic_index.numel()}, "
                f"static={self.static_index.numel()}")


def deploy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every PAD layer in its compact form: :class:`DeployedPADConv` for
    DY-Conv PAD layers, :class:`~padnet.dyconv.odconv.DeployedODConv2d_PAD` for ODConv-PAD ones (the model itself is
    not changed; its big kernel tensors are not copied). A model without PAD layers is copied unchanged.

    The copy is for inference only: the partition is baked into its shapes, so it cannot be re-partitioned."""
    from padnet.dyconv.odconv import DeployedODConv2d_PAD, ODConv2d_PAD

    memo = {id(layer): DeployedODConv2d_PAD(layer) if isinstance(layer, ODConv2d_PAD) else DeployedPADConv(layer)
            for _, layer in pad_layers(model)}
    return copy.deepcopy(model, memo).eval()


def partition(model: nn.Module, kappa: float, images: torch.Tensor, targets: torch.Tensor | None = None,
              prune_epochs: int = 1) -> dict[str, float]:
    """Partition the PAD layers of ``model`` in place with Iterative Mode Partition (Sec. 3.3) at dynamic ratio
    ``kappa`` on one batch: SNIP scores ``|dL/dM|`` of the cross-entropy on ``(images, targets)``, in eval mode at
    the model's temperature, over ``prune_epochs`` rounds, global scope (``padnet/dyconv/main.py``'s defaults).

    Without ``targets`` the model's own top-1 predictions are the labels, which makes the partition of an untrained
    model a real, input-dependent one (what the speed benchmark times at kappa 0.3 and 0.5). The model's
    configuration is restored afterwards. Returns the dynamic ratio of every layer."""
    if not pad_layers(model):
        raise ValueError(f"{type(model).__name__} has no PAD layers to partition (use a *_PAD model)")
    previous = model.configuration
    model.set_configuration("training")
    try:
        if targets is None:
            was_training = model.training
            with torch.no_grad():
                targets = model.eval()(images).argmax(1)
            model.train(was_training)
        score_fn = functools.partial(snip_scores, batches=[(images, targets)],
                                     loss_fn=classification_loss(nn.CrossEntropyLoss()))
        return iterative_mode_partition(model, imp_masks(model), score_fn, sparsity=kappa, prune_epochs=prune_epochs)
    finally:
        model.set_configuration(previous)
