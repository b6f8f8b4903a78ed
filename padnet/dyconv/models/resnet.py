"""ResNets of PAD-Net: the static baseline (``model/resnet.py``), DY-Conv ResNets (``model/resnet_dyconv.py``) and
PAD ResNets (``model/resnet_dyconv_pad.py``), with the original state-dict layouts (spec c).

In the DY and PAD ResNets every conv inside the residual blocks, the 1x1 shortcut convs included, is dynamic; the
7x7 stem and the classifier (a 1x1 conv) are static. The DY models name the shortcut ``downsample`` and the
classifier ``fc``; the PAD models ``shortcut`` and ``linear``. ``scale`` multiplies the stage widths (the
"reduced" ResNets of the proxy experiments); the stem keeps ``in_planes`` channels.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock as StaticBasicBlock
from torchvision.models.resnet import Bottleneck as StaticBottleneck

from padnet.dyconv.layers import (
    CustomSequential,
    DynamicConvolution,
    DynamicNet,
    PAD_DynamicConvolution,
    check_lambda,
    init_model_weights,
)

__all__ = ["BasicBlock", "Bottleneck", "DyResNet", "StaticResNet", "DyResNet10", "DyResNet18", "DyResNet50",
           "DyResNet10_PAD", "DyResNet18_PAD", "DyResNet50_PAD", "resnet10", "resnet18", "resnet50"]


class BasicBlock(nn.Module):
    """Two 3x3 dynamic convs and the residual, with a dynamic 1x1 shortcut when the shape changes."""

    expansion = 1

    def __init__(self, conv, in_planes: int, planes: int, stride: int = 1, shortcut_name: str = "shortcut"):
        super().__init__()
        self.conv1 = conv(in_planes, planes, kernel_size=3, stride=stride, padding=1)
        self.conv2 = conv(planes, planes, kernel_size=3, stride=1, padding=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.bn2 = nn.BatchNorm2d(planes)
        _add_shortcut(self, conv, in_planes, planes * self.expansion, stride, shortcut_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + getattr(self, self.shortcut_name)(x))


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (with the stride) -> 1x1 (x4) dynamic convs and the residual."""

    expansion = 4

    def __init__(self, conv, in_planes: int, planes: int, stride: int = 1, shortcut_name: str = "shortcut"):
        super().__init__()
        self.conv1 = conv(in_planes, planes, kernel_size=1)
        self.conv2 = conv(planes, planes, kernel_size=3, stride=stride, padding=1)
        self.conv3 = conv(planes, self.expansion * planes, kernel_size=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        _add_shortcut(self, conv, in_planes, planes * self.expansion, stride, shortcut_name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return torch.relu(out + getattr(self, self.shortcut_name)(x))


def _add_shortcut(block: nn.Module, conv, in_planes: int, out_planes: int, stride: int, name: str) -> None:
    """The shortcut under its original name: empty (identity) or a dynamic 1x1 conv + BN."""
    layers = () if stride == 1 and in_planes == out_planes else (
        conv(in_planes, out_planes, kernel_size=1, stride=stride), nn.BatchNorm2d(out_planes))
    block.add_module(name, CustomSequential(*layers))
    block.shortcut_name = name


class DyResNet(DynamicNet):
    """The DY / PAD ResNet (``ResNet`` of ``resnet_dyconv.py`` / ``resnet_dyconv_pad.py``), temperature 31 at init.

    ``pad`` selects the PAD layer and names (``shortcut``, ``linear``); ``dropout`` (PAD only) is applied before
    the classifier (the original builds it and then discards it).
    """

    def __init__(self, block, num_blocks, num_classes: int = 1000, in_planes: int = 64, scale: float = 1.0,
                 pad: bool = False, Lambda: str | None = None, dropout: float | None = None, nof_kernels: int = 4,
                 reduce: int = 16):
        super().__init__()
        if pad:
            conv = partial(PAD_DynamicConvolution, bias=False, nof_kernels=nof_kernels, reduce=reduce,
                           Lambda=check_lambda(Lambda))
        else:
            conv = partial(DynamicConvolution, bias=False, nof_kernels=nof_kernels, reduce=reduce)
        shortcut_name = "shortcut" if pad else "downsample"
        self.in_planes = in_planes
        self.conv1 = nn.Conv2d(3, in_planes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (width, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2), strict=True)):
            self.add_module(f"layer{i + 1}", self._make_layer(block, conv, int(width * scale), num_blocks[i], stride,
                                                              shortcut_name))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.classifier_name = "linear" if pad else "fc"
        self.add_module(self.classifier_name, nn.Conv2d(int(512 * scale) * block.expansion, num_classes, 1))
        init_model_weights(self)

    def _make_layer(self, block, conv, planes: int, num_blocks: int, stride: int, shortcut_name: str
                    ) -> CustomSequential:
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(block(conv, self.in_planes, planes, s, shortcut_name))
            self.in_planes = planes * block.expansion
        return CustomSequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        classifier = getattr(self, self.classifier_name)
        return classifier(self.dropout(self.avgpool(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class StaticResNet(nn.Module):
    """The static ResNet of ``model/resnet.py`` (torchvision's blocks and key layout; ``scale`` also scales the
    stem), with its init: convs N(0, 2/(k^2 out)), BN 1/0, the ``fc`` Linear N(0, (1/in)^2) with zero bias."""

    def __init__(self, block, layers, num_classes: int = 1000, inplanes: int = 64, scale: float = 1.0):
        super().__init__()
        self.inplanes = int(inplanes * scale)
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (width, stride) in enumerate(zip((64, 128, 256, 512), (1, 2, 2, 2), strict=True)):
            self.add_module(f"layer{i + 1}", self._make_layer(block, int(width * scale), layers[i], stride))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(int(512 * scale) * block.expansion, num_classes)
        init_model_weights(self)
        nn.init.normal_(self.fc.weight, 0, 1.0 / self.fc.in_features)
        nn.init.zeros_(self.fc.bias)

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ------------------------------------------------------------------------------------ factories (original names)
def resnet10(num_classes: int = 1000, scale: float = 1.0) -> StaticResNet:
    return StaticResNet(StaticBasicBlock, [1, 1, 1, 1], num_classes=num_classes, scale=scale)


def resnet18(num_classes: int = 1000, scale: float = 1.0) -> StaticResNet:
    return StaticResNet(StaticBasicBlock, [2, 2, 2, 2], num_classes=num_classes, scale=scale)


def resnet50(num_classes: int = 1000, scale: float = 1.0) -> StaticResNet:
    return StaticResNet(StaticBottleneck, [3, 4, 6, 3], num_classes=num_classes, scale=scale)


def DyResNet10(num_classes: int = 1000, in_planes: int = 64, scale: float = 1.0, nof_kernels: int = 4,  # noqa: N802
               reduce: int = 16) -> DyResNet:
    return DyResNet(BasicBlock, [1, 1, 1, 1], num_classes, in_planes, scale, nof_kernels=nof_kernels, reduce=reduce)


def DyResNet18(num_classes: int = 1000, in_planes: int = 64, scale: float = 1.0, nof_kernels: int = 4,  # noqa: N802
               reduce: int = 16) -> DyResNet:
    return DyResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_planes, scale, nof_kernels=nof_kernels, reduce=reduce)


def DyResNet50(num_classes: int = 1000, in_planes: int = 64, scale: float = 1.0, nof_kernels: int = 4,  # noqa: N802
               reduce: int = 16) -> DyResNet:
    return DyResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_planes, scale, nof_kernels=nof_kernels, reduce=reduce)


def DyResNet10_PAD(num_classes: int = 1000, in_planes: int = 64, scale: float = 1.0,  # noqa: N802
                   dropout: float | None = None, Lambda: str | None = None, nof_kernels: int = 4,
                   reduce: int = 16) -> DyResNet:
    return DyResNet(BasicBlock, [1, 1, 1, 1], num_classes, in_planes, scale, pad=True, Lambda=Lambda, dropout=dropout,
                    nof_kernels=nof_kernels, reduce=reduce)


def DyResNet18_PAD(num_classes: int = 1000, in_planes: int = 64, scale: float = 1.0,  # noqa: N802
                   dropout: float | None = None, Lambda: str | None = None, nof_kernels: int = 4,
                   reduce: int = 16) -> DyResNet:
    return DyResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_planes, scale, pad=True, Lambda=Lambda, dropout=dropout,
                    nof_kernels=nof_kernels, reduce=reduce)


def DyResNet50_PAD(num_classes: int = 1000, in_planes: int = 64, scale: float = 1.0,  # noqa: N802
                   dropout: float | None = None, Lambda: str | None = None, nof_kernels: int = 4,
                   reduce: int = 16) -> DyResNet:
    return DyResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_planes, scale, pad=True, Lambda=Lambda, dropout=dropout,
                    nof_kernels=nof_kernels, reduce=reduce)
