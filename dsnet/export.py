"""A DS-Net sub-network as a static slim MobileNetV1: the deployable form of one width (paper Sec. 3.1).

A sub-network of the supernet is an ordinary network: every slimmable layer at its width is the slice
``weight[:out, :in]`` of the supernet's weight, and every ``DSBatchNorm2d`` at a width is that width's running
statistics with the first channels of the shared affine. :func:`to_static` copies those slices into plain
``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` layers (:class:`StaticDSNet`: ``stem``, ``blocks.<stage>.<layer>``
with the supernet's layer names, ``head``), so the export runs no slicing and no width look-up.
``dynamic`` (the gate picks a width per image) has no single static form and is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import torch
from torch import nn

from common.configurations import ConfigurationError, check_exportable, fold_batchnorm
from dsnet.models.blocks import DSDepthwiseSeparable, MultiHeadGate
from dsnet.models.dyn_slim_net import MICRO_BATCH_PIXELS, DSNet, micro_batched
from dsnet.models.ops import DSBatchNorm2d

__all__ = ["StaticDSNet", "StaticSeparable", "StaticSqueezeExcite", "exportable", "to_static"]


class StaticSqueezeExcite(nn.Module):
    """The attention head of :class:`~dsnet.models.blocks.MultiHeadGate` (Sec. 3.2) as plain layers."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_expand(self.act1(self.conv_reduce(self.avg_pool(x)))).sigmoid()


class StaticSeparable(nn.Module):
    """``conv_dw -> bn1 -> act -> SE -> conv_pw -> bn2 -> act`` at fixed widths (the MobileNetV1 block of DS-Net)."""

    def __init__(self, in_channels: int, out_channels: int, reduced: int, kernel_size: int = 3, stride: int = 1,
                 act_layer: type[nn.Module] = nn.SiLU):
        super().__init__()
        padding = ((stride - 1) + (kernel_size - 1)) // 2  # the supernet's DSConv2d padding
        self.conv_dw = nn.Conv2d(in_channels, in_channels, kernel_size, stride, padding, groups=in_channels,
                                 bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = act_layer(inplace=True)
        self.gate = StaticSqueezeExcite(in_channels, reduced)
        self.conv_pw = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.act2 = act_layer(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gate(self.act1(self.bn1(self.conv_dw(x))))
        return self.act2(self.bn2(self.conv_pw(x)))


class StaticDSNet(nn.Module):
    """A slim MobileNetV1 with SE at the widths ``widths`` (stem, then one per stage of ``choices_cfg``).

    ``choices_cfg`` is the supernet's (:data:`dsnet.models.CHOICES_CFGS`): it gives the layers, kernels, strides
    and the SE's reduced width (fixed by the widest input of each block, as in the supernet). As the supernet, it
    runs the stem and the first ``trunk_stages`` stages in micro-batches of ``micro_batch_pixels`` input pixels in
    evaluation mode (:func:`~dsnet.models.dyn_slim_net.micro_batched`; 0: the whole batch at once).
    """

    def __init__(self, choices_cfg: Sequence[Sequence], widths: Sequence[int], num_classes: int = 1000,
                 in_chans: int = 3, se_ratio: float = 0.25, act_layer: type[nn.Module] = nn.SiLU,
                 trunk_stages: int = 3, micro_batch_pixels: int = MICRO_BATCH_PIXELS):
        super().__init__()
        from timm.layers import make_divisible

        if len(widths) != len(choices_cfg):
            raise ValueError(f"{len(choices_cfg)} widths needed (stem and {len(choices_cfg) - 1} stages), "
                             f"got {list(widths)}")
        _, _, kernel_size, stride = choices_cfg[0]
        self.widths = list(widths)
        self.trunk_stages, self.micro_batch_pixels = trunk_stages, micro_batch_pixels
        padding = ((stride - 1) + (kernel_size - 1)) // 2
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], kernel_size, stride, padding, bias=False),
                                  nn.BatchNorm2d(widths[0]), act_layer(inplace=True))
        stages = []
        in_c, in_widest = widths[0], choices_cfg[0][0][-1]
        for (out_list, layer_num, kernel_size, stride, *_), out_c in zip(choices_cfg[1:], widths[1:], strict=True):
            layers = [StaticSeparable(in_c, out_c, make_divisible(in_widest * se_ratio, divisor=1), kernel_size,
                                      stride, act_layer)]
            layers += [StaticSeparable(out_c, out_c, make_divisible(out_list[-1] * se_ratio, divisor=1), kernel_size,
                                       1, act_layer) for _ in range(layer_num - 1)]
            stages.append(nn.Sequential(*layers))
            in_c, in_widest = out_c, out_list[-1]
        self.blocks = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(in_c, num_classes))

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in islice(self.blocks, self.trunk_stages):
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = micro_batched(self.forward_trunk, x, 0 if self.training else self.micro_batch_pixels)
        for stage in islice(self.blocks, self.trunk_stages, None):
            x = stage(x)
        return self.head(x)


