"""Parameter and MAC counts of DY-Conv / PAD models (spec a, e; the reference manifests' fields).

* stored params: every ``nn.Parameter`` as physically stored (a training-form PAD layer holds the K dynamic
  kernels *and* the static kernel);
* deployed params: ``other + attention + phi + K D + (N - D)``, what a PAD model needs at inference once the
  masked-out entries are dropped (:mod:`padnet.dyconv.deploy`), with ``D`` dynamic of ``N`` kernel positions;
  at a given dynamic ratio ``kappa`` the manifests' analytic value ``... + kappa K N + (1 - kappa) N``;
* dynamic params: the number of dynamic factors, ``K D`` (``K N`` for DY-Conv); it is also the per-sample cost
  of a sparse kernel aggregation;
* MACs (multiply-adds) from ``common.flops.count_macs`` at batch 1: convolutions (each dynamic conv as the grouped
  conv it runs), the attention's 1x1 convs, and the kernel aggregation ``alpha @ Theta`` (K MACs per aggregated
  kernel entry: K N in the training form, K D in the deployed form).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from common.flops import count_macs
from padnet.dyconv.deploy import DeployedPADConv
from padnet.dyconv.layers import DynamicConvBase, DynamicConvolution, PAD_DynamicConvolution, dynamic_layers

__all__ = ["MacBreakdown", "ParamBreakdown", "count_model_macs", "deployed_params", "dynamic_params",
           "param_breakdown", "stored_params"]


def stored_params(model: nn.Module) -> int:
    """The number of parameters as stored (each shared tensor once)."""
    return sum(p.numel() for p in model.parameters())


def _dynamic_tensor(layer: DynamicConvBase) -> torch.Tensor:
    if isinstance(layer, DynamicConvolution):
        return layer.weight
    if isinstance(layer, PAD_DynamicConvolution):
        return layer.kernels_weights
    return layer.dynamic_factors


def _static_tensor(layer: DynamicConvBase) -> torch.Tensor | None:
    if isinstance(layer, PAD_DynamicConvolution):
        return layer.weight
    return layer.static_values if isinstance(layer, DeployedPADConv) else None


def _num_positions(layer: DynamicConvBase) -> int:
    """N of one layer: the entries of one kernel set."""
    out_channels, in_per_group, kh, kw = layer.kernel_shape
    return out_channels * in_per_group * kh * kw


def _num_dynamic_positions(layer: DynamicConvBase) -> int:
    """D of one layer: the positions with M = 1 (all of them for DY-Conv)."""
    if isinstance(layer, PAD_DynamicConvolution):
        return int(layer.kernels_weights_mask.count_nonzero())
    if isinstance(layer, DeployedPADConv):
        return layer.dynamic_index.numel()
    return _num_positions(layer)


@dataclass
class ParamBreakdown:
    """Stored parameters split as in the manifests' ``param_breakdown``."""

    num_dynamic_layers: int
    K: int | None
    dynamic_kernels: int
    static_kernels: int
    attention: int
    phi: int
    other: int

    @property
    def total(self) -> int:
        return self.dynamic_kernels + self.static_kernels + self.attention + self.phi + self.other

    def as_manifest(self) -> dict[str, int | None]:
        """The manifest's ``param_breakdown`` dict (its key names)."""
        return {"num_dynamic_layers": self.num_dynamic_layers, "K": self.K,
                "dynamic_kernels (K x kernel)": self.dynamic_kernels,
                "static_kernels (PAD weight, 1 x kernel)": self.static_kernels,
                "attention_params": self.attention, "phi_d scale params": self.phi,
                "other (stem, BN, classifier, ...)": self.other}


def param_breakdown(model: nn.Module) -> ParamBreakdown:
    """Dynamic kernels, static kernels, attention, ``phi_d`` and everything else (stem, BN, classifier)."""
    layers = [layer for _, layer in dynamic_layers(model)]
    dynamic = sum(_dynamic_tensor(layer).numel() for layer in layers)
    static = sum(t.numel() for layer in layers if (t := _static_tensor(layer)) is not None)
    attention = sum(p.numel() for layer in layers for p in layer.attention.parameters())
    phi = sum(layer.phi_d.numel() for layer in layers if hasattr(layer, "phi_d"))
    kernels = {layer.nof_kernels for layer in layers}
    return ParamBreakdown(
        num_dynamic_layers=len(layers), K=kernels.pop() if len(kernels) == 1 else None, dynamic_kernels=dynamic,
        static_kernels=static, attention=attention, phi=phi,
        other=stored_params(model) - dynamic - static - attention - phi)


def dynamic_params(model: nn.Module) -> int:
    """The number of dynamic parameters ``K D`` summed over the dynamic layers (``K N`` for DY-Conv)."""
    return sum(layer.nof_kernels * _num_dynamic_positions(layer) for _, layer in dynamic_layers(model))


def deployed_params(model: nn.Module, kappa: float | None = None) -> int:
    """Parameters needed at inference: ``other + attention + phi + K D + (N - D)`` over the PAD layers.

    With ``kappa`` None, ``D`` is read from the current masks (the count of ``deploy(model)``); with ``kappa``,
    the manifests' analytic value ``kappa K N + (1 - kappa) N`` (rounded) replaces ``K D + (N - D)``. A model
    without PAD layers needs all its stored parameters.
    """
    layers = [layer for _, layer in dynamic_layers(model)
              if isinstance(layer, (PAD_DynamicConvolution, DeployedPADConv))]
    if not layers:
        return stored_params(model)
    parts = param_breakdown(model)
    fixed = parts.other + parts.attention + parts.phi
    if kappa is None:
        return fixed + sum(layer.nof_kernels * d + _num_positions(layer) - d
                           for layer in layers for d in [_num_dynamic_positions(layer)])
    kernel_entries = sum(kappa * layer.nof_kernels * _num_positions(layer) + (1 - kappa) * _num_positions(layer)
                         for layer in layers)
    return round(fixed + kernel_entries)


@dataclass
class MacBreakdown:
    """MACs of one sample, split as in the manifests' ``flops`` (all at batch 1)."""

    total: int                # everything the counter saw, the kernel aggregation included
    conv_and_attention: int   # total - aggregation: the manifests' "torch_flop_counter_MACs"
    dynamic_conv: int         # the dynamic layers' grouped convs
    attention: int            # fc1 + fc2 of every attention branch
    aggregation: int          # sum_k alpha_k W_k as executed: K N (training form) or K D (deployed form)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def count_model_macs(model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224)) -> MacBreakdown:
    """The MACs of one ``input_size`` sample through ``model`` (eval mode; works on the meta device)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        counted = count_macs(model, torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
    layers = dynamic_layers(model)
    aggregation = sum(layer.nof_kernels * (_num_dynamic_positions(layer) if isinstance(layer, DeployedPADConv)
                                           else _num_positions(layer)) for _, layer in layers)
    attention = sum(counted.per_module.get(f"{name}.attention", 0) for name, _ in layers)
    in_layers = sum(counted.per_module.get(name, 0) for name, _ in layers)
    return MacBreakdown(total=counted.total, conv_and_attention=counted.total - aggregation,
                        dynamic_conv=in_layers - attention - aggregation, attention=attention,
                        aggregation=aggregation)
