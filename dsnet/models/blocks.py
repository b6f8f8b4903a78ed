"""DS-Net blocks: the SE / double-headed gate and the depthwise-separable block (paper Sec. 3.2; spec Sec. 1, 3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import make_divisible
from torch import nn

from dsnet.models.ops import DSAdaptiveAvgPool2d, DSBatchNorm2d, DSdwConv2d, DSpwConv2d, Route

__all__ = ["DSDepthwiseSeparable", "DSStage", "MultiHeadGate", "gumbel_softmax", "sample_gumbel"]


def sample_gumbel(logits: torch.Tensor) -> torch.Tensor:
    """Gumbel(0, 1) noise drawn as the original does: ``-log(Exp(1))``."""
    return -torch.empty_like(logits).exponential_().log()


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, noise: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gumbel-softmax with a straight-through hard one-hot (Sec. 3.2).

    Returns ``(y_soft, st, index, scores)``: the probabilities ``softmax(scores)`` of the noisy scores
    ``(logits + g) / tau``, the one-hot of their argmax whose gradient is that of ``y_soft``, the argmax, and the
    scores. ``noise=False`` uses ``g = 0``.
    """
    gumbels = sample_gumbel(logits) if noise else torch.zeros_like(logits)
    scores = (logits + gumbels) / tau
    y_soft = scores.softmax(dim=1)
    index = y_soft.argmax(dim=1)
    y_hard = F.one_hot(index, logits.size(1)).to(y_soft.dtype)
    return y_soft, y_hard - y_soft.detach() + y_soft, index, scores


class MultiHeadGate(nn.Module):
    """The double-headed dynamic gate (Sec. 3.2, Fig. 3): an SE attention head and, optionally, a slimming head.

    Attention head: global pool -> ``conv_reduce`` (bias) -> ReLU -> ``conv_expand`` (bias) -> sigmoid ->
    ``x * attn``; the reduced width is fixed by the widest input. Slimming head (``channel_gate_num`` > 1): a
    bias-free 1x1 conv from the reduced features to one logit per route, stored as ``gate.0``.
    """

    def __init__(self, in_chs: Sequence[int], se_ratio: float = 0.25, channel_gate_num: int = 0):
        super().__init__()
        reduced_chs = make_divisible(in_chs[-1] * se_ratio, divisor=1)
        self.avg_pool = DSAdaptiveAvgPool2d(1, in_chs)
        self.conv_reduce = DSpwConv2d(in_chs, [reduced_chs], bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = DSpwConv2d([reduced_chs], in_chs, bias=True)
        self.has_gate = channel_gate_num > 1
        if self.has_gate:
            self.gate = nn.Sequential(DSpwConv2d([reduced_chs], [channel_gate_num], bias=False))

    def forward(self, x: torch.Tensor, route: Route | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x * attn, x_reduced)``; ``x_reduced`` is the slimming head's input."""
        x_reduced = self.act1(self.conv_reduce(self.avg_pool(x)))
        attn = self.conv_expand(x_reduced, route if route is not None else x.size(1)).sigmoid()
        return x * attn, x_reduced

    def route(self, x_reduced: torch.Tensor, choices: tuple[int, ...], noise: bool = True) -> Route:
        """The slimming head's decision over the routing space ``choices`` (one route per gate output)."""
        logits = self.gate(x_reduced).flatten(1)
        y_soft, st, index, scores = gumbel_softmax(logits, noise=noise)
        return Route(st=st, index=index, y_soft=y_soft, scores=scores, choices=choices)


class DSDepthwiseSeparable(nn.Module):
    """``conv_dw -> bn1 -> act -> SE (gate) -> conv_pw -> bn2 -> act`` with no residual (MobileNetV1, spec Sec. 1)."""

    def __init__(self, in_channels_list: Sequence[int], out_channels_list: Sequence[int], kernel_size: int = 3,
                 stride: int = 1, act_layer: type[nn.Module] = nn.SiLU, se_ratio: float = 0.25,
                 has_gate: bool = False):
        super().__init__()
        self.in_channels_list = list(in_channels_list)
        self.out_channels_list = list(out_channels_list)
        self.has_gate = has_gate
        self.conv_dw = DSdwConv2d(in_channels_list, kernel_size, stride=stride, bias=False)
        self.bn1 = DSBatchNorm2d(in_channels_list)
        self.act1 = act_layer(inplace=True)
        self.gate = MultiHeadGate(in_channels_list, se_ratio=se_ratio, channel_gate_num=4 if has_gate else 0)
        self.conv_pw = DSpwConv2d(in_channels_list, out_channels_list, bias=False)
        self.bn2 = DSBatchNorm2d(out_channels_list)
        self.act2 = act_layer(inplace=True)

    def forward_pre_gate(self, x: torch.Tensor, route: Route | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Depthwise conv, BN, activation and SE at the input's width; returns ``(x, x_reduced)``."""
        x = self.act1(self.bn1(self.conv_dw(x, route), route))
        return self.gate(x, route)

    def forward_post_gate(self, x: torch.Tensor, out: int | Route) -> torch.Tensor:
        """Point-wise conv to width ``out`` (or the route's widths), BN, activation."""
        return self.act2(self.bn2(self.conv_pw(x, out), out if isinstance(out, Route) else None))

    def forward(self, x: torch.Tensor, choice: int | Route) -> torch.Tensor:
        """``choice``: index into ``out_channels_list`` (-1 = widest), or a :class:`Route` (masked dynamic path)."""
        if isinstance(choice, Route):
            x, _ = self.forward_pre_gate(x, choice if len(self.in_channels_list) > 1 else None)
            return self.forward_post_gate(x, choice)
        x, _ = self.forward_pre_gate(x)
        return self.forward_post_gate(x, self.out_channels_list[choice])


class DSStage(nn.Module):
    """``first_block`` (stride, width change, maybe the gate) followed by ``residual_blocks`` (stride 1)."""

    def __init__(self, in_channels_list: Sequence[int], out_channels_list: Sequence[int], layer_num: int,
                 kernel_size: int = 3, stride: int = 1, act_layer: type[nn.Module] = nn.SiLU,
                 se_ratio: float = 0.25, has_gate: bool = False):
        super().__init__()
        self.first_block = DSDepthwiseSeparable(in_channels_list, out_channels_list, kernel_size, stride, act_layer,
                                                se_ratio, has_gate)
        self.residual_blocks = nn.Sequential(*[
            DSDepthwiseSeparable(out_channels_list, out_channels_list, kernel_size, 1, act_layer, se_ratio)
            for _ in range(layer_num - 1)])

    def forward_rest(self, x: torch.Tensor, choice: int | Route) -> torch.Tensor:
        """The blocks after the first one."""
        for block in self.residual_blocks:
            x = block(x, choice)
        return x

    def forward(self, x: torch.Tensor, choice: int | Route) -> torch.Tensor:
        return self.forward_rest(self.first_block(x, choice), choice)
