"""Slimmable operators of DS-Net (paper Sec. 3.1; spec Sec. 2).

Every operator holds the weights of its widest configuration and, for a narrower one, runs the *slice* of its
first channels: ``weight[:out_c, :in_c]``. The input width is read from the tensor and the output width is
passed in, so the sliced weight is what executes and a slim sub-network really costs less.

The dynamic path of Stage II (spec Sec. 3) is the one place where masking is kept: to let gradients reach the
gate through the straight-through one-hot ``st``, an operator given a :class:`Route` runs at full width and
keeps, for each sample, the first ``w_k`` channels of its chosen route ``k``
(``out = sum_k st[:, k] * x[:, :w_k]``), with batch-norm statistics mixed by the same one-hot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import torch
import torch.nn.functional as F
from torch import nn

# weight slices a slimmable layer keeps in evaluation (SlicedWeights): one per route of the gate's routing space
KEPT_SLICES = 4

__all__ = ["DSAdaptiveAvgPool2d", "DSBatchNorm2d", "DSConv2d", "DSLinear", "DSdwConv2d", "DSpwConv2d", "Route",
           "SlicedWeights"]


@dataclass
class Route:
    """A per-sample routing decision of the slimming gate (Sec. 3.2, Eq. 4).

    ``st`` is the straight-through one-hot ``[B, R]`` over the routing space ``choices`` (indices into every
    width list, e.g. ``(0, 1, 2, 3)`` for the released model's four slimmest sub-networks); ``index`` is the
    chosen route per sample, ``y_soft`` the Gumbel-softmax probabilities and ``scores`` the noisy logits
    ``(logits + g) / tau`` they are the softmax of.
    """

    st: torch.Tensor
    index: torch.Tensor
    y_soft: torch.Tensor
    scores: torch.Tensor
    choices: tuple[int, ...]

    def widths(self, channels_list: Sequence[int]) -> torch.Tensor:
        """The per-sample width ``st @ [channels_list[c] for c in choices]``: differentiable in ``st``.

        In float64 (also under autocast, where half precision would overflow the MAdds built from it), so that
        they are exact integers for a one-hot ``st``.
        """
        table = torch.tensor([float(channels_list[c]) for c in self.choices], dtype=torch.float64,
                             device=self.st.device)
        with torch.autocast(self.st.device.type, enabled=False):
            return self.st.double() @ table

    def channel_mask(self, channels_list: Sequence[int], num_channels: int) -> torch.Tensor:
        """``[B, C]``: ``mask[b, c] = sum_k st[b, k] * [c < w_k]``, the masks of all routes mixed by ``st``."""
        limits = torch.tensor([channels_list[c] for c in self.choices], device=self.st.device)
        keep = torch.arange(num_channels, device=self.st.device)[None, :] < limits[:, None]
        return self.st @ keep.to(self.st.dtype)

    def apply(self, x: torch.Tensor, channels_list: Sequence[int]) -> torch.Tensor:
        """Keep each sample's first ``w_k`` channels (``apply_differentiable_gate_channel`` of the original)."""
        return x * self.channel_mask(channels_list, x.size(1))[:, :, None, None]


class SlicedWeights:
    """The slices of the widest layer's parameters that a slimmable layer runs at a width (Sec. 3.1), kept in
    evaluation.

    In training, or with gradients enabled, a slice is a view taken on every call (the gradient flows into the
    shared parameter). In evaluation without gradients :meth:`sliced` makes it a compact copy once (a strided view
    would be copied by every convolution) and keeps it, for up to ``KEPT_SLICES`` widths, until the parameter
    changes (its version counter, or its storage after ``.to()``); ``train()`` drops them all.
    """

    training: bool

    def _init_slices(self) -> None:
        self._slices: dict[tuple[int, int | None], tuple[tuple[int, int, int], torch.Tensor, torch.Tensor | None]] = {}

    def train(self, mode: bool = True) -> Self:
        self._slices.clear()
        return super().train(mode)  # type: ignore[misc]

    def sliced(self, weight: torch.Tensor, bias: torch.Tensor | None, out_c: int, in_c: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(weight[:out_c, :in_c], bias[:out_c])`` (``weight[:out_c]`` when ``in_c`` is ``None``); in evaluation
        without gradients compact copies, kept."""
        if self.training or torch.is_grad_enabled():
            return weight[:out_c] if in_c is None else weight[:out_c, :in_c], None if bias is None else bias[:out_c]
        stamp = (weight._version, weight.data_ptr(), -1 if bias is None else bias._version)
        kept = self._slices.get((out_c, in_c))
        if kept is None or kept[0] != stamp:
            if len(self._slices) >= KEPT_SLICES:
                self._slices.clear()
            w = weight[:out_c] if in_c is None else weight[:out_c, :in_c]
            kept = self._slices[(out_c, in_c)] = (stamp, w.clone(memory_format=torch.contiguous_format),
                                                 None if bias is None else bias[:out_c].clone())
        return kept[1], kept[2]


class DSConv2d(SlicedWeights, nn.Conv2d):
    """Slimmable convolution; ``out`` is an output width, a :class:`Route`, or ``None`` (widest).

    Padding is ``((stride - 1) + dilation * (k - 1)) // 2`` as in the original ``DSConv2d``. The weight slice
    comes from :meth:`SlicedWeights.sliced`.
    """

    def __init__(self, in_channels_list: Sequence[int], out_channels_list: Sequence[int], kernel_size: int,
                 stride: int = 1, depthwise: bool = False, bias: bool = True):
        in_channels_list, out_channels_list = list(in_channels_list), list(out_channels_list)
        padding = ((stride - 1) + (kernel_size - 1)) // 2
        super().__init__(in_channels_list[-1], out_channels_list[-1], kernel_size, stride=stride, padding=padding,
                         groups=out_channels_list[-1] if depthwise else 1, bias=bias)
        self.in_channels_list = in_channels_list
        self.out_channels_list = out_channels_list
        self.depthwise = depthwise
        self._init_slices()

    def forward(self, x: torch.Tensor, out: int | Route | None = None) -> torch.Tensor:
        in_c = x.size(1)
        if self.depthwise:  # one filter per channel: weight[:in_c] (its second dimension has size 1)
            out_c, groups = in_c, in_c
        else:
            out_c, groups = out if isinstance(out, int) else self.out_channels, 1
        weight, bias = self.sliced(self.weight, self.bias, out_c, in_c)
        y = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)
        if isinstance(out, Route) and len(self.out_channels_list) > 1:
            y = out.apply(y, self.out_channels_list)
        return y


class DSdwConv2d(DSConv2d):
    """Slimmable depthwise convolution: as many groups as active channels."""

    def __init__(self, channels_list: Sequence[int], kernel_size: int, stride: int = 1, bias: bool = False):
        super().__init__(channels_list, channels_list, kernel_size, stride=stride, depthwise=True, bias=bias)


class DSpwConv2d(DSConv2d):
    """Slimmable point-wise (1x1) convolution."""

    def __init__(self, in_channels_list: Sequence[int], out_channels_list: Sequence[int], bias: bool = True):
        super().__init__(in_channels_list, out_channels_list, 1, bias=bias)


class DSBatchNorm2d(SlicedWeights, nn.Module):
    """Batch norm with private running statistics per width and one shared affine (spec Sec. 2).

    ``aux_bn[i]`` holds the statistics of width ``num_features_list[i]``; only the widest one is affine, and a
    narrower width uses the first channels of its weight and bias. The statistics are looked up by the number
    of channels of the input, so they follow whatever width ran before. The shared ``momentum`` (0.1) applies to
    every width; ``None`` averages all batches with equal weight (counted per width in ``num_batches_tracked``,
    which the momentum path never increments, as the original), which the BN recalibration may use.
    """

    def __init__(self, num_features_list: Sequence[int], eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.out_channels_list = list(num_features_list)
        self.aux_bn = nn.ModuleList([nn.BatchNorm2d(c, affine=False) for c in self.out_channels_list[:-1]])
        self.aux_bn.append(nn.BatchNorm2d(self.out_channels_list[-1], eps=eps, momentum=momentum))
        self._stats = dict(zip(self.out_channels_list, self.aux_bn, strict=True))  # width -> its BN (fast look-up)
        self._init_slices()

    def forward(self, x: torch.Tensor, route: Route | None = None) -> torch.Tensor:
        shared = self._stats[self.out_channels_list[-1]]
        channels = x.size(1)
        weight, bias = self.sliced(shared.weight, shared.bias, channels)
        if route is not None and len(self.out_channels_list) > 1:
            return self._forward_route(x, route, weight, bias)
        bn = self._stats.get(channels)
        if bn is None:
            raise ValueError(f"DSBatchNorm2d has statistics for widths {self.out_channels_list}, "
                             f"not for {channels} channels")
        momentum = shared.momentum
        if momentum is None:  # equal-weight (cumulative) average of the batches seen, as PyTorch's momentum=None
            momentum = 0.0
            if self.training:
                bn.num_batches_tracked.add_(1)
                momentum = 1.0 / float(bn.num_batches_tracked)
        return F.batch_norm(x, bn.running_mean, bn.running_var, weight, bias, self.training, momentum, shared.eps)

    def _forward_route(self, x: torch.Tensor, route: Route, weight: torch.Tensor,
                       bias: torch.Tensor) -> torch.Tensor:
        """Normalise with the running statistics of each sample's route (always the running ones), then mask."""
        channels = x.size(1)
        means = torch.stack([F.pad(self.aux_bn[c].running_mean, (0, channels - self.out_channels_list[c]))
                             for c in route.choices])
        variances = torch.stack([F.pad(self.aux_bn[c].running_var, (0, channels - self.out_channels_list[c]))
                                 for c in route.choices])
        mean = (route.st @ means)[:, :, None, None]
        var = (route.st @ variances)[:, :, None, None]
        y = (x - mean) / torch.sqrt(var + self.aux_bn[-1].eps)
        y = y * weight[None, :, None, None] + bias[None, :, None, None]
        return route.apply(y, self.out_channels_list)


class DSLinear(SlicedWeights, nn.Linear):
    """Slimmable classifier: ``weight[:, :in_c]`` for an input of ``in_c`` features (:class:`SlicedWeights`)."""

    def __init__(self, in_features_list: Sequence[int], out_features: int, bias: bool = True):
        super().__init__(in_features_list[-1], out_features, bias=bias)
        self.in_channels_list = list(in_features_list)
        self._init_slices()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, *self.sliced(self.weight, self.bias, self.out_features, x.size(1)))


class DSAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """Adaptive average pooling over whatever width arrives (kept as a module for the MAdds convention)."""

    def __init__(self, output_size: int, channels_list: Sequence[int]):
        super().__init__(output_size)
        self.in_channels_list = list(channels_list)
