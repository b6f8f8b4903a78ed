"""DyT models: the ViT with adapters and token dispatchers, its layers, and the registry of named variants."""

from dyt.models.layers import (
    TOKEN_MASKS,
    Adapter,
    MoEAdapter,
    TokenSelect,
    centre_mask,
    gumbel_sigmoid,
    kept_tokens,
    top_tokens,
)
from dyt.models.vision_transformer import (
    DISPATCH_MODES,
    DISPATCH_RATES,
    EXECUTION_MODES,
    MODELS,
    Attention,
    Block,
    ModelError,
    VisionTransformer,
    build_model,
    set_dispatch_rate,
)

__all__ = ["DISPATCH_MODES", "DISPATCH_RATES", "EXECUTION_MODES", "MODELS", "TOKEN_MASKS", "Adapter", "Attention",
           "Block", "ModelError", "MoEAdapter", "TokenSelect", "VisionTransformer", "build_model", "centre_mask",
           "gumbel_sigmoid", "kept_tokens", "set_dispatch_rate", "top_tokens"]
