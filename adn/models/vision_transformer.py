"""ViT-ADN: torchvision's ViT with the last block of every 3 skippable (Sec. 3.1, transformers).

The 12 encoder blocks form 4 pseudo-stages of 3; block i follows flag i // 3, and the last block of each
group (``encoder_layer_2``, ``5``, ``8``, ``11``) is skippable, so the base-net has 8 blocks. Mandatory blocks
carry skip-aware layer norms ``ln_1_skip`` / ``ln_2_skip``; the final ``encoder.ln`` is never switched.
Key names are torchvision's (``conv_proj``, ``class_token``, ``encoder.pos_embedding``, ``heads.head``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import partial

import torch
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock as TorchvisionEncoderBlock

from adn.models.skip import AdaptiveDepthMixin

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


class EncoderBlock(TorchvisionEncoderBlock):
    """Pre-norm attention + MLP block; mandatory blocks switch to ``ln_1_skip`` / ``ln_2_skip`` when skipped."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float, attention_dropout: float,
                 skippable: bool = False, skip_aware_norms: bool = True):
        super().__init__(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, LayerNorm)
        self.skippable = skippable
        self.has_skip_norms = not skippable and skip_aware_norms
        if self.has_skip_norms:
            self.ln_1_skip = LayerNorm(hidden_dim)
            self.ln_2_skip = LayerNorm(hidden_dim)

    def forward(self, input: torch.Tensor, skip: bool = False) -> torch.Tensor:
        switch = skip and self.has_skip_norms
        x = (self.ln_1_skip if switch else self.ln_1)(input)
        x, _ = self.self_attention(x, x, x, need_weights=False)
        x = self.dropout(x) + input
        y = self.mlp((self.ln_2_skip if switch else self.ln_2)(x))
        return x + y


class Encoder(nn.Module):
    """Position embedding, the blocks grouped into pseudo-stages, and the final layer norm."""

    def __init__(self, seq_length: int, num_layers: int, num_heads: int, hidden_dim: int, mlp_dim: int,
                 dropout: float, attention_dropout: float, blocks_per_stage: int, skip_aware_norms: bool):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, hidden_dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.blocks_per_stage = blocks_per_stage
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout,
                                                skippable=(i + 1) % blocks_per_stage == 0,
                                                skip_aware_norms=skip_aware_norms))
            for i in range(num_layers)))
        self.ln = LayerNorm(hidden_dim)

    def forward(self, x: torch.Tensor, cfg: tuple[bool, ...]) -> torch.Tensor:
        x = self.dropout(x + self.pos_embedding)
        for i, block in enumerate(self.layers):
            skip = cfg[i // self.blocks_per_stage]
            if not (skip and block.skippable):
                x = block(x, skip)
        return self.ln(x)


class VisionTransformerADN(AdaptiveDepthMixin, nn.Module):
    """ViT with ``num_layers / blocks_per_stage`` skip flags."""

    classifier_name = "heads"

    def __init__(self, image_size: int = 224, patch_size: int = 16, num_layers: int = 12, num_heads: int = 12,
                 hidden_dim: int = 768, mlp_dim: int = 3072, dropout: float = 0.0, attention_dropout: float = 0.0,
                 num_classes: int = 1000, blocks_per_stage: int = 3, skip_aware_norms: bool = True):
        super().__init__()
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.num_skippable_stages = math.ceil(num_layers / blocks_per_stage)
        self._skip_cfg = (False,) * self.num_skippable_stages
        self.conv_proj = nn.Conv2d(3, hidden_dim, kernel_size=patch_size, stride=patch_size)
        seq_length = (image_size // patch_size) ** 2 + 1
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        self.encoder = Encoder(seq_length, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout,
                               blocks_per_stage, skip_aware_norms)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(hidden_dim, num_classes)))

        fan_in = self.conv_proj.in_channels * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def forward_features(self, x: torch.Tensor, skip_cfg=None) -> torch.Tensor:
        cfg = self.resolve_skip_cfg(skip_cfg)
        n, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"ViT-ADN expects {self.image_size}x{self.image_size} images, got {h}x{w}")
        x = self.conv_proj(x).reshape(n, self.hidden_dim, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        return self.encoder(x, cfg)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(x[:, 0])

    def forward(self, x: torch.Tensor, skip_cfg=None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, skip_cfg))


def vit_b_16(**kwargs) -> VisionTransformerADN:
    """ViT-B/16-ADN: 12 blocks in 4 pseudo-stages of 3; the base-net has 8 blocks."""
    return VisionTransformerADN(patch_size=16, **kwargs)


def vit_b_32(**kwargs) -> VisionTransformerADN:
    """ViT-B/32-ADN."""
    return VisionTransformerADN(patch_size=32, **kwargs)
