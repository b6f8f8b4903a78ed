"""DY-Conv and PAD-Net convolution layers (PAD-Net, ACL 2023, Sec. 3; spec b.1-b.2).

* :class:`DynamicConvolution` is the fully dynamic baseline (Chen et al. 2020): ``K`` kernels aggregated per sample
  by an attention ``alpha(x) = softmax(fc2(ReLU(fc1(GAP(x)))) / T)``, ``W(x) = sum_k alpha_k(x) W_k``.
* :class:`PAD_DynamicConvolution` is the partially dynamic layer of PAD-Net (Sec. 3.1-3.2, Eq. 3-5)::

      W_hat(x) = lambda_d * M ⊙ sum_k alpha_k(x) Theta_k + lambda_s * (1 - M) ⊙ Theta_bar

  with one mode mask ``M`` per kernel position, shared by the ``K`` dynamic factors ``Theta_k``, and the scale
  factors ``lambda_d = 2 sigmoid(phi_d)``, ``lambda_s = 2 - lambda_d`` (``Lambda="both"``).

Both run the per-sample kernels as one grouped convolution over the batch, as the original does. The kernel
aggregation is one matrix product ``alpha @ Theta`` (the original multiplies and sums element-wise; same values).
The attention temperature is an attribute of every layer, set for a whole model with :func:`set_temperature`.
Parameter names and the state-dict order are those of the original ``model/layer/dyconv.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from padnet.imp import ModeMask

__all__ = ["INITIAL_TEMPERATURE", "LAMBDAS", "AttentionLayer", "CustomSequential", "DynamicConvBase",
           "DynamicConvolution", "DynamicNet", "PAD_DynamicConvolution", "check_lambda", "dynamic_layers",
           "imp_masks", "init_model_weights", "is_pad_model", "pad_layers", "scale_factors", "set_temperature"]

INITIAL_TEMPERATURE = 31.0  # ``self.temperature`` of every original model before training (spec b.1)
LAMBDAS = (None, "both", "s", "d")  # the PAD scale-factor modes (spec b.2); "none" is accepted for None


def _kaiming_normal_(tensor: torch.Tensor, fan_out: int) -> None:
    """``N(0, 2 / fan_out)``, the He initialisation the original applies to every kernel."""
    with torch.no_grad():
        tensor.normal_(0, math.sqrt(2.0 / fan_out))


class AttentionLayer(nn.Module):
    """The kernel attention of DY-Conv (spec b.1): GAP -> 1x1 conv C->hidden (no bias) -> ReLU -> 1x1 conv -> K,
    then ``softmax(z / T)``. No BatchNorm."""

    def __init__(self, c_dim: int, hidden_dim: int, nof_kernels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c_dim, hidden_dim, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden_dim, nof_kernels, 1, bias=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        _kaiming_normal_(self.fc1.weight, hidden_dim)
        _kaiming_normal_(self.fc2.weight, nof_kernels)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        z = self.fc2(F.relu(self.fc1(self.avgpool(x))))
        return F.softmax(z.flatten(1) / temperature, dim=1)


class DynamicConvBase(nn.Module):
    """What DY-Conv and PAD share: conv arguments, the attention branch, the temperature and the grouped conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, nof_kernels: int = 4,
                 dilation=1, groups: int = 1, reduce: int = 16, attention: AttentionLayer | None = None):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels {in_channels} and out_channels {out_channels} must divide by "
                             f"groups {groups}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.nof_kernels = nof_kernels
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.temperature = INITIAL_TEMPERATURE
        if attention is None:
            attention = AttentionLayer(in_channels, max(1, in_channels // reduce), nof_kernels)
        self.attention = attention

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """The shape of one kernel set: (out, in / groups, kh, kw)."""
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _init_kernel(self, tensor: torch.Tensor) -> None:
        _kaiming_normal_(tensor, self.kernel_size[0] * self.kernel_size[1] * self.out_channels)

    def _attention(self, x: torch.Tensor, temperature: float | None) -> torch.Tensor:
        return self.attention(x, self.temperature if temperature is None else temperature)

    def _aggregate(self, alphas: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """``sum_k alpha_k W_k`` per sample: (B, K) x (K, ...) -> (B, ...), as one matrix product."""
        return (alphas @ kernels.flatten(1)).view(alphas.shape[0], *kernels.shape[1:])

    def _grouped_conv(self, x: torch.Tensor, kernels: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """Convolve sample ``b`` with ``kernels[b]`` (B, O, I/g, kh, kw): one conv with ``groups * B`` groups."""
        batch = x.shape[0]
        out = F.conv2d(x.reshape(1, -1, *x.shape[-2:]), kernels.reshape(-1, *kernels.shape[-3:]),
                       None if bias is None else bias.reshape(-1), self.stride, self.padding, self.dilation,
                       self.groups * batch)
        return out.view(batch, -1, *out.shape[-2:])

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, nof_kernels={self.nof_kernels}")


class DynamicConvolution(DynamicConvBase):
    """DY-Conv (spec b.1): ``weight`` (K, O, I/g, kh, kw) aggregated by the attention; optional ``bias`` (K, O)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, nof_kernels: int = 4,
                 dilation=1, groups: int = 1, bias: bool = True, reduce: int = 16):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, nof_kernels, dilation, groups,
                         reduce)
        self.weight = nn.Parameter(torch.empty(nof_kernels, *self.kernel_shape))
        self._init_kernel(self.weight)
        self.bias = nn.Parameter(torch.zeros(nof_kernels, out_channels)) if bias else None

    def forward(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        alphas = self._attention(x, temperature)
        bias = None if self.bias is None else alphas @ self.bias
        return self._grouped_conv(x, self._aggregate(alphas, self.weight), bias)


def scale_factors(Lambda: str | None, phi: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """``(lambda_d, lambda_s)`` of a PAD layer (Sec. 3.2; spec b.2): "both": ``2 sigmoid(phi)`` and ``2 - lambda_d``;
    "s": ``1`` and ``2 - 2 sigmoid(phi)``; "d": ``2 sigmoid(phi)`` and ``1``; None: ``1`` and ``1``."""
    if Lambda is None:
        return 1.0, 1.0
    scaled = 2 * torch.sigmoid(phi)
    if Lambda == "both":
        return scaled, 2 - scaled
    if Lambda == "s":
        return 1.0, 2 - scaled
    return scaled, 1.0


def check_lambda(Lambda: str | None) -> str | None:
    """The Lambda mode, with "none" read as None; anything else outside :data:`LAMBDAS` is a ValueError."""
    if Lambda == "none":
        return None
    if Lambda not in LAMBDAS:
        raise ValueError(f"unknown Lambda {Lambda!r}; choose one of: none (no scaling), both, s, d")
    return Lambda


class PAD_DynamicConvolution(DynamicConvBase):  # noqa: N801 (the original class name)
    """The partially dynamic conv of PAD-Net (Sec. 3.1-3.2, Eq. 3-5; spec b.2).

    ``kernels_weights`` (K, O, I/g, kh, kw) are the dynamic factors, ``weight`` (1, O, I/g, kh, kw) the static
    kernel, ``kernels_weights_mask`` (1, O, I/g, kh, kw) the mode mask (1 = dynamic; a buffer, all ones at init),
    ``phi_d`` the scale-factor logit (0 at init). ``Lambda`` chooses the scale factors (:func:`scale_factors`);
    the original crashes for "s" and "d", which work here. ``M = 1`` everywhere is DY-Conv scaled by ``lambda_d``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, nof_kernels: int = 4,
                 dilation=1, groups: int = 1, bias: bool = True, reduce: int = 16, Lambda: str | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, nof_kernels, dilation, groups,
                         reduce)
        self.Lambda = check_lambda(Lambda)
        self.kernels_weights = nn.Parameter(torch.empty(nof_kernels, *self.kernel_shape))
        self.weight = nn.Parameter(torch.empty(1, *self.kernel_shape))
        self.register_buffer("kernels_weights_mask", torch.ones(1, *self.kernel_shape))
        self.phi_d = nn.Parameter(torch.zeros(1))
        self._init_kernel(self.kernels_weights)
        self._init_kernel(self.weight)
        self.kernels_bias = nn.Parameter(torch.zeros(nof_kernels, out_channels)) if bias else None

    def computational_kernel(self, alphas: torch.Tensor) -> torch.Tensor:
        """``W_hat(x)`` (B, O, I/g, kh, kw) for the attention weights ``alphas`` (B, K) (Eq. 5)."""
        lambda_d, lambda_s = scale_factors(self.Lambda, self.phi_d)
        mask = self.kernels_weights_mask
        dynamic = self._aggregate(alphas, self.kernels_weights)
        return lambda_d * mask * dynamic + lambda_s * (1 - mask) * self.weight

    def forward(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        alphas = self._attention(x, temperature)
        bias = None if self.kernels_bias is None else alphas @ self.kernels_bias
        return self._grouped_conv(x, self.computational_kernel(alphas), bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, Lambda={self.Lambda}"


class CustomSequential(nn.Module):
    """A sequential container whose children live in ``self.layers`` (the original's ``CustomSequential``), so
    that the state-dict keys carry its ``.layers.`` segment. The temperature reaches the dynamic layers through
    their own attribute (:func:`set_temperature`) rather than as a forward argument."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def dynamic_layers(model: nn.Module) -> list[tuple[str, DynamicConvBase]]:
    """Every DY-Conv and PAD layer of ``model`` with its qualified name, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, DynamicConvBase)]


def pad_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every PAD layer of ``model`` with its qualified name, in module order: each layer holding the mode mask
    buffer ``kernels_weights_mask`` over ``kernels_weights`` and ``weight`` (the original's names), i.e. every
    :class:`PAD_DynamicConvolution` and every ODConv ``ODConv2d_PAD`` (:mod:`padnet.dyconv.odconv`)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(getattr(m, "kernels_weights_mask", None), torch.Tensor)]


def is_pad_model(model: nn.Module) -> bool:
    """Whether ``model`` has PAD layers, i.e. needs Iterative Mode Partition before training (for every PAD type;
    the original's case-sensitive ``'pad' in type`` missed ``DyResNet*_PAD`` and ``Dymobilenetv2_PAD``)."""
    return bool(pad_layers(model))


def imp_masks(model: nn.Module) -> dict[str, ModeMask]:
    """The mode masks of a PAD model for :func:`padnet.imp.iterative_mode_partition`: layer name ->
    ``(kernels_weights_mask, kernels_weights, weight)``."""
    return {name: ModeMask(m.kernels_weights_mask, m.kernels_weights, m.weight) for name, m in pad_layers(model)}


class DynamicNet(nn.Module):
    """Base of the DY and PAD models: ``temperature`` (31 at init, spec b.1) is read from the model and, when set,
    reaches every dynamic layer; ``update_temperature`` is the original's name for setting it."""

    @property
    def temperature(self) -> float:
        return self.__dict__.get("_temperature", INITIAL_TEMPERATURE)

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.__dict__["_temperature"] = float(value)
        for _, layer in dynamic_layers(self):
            layer.temperature = float(value)

    def update_temperature(self, temperature: float) -> None:
        self.temperature = temperature


def set_temperature(model: nn.Module, temperature: float) -> None:
    """Set the attention temperature of every dynamic layer of ``model`` and ``model.temperature`` (spec b.1);
    ``model`` may be wrapped (DDP) or be a single layer."""
    for module in model.modules():
        if isinstance(module, (DynamicConvBase, DynamicNet)):
            module.temperature = float(temperature)


def init_model_weights(model: nn.Module) -> None:
    """The original model-level init of the DY/PAD ResNets and the PAD MobileNetV2: every ``nn.Conv2d`` (stem,
    classifier, attention fc1/fc2) ~ N(0, 2/(k^2 out)) with zero bias, BN weight 1 and bias 0; the dynamic kernels
    keep their layer-level init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
