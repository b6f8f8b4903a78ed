"""ODConv ResNets of PAD-Net: ``OD_ResNet`` (``model/resnet_odconv.py``) and ``OD_ResNet_PAD``
(``model/resnet_odconv_pad.py``), with the original state-dict layout (``padnet/README.md``, "ODConv").

Every 3x3 and 1x1 conv inside the residual blocks is an ODConv (K = 4 by default); the 7x7 stem, the 1x1
shortcut convs (``downsample``) and the classifier (``fc``, a Linear after dropout 0.1) are static. ``scale`` and
``in_planes`` (stage-width multiplier and stem width, for the small proxies) are additions; 1.0 and 64 are the
original model.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from padnet.dyconv.layers import CustomSequential, check_lambda
from padnet.dyconv.odconv import REDUCTION, ODConv2d, ODConv2d_PAD, ODNet

__all__ = ["BasicBlock", "Bottleneck", "OD_ResNet", "od_resnet10", "od_resnet10_pad", "od_resnet18", "od_resnet18_pad",
           "od_resnet34", "od_resnet34_pad", "od_resnet50", "od_resnet50_pad", "od_resnet101", "od_resnet101_pad"]


class BasicBlock(nn.Module):
    """Two 3x3 ODConvs and the residual (through the static ``downsample`` when the shape changes)."""

    expansion = 1

    def __init__(self, conv, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv(inplanes, planes, 3, stride=stride, padding=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv(planes, planes, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (with the stride) -> 1x1 (x4) ODConvs and the residual."""

    expansion = 4

    def __init__(self, conv, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv(inplanes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv(planes, planes, 3, stride=stride, padding=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv(planes, planes * self.expansion, 1)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class OD_ResNet(ODNet):  # noqa: N801 (the original class name)
    """``OD_ResNet`` / ``OD_ResNet_PAD`` (temperature 31 at init). ``pad`` selects :class:`ODConv2d_PAD` with
    ``Lambda`` (the original never passes its ``Lambda`` to the layers, which then train every scale logit, i.e.
    run "both", the default here). Init as the original: convs He (fan out), BN 1/0, ``fc`` N(0, 0.01^2), bias 0."""

    def __init__(self, block, layers, num_classes: int = 1000, dropout: float = 0.1, reduction: float = REDUCTION,
                 kernel_num: int = 4, pad: bool = False, Lambda: str | None = "both", scale: float = 1.0,
                 in_planes: int = 64):
        super().__init__()
        if pad:
            conv = partial(ODConv2d_PAD, reduction=reduction, kernel_num=kernel_num, Lambda=check_lambda(Lambda))
        else:
            conv = partial(ODConv2d, reduction=reduction, kernel_num=kernel_num)
        self.inplanes = in_planes
        self.conv1 = nn.Conv2d(3, in_planes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (width, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2), strict=True)):
            self.add_module(f"layer{i + 1}", self._make_layer(block, conv, int(width * scale), layers[i], stride))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(int(512 * scale) * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, conv, planes: int, blocks: int, stride: int) -> CustomSequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = CustomSequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(conv, self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(conv, self.inplanes, planes) for _ in range(1, blocks)]
        return CustomSequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------------ factories (original names)
_DEPTHS = {10: (BasicBlock, [1, 1, 1, 1]), 18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
           50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3])}


def _od_resnet(depth: int, pad: bool, num_classes: int, dropout: float, reduction: float, kernel_num: int,
               Lambda: str | None, scale: float, in_planes: int) -> OD_ResNet:
    block, layers = _DEPTHS[depth]
    return OD_ResNet(block, layers, num_classes, dropout, reduction, kernel_num, pad, Lambda, scale, in_planes)


def od_resnet10(num_classes: int = 1000, dropout: float = 0.1, reduction: float = REDUCTION, kernel_num: int = 4,
                scale: float = 1.0, in_planes: int = 64) -> OD_ResNet:
    return _od_resnet(10, False, num_classes, dropout, reduction, kernel_num, None, scale, in_planes)


def od_resnet18(num_classes: int = 1000, dropout: float = 0.1, reduction: float = REDUCTION, kernel_num: int = 4,
                scale: float = 1.0, in_planes: int = 64) -> OD_ResNet:
    return _od_resnet(18, False, num_classes, dropout, reduction, kernel_num, None, scale, in_planes)


def od_resnet34(num_classes: int = 1000, dropout: float = 0.1, reduction: float = REDUCTION, kernel_num: int = 4,
                scale: float = 1.0, in_planes: int = 64) -> OD_ResNet:
    return _od_resnet(34, False, num_classes, dropout, reduction, kernel_num, None, scale, in_planes)


def od_resnet50(num_classes: int = 1000, dropout: float = 0.1, reduction: float = REDUCTION, kernel_num: int = 4,
                scale: float = 1.0, in_planes: int = 64) -> OD_ResNet:
    return _od_resnet(50, False, num_classes, dropout, reduction, kernel_num, None, scale, in_planes)


def od_resnet101(num_classes: int = 1000, dropout: float = 0.1, reduction: float = REDUCTION, kernel_num: int = 4,
                 scale: float = 1.0, in_planes: int = 64) -> OD_ResNet:
    return _od_resnet(101, False, num_classes, dropout, reduction, kernel_num, None, scale, in_planes)


def od_resnet10_pad(num_classes: int = 1000, dropout: float = 0.1, reduction: float = REDUCTION, kernel_num: int = 4,
                    Lambda: str | None = "both", scale: float = 1.0, in_planes: int = 64) -> OD_ResNet:
    return _od_resnet(10, True, num_classes, dropout, reduction, kernel_num, Lambda, scale, in_planes)


def od_resnet18_pad(num_classes: int = 1000, dropout: float = 0.1, reduction: float = REDUCTION, kernel_num: int = 4,
                    Lambda: str | None = "both", scale: float = 1.0, in_planes: int = 64) -> OD_ResNet:
    return _od_resnet(18, True, num_classes, dropout, reduction, kernel_num, Lambda, scale, in_planes)


def od_resnet34_pad(num_classes: int = 1000, dropout: float = 0.1, reduction: float = REDUCTION, kernel_num: int = 4,
                    Lambda: str | None = "both", scale: float = 1.0, in_planes: int = 64) -> OD_ResNet:
    return _od_resnet(34, True, num_classes, dropout, reduction, kernel_num, Lambda, scale, in_planes)


def od_resnet50_pad(num_classes: int = 1000, dropout: float = 0.1, reduction: float = REDUCTION, kernel_num: int = 4,
                    Lambda: str | None = "both", scale: float = 1.0, in_planes: int = 64) -> OD_ResNet:
    return _od_resnet(50, True, num_classes, dropout, reduction, kernel_num, Lambda, scale, in_planes)


def od_resnet101_pad(num_classes: int = 1000, dropout: float = 0.1, reduction: float = REDUCTION,
                     kernel_num: int = 4, Lambda: str | None = "both", scale: float = 1.0,
                     in_planes: int = 64) -> OD_ResNet:
    return _od_resnet(101, True, num_classes, dropout, reduction, kernel_num, Lambda, scale, in_planes)
