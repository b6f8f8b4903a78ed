"""PAD-Net on DY-Conv networks (ResNet, MobileNetV2): layers, models, IMP masks, deployment and counting."""

from padnet.dyconv.layers import (
    DynamicConvolution,
    PAD_DynamicConvolution,
    dynamic_layers,
    imp_masks,
    is_pad_model,
    pad_layers,
    set_temperature,
)

__all__ = ["DynamicConvolution", "PAD_DynamicConvolution", "dynamic_layers", "imp_masks", "is_pad_model",
           "pad_layers", "set_temperature"]