def exportable(model: DSNet) -> list[str]:
    """The configurations with one static form: every sub-network and ``largest``, not ``dynamic``."""
    return [name for name in model.configurations() if name != "dynamic"]


def _copy_conv(target: nn.Conv2d, source: nn.Conv2d) -> None:
    """The first ``target.out_channels`` x ``target.in_channels`` slice of ``source``'s weight (and bias)."""
    out_c, in_c = target.weight.shape[:2]
    target.weight.copy_(source.weight[:out_c, :in_c])
    if target.bias is not None:
        target.bias.copy_(source.bias[:out_c])


def _copy_bn(target: nn.BatchNorm2d, source: DSBatchNorm2d) -> None:
    """The running statistics of ``target``'s width and the first channels of the shared affine."""
    width, shared = target.num_features, source.aux_bn[-1]
    stats = source.aux_bn[source.out_channels_list.index(width)]
    target.running_mean.copy_(stats.running_mean)
    target.running_var.copy_(stats.running_var)
    target.num_batches_tracked.copy_(stats.num_batches_tracked)
    target.weight.copy_(shared.weight[:width])
    target.bias.copy_(shared.bias[:width])
    target.eps = shared.eps


def _copy_block(target: StaticSeparable, source: DSDepthwiseSeparable) -> None:
    gate: MultiHeadGate = source.gate
    _copy_conv(target.conv_dw, source.conv_dw)
    _copy_bn(target.bn1, source.bn1)
    _copy_conv(target.gate.conv_reduce, gate.conv_reduce)
    _copy_conv(target.gate.conv_expand, gate.conv_expand)
    _copy_conv(target.conv_pw, source.conv_pw)
    _copy_bn(target.bn2, source.bn2)


def to_static(model: DSNet, configuration: str, *, fold_bn: bool = False) -> nn.Module:
    """Sub-network ``configuration`` (``'0'`` ... ``'13'`` or ``largest``) of ``model`` as a :class:`StaticDSNet`
    holding copies of its sliced weights and its width's BN statistics; ``fold_bn`` folds every BN into the
    convolution before it. ``model`` is left as it is (its mode included)."""
    check_exportable(model, configuration)
    if configuration not in exportable(model):
        raise ConfigurationError(f"DS-Net configuration {configuration!r} routes every image to its own width (the "
                                 f"gate, Sec. 3.2) and has no static form; export one of "
                                 f"{', '.join(exportable(model))}")
    mode, choice = model.mode, model.choice
    try:
        model.set_configuration(configuration)
        widths = model.widths()
    finally:
        model.set_mode(mode, choice)
    static = StaticDSNet(model.choices_cfg, widths, model.num_classes, model.conv_stem.in_channels,
                         model.se_ratio, type(model.act1), model.gate_stage, model.micro_batch_pixels)
    with torch.no_grad():
        _copy_conv(static.stem[0], model.conv_stem)
        _copy_bn(static.stem[1], model.bn1)
        for stage, source in zip(static.blocks, model.blocks, strict=True):
            for block, source_block in zip(stage, [source.first_block, *source.residual_blocks], strict=True):
                _copy_block(block, source_block)
        static.head[2].weight.copy_(model.classifier.weight[:, :widths[-1]])
        static.head[2].bias.copy_(model.classifier.bias)
    static = static.to(model.classifier.weight.device).eval()
    if fold_bn:  # per part: torch.fx cannot trace the micro-batch loop, which has no batch norm of its own
        static.stem = fold_batchnorm(static.stem)
        for i, stage in enumerate(static.blocks):
            static.blocks[i] = fold_batchnorm(stage)
    return static
