"""MobileNetV2 of PAD-Net: DY-Conv (``model/mobilenetv2_dyconv.py``), PAD (``model/mobilenetv2_dyconv_pad.py``) and
the static baseline (torchvision's, as the reference manifests use; the repo's own imports an unavailable package).

Every conv of the inverted-residual blocks (expansion 1x1, depthwise 3x3, projection 1x1) and the final 1x1 conv to
1280 channels is dynamic (51 layers); the 3x3 stem and the classifier (a 1x1 conv, ``classifier.0``) are static.
Channels are ``_make_divisible(c * width_multiplier, 8)``; the original's default width is 0.35 (spec c).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models import mobilenet_v2
from torchvision.models._utils import _make_divisible

from padnet.dyconv.layers import (
    CustomSequential,
    DynamicConvolution,
    DynamicNet,
    PAD_DynamicConvolution,
    check_lambda,
    init_model_weights,
)

__all__ = ["CFGS", "DyMobileNetV2", "InvertedResidual", "Dymobilenetv2", "Dymobilenetv2_PAD", "mobilenetv2"]

CFGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn_relu6(conv, inp: int, oup: int, kernel_size: int, stride: int) -> CustomSequential:
    return CustomSequential(conv(inp, oup, kernel_size, stride, kernel_size // 2, bias=False), nn.BatchNorm2d(oup),
                            nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """Expansion 1x1 (if t > 1) -> depthwise 3x3 -> linear projection 1x1, all dynamic; residual iff stride 1 and
    ``inp == oup``."""

    def __init__(self, conv, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden_dim = round(inp * expand_ratio)
        self.identity = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers += [conv(inp, hidden_dim, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden_dim), nn.ReLU6(inplace=True)]
        layers += [conv(hidden_dim, hidden_dim, 3, stride, 1, groups=hidden_dim, bias=False),
                   nn.BatchNorm2d(hidden_dim), nn.ReLU6(inplace=True),
                   conv(hidden_dim, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = CustomSequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.identity else self.conv(x)


class DyMobileNetV2(DynamicNet):
    """``DyMobileNetV2`` / ``DyMobileNetV2_PAD`` (temperature 31 at init). ``pad`` selects the PAD layer and the
    PAD model's init (convs N(0, 2/(k^2 out)), zero biases, BN 1/0); the DY model keeps the layers' own init (its
    ``_initialize_weights`` is commented out in the original). With ``dropout`` the classifier is
    ``Sequential(Dropout, Conv2d)`` and its keys move to ``classifier.1``, as in the original."""

    def __init__(self, num_classes: int = 1000, width_multiplier: float = 0.35, dropout: float | None = None,
                 pad: bool = False, Lambda: str | None = None, nof_kernels: int = 4, reduce: int = 16):
        super().__init__()
        if pad:
            conv = partial(PAD_DynamicConvolution, nof_kernels=nof_kernels, reduce=reduce, Lambda=check_lambda(Lambda))
        else:
            conv = partial(DynamicConvolution, nof_kernels=nof_kernels, reduce=reduce)
        divisor = 4 if width_multiplier == 0.1 else 8
        input_channel = _make_divisible(32 * width_multiplier, divisor)
        layers: list[nn.Module] = [_conv_bn_relu6(nn.Conv2d, 3, input_channel, 3, 2)]
        for t, c, n, s in CFGS:
            output_channel = _make_divisible(c * width_multiplier, divisor)
            for i in range(n):
                layers.append(InvertedResidual(conv, input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        self.features = CustomSequential(*layers)
        self.output_channel = _make_divisible(1280 * width_multiplier, divisor) if width_multiplier > 1.0 else 1280
        self.conv = _conv_bn_relu6(conv, input_channel, self.output_channel, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        head: list[nn.Module] = [nn.Dropout(p=dropout)] if dropout is not None else []
        self.classifier = nn.Sequential(*head, nn.Conv2d(self.output_channel, num_classes, kernel_size=1))
        if pad:
            init_model_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.features(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------------ factories (original names)
def Dymobilenetv2(num_classes: int = 1000, width_multiplier: float = 0.35, dropout: float | None = None,  # noqa: N802
                  nof_kernels: int = 4, reduce: int = 16) -> DyMobileNetV2:
    """DY-MobileNetV2 (the original factory crashes; this is ``DyMobileNetV2(conv_layer=DynamicConvolution)``)."""
    return DyMobileNetV2(num_classes, width_multiplier, dropout, nof_kernels=nof_kernels, reduce=reduce)


def Dymobilenetv2_PAD(num_classes: int = 1000, width_multiplier: float = 0.35,  # noqa: N802
                      dropout: float | None = None, Lambda: str | None = None, nof_kernels: int = 4,
                      reduce: int = 16) -> DyMobileNetV2:
    """PAD MobileNetV2; ``Lambda`` reaches the layers here (the original factory drops it, so its models run with
    ``Lambda=None``, the default)."""
    return DyMobileNetV2(num_classes, width_multiplier, dropout, pad=True, Lambda=Lambda, nof_kernels=nof_kernels,
                         reduce=reduce)


def mobilenetv2(num_classes: int = 1000, width_multiplier: float = 1.0, dropout: float = 0.2) -> nn.Module:
    """The static MobileNetV2 baseline: torchvision's ``mobilenet_v2(width_mult=width_multiplier)``."""
    return mobilenet_v2(num_classes=num_classes, width_mult=width_multiplier, dropout=dropout)
