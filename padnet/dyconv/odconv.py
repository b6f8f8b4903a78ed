"""ODConv (omni-dimensional dynamic convolution, Li, Zhou and Yao, ICLR 2022, Sec. 3.2) and its PAD variant
(PAD-Net, ACL 2023, Sec. 3.1-3.2, Eq. 3-5), with the parameter names of the original ``model/layer/odconv.py``.

* :class:`ODConv2d`: ``K`` kernels ``W_k`` (``kernels_weights``) modulated by four attentions computed from
  ``GAP(x)`` through ``fc -> BN -> ReLU`` and one head each (:class:`ODAttention`): the input-channel attention
  ``c(x) = sigmoid(channel_fc / T)``, the output-filter attention ``f(x) = sigmoid(filter_fc / T)`` (none for a
  depthwise conv), the spatial attention ``s(x) = sigmoid(spatial_fc / T)`` over the ``k x k`` positions (none for
  ``k = 1``) and the kernel attention ``a(x) = softmax(kernel_fc / T)`` (none for ``K = 1``)::

      y = f(x) ⊙ conv(c(x) ⊙ x, s(x) ⊙ sum_k a_k(x) W_k)

  (multiplying ``c`` and ``f`` into the input and the output equals multiplying them into the kernel).
* :class:`ODConv2d_PAD`: the kernel becomes partially dynamic with the mode mask ``M`` (one entry per kernel
  position, shared by the ``K`` factors) and the static kernel ``weight``::

      W_hat(x) = lambda_d * M ⊙ s(x) ⊙ sum_k a_k(x) W_k + lambda_s * (1 - M) ⊙ weight

  and each of the channel, filter and spatial attentions mixes a learnt static attention with its dynamic one,
  ``lambda_s' * att + lambda_d' * sigmoid(head / T)``, with its own scale logit (:class:`ODAttention_PAD`). The
  original adds a second sum over the output-channel axis after the masked combination, which collapses the
  kernel's output channels and makes every forward fail; here the combination is the kernel itself. (Its PAD
  spatial attention also mixes a (1, k*k, 1, 1) static attention with a dynamic one already shaped
  (B, 1, 1, 1, k, k); here both are mixed per position first.)
* :class:`DeployedODConv2d_PAD` / :func:`deploy`: the inference form after Iterative Mode Partition, storing only
  the ``K D`` dynamic factors and the ``N - D`` static values (``padnet/README.md``, "ODConv").

Configurations (``common.configurations``, :class:`ODNet`): an ODConv model runs ``"dynamic"``; an ODConv-PAD model
``"training"`` (the formula above, differentiable in the mask, for IMP and training; the default) or ``"deployed"``
(inference at the fixed partition through :class:`StaticODConv2d`, the layer with everything but the attentions
folded into constants; the same values).

* :class:`StaticODConv2d`: any of these layers as constants at one temperature (``static_form()``), what
  ``padnet.export.to_static`` exports.

The per-sample kernels run as one grouped convolution over the batch, as in the original (a batched matrix product
for 1x1 kernels). The kernel aggregation ``sum_k a_k W_k`` is one matrix product (``K N`` MACs, counted by
:func:`od_aggregation_macs`).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from common.configurations import ConfigurationError
from padnet.dyconv.layers import INITIAL_TEMPERATURE, DynamicNet, check_lambda, scale_factors

__all__ = ["MIN_ATTENTION_CHANNELS", "REDUCTION", "DeployedODConv2d_PAD", "ODAttention", "ODAttention_PAD",
           "ODConv2d", "ODConv2d_PAD", "ODNet", "StaticODConv2d", "deploy", "od_aggregation_macs", "od_deployed_params",
           "od_dynamic_params", "od_layers", "od_param_breakdown"]

REDUCTION = 0.0625         # attention width = max(int(in_planes * reduction), min_channel), the original's defaults
MIN_ATTENTION_CHANNELS = 16


def _he_fan_out_(tensor: torch.Tensor) -> None:
    """``kaiming_normal_(mode='fan_out', nonlinearity='relu')``: N(0, 2 / (out * kh * kw)) of a conv weight."""
    nn.init.kaiming_normal_(tensor, mode="fan_out", nonlinearity="relu")


def _per_sample_conv(x: torch.Tensor, kernels: torch.Tensor, conv: nn.Module) -> torch.Tensor:
    """Convolve sample ``b`` of ``x`` with ``kernels[b]`` (B, O, I/g, k, k): a batched matrix product for a 1x1
    kernel (one group, no padding; the stride by slicing; about 3x faster than the grouped conv on CPU), else one
    conv with ``groups * B`` groups, as the original."""
    batch = x.shape[0]
    if kernels.shape[-2:] == (1, 1) and conv.groups == 1 and conv.padding in (0, (0, 0)):
        stride = (conv.stride, conv.stride) if isinstance(conv.stride, int) else conv.stride
        x = x[:, :, ::stride[0], ::stride[1]]
        out = torch.bmm(kernels.view(batch, kernels.shape[1], -1), x.reshape(batch, x.shape[1], -1))
        return out.view(batch, -1, *x.shape[-2:])
    out = F.conv2d(x.reshape(1, -1, *x.shape[-2:]), kernels.reshape(-1, *kernels.shape[-3:]), None, conv.stride,
                   conv.padding, conv.dilation, conv.groups * batch)
    return out.view(batch, -1, *out.shape[-2:])


class _ODShape(nn.Module):
    """What every ODConv layer shares: the conv arguments, the kernel shape, the attention temperature and the
    named forms (``forms``; ``form`` is the one it runs, the last of ``forms`` at construction)."""

    forms: tuple[str, ...] = ()

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int, padding: int, dilation: int,
                 groups: int, kernel_num: int):
        super().__init__()
        if not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"ODConv takes one square kernel size (an int), got {kernel_size!r}")
        if in_planes % groups or out_planes % groups:
            raise ValueError(f"in_planes {in_planes} and out_planes {out_planes} must divide by groups {groups}")
        if kernel_num < 1:
            raise ValueError(f"kernel_num must be at least 1, got {kernel_num}")
        self.in_planes, self.out_planes, self.kernel_size = in_planes, out_planes, kernel_size
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.kernel_num = kernel_num
        self.temperature = INITIAL_TEMPERATURE
        self.form = self.forms[-1]

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """(out, in / groups, k, k): the shape of one kernel."""
        return (self.out_planes, self.in_planes // self.groups, self.kernel_size, self.kernel_size)

    @property
    def num_positions(self) -> int:
        """N: the entries of one kernel."""
        return math.prod(self.kernel_shape)

    def _temperature(self, temperature: float | None) -> float:
        return self.temperature if temperature is None else temperature

    def extra_repr(self) -> str:
        return (f"{self.in_planes}, {self.out_planes}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, kernel_num={self.kernel_num}")


# ------------------------------------------------------------------------------------------------ attentions
class ODAttention(nn.Module):
    """The four ODConv attentions (the original ``Attention``): GAP -> ``fc`` (1x1, no bias) -> ``bn`` -> ReLU,
    then ``channel_fc`` (sigmoid), ``filter_fc`` (sigmoid; absent for a depthwise conv), ``spatial_fc`` (sigmoid
    over k*k; absent for k = 1) and ``kernel_fc`` (softmax over K; absent for K = 1), each divided by ``T``.

    Returns ``(channel (B, I, 1, 1), filter (B, O, 1, 1) | None, spatial (B, k, k) | None, kernel (B, K) | None)``.
    """

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, groups: int = 1,
                 reduction: float = REDUCTION, kernel_num: int = 4, min_channel: int = MIN_ATTENTION_CHANNELS):
        super().__init__()
        hidden = max(int(in_planes * reduction), min_channel)
        self.kernel_size, self.kernel_num = kernel_size, kernel_num
        self.depthwise = in_planes == groups == out_planes
        self.fc = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        self.channel_fc = nn.Conv2d(hidden, in_planes, 1)
        self.filter_fc = None if self.depthwise else nn.Conv2d(hidden, out_planes, 1)
        self.spatial_fc = nn.Conv2d(hidden, kernel_size * kernel_size, 1) if kernel_size != 1 else None
        self.kernel_fc = nn.Conv2d(hidden, kernel_num, 1) if kernel_num != 1 else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _he_fan_out_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def squeeze(self, x: torch.Tensor) -> torch.Tensor:
        """``ReLU(bn(fc(GAP(x))))`` (B, hidden, 1, 1), the input of every head."""
        return F.relu(self.bn(self.fc(F.adaptive_avg_pool2d(x, 1))))

    def kernel_attention(self, z: torch.Tensor, temperature: float) -> torch.Tensor | None:
        if self.kernel_fc is None:
            return None
        return F.softmax(self.kernel_fc(z).flatten(1) / temperature, dim=1)

    def forward(self, x: torch.Tensor, temperature: float):
        z = self.squeeze(x)
        batch, k = z.shape[0], self.kernel_size
        channel = torch.sigmoid(self.channel_fc(z) / temperature)
        filt = None if self.filter_fc is None else torch.sigmoid(self.filter_fc(z) / temperature)
        spatial = None if self.spatial_fc is None else torch.sigmoid(
            self.spatial_fc(z).view(batch, k, k) / temperature)
        return channel, filt, spatial, self.kernel_attention(z, temperature)


class ODAttention_PAD(ODAttention):  # noqa: N801 (the original class name)
    """The PAD attentions (the original ``Attention_PAD``): the channel, filter and spatial heads are stored as
    plain tensors ``<head>_fc_weight`` / ``<head>_fc_bias`` with a mask buffer ``<head>_fc_mask`` multiplied into
    the weight (all ones; Iterative Mode Partition leaves them so) and mix a learnt static attention ``<head>_att``
    with the dynamic one: ``lambda_s * att + lambda_d * sigmoid(head / T)``, with ``(lambda_d, lambda_s)`` from the
    logit ``<head>_phi`` and ``Lambda`` (:func:`padnet.dyconv.layers.scale_factors`). ``kernel_fc`` is as in ODConv.

    Initialisation (the original leaves these tensors uninitialised): head weights as ODConv's heads, zero biases,
    static attentions and logits 0, so that a new layer computes exactly the ODConv attentions.
    """

    HEADS = ("channel", "filter", "spatial")

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, groups: int = 1,
                 reduction: float = REDUCTION, kernel_num: int = 4, min_channel: int = MIN_ATTENTION_CHANNELS,
                 Lambda: str | None = "both"):
        nn.Module.__init__(self)
        hidden = max(int(in_planes * reduction), min_channel)
        self.kernel_size, self.kernel_num = kernel_size, kernel_num
        self.depthwise = in_planes == groups == out_planes
        self.Lambda = check_lambda(Lambda)
        self.fc = nn.Conv2d(in_planes, hidden, 1, bias=False)
        self.bn = nn.BatchNorm2d(hidden)
        widths = {"channel": in_planes, "filter": None if self.depthwise else out_planes,
                  "spatial": kernel_size * kernel_size if kernel_size != 1 else None}
        self.heads = tuple(h for h in self.HEADS if widths[h] is not None)
        for head in self.HEADS:  # the original registers every logit, used or not
            self.register_parameter(f"{head}_phi", nn.Parameter(torch.zeros(1)))
        for head in self.heads:
            weight = nn.Parameter(torch.empty(widths[head], hidden, 1, 1))
            _he_fan_out_(weight)
            self.register_parameter(f"{head}_fc_weight", weight)
            self.register_parameter(f"{head}_fc_bias", nn.Parameter(torch.zeros(widths[head])))
            self.register_parameter(f"{head}_att", nn.Parameter(torch.zeros(1, widths[head], 1, 1)))
        self.register_buffer("channel_fc_mask", torch.ones(in_planes, hidden, 1, 1))
        for head in self.heads[1:]:
            self.register_buffer(f"{head}_fc_mask", torch.ones(widths[head], 1, 1, 1))
        self.kernel_fc = nn.Conv2d(hidden, kernel_num, 1) if kernel_num != 1 else None
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                _he_fan_out_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _head(self, z: torch.Tensor, head: str, temperature: float) -> torch.Tensor:
        logits = F.conv2d(z, getattr(self, f"{head}_fc_mask") * getattr(self, f"{head}_fc_weight"),
                          getattr(self, f"{head}_fc_bias"))
        lambda_d, lambda_s = scale_factors(self.Lambda, getattr(self, f"{head}_phi"))
        return lambda_s * getattr(self, f"{head}_att") + lambda_d * torch.sigmoid(logits / temperature)

    def forward(self, x: torch.Tensor, temperature: float):
        z = self.squeeze(x)
        batch, k = z.shape[0], self.kernel_size
        channel = self._head(z, "channel", temperature)
        filt = self._head(z, "filter", temperature) if "filter" in self.heads else None
        spatial = self._head(z, "spatial", temperature).view(batch, k, k) if "spatial" in self.heads else None
        return channel, filt, spatial, self.kernel_attention(z, temperature)

    def extra_repr(self) -> str:
        return f"Lambda={self.Lambda}"


# ---------------------------------------------------------------------------------------------------- convs
class ODConv2d(_ODShape):
    """ODConv (Li et al. 2022, Sec. 3.2): ``kernels_weights`` (K, O, I/g, k, k), each kernel He-initialised
    (fan out), and :class:`ODAttention`. With ``k = 1`` and ``K = 1`` it is a plain conv between the channel and
    filter attentions, as in the original. One form, ``"dynamic"``."""

    forms = ("dynamic",)

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, reduction: float = REDUCTION, kernel_num: int = 4):
        super().__init__(in_planes, out_planes, kernel_size, stride, padding, dilation, groups, kernel_num)
        self.attention = ODAttention(in_planes, out_planes, kernel_size, groups, reduction, kernel_num)
        self.kernels_weights = nn.Parameter(torch.empty(kernel_num, *self.kernel_shape))
        for kernel in self.kernels_weights.data:
            _he_fan_out_(kernel)

    def static_form(self, temperature: float | None = None) -> StaticODConv2d:
        """This layer as a module of constants at ``temperature`` (default: the layer's): :class:`StaticODConv2d`."""
        return StaticODConv2d(self, temperature)

    def dynamic_kernel(self, kernel: torch.Tensor | None, spatial: torch.Tensor | None,
                       factors: torch.Tensor | None = None) -> torch.Tensor:
        """``s ⊙ sum_k a_k W_k`` (B, O, I/g, k, k), or the single kernel (1, ...) when neither attention exists."""
        factors = self.kernels_weights if factors is None else factors
        if kernel is None:
            aggregated = factors
        else:
            aggregated = (kernel @ factors.flatten(1)).view(kernel.shape[0], *factors.shape[1:])
        if spatial is not None:
            aggregated = aggregated * spatial[:, None, None]
        return aggregated

    def _convolve(self, x: torch.Tensor, kernel: torch.Tensor, filt: torch.Tensor | None) -> torch.Tensor:
        if kernel.shape[0] == 1:  # one kernel for the whole batch
            out = F.conv2d(x, kernel[0], None, self.stride, self.padding, self.dilation, self.groups)
        else:
            out = _per_sample_conv(x, kernel, self)
        return out if filt is None else out * filt

    def forward(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        channel, filt, spatial, kernel = self.attention(x, self._temperature(temperature))
        return self._convolve(x * channel, self.dynamic_kernel(kernel, spatial), filt)


class ODConv2d_PAD(ODConv2d):  # noqa: N801 (the original class name)
    """The partially dynamic ODConv of PAD-Net (Sec. 3.1-3.2, Eq. 5 applied to ODConv's kernel).

    ``kernels_weights`` (K, O, I/g, k, k) are the dynamic factors, ``weight`` (1, O, I/g, k, k) the static kernel,
    ``kernels_weights_mask`` (1, O, I/g, k, k) the mode mask (1 = dynamic; a buffer, all ones at init) that
    Iterative Mode Partition sets, ``phi_d`` the kernel's scale logit (0 at init). ``Lambda`` (default "both", what
    the original's models run) chooses the scale factors of the kernel and of the attentions (:func:`scale_factors`).
    The static kernel is He-initialised like the factors (the original leaves it ``N(0, 1)``).

    Forms: ``"training"`` (default) computes the kernel from the parameters and the mask (differentiable in both, as
    IMP needs); ``"deployed"`` runs :meth:`static_form` (inference only; built once and rebuilt only when the
    temperature, a parameter or a buffer changes).
    """

    forms = ("deployed", "training")

    def __init__(self, in_planes: int, out_planes: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 dilation: int = 1, groups: int = 1, reduction: float = REDUCTION, kernel_num: int = 4,
                 Lambda: str | None = "both"):
        _ODShape.__init__(self, in_planes, out_planes, kernel_size, stride, padding, dilation, groups, kernel_num)
        self.Lambda = check_lambda(Lambda)
        self.phi_d = nn.Parameter(torch.zeros(1))
        self.attention = ODAttention_PAD(in_planes, out_planes, kernel_size, groups, reduction, kernel_num,
                                         Lambda=self.Lambda)
        self.kernels_weights = nn.Parameter(torch.empty(kernel_num, *self.kernel_shape))
        self.weight = nn.Parameter(torch.empty(1, *self.kernel_shape))
        self.register_buffer("kernels_weights_mask", torch.ones(1, *self.kernel_shape))
        for kernel in (*self.kernels_weights.data, self.weight.data[0]):
            _he_fan_out_(kernel)

    def computational_kernel(self, kernel: torch.Tensor | None, spatial: torch.Tensor | None) -> torch.Tensor:
        """``W_hat = lambda_d M ⊙ s ⊙ sum_k a_k W_k + lambda_s (1 - M) ⊙ weight`` (B or 1, O, I/g, k, k)."""
        lambda_d, lambda_s = scale_factors(self.Lambda, self.phi_d)
        mask = self.kernels_weights_mask
        return lambda_d * mask * self.dynamic_kernel(kernel, spatial) + lambda_s * (1 - mask) * self.weight

    def forward(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        if self.form == "deployed":
            return self._deployed(x, temperature)
        channel, filt, spatial, kernel = self.attention(x, self._temperature(temperature))
        return self._convolve(x * channel, self.computational_kernel(kernel, spatial), filt)

    def _deployed(self, x: torch.Tensor, temperature: float | None) -> torch.Tensor:
        """The ``"deployed"`` forward: :meth:`static_form` (the partition, the scale factors and the temperature
        folded into constants), cached until the temperature, a parameter or a buffer changes (by storage and
        version counter: in-place updates, ``load_state_dict`` and ``.to()``)."""
        if self.training and torch.is_grad_enabled():
            raise ConfigurationError(f"configuration 'deployed' of {type(self).__name__} is for inference (the "
                                     "partition is baked in): call .eval(), or set_configuration('training') to train")
        temperature = self._temperature(temperature)
        key = (temperature, *((t.data_ptr(), t._version) for t in (*self.parameters(), *self.buffers())))
        cached = self.__dict__.get("_deployed_form")
        if cached is None or cached[0] != key:
            with torch.no_grad(), torch.inference_mode(False):
                cached = (key, self.static_form(temperature).eval().requires_grad_(False))
            self.__dict__["_deployed_form"] = cached
        return cached[1](x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, Lambda={self.Lambda}, form={self.form}"


class DeployedODConv2d_PAD(ODConv2d):  # noqa: N801
    """An :class:`ODConv2d_PAD` in deployment form: ``dynamic_factors`` (K, D) at the dynamic positions
    ``dynamic_index`` and ``static_values`` (N - D) at ``static_index`` (index buffers into the flattened kernel),
    the attention and ``phi_d``; the computational kernel is built from those alone (Eq. 5 with the masked-out
    entries dropped), so the aggregation costs ``K D`` MACs per sample. One form, ``"deployed"``."""

    forms = ("deployed",)

    def __init__(self, layer: ODConv2d_PAD):
        _ODShape.__init__(self, layer.in_planes, layer.out_planes, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, layer.groups, layer.kernel_num)
        self.Lambda, self.temperature = layer.Lambda, layer.temperature
        self.attention = copy.deepcopy(layer.attention)
        mask = layer.kernels_weights_mask.detach().flatten() != 0
        dynamic_index, static_index = torch.nonzero(mask).flatten(), torch.nonzero(~mask).flatten()
        with torch.no_grad():
            self.phi_d = nn.Parameter(layer.phi_d.detach().clone())
            self.dynamic_factors = nn.Parameter(layer.kernels_weights.flatten(1)[:, dynamic_index].clone())
            self.static_values = nn.Parameter(layer.weight.flatten()[static_index].clone())
        self.register_buffer("dynamic_index", dynamic_index)
        self.register_buffer("static_index", static_index)

    def forward(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        channel, filt, spatial, kernel = self.attention(x, self._temperature(temperature))
        lambda_d, lambda_s = scale_factors(self.Lambda, self.phi_d)
        dynamic = self.dynamic_factors if kernel is None else kernel @ self.dynamic_factors  # (1 or B, D)
        if spatial is not None:  # the spatial attention of each dynamic entry's kernel position
            dynamic = dynamic * spatial.flatten(1)[:, self.dynamic_index % (self.kernel_size ** 2)]
        full = dynamic.new_empty(dynamic.shape[0], self.num_positions)
        full[:, self.static_index] = lambda_s * self.static_values
        full[:, self.dynamic_index] = lambda_d * dynamic
        return self._convolve(x * channel, full.view(-1, *self.kernel_shape), filt)

    def extra_repr(self) -> str:
        return (f"{_ODShape.extra_repr(self)}, Lambda={self.Lambda}, dynamic={self.dynamic_index.numel()}, "
                f"static={self.static_index.numel()}")


class StaticODConv2d(nn.Module):
    """An ODConv / ODConv-PAD layer as a module of constants at one temperature (what ``to_static`` exports): the
    squeeze ``GAP -> fc -> BN -> ReLU`` and the heads as plain modules with ``1 / T`` folded into the heads' weights
    and biases; the PAD mixes as ``offset + scale * sigmoid(head)`` (``offset = lambda_s' att``, ``scale =
    lambda_d'``); the kernel as ``static_weight`` (``lambda_s W_bar`` at the static positions, 0 elsewhere; None for
    ODConv) plus ``dynamic_weight`` (K, D), ``lambda_d W_k`` at the flat positions ``dynamic_index`` (all N for
    ODConv), aggregated per sample, times the spatial attention at ``spatial_index`` (each entry's kernel position).
    """

    HEADS = ("channel", "filter", "spatial")

    def __init__(self, layer: ODConv2d, temperature: float | None = None):
        super().__init__()
        temperature = layer.temperature if temperature is None else float(temperature)
        attention = layer.attention
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, \
            layer.groups
        self.kernel_shape = layer.kernel_shape
        with torch.no_grad():
            self.squeeze = nn.Sequential(nn.AdaptiveAvgPool2d(1), copy.deepcopy(attention.fc),
                                         copy.deepcopy(attention.bn), nn.ReLU())
            for head in self.HEADS:
                self._add_head(attention, head, temperature)
            self.kernel_fc = None if attention.kernel_fc is None else self._scaled(
                attention.kernel_fc.weight, attention.kernel_fc.bias, temperature)
            self._add_kernel(layer)

    @staticmethod
    def _scaled(weight: torch.Tensor, bias: torch.Tensor, temperature: float) -> nn.Conv2d:
        conv = nn.Conv2d(weight.shape[1], weight.shape[0], 1, device=weight.device, dtype=weight.dtype)
        conv.weight.copy_(weight / temperature)
        conv.bias.copy_(bias / temperature)
        return conv

    def _add_head(self, attention: ODAttention, head: str, temperature: float) -> None:
        offset = scale = None
        if isinstance(attention, ODAttention_PAD):
            if head in attention.heads:
                weight = getattr(attention, f"{head}_fc_mask") * getattr(attention, f"{head}_fc_weight")
                conv = self._scaled(weight, getattr(attention, f"{head}_fc_bias"), temperature)
                lambda_d, lambda_s = scale_factors(attention.Lambda, getattr(attention, f"{head}_phi"))
                offset = (lambda_s * getattr(attention, f"{head}_att")).detach().clone()
                scale = torch.as_tensor(lambda_d, dtype=offset.dtype).detach().clone().reshape(1)
            else:
                conv = None
        else:
            source = getattr(attention, f"{head}_fc")
            conv = None if source is None else self._scaled(source.weight, source.bias, temperature)
        self.add_module(f"{head}_fc", conv)
        self.register_buffer(f"{head}_offset", offset)
        self.register_buffer(f"{head}_scale", scale)

    def _add_kernel(self, layer: ODConv2d) -> None:
        n = layer.num_positions
        if isinstance(layer, DeployedODConv2d_PAD):
            lambda_d, lambda_s = scale_factors(layer.Lambda, layer.phi_d)
            index, dynamic = layer.dynamic_index.clone(), lambda_d * layer.dynamic_factors
            static = layer.static_values.new_zeros(n).index_copy_(0, layer.static_index, lambda_s * layer.static_values)
        elif isinstance(layer, ODConv2d_PAD):
            lambda_d, lambda_s = scale_factors(layer.Lambda, layer.phi_d)
            mask = layer.kernels_weights_mask.flatten()
            index = torch.nonzero(mask).flatten()
            dynamic = lambda_d * layer.kernels_weights.flatten(1)[:, index]
            static = (lambda_s * (1 - mask) * layer.weight.flatten())
        else:
            index, dynamic, static = torch.arange(n, device=layer.kernels_weights.device), \
                layer.kernels_weights.flatten(1), None
        self.dynamic_weight = nn.Parameter(dynamic.detach().clone())
        self.static_weight = None if static is None else nn.Parameter(static.detach().clone())
        self.register_buffer("dynamic_index", index)
        self.register_buffer("spatial_index", index % (self.kernel_shape[2] * self.kernel_shape[3]))

    def _head(self, z: torch.Tensor, head: str) -> torch.Tensor | None:
        conv = getattr(self, f"{head}_fc")
        if conv is None:
            return None
        attention = torch.sigmoid(conv(z))
        offset, scale = getattr(self, f"{head}_offset"), getattr(self, f"{head}_scale")
        return attention if offset is None else offset + scale * attention

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.squeeze(x)
        batch = x.shape[0]
        channel, filt, spatial = (self._head(z, head) for head in self.HEADS)
        dynamic = self.dynamic_weight if self.kernel_fc is None else \
            torch.softmax(self.kernel_fc(z).flatten(1), dim=1) @ self.dynamic_weight  # (1 or B, D)
        if spatial is not None:
            dynamic = dynamic * spatial.flatten(1)[:, self.spatial_index]
        if self.static_weight is None:
            kernel = dynamic
        else:
            kernel = self.static_weight.expand(dynamic.shape[0], -1).clone()
            kernel[:, self.dynamic_index] = dynamic
        x = x * channel
        if kernel.shape[0] == 1:
            out = F.conv2d(x, kernel.view(self.kernel_shape), None, self.stride, self.padding, self.dilation,
                           self.groups)
        else:
            out = _per_sample_conv(x, kernel.view(batch, *self.kernel_shape), self)
        return out if filt is None else out * filt


# ---------------------------------------------------------------------------------------------------- models
def od_layers(model: nn.Module) -> list[tuple[str, ODConv2d]]:
    """Every ODConv layer of ``model`` (plain, PAD or deployed) with its qualified name, in module order."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, ODConv2d)]


class ODNet(DynamicNet):
    """Base of the OD models: ``temperature`` (31 at init, as the original's models) reaches every ODConv layer
    when set (by ``padnet.dyconv.layers.set_temperature`` or the original's ``update_temperature``).

    Configurations (``common.configurations``): the forms of the ODConv layers, ``["deployed", "training"]`` for an
    ODConv-PAD model (cheapest first; ``"training"`` is the default) and ``["dynamic"]`` for ODConv.
    """

    def dynamic_modules(self) -> list[tuple[str, nn.Module]]:
        return od_layers(self)


def deploy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every :class:`ODConv2d_PAD` in :class:`DeployedODConv2d_PAD` form (the
    model itself is not changed); other layers are copied unchanged. For inference only: the partition is baked
    into the shapes."""
    memo = {id(layer): DeployedODConv2d_PAD(layer) for _, layer in od_layers(model)
            if isinstance(layer, ODConv2d_PAD)}
    return copy.deepcopy(model, memo).eval()


# ---------------------------------------------------------------------------------------------------- counts
def _dynamic_positions(layer: ODConv2d) -> int:
    """D: the kernel positions with M = 1 (all N for a plain ODConv)."""
    if isinstance(layer, ODConv2d_PAD):
        return int(layer.kernels_weights_mask.count_nonzero())
    if isinstance(layer, DeployedODConv2d_PAD):
        return layer.dynamic_index.numel()
    return layer.num_positions


def od_param_breakdown(model: nn.Module) -> dict[str, int]:
    """Stored parameters of an OD model: ``dynamic_kernels`` (K N), ``static_kernels`` (N per PAD layer),
    ``attention`` (every attention parameter, the PAD static attentions and their logits included), ``phi`` (the
    kernels' ``phi_d``) and ``other`` (stem, BN, shortcuts, classifier)."""
    layers = [layer for _, layer in od_layers(model)]
    parts = {"dynamic_kernels": 0, "static_kernels": 0, "attention": 0, "phi": 0}
    for layer in layers:
        if isinstance(layer, DeployedODConv2d_PAD):
            parts["dynamic_kernels"] += layer.dynamic_factors.numel()
            parts["static_kernels"] += layer.static_values.numel()
        else:
            parts["dynamic_kernels"] += layer.kernels_weights.numel()
            parts["static_kernels"] += layer.weight.numel() if isinstance(layer, ODConv2d_PAD) else 0
        parts["attention"] += sum(p.numel() for p in layer.attention.parameters())
        parts["phi"] += layer.phi_d.numel() if hasattr(layer, "phi_d") else 0
    parts["other"] = sum(p.numel() for p in model.parameters()) - sum(parts.values())
    return parts


def od_dynamic_params(model: nn.Module) -> int:
    """The number of dynamic parameters ``K D`` summed over the ODConv layers (``K N`` for plain ODConv)."""
    return sum(layer.kernel_num * _dynamic_positions(layer) for _, layer in od_layers(model))


def od_deployed_params(model: nn.Module, kappa: float | None = None) -> int:
    """Parameters an OD-PAD model needs at inference: ``other + attention + phi + K D + (N - D)`` over its PAD
    layers, with ``D`` from the current masks, or the analytic ``kappa K N + (1 - kappa) N`` at dynamic ratio
    ``kappa``. A model without PAD layers needs all its stored parameters."""
    pad = [layer for _, layer in od_layers(model) if isinstance(layer, (ODConv2d_PAD, DeployedODConv2d_PAD))]
    if not pad:
        return sum(p.numel() for p in model.parameters())
    parts = od_param_breakdown(model)
    fixed = parts["other"] + parts["attention"] + parts["phi"]
    if kappa is None:
        return fixed + sum(layer.kernel_num * d + layer.num_positions - d
                           for layer in pad for d in [_dynamic_positions(layer)])
    return round(fixed + sum(kappa * layer.kernel_num * layer.num_positions + (1 - kappa) * layer.num_positions
                             for layer in pad))


def od_aggregation_macs(model: nn.Module) -> int:
    """MACs of the kernel aggregations ``sum_k a_k W_k`` of one sample as executed: ``K N`` per layer with
    ``K > 1`` (``K D`` in the deployed form); ``K = 1`` layers aggregate nothing."""
    return sum(layer.kernel_num * (_dynamic_positions(layer) if isinstance(layer, DeployedODConv2d_PAD)
                                   else layer.num_positions)
               for _, layer in od_layers(model) if layer.kernel_num > 1)
