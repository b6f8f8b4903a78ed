"""DY-Conv and PAD-Net convolution layers (PAD-Net, ACL 2023, Sec. 3; spec b.1-b.2).

* :class:`DynamicConvolution` is the fully dynamic baseline (Chen et al. 2020): ``K`` kernels aggregated per sample
  by an attention ``alpha(x) = softmax(fc2(ReLU(fc1(GAP(x)))) / T)``, ``W(x) = sum_k alpha_k(x) W_k``.
* :class:`PAD_DynamicConvolution` is the partially dynamic layer of PAD-Net (Sec. 3.1-3.2, Eq. 3-5)::

      W_hat(x) = lambda_d * M ⊙ sum_k alpha_k(x) Theta_k + lambda_s * (1 - M) ⊙ Theta_bar

  with one mode mask ``M`` per kernel position, shared by the ``K`` dynamic factors ``Theta_k``, and the scale
  factors ``lambda_d = 2 sigmoid(phi_d)``, ``lambda_s = 2 - lambda_d`` (``Lambda="both"``).

Both convolve every sample with its own kernel through :func:`per_sample_conv`, which picks the fastest exact form
per shape (the original runs one grouped convolution over the batch; same values). The kernel aggregation is one
matrix product ``alpha @ Theta`` (the original multiplies and sums element-wise). Every layer has named forms, the
model's configurations (:class:`DynamicNet`): DY-Conv runs ``"dynamic"``; a PAD layer ``"training"`` (Eq. 5 as
written, differentiable in the mask, for IMP and training) or ``"deployed"`` (inference at the fixed partition:
:meth:`PAD_DynamicConvolution.static_form`, a :class:`PartitionedConv2d` with the scale factors, the mask and the
temperature folded into constants). The attention temperature is an attribute of every layer, set for a whole model
with :func:`set_temperature`. Parameter names and the state-dict order are those of the original
``model/layer/dyconv.py``.
"""

from __future__ import annotations

import math

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from common.configurations import ConfigurationError, check_configuration
from padnet.imp import ModeMask

__all__ = ["INITIAL_TEMPERATURE", "KERNEL_CHUNK", "LAMBDAS", "AttentionLayer", "CustomSequential", "DynamicConvBase",
           "DynamicConvolution", "DynamicNet", "PAD_DynamicConvolution", "PartitionedConv2d", "check_lambda",
           "dynamic_layers", "imp_masks", "init_model_weights", "is_pad_model", "pad_layers", "per_sample_conv",
           "scale_factors", "set_temperature"]

INITIAL_TEMPERATURE = 31.0  # ``self.temperature`` of every original model before training (spec b.1)
LAMBDAS = (None, "both", "s", "d")  # the PAD scale-factor modes (spec b.2); "none" is accepted for None
KERNEL_CHUNK = 1 << 22  # kernel entries assembled at once by per_sample_conv (16 MB of float32)


def _kaiming_normal_(tensor: torch.Tensor, fan_out: int) -> None:
    """``N(0, 2 / fan_out)``, the He initialisation the original applies to every kernel."""
    with torch.no_grad():
        tensor.normal_(0, math.sqrt(2.0 / fan_out))


def _assemble(alphas: torch.Tensor, dynamic: torch.Tensor, static: torch.Tensor | None, index: torch.Tensor | None,
              scale: torch.Tensor | None) -> torch.Tensor:
    """The flattened kernels (B, N) ``static + sum_k alpha_k dynamic_k``: one GEMM (``addmm`` with a static part;
    with ``scale``, ``static + scale ⊙ sum_k alpha_k dynamic_k``), or with ``index`` the (K, D) factors aggregated
    and scattered into a copy of the static kernel at the D dynamic positions only."""
    if scale is not None:
        return torch.addcmul(static.reshape(1, -1), torch.mm(alphas, dynamic.flatten(1)), scale.reshape(1, -1))
    if index is None:
        flat = dynamic.flatten(1)
        return torch.mm(alphas, flat) if static is None else torch.addmm(static.reshape(1, -1), alphas, flat)
    kernels = static.reshape(1, -1).repeat(alphas.shape[0], 1)
    return kernels.scatter_(1, index.expand(alphas.shape[0], -1), torch.mm(alphas, dynamic))


