"""ODConv MobileNetV2 of PAD-Net: ``OD_MobileNetV2`` of ``model/mobilenetv2_odconv.py`` and of
``model/mobilenetv2_odconv_pad.py`` (the PAD one), with the original state-dict layout (``padnet/README.md``,
"ODConv").

Every conv of the inverted residual blocks (expansion 1x1, depthwise 3x3, projection 1x1) and the final 1x1 conv
to ``1280 * max(1, width_mult)`` channels is an ODConv (K = 1 by default, the original's); the 3x3 stem and the
classifier (dropout 0.2, Linear) are static. Channels are ``_make_divisible(c * width_mult, 8)``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models._utils import _make_divisible

from padnet.dyconv.layers import CustomSequential, check_lambda
from padnet.dyconv.models.mobilenetv2 import CFGS
from padnet.dyconv.odconv import REDUCTION, ODConv2d, ODConv2d_PAD, ODNet

__all__ = ["InvertedResidual", "OD_MobileNetV2", "od_mobilenetv2", "od_mobilenetv2_050", "od_mobilenetv2_050_pad",
           "od_mobilenetv2_075", "od_mobilenetv2_075_pad", "od_mobilenetv2_100", "od_mobilenetv2_100_pad",
           "od_mobilenetv2_pad"]


def _od_conv_bn_relu(conv, inp: int, oup: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
                     ) -> CustomSequential:
    """The original ``ODConvBNReLU``: ODConv, BN, ReLU6 (its keys carry ``.layers.``)."""
    return CustomSequential(conv(inp, oup, kernel_size, stride, (kernel_size - 1) // 2, groups=groups),
                            nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """Expansion 1x1 (if t > 1) -> depthwise 3x3 -> linear projection 1x1, all ODConvs; residual iff stride 1 and
    ``inp == oup``."""

    def __init__(self, conv, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden_dim = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_od_conv_bn_relu(conv, inp, hidden_dim, kernel_size=1))
        layers += [_od_conv_bn_relu(conv, hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),
                   conv(hidden_dim, oup, 1, 1, 0), nn.BatchNorm2d(oup)]
        self.conv = CustomSequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class OD_MobileNetV2(ODNet):  # noqa: N801 (the original class name)
    """``OD_MobileNetV2`` (temperature 31 at init); ``pad`` selects :class:`ODConv2d_PAD` with ``Lambda`` ("both",
    what the original's PAD layers run by default). Init as the original: convs He (fan out) with zero biases,
    BN 1/0, the classifier N(0, 0.01^2) with zero bias."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 reduction: float = REDUCTION, kernel_num: int = 1, pad: bool = False, Lambda: str | None = "both"):
        super().__init__()
        if pad:
            conv = partial(ODConv2d_PAD, reduction=reduction, kernel_num=kernel_num, Lambda=check_lambda(Lambda))
        else:
            conv = partial(ODConv2d, reduction=reduction, kernel_num=kernel_num)
        input_channel = _make_divisible(32 * width_mult, 8)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), 8)
        features: list[nn.Module] = [nn.Sequential(
            nn.Conv2d(3, input_channel, 3, 2, 1, bias=False), nn.BatchNorm2d(input_channel), nn.ReLU6(inplace=True))]
        for t, c, n, s in CFGS:
            output_channel = _make_divisible(c * width_mult, 8)
            for i in range(n):
                features.append(InvertedResidual(conv, input_channel, output_channel, s if i == 0 else 1, t))
                input_channel = output_channel
        features.append(_od_conv_bn_relu(conv, input_channel, self.last_channel, kernel_size=1))
        self.features = CustomSequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------------ factories (original names)
def od_mobilenetv2(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                   reduction: float = REDUCTION, kernel_num: int = 1) -> OD_MobileNetV2:
    return OD_MobileNetV2(num_classes, width_mult, dropout, reduction, kernel_num)


def od_mobilenetv2_050(num_classes: int = 1000, dropout: float = 0.2, reduction: float = REDUCTION,
                       kernel_num: int = 1) -> OD_MobileNetV2:
    return OD_MobileNetV2(num_classes, 0.5, dropout, reduction, kernel_num)


def od_mobilenetv2_075(num_classes: int = 1000, dropout: float = 0.2, reduction: float = REDUCTION,
                       kernel_num: int = 1) -> OD_MobileNetV2:
    return OD_MobileNetV2(num_classes, 0.75, dropout, reduction, kernel_num)


def od_mobilenetv2_100(num_classes: int = 1000, dropout: float = 0.2, reduction: float = REDUCTION,
                       kernel_num: int = 1) -> OD_MobileNetV2:
    return OD_MobileNetV2(num_classes, 1.0, dropout, reduction, kernel_num)


def od_mobilenetv2_pad(num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                       reduction: float = REDUCTION, kernel_num: int = 1, Lambda: str | None = "both"
                       ) -> OD_MobileNetV2:
    return OD_MobileNetV2(num_classes, width_mult, dropout, reduction, kernel_num, pad=True, Lambda=Lambda)


def od_mobilenetv2_050_pad(num_classes: int = 1000, dropout: float = 0.2, reduction: float = REDUCTION,
                           kernel_num: int = 1, Lambda: str | None = "both") -> OD_MobileNetV2:
    return od_mobilenetv2_pad(num_classes, 0.5, dropout, reduction, kernel_num, Lambda)


def od_mobilenetv2_075_pad(num_classes: int = 1000, dropout: float = 0.2, reduction: float = REDUCTION,
                           kernel_num: int = 1, Lambda: str | None = "both") -> OD_MobileNetV2:
    return od_mobilenetv2_pad(num_classes, 0.75, dropout, reduction, kernel_num, Lambda)


def od_mobilenetv2_100_pad(num_classes: int = 1000, dropout: float = 0.2, reduction: float = REDUCTION,
                           kernel_num: int = 1, Lambda: str | None = "both") -> OD_MobileNetV2:
    """The x1.0 PAD model (the original's PAD file names it ``od_mobilenetv2_100``, the plain model's name)."""
    return od_mobilenetv2_pad(num_classes, 1.0, dropout, reduction, kernel_num, Lambda)
