"""DyT video ViT (Zhao et al., NeurIPS 2024, Sec. 4 "video recognition"; the original
``video_models/video_vision_transformer_IN21K.py``): the image DyT ViT run on every frame, then attentive pooling.

A clip ``[B, 3, T, H, W]`` is split into ``B*T`` frames that go through the image model of
:mod:`dyt.models.vision_transformer` unchanged (2-D patch embedding, spatial ``pos_embed`` only, no temporal
modelling in the backbone, one dispatcher per block). After the final norm, the tokens of all frames (CLS
included) are concatenated to ``[B, T*N, C]`` and a learned ``query_token`` cross-attends to them once
(:class:`AttentiveBlock`: LayerNorms on query, keys and values, bias-free q/k/v projections with separate
``q_bias`` / ``v_bias``, no residual and no MLP); ``head`` classifies the pooled vector.

The key layout is the original's (``query_token``, ``attentive_blocks.norm_q/norm_k/norm_v``,
``attentive_blocks.cross_attn.{q_bias,v_bias,q,k,v,proj}``), so the IN21K image backbone loads into it and leaves
the attentive pooling and the head missing, hence trained. ``aux`` is per frame: ``token_select`` is
``[B*T, L, N-1, 1]``, as in the original (the rate loss and the FLOPs accounting work per frame).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dyt.models.vision_transformer import ModelError, VisionTransformer


class CrossAttention(nn.Module):
    """Multi-head attention of queries ``x`` [B, Nq, C] over keys ``k`` and values ``v`` [B, Nk, C].

    q, k and v are bias-free Linears; with ``qkv_bias`` the query and the value get a learned bias
    (``q_bias``, ``v_bias``) and the key none (BEiT / VideoMAE's convention, kept by the original).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.v_bias = nn.Parameter(torch.zeros(dim)) if qkv_bias else None
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        return x.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._heads(F.linear(x, self.q.weight, self.q_bias))
        k = self._heads(self.k(k))
        v = self._heads(F.linear(v, self.v.weight, self.v_bias))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))


class AttentiveBlock(nn.Module):
    """Attentive pooling: ``CrossAttention(norm_q(query), norm_k(tokens), norm_v(tokens))``; no residual, no MLP."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.norm_q = nn.LayerNorm(dim, eps=1e-6)
        self.norm_k = nn.LayerNorm(dim, eps=1e-6)
        self.norm_v = nn.LayerNorm(dim, eps=1e-6)
        self.cross_attn = CrossAttention(dim, num_heads, qkv_bias)

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor) -> torch.Tensor:
        return self.cross_attn(self.norm_q(x_q), k=self.norm_k(x_kv), v=self.norm_v(x_kv))


class VideoVisionTransformer(VisionTransformer):
    """The DyT ViT over frames with an attentive-pooling head (see the module docstring).

    ``forward(x, complete_model=False)`` takes ``[B, 3, T, H, W]`` and returns ``(logits [B, classes], aux)`` with
    the image model's per-frame ``aux`` (``token_select`` ``[B*T, L, N-1, 1]``). ``num_frames`` is the clip length
    the model is built for (recorded in ``dyt_config`` for the FLOPs of a clip); any T runs.
    """

    def __init__(self, num_frames: int = 8, **kwargs: Any):
        super().__init__(**kwargs)
        dim, heads = self.embed_dim, self.dyt_config["num_heads"]
        self.query_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.attentive_blocks = AttentiveBlock(dim, heads, qkv_bias=kwargs.get("qkv_bias", True))
        self.attentive_blocks.apply(self.init_weights)  # the original initialises every Linear after building it
        self.dyt_config["num_frames"] = num_frames

    def forward_features(self, x: torch.Tensor, complete_model: bool = False
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        if x.dim() != 5:
            raise ValueError(f"a video model takes clips [B, 3, T, H, W], got a tensor of shape {tuple(x.shape)}")
        frames = x.transpose(1, 2).flatten(0, 1)  # [B*T, 3, H, W], frame-major within each clip
        tokens, aux = super().forward_features(frames, complete_model)
        return tokens.reshape(x.shape[0], -1, tokens.shape[-1]), aux  # [B, T*N, C]

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.attentive_blocks(self.query_token.expand(x.shape[0], -1, -1), x)[:, 0]
        return self.head(pooled)


# ------------------------------------------------------------------------------------------------ factories
VIDEO_MODELS: dict[str, Callable[..., VideoVisionTransformer]] = {}


def _register(fn: Callable[..., VideoVisionTransformer]) -> Callable[..., VideoVisionTransformer]:
    VIDEO_MODELS[fn.__name__] = fn
    return fn


@_register
def vit_base_patch16_224_in21k(**kwargs: Any) -> VideoVisionTransformer:
    """ViT-B/16 at 224 per frame (the paper's video backbone, IN21K weights) with attentive pooling."""
    return VideoVisionTransformer(**{**dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12),
                                     **kwargs})


@_register
def vit_tiny_d4_e192(**kwargs: Any) -> VideoVisionTransformer:
    """The reduced ViT of ``ref_dyt_tiny_d4_e192.pt`` per frame: 224 px, patch 16, dim 192, depth 4, 3 heads."""
    return VideoVisionTransformer(**{**dict(img_size=224, patch_size=16, embed_dim=192, depth=4, num_heads=3),
                                     **kwargs})


@_register
def vit_digits(**kwargs: Any) -> VideoVisionTransformer:
    """The proxy ViT per frame: 32 px, patch 4, dim 192, depth 6, 3 heads (for ``main_video --dataset digits``)."""
    return VideoVisionTransformer(**{**dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3),
                                     **kwargs})


@_register
def vit_digits_tiny(**kwargs: Any) -> VideoVisionTransformer:
    """The smaller proxy ViT per frame: 24 px, patch 4, dim 48, depth 4, 2 heads."""
    return VideoVisionTransformer(**{**dict(img_size=24, patch_size=4, embed_dim=48, depth=4, num_heads=2),
                                     **kwargs})


def build_video_model(name: str, num_frames: int = 8, img_size: int | None = None, **kwargs: Any
                      ) -> VideoVisionTransformer:
    """Build a registered video model (:data:`VIDEO_MODELS`, the names of the image registry) with the DyT
    options of :func:`dyt.models.build_model` (``num_classes``, ``ffn_num``, ``adapter_scale``, ``dispatch``,
    ``moe_*``, ``tau``, ``drop_path_rate``); ``img_size`` overrides the frame side."""
    if name not in VIDEO_MODELS:
        raise ModelError(f"unknown video model {name!r}; choose one of: {', '.join(VIDEO_MODELS)}")
    extra = {} if img_size is None else {"img_size": img_size}
    return VIDEO_MODELS[name](num_frames=num_frames, **kwargs, **extra)

