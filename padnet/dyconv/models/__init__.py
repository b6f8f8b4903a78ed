"""PAD-Net DY-Conv models: ``build_model(type, **kwargs)`` over the registry ``MODELS``.

The type names and kwargs are those of the original YAML configs (``model: {type: ..., kwargs: {...}}``, resolved
by the original ``model_entry``). :func:`checkpoint_filter_fn` converts the original checkpoints for a strict load.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping

import torch
from torch import nn

from common.errors import UserError
from padnet.dyconv.layers import LAMBDAS
from padnet.dyconv.models.mobilenetv2 import DyMobileNetV2, Dymobilenetv2, Dymobilenetv2_PAD, mobilenetv2
from padnet.dyconv.models.mobilenetv2_odconv import (
    OD_MobileNetV2,
    od_mobilenetv2,
    od_mobilenetv2_050,
    od_mobilenetv2_050_pad,
    od_mobilenetv2_075,
    od_mobilenetv2_075_pad,
    od_mobilenetv2_100,
    od_mobilenetv2_100_pad,
    od_mobilenetv2_pad,
)
from padnet.dyconv.models.resnet import (
    DyResNet,
    DyResNet10,
    DyResNet10_PAD,
    DyResNet18,
    DyResNet18_PAD,
    DyResNet50,
    DyResNet50_PAD,
    StaticResNet,
    resnet10,
    resnet18,
    resnet50,
)
from padnet.dyconv.models.resnet_odconv import (
    OD_ResNet,
    od_resnet10,
    od_resnet10_pad,
    od_resnet18,
    od_resnet18_pad,
    od_resnet34,
    od_resnet34_pad,
    od_resnet50,
    od_resnet50_pad,
    od_resnet101,
    od_resnet101_pad,
)

__all__ = ["MODELS", "DyMobileNetV2", "DyResNet", "ModelConfigError", "OD_MobileNetV2", "OD_ResNet", "StaticResNet",
           "build_model", "checkpoint_filter_fn"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet10": resnet10, "resnet18": resnet18, "resnet50": resnet50,
    "DyResNet10": DyResNet10, "DyResNet18": DyResNet18, "DyResNet50": DyResNet50,
    "DyResNet10_PAD": DyResNet10_PAD, "DyResNet18_PAD": DyResNet18_PAD, "DyResNet50_PAD": DyResNet50_PAD,
    "mobilenetv2": mobilenetv2, "Dymobilenetv2": Dymobilenetv2, "Dymobilenetv2_PAD": Dymobilenetv2_PAD,
    # ODConv and ODConv-PAD (padnet/dyconv/odconv.py)
    "od_resnet10": od_resnet10, "od_resnet18": od_resnet18, "od_resnet34": od_resnet34, "od_resnet50": od_resnet50,
    "od_resnet101": od_resnet101, "od_resnet10_pad": od_resnet10_pad, "od_resnet18_pad": od_resnet18_pad,
    "od_resnet34_pad": od_resnet34_pad, "od_resnet50_pad": od_resnet50_pad, "od_resnet101_pad": od_resnet101_pad,
    "od_mobilenetv2": od_mobilenetv2, "od_mobilenetv2_050": od_mobilenetv2_050,
    "od_mobilenetv2_075": od_mobilenetv2_075, "od_mobilenetv2_100": od_mobilenetv2_100,
    "od_mobilenetv2_pad": od_mobilenetv2_pad, "od_mobilenetv2_050_pad": od_mobilenetv2_050_pad,
    "od_mobilenetv2_075_pad": od_mobilenetv2_075_pad, "od_mobilenetv2_100_pad": od_mobilenetv2_100_pad,
}


class ModelConfigError(UserError, ValueError):
    """A model type or model kwarg the registry does not know, or a kwarg value out of range."""


def build_model(type_name: str, **kwargs) -> nn.Module:
    """Build ``MODELS[type_name](**kwargs)``; an unknown type, kwarg or Lambda is a :class:`ModelConfigError`
    listing the valid choices."""
    if type_name not in MODELS:
        raise ModelConfigError(f"unknown model type {type_name!r}; choose one of: {', '.join(MODELS)}")
    factory = MODELS[type_name]
    accepted = list(inspect.signature(factory).parameters)
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise ModelConfigError(f"model {type_name} has no kwarg {', '.join(unknown)}; its kwargs are: "
                               f"{', '.join(accepted)}")
    if "Lambda" in kwargs and kwargs["Lambda"] not in (*LAMBDAS, "none"):
        raise ModelConfigError(f"unknown Lambda {kwargs['Lambda']!r} for {type_name}; choose one of: "
                               "none (no scaling), both, s, d")
    for key in ("scale", "width_multiplier", "num_classes", "nof_kernels", "reduce", "width_mult", "kernel_num",
                "reduction", "in_planes"):
        if key in kwargs and not (isinstance(kwargs[key], (int, float)) and kwargs[key] > 0):
            raise ModelConfigError(f"model kwarg {key} must be a positive number, got {kwargs[key]!r}")
    return factory(**kwargs)


# Buffers of the original's custom ``Conv2d`` (stem / classifier) that private checkpoints may carry (spec c).
_STATIC_MASK_SUFFIXES = ("weight_mask", "bias_mask")


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """An original checkpoint's state dict in this model's layout (spec c): the ``module.`` prefix of
    DataParallel/DDP is stripped, and the optional ``*.weight_mask`` / ``*.bias_mask`` buffers of the stem and
    classifier ``Conv2d`` (which the original multiplies into the weights) are folded into those weights."""
    own = model.state_dict()
    out = {k.removeprefix("module."): v for k, v in state_dict.items()}
    for key in [k for k in out if k.endswith(_STATIC_MASK_SUFFIXES) and k not in own]:
        target = key.removesuffix("_mask")
        mask = out.pop(key)
        if target in out:
            out[target] = out[target] * mask.to(out[target].dtype)
    return out
