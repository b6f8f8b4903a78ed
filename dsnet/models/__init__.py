"""DS-Net models: ``create_model(name, **kwargs)`` over the registry ``MODELS``."""

from __future__ import annotations

from dsnet.models.blocks import DSDepthwiseSeparable, DSStage, MultiHeadGate, gumbel_softmax
from dsnet.models.dyn_slim_net import CHOICES_CFGS, MODES, DSNet
from dsnet.models.ops import DSAdaptiveAvgPool2d, DSBatchNorm2d, DSConv2d, DSdwConv2d, DSLinear, DSpwConv2d, Route

__all__ = ["MODELS", "MODES", "DSAdaptiveAvgPool2d", "DSBatchNorm2d", "DSConv2d", "DSDepthwiseSeparable", "DSLinear",
           "DSNet", "DSStage", "DSdwConv2d", "DSpwConv2d", "MultiHeadGate", "Route", "create_model",
           "gumbel_softmax"]

MODELS = tuple(CHOICES_CFGS)


def create_model(name: str, num_classes: int = 1000, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 **kwargs) -> DSNet:
    """Build a registered supernet (timm's ``create_model`` convention). DS-Net has no drop-path."""
    if name not in CHOICES_CFGS:
        raise ValueError(f"unknown DS-Net model {name!r}; choose one of: {', '.join(MODELS)}")
    if drop_path_rate:
        raise ValueError("DS-Net supports no drop-path (the original asserts drop_path_rate == 0)")
    return DSNet(CHOICES_CFGS[name], num_classes=num_classes, drop_rate=drop_rate, **kwargs)