def per_sample_conv(x: torch.Tensor, alphas: torch.Tensor, dynamic: torch.Tensor, static: torch.Tensor | None = None,
                    index: torch.Tensor | None = None, bias: torch.Tensor | None = None, stride=(1, 1),
                    padding=(0, 0), dilation=(1, 1), groups: int = 1, scale: torch.Tensor | None = None
                    ) -> torch.Tensor:
    """Convolve sample ``b`` of ``x`` with its own kernel ``W_b = static + sum_k alphas[b, k] dynamic_k`` and add
    ``alphas[b] @ bias`` (Eq. 5 of PAD-Net with the scale factors and the mask already applied; DY-Conv without
    ``static``). ``dynamic``: (K, O, I/g, kh, kw), or (K, D) factors at the flat positions ``index`` of the kernel
    (then ``static`` (O, I/g, kh, kw) is required); ``bias``: (K, O) or None; ``scale`` (O, I/g, kh, kw), with
    ``static``: multiplies the aggregated kernel entry-wise before ``static`` is added.

    The fastest exact form per shape: the samples go in chunks of at most :data:`KERNEL_CHUNK` kernel entries (one
    sample when a kernel is bigger), each chunk's kernels assembled by one GEMM (:func:`_assemble`) and used while
    they are still in the cache, so the batch never holds all ``B x N`` kernel entries at once. A 1x1 convolution
    (one group, no padding) is a batched matrix product over the chunk (the stride by slicing); a grouped
    (depthwise) convolution is one conv with ``groups x chunk`` groups; any other convolution, and every one in a
    chunk of one sample (batch 1), is the sample's aggregated kernel in one ordinary conv.
    """
    kernel_shape = tuple(dynamic.shape[1:]) if index is None else tuple(static.shape)
    out_channels, in_per_group, kh, kw = kernel_shape
    batch = x.shape[0]
    biases = None if bias is None else alphas @ bias
    chunk = max(1, min(batch, KERNEL_CHUNK // math.prod(kernel_shape)))
    pointwise = (kh, kw) == (1, 1) and groups == 1 and tuple(padding) == (0, 0) and chunk > 1
    if pointwise and tuple(stride) != (1, 1):
        x = x[:, :, ::stride[0], ::stride[1]]
        stride = (1, 1)
    outs = []
    for start in range(0, batch, chunk):
        stop = min(batch, start + chunk)
        kernels = _assemble(alphas[start:stop], dynamic, static, index, scale)
        xs, bs = x[start:stop], None if biases is None else biases[start:stop]
        if pointwise and stop - start > 1:  # a remainder chunk of one sample takes the ordinary conv below
            flat = xs.reshape(stop - start, in_per_group, -1)
            weights = kernels.view(stop - start, out_channels, in_per_group)
            y = torch.bmm(weights, flat) if bs is None else torch.baddbmm(bs.unsqueeze(-1), weights, flat)
            outs.append(y.view(stop - start, out_channels, *xs.shape[-2:]))
        elif groups > 1 and stop - start > 1:
            y = F.conv2d(xs.reshape(1, -1, *xs.shape[-2:]), kernels.view(-1, *kernel_shape[1:]),
                         None if bs is None else bs.reshape(-1), stride, padding, dilation, groups * (stop - start))
            outs.append(y.view(stop - start, out_channels, *y.shape[-2:]))
        else:
            outs += [F.conv2d(xs[i:i + 1], kernels[i].view(kernel_shape), None if bs is None else bs[i], stride,
                              padding, dilation, groups) for i in range(stop - start)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


torch.fx.wrap("per_sample_conv")  # symbolic tracing records one call: the chunk loop depends on the batch size


class PartitionedConv2d(nn.Module):
    """The inference form of a DY-Conv or PAD layer: a plain module of constants (PAD-Net Sec. 3.1, Eq. 5 at a
    fixed partition), what ``to_static`` exports and a PAD model runs in its ``"deployed"`` configuration.

    The attention is ``softmax(fc2_weight ReLU(fc1_weight GAP(x)) + fc2_bias)`` with the temperature folded into
    ``fc2_weight`` and ``fc2_bias`` (DY-Conv's 1x1 convs of the pooled map as matrices);
    ``static_weight`` (O, I/g, kh, kw) is ``lambda_s Theta_bar`` at the static positions and 0 at the dynamic ones
    (None when every position is dynamic); ``dynamic_weight`` holds ``lambda_d Theta_k``: (K, O, I/g, kh, kw) with
    zeros at the static positions (one ``addmm`` per chunk of samples), or compact, (K, D) at the flat positions
    ``dynamic_index`` (``K D + N`` entries, ``K D`` aggregation MACs, scattered into the static kernel);
    ``dynamic_bias`` (K, O) or None. The per-sample convolution is :func:`per_sample_conv`.
    """

    def __init__(self, fc1_weight: torch.Tensor, fc2_weight: torch.Tensor, fc2_bias: torch.Tensor | None,
                 dynamic_weight: torch.Tensor, static_weight: torch.Tensor | None, dynamic_index: torch.Tensor | None,
                 dynamic_bias: torch.Tensor | None, stride, padding, dilation, groups: int):
        super().__init__()
        self.fc1_weight, self.fc2_weight = nn.Parameter(fc1_weight), nn.Parameter(fc2_weight)
        self.fc2_bias = None if fc2_bias is None else nn.Parameter(fc2_bias)
        self.dynamic_weight = nn.Parameter(dynamic_weight)
        self.static_weight = None if static_weight is None else nn.Parameter(static_weight)
        self.dynamic_bias = None if dynamic_bias is None else nn.Parameter(dynamic_bias)
        self.register_buffer("dynamic_index", dynamic_index)
        self.stride, self.padding, self.dilation, self.groups = tuple(stride), tuple(padding), tuple(dilation), groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.relu(F.linear(x.mean((2, 3)), self.fc1_weight))
        alphas = F.softmax(F.linear(hidden, self.fc2_weight, self.fc2_bias), dim=1)
        return per_sample_conv(x, alphas, self.dynamic_weight, self.static_weight, self.dynamic_index,
                               self.dynamic_bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        shape = self.dynamic_weight.shape[1:] if self.dynamic_index is None else self.static_weight.shape
        dynamic = "all" if self.dynamic_index is None else self.dynamic_index.numel()
        return (f"kernel={tuple(shape)}, dynamic positions={dynamic}, stride={self.stride}, padding={self.padding}, "
                f"groups={self.groups}")


class AttentionLayer(nn.Module):
    """The kernel attention of DY-Conv (spec b.1): GAP -> 1x1 conv C->hidden (no bias) -> ReLU -> 1x1 conv -> K,
    then ``softmax(z / T)``. No BatchNorm. The 1x1 convs of the pooled 1x1 map run as matrix products (same
    values, less overhead per call)."""

    def __init__(self, c_dim: int, hidden_dim: int, nof_kernels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c_dim, hidden_dim, 1, bias=False)
        self.fc2 = nn.Conv2d(hidden_dim, nof_kernels, 1, bias=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        _kaiming_normal_(self.fc1.weight, hidden_dim)
        _kaiming_normal_(self.fc2.weight, nof_kernels)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        hidden = F.relu(F.linear(self.avgpool(x).flatten(1), self.fc1.weight.flatten(1)))
        z = F.linear(hidden, self.fc2.weight.flatten(1), self.fc2.bias)
        return F.softmax(z / temperature, dim=1)


class DynamicConvBase(nn.Module):
    """What DY-Conv and PAD share: conv arguments, the attention branch, the temperature and the forms.

    ``forms`` are the layer's named forms (the model's configurations, :class:`DynamicNet`), ``form`` the one it
    runs (the last of ``forms`` at construction: the full form). A subclass with a ``"deployed"`` form implements
    :meth:`static_form`; :meth:`_deployed` runs it, rebuilt only when a parameter, buffer or the temperature changed.
    """

    forms: tuple[str, ...] = ()

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
        self.form = self.forms[-1]
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

    def _conv(self, x: torch.Tensor, alphas: torch.Tensor, dynamic: torch.Tensor, static: torch.Tensor | None = None,
              bias: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> torch.Tensor:
        return per_sample_conv(x, alphas, dynamic, static, None, bias, self.stride, self.padding, self.dilation,
                               self.groups, scale)

    def static_form(self, temperature: float | None = None) -> nn.Module:
        """This layer as a module of constants at ``temperature`` (default: the layer's): a
        :class:`PartitionedConv2d`, or a plain ``nn.Conv2d`` when nothing in it depends on the input."""
        raise NotImplementedError(f"{type(self).__name__} has no static form")

    def _partitioned(self, temperature: float | None, dynamic: torch.Tensor, static: torch.Tensor | None = None,
                     index: torch.Tensor | None = None, bias: torch.Tensor | None = None) -> nn.Module:
        """A :class:`PartitionedConv2d` of copies of the given tensors, with the attention at ``temperature``
        folded into fc2 (``softmax(z / T)`` with ``z = fc2(h)``: fc2's weight and bias divided by T)."""
        temperature = self.temperature if temperature is None else float(temperature)
        fc1, fc2 = self.attention.fc1, self.attention.fc2
        clone = lambda t: None if t is None else t.detach().clone()  # noqa: E731
        return PartitionedConv2d(clone(fc1.weight.flatten(1)), fc2.weight.detach().flatten(1) / temperature,
                                 None if fc2.bias is None else fc2.bias.detach() / temperature, clone(dynamic),
                                 clone(static), clone(index), clone(bias), self.stride, self.padding, self.dilation,
                                 self.groups)

    def _plain_conv(self, weight: torch.Tensor) -> nn.Conv2d:
        """A ``nn.Conv2d`` with this layer's geometry and a copy of ``weight`` (O, I/g, kh, kw), no bias."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, bias=False, device=weight.device, dtype=weight.dtype)
        conv.weight.data.copy_(weight.detach())
        return conv

    def _deployed(self, x: torch.Tensor, temperature: float | None) -> torch.Tensor:
        """The ``"deployed"`` forward: :meth:`static_form`, cached until a parameter, a buffer (by storage and
        version counter: in-place updates, ``load_state_dict`` and ``.to()`` all show) or the temperature changes."""
        if self.training and torch.is_grad_enabled():
            raise ConfigurationError(f"configuration 'deployed' of {type(self).__name__} is for inference (its kernels "
                                     "are constants): call .eval(), or set_configuration('training') to train")
        temperature = self.temperature if temperature is None else float(temperature)
        watched = self.__dict__.get("_watched")
        if watched is None:
            watched = self.__dict__["_watched"] = list(self.modules())
        key = (temperature, *((t.data_ptr(), t._version) for m in watched
                              for t in (*m._parameters.values(), *m._buffers.values()) if t is not None))
        cached = self.__dict__.get("_static_form")
        if cached is None or cached[0] != key:
            with torch.no_grad(), torch.inference_mode(False):
                cached = (key, self.static_form(temperature).requires_grad_(False))
            self.__dict__["_static_form"] = cached
        return cached[1](x)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, groups={self.groups}, nof_kernels={self.nof_kernels}")


class DynamicConvolution(DynamicConvBase):
    """DY-Conv (Chen et al. 2020; PAD-Net Sec. 3.1): ``weight`` (K, O, I/g, kh, kw) aggregated by the attention;
    optional ``bias`` (K, O). One form, ``"dynamic"``."""

    forms = ("dynamic",)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, nof_kernels: int = 4,
                 dilation=1, groups: int = 1, bias: bool = True, reduce: int = 16):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, nof_kernels, dilation, groups,
                         reduce)
        self.weight = nn.Parameter(torch.empty(nof_kernels, *self.kernel_shape))
        self._init_kernel(self.weight)
        self.bias = nn.Parameter(torch.zeros(nof_kernels, out_channels)) if bias else None

    def forward(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        return self._conv(x, self._attention(x, temperature), self.weight, bias=self.bias)

    def static_form(self, temperature: float | None = None) -> PartitionedConv2d:
        """The kernels and the attention at ``temperature`` as constants (every position dynamic)."""
        return self._partitioned(temperature, self.weight, bias=self.bias)


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

    Forms: ``"training"`` (default) computes Eq. 5 from the parameters and the mask (differentiable in both, as IMP
    needs); ``"deployed"`` runs :meth:`static_form`, the same values with everything but the attention constant.
    """

    forms = ("deployed", "training")

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

    def kernel_parts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lambda_d M ⊙ Theta_k, lambda_s (1 - M) ⊙ Theta_bar)``: (K, O, I/g, kh, kw) and (O, I/g, kh, kw), so
        that ``W_hat(x) = sum_k alpha_k(x) dynamic_k + static`` (Eq. 5, the factors scaled once per forward rather
        than every sample's kernel)."""
        lambda_d, lambda_s = scale_factors(self.Lambda, self.phi_d)
        mask = self.kernels_weights_mask
        return lambda_d * mask * self.kernels_weights, (lambda_s * (1 - mask) * self.weight)[0]

    def _training_conv(self, x: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
        """Eq. 5 from the parameters: with at least K samples the factors are scaled once (:meth:`kernel_parts`,
        K N entries); with fewer, each sample's aggregated kernel is scaled (B N entries), whichever is less."""
        if x.shape[0] >= self.nof_kernels:
            dynamic, static = self.kernel_parts()
            return self._conv(x, alphas, dynamic, static, self.kernels_bias)
        lambda_d, lambda_s = scale_factors(self.Lambda, self.phi_d)
        mask = self.kernels_weights_mask
        return self._conv(x, alphas, self.kernels_weights, (lambda_s * (1 - mask) * self.weight)[0],
                          self.kernels_bias, (lambda_d * mask)[0])

    def computational_kernel(self, alphas: torch.Tensor) -> torch.Tensor:
        """``W_hat(x)`` (B, O, I/g, kh, kw) for the attention weights ``alphas`` (B, K) (Eq. 5)."""
        dynamic, static = self.kernel_parts()
        return torch.addmm(static.reshape(1, -1), alphas, dynamic.flatten(1)).view(-1, *self.kernel_shape)

    def forward(self, x: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        if self.form == "deployed":
            return self._deployed(x, temperature)
        return self._training_conv(x, self._attention(x, temperature))

    def static_form(self, temperature: float | None = None) -> nn.Module:
        """The layer at its partition as constants (Sec. 3.1): a :class:`PartitionedConv2d` with the static kernel
        ``lambda_s (1 - M) ⊙ Theta_bar`` and the factors ``lambda_d M ⊙ Theta_k``, so that every sample's kernel is
        one ``addmm`` (no static kernel when every position is dynamic); with no dynamic position and no bias, a
        plain ``nn.Conv2d``. The factors stay dense (K N entries, zeros at the static positions): aggregating them
        is as fast as scattering only the K D dynamic ones (:mod:`padnet.dyconv.deploy`'s compact form), or faster
        (``padnet/README.md``)."""
        dynamic, static = self.kernel_parts()
        mask = self.kernels_weights_mask
        if not bool(mask.any()) and self.kernels_bias is None:
            return self._plain_conv(static)
        return self._partitioned(temperature, dynamic, None if bool(mask.all()) else static, bias=self.kernels_bias)

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
    reaches every dynamic layer; ``update_temperature`` is the original's name for setting it.

    Configurations (``common.configurations``): the forms of the dynamic layers, ``["deployed", "training"]`` for a
    PAD model (inference at the partition IMP chose, cheapest first; the training form, the default) and
    ``["dynamic"]`` for DY-Conv. ``set_configuration(name)`` puts every dynamic layer in that form.
    """

    def dynamic_modules(self) -> list[tuple[str, nn.Module]]:
        """The dynamic layers the model's configuration and temperature reach."""
        return dynamic_layers(self)

    def configurations(self) -> list[str]:
        forms = [layer.forms for _, layer in self.dynamic_modules()]
        return [name for name in (forms[0] if forms else ()) if all(name in f for f in forms)]

    def set_configuration(self, name: str) -> None:
        check_configuration(self, name)
        for _, layer in self.dynamic_modules():
            layer.form = name

    @property
    def configuration(self) -> str | None:
        """The form the dynamic layers run (None without dynamic layers or when they differ)."""
        forms = {layer.form for _, layer in self.dynamic_modules()}
        return forms.pop() if len(forms) == 1 else None

    @property
    def temperature(self) -> float:
        return self.__dict__.get("_temperature", INITIAL_TEMPERATURE)

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.__dict__["_temperature"] = float(value)
        for _, layer in self.dynamic_modules():
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
