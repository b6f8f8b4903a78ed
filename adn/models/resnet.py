"""ResNet-ADN: torchvision's Bottleneck ResNet (v1.5) with skippable sub-paths (Sec. 3.1, Fig. 2).

In every stage of n blocks the first ``min((n + 1) // 2, n - 1)`` blocks form the mandatory sub-path and the
rest the skippable one; for ResNet-50 ([3, 4, 6, 3]) the skippable blocks are ``layer1.2``, ``layer2.2-3``,
``layer3.3-5`` and ``layer4.2``. Mandatory blocks carry skip-aware batch norms ``bn{1,2,3}_skip``, used when
their stage is skipped; the stem ``bn1`` and the ``downsample`` norms are never switched. Module names and
state-dict order are those of the original repository (``wchkang/depth``), so its checkpoints load strictly.

``resnet50vd`` / ``resnet101vd`` are the original's later "variant d" (ResNet-D downsampling, He et al. 2019,
"Bag of Tricks", Sec. 4.1): a stride-2 shortcut averages 2x2 patches (``AvgPool2d(2, 2, ceil_mode=True)``) before
a stride-1 1x1 convolution, so its keys are ``downsample.1`` (conv) and ``downsample.2`` (BN). The stem stays the
7x7 convolution and ``layer1``'s stride-1 shortcut is unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn
from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck
from torchvision.models.resnet import conv1x1

from adn.models.skip import AdaptiveDepthMixin, SkippableSequential


class Bottleneck(TorchvisionBottleneck):
    """A Bottleneck block that is either skippable or has skip-aware norms (``skip_aware_norms=False``: the
    shared-norm ablation, where a mandatory block uses its normal norms in every configuration)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm_layer: Callable[..., nn.Module] = nn.BatchNorm2d, skippable: bool = False,
                 skip_aware_norms: bool = True):
        super().__init__(inplanes, planes, stride, downsample, norm_layer=norm_layer)
        self.skippable = skippable
        self.has_skip_norms = not skippable and skip_aware_norms
        if self.has_skip_norms:
            width = self.bn1.num_features
            self.bn1_skip = norm_layer(width)
            self.bn2_skip = norm_layer(width)
            self.bn3_skip = norm_layer(planes * self.expansion)

    def forward(self, x: torch.Tensor, skip: bool = False) -> torch.Tensor:
        switch = skip and self.has_skip_norms
        out = self.relu((self.bn1_skip if switch else self.bn1)(self.conv1(x)))
        out = self.relu((self.bn2_skip if switch else self.bn2)(self.conv2(out)))
        out = (self.bn3_skip if switch else self.bn3)(self.conv3(out))
        out += x if self.downsample is None else self.downsample(x)  # in place, as torchvision: no new tensor
        return self.relu(out)


class ResNetADN(AdaptiveDepthMixin, nn.Module):
    """ResNet with one skip flag per stage. ``forward(x, skip_cfg)``; ``forward_features`` returns the stage
    outputs as well, for the feature-level distillation of ``--fpn``."""

    classifier_name = "fc"

    def __init__(self, layers: Iterable[int] = (3, 4, 6, 3), num_classes: int = 1000, width: int = 64,
                 stem: str = "imagenet", skip_aware_norms: bool = True, zero_init_residual: bool = False,
                 variant: str = "a"):
        super().__init__()
        if variant not in ("a", "d"):
            raise ValueError(f"ResNet-ADN variant must be 'a' (torchvision) or 'd' (average-pool shortcut), "
                             f"got {variant!r}")
        layers = list(layers)
        self.variant = variant
        self.num_skippable_stages = len(layers)
        self._skip_cfg = (False,) * len(layers)
        self.inplanes = width
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:  # "cifar": a 3x3 stem without pooling, for 32x32 inputs (the proxy experiments)
            self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        for i, blocks in enumerate(layers):
            stage = self._make_layer(width * 2**i, blocks, stride=1 if i == 0 else 2, skip_aware_norms=skip_aware_norms)
            setattr(self, f"layer{i + 1}", stage)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(self.inplanes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int, skip_aware_norms: bool) -> SkippableSequential:
        downsample = None
        out = planes * Bottleneck.expansion
        if stride != 1 and self.variant == "d":
            downsample = nn.Sequential(nn.AvgPool2d(2, 2, 0, ceil_mode=True), conv1x1(self.inplanes, out),
                                       nn.BatchNorm2d(out))
        elif stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(conv1x1(self.inplanes, out, stride), nn.BatchNorm2d(out))
        n_mandatory = min((blocks + 1) // 2, blocks - 1)
        stage = [Bottleneck(self.inplanes, planes, stride, downsample, skip_aware_norms=skip_aware_norms)]
        self.inplanes = planes * Bottleneck.expansion
        stage += [Bottleneck(self.inplanes, planes, skippable=i >= n_mandatory, skip_aware_norms=skip_aware_norms)
                  for i in range(1, blocks)]
        return SkippableSequential(*stage)

    @property
    def stages(self) -> list[SkippableSequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_skippable_stages)]

    def forward_features(self, x: torch.Tensor, skip_cfg=None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The last feature map and the output of every stage."""
        cfg = self.resolve_skip_cfg(skip_cfg)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs = []
        for stage, skip in zip(self.stages, cfg, strict=True):
            x = stage(x, skip)
            outputs.append(x)
        return x, outputs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.avgpool(x)))

    def forward(self, x: torch.Tensor, skip_cfg=None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, skip_cfg)[0])


def resnet50(**kwargs) -> ResNetADN:
    """ResNet50-ADN: [3, 4, 6, 3] blocks, 9 of 16 in the base-net."""
    return ResNetADN((3, 4, 6, 3), **kwargs)


def resnet101(**kwargs) -> ResNetADN:
    """ResNet101-ADN: [3, 4, 23, 3] blocks."""
    return ResNetADN((3, 4, 23, 3), **kwargs)


def resnet50vd(**kwargs) -> ResNetADN:
    """ResNet50vd-ADN: ResNet50-ADN with average-pool shortcuts in the stride-2 stages (the original's HEAD)."""
    return ResNetADN((3, 4, 6, 3), variant="d", **kwargs)


def resnet101vd(**kwargs) -> ResNetADN:
    """ResNet101vd-ADN: ResNet101-ADN with average-pool shortcuts in the stride-2 stages (the original's HEAD)."""
    return ResNetADN((3, 4, 23, 3), variant="d", **kwargs)


def resnet_adn_cifar(**kwargs) -> ResNetADN:
    """The proxy experiment's small ResNet-ADN (adn/README.md, proxy section): [2, 2, 4, 2] Bottlenecks, width 16,
    3x3 stem."""
    kwargs.setdefault("width", 16)
    kwargs.setdefault("stem", "cifar")
    return ResNetADN((2, 2, 4, 2), **kwargs)
