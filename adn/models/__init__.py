"""ADN models by name: ``create_model("resnet50", num_classes=10)``.

Every model has ``forward(x, skip_cfg=None)``, a settable default ``model.skip_cfg`` (the super-net unless
set), ``num_skippable_stages``, ``configurations()`` (all 2^S names, ``FFFF`` ... ``TTTT``) and
``set_configuration(name)``.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from adn.models.mobilenetv2 import MobileNetV2ADN, mobilenet_v2
from adn.models.resnet import ResNetADN, resnet50, resnet50vd, resnet101, resnet101vd, resnet_adn_cifar
from adn.models.skip import SkipCfg, all_skip_cfgs, parse_skip_cfg, skip_cfg_name
from adn.models.swin_transformer import SwinTransformerADN, swin_t, swin_v2_t
from adn.models.vision_transformer import VisionTransformerADN, vit_b_16, vit_b_32

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet50": resnet50,
    "resnet101": resnet101,
    "resnet50vd": resnet50vd,
    "resnet101vd": resnet101vd,
    "mobilenet_v2": mobilenet_v2,
    "swin_t": swin_t,
    "swin_v2_t": swin_v2_t,
    "vit_b_16": vit_b_16,
    "vit_b_32": vit_b_32,
    "resnet_adn_cifar": resnet_adn_cifar,
}


def create_model(name: str, **kwargs) -> nn.Module:
    """Build an ADN model by name; ``ValueError`` lists the valid names."""
    if name not in MODELS:
        raise ValueError(f"unknown ADN model '{name}'; choose one of: {', '.join(MODELS)}")
    return MODELS[name](**kwargs)


__all__ = ["MODELS", "MobileNetV2ADN", "ResNetADN", "SkipCfg", "SwinTransformerADN", "VisionTransformerADN",
           "all_skip_cfgs", "create_model", "parse_skip_cfg", "skip_cfg_name"]
