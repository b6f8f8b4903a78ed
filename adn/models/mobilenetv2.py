"""MobileNetV2-ADN: inverted-residual stages with skippable sub-paths (Sec. 3.1).

The inverted-residual setting is torchvision's. The five settings with n >= 2 blocks (c = 24, 32, 64, 96, 160)
are the skippable stages; in each, blocks with index >= (n + 1) // 2 are skippable (``features.2.1``,
``features.3.2``, ``features.4.2-3``, ``features.5.2``, ``features.6.2``). Every conv-norm-act layer outside the
skippable blocks has a skip-aware ``norm_skip``: the stem and the t = 1 block follow flag 0, the 320-channel
block and the final 1x1 conv follow flag 4. Module names follow the original (``conv_layer``, ``norm``,
``norm_skip``, ``activation_layer``), which differ from torchvision's ``Conv2dNormActivation``.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models._utils import _make_divisible

from adn.models.skip import AdaptiveDepthMixin, SkippableSequential

INVERTED_RESIDUAL_SETTING = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                             [6, 160, 3, 2], [6, 320, 1, 1]]


class ConvNormActivation(nn.Module):
    """Conv2d + BatchNorm (+ ReLU6), with a skip-aware ``norm_skip`` unless the layer is in a skippable block."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, activation: bool = True, skippable: bool = False, skip_aware_norms: bool = True):
        super().__init__()
        self.conv_layer = nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2,
                                    groups=groups, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.has_skip_norms = not skippable and skip_aware_norms
        if self.has_skip_norms:
            self.norm_skip = nn.BatchNorm2d(out_channels)
        self.activation_layer = nn.ReLU6(inplace=True) if activation else None

    def forward(self, x: torch.Tensor, skip: bool = False) -> torch.Tensor:
        x = (self.norm_skip if skip and self.has_skip_norms else self.norm)(self.conv_layer(x))
        return x if self.activation_layer is None else self.activation_layer(x)


class InvertedResidual(nn.Module):
    """Expand (1x1) - depthwise (3x3) - project (1x1, linear), with the residual when shapes allow."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, skippable: bool = False,
                 skip_aware_norms: bool = True):
        super().__init__()
        self.skippable = skippable
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        kw = {"skippable": skippable, "skip_aware_norms": skip_aware_norms}
        layers = [] if expand_ratio == 1 else [ConvNormActivation(inp, hidden, kernel_size=1, **kw)]
        layers += [ConvNormActivation(hidden, hidden, stride=stride, groups=hidden, **kw),
                   ConvNormActivation(hidden, oup, kernel_size=1, activation=False, **kw)]
        self.conv = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, skip: bool = False) -> torch.Tensor:
        out = x
        for layer in self.conv:
            out = layer(out, skip)
        return x + out if self.use_res_connect else out


class MobileNetV2ADN(AdaptiveDepthMixin, nn.Module):
    """MobileNetV2 with 5 skip flags. ``features`` = [stem, t=1 block, 5 skippable stages, 320 block, 1x1 conv]."""

    classifier_name = "classifier"

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2,
                 inverted_residual_setting: list[list[int]] | None = None, skip_aware_norms: bool = True):
        super().__init__()
        setting = inverted_residual_setting or INVERTED_RESIDUAL_SETTING
        self.arch = {"inverted_residual_setting": [list(s) for s in setting], "width_mult": width_mult,
                     "dropout": dropout}
        self.num_skippable_stages = sum(1 for *_, n, _ in setting if n >= 2)
        self._skip_cfg = (False,) * self.num_skippable_stages
        kw = {"skip_aware_norms": skip_aware_norms}
        channels = _make_divisible(32 * width_mult, 8)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), 8)
        features: list[nn.Module] = [ConvNormActivation(3, channels, stride=2, **kw)]
        for t, c, n, s in setting:
            out = _make_divisible(c * width_mult, 8)
            blocks = []
            for i in range(n):
                skippable = n >= 2 and i >= (n + 1) // 2
                blocks.append(InvertedResidual(channels, out, s if i == 0 else 1, t, skippable=skippable, **kw))
                channels = out
            features.append(SkippableSequential(*blocks) if n >= 2 else blocks[0])
        features.append(ConvNormActivation(channels, self.last_channel, kernel_size=1, **kw))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def _flags(self, cfg: tuple[bool, ...]) -> list[bool]:
        """The flag of every entry of ``features``: the leading layers follow the first stage's flag, the
        trailing ones the last stage's."""
        flags, stage = [], 0
        for module in self.features:
            if isinstance(module, SkippableSequential):
                flags.append(cfg[stage])
                stage += 1
            else:
                flags.append(cfg[min(stage, len(cfg) - 1)])
        return flags

    def forward_features(self, x: torch.Tensor, skip_cfg=None) -> torch.Tensor:
        cfg = self.resolve_skip_cfg(skip_cfg)
        for module, skip in zip(self.features, self._flags(cfg), strict=True):
            x = module(x, skip)
        return x

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    def forward(self, x: torch.Tensor, skip_cfg=None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, skip_cfg))


def mobilenet_v2(**kwargs) -> MobileNetV2ADN:
    """MobileNetV2-ADN x1.0: 17 inverted residual blocks, 11 in the base-net."""
    return MobileNetV2ADN(**kwargs)
