"""Swin-T-ADN: torchvision's Swin Transformer with skippable sub-paths (Sec. 3.1, transformers).

Depths [2, 2, 6, 2] with [1, 1, 3, 1] mandatory blocks per stage: the skippable blocks are ``features.0.1``,
``features.2.1``, ``features.4.3-5`` and ``features.6.1`` (in 2-block stages the shifted-window block is the
one skipped). Mandatory blocks carry ``norm1_skip`` / ``norm2_skip``, every patch merging a ``norm_skip`` that
follows the flag of the stage *after* it (``features[i]`` uses flag ``(i + 1) // 2``). A mandatory block in
skip mode runs without stochastic depth. As in the original, the patch embedding is ``pre`` and the stages
are ``features.0/2/4/6`` (torchvision: ``features.0`` is the patch embedding and the stages are 1/3/5/7).

Swin-V2-T-ADN (``swin_v2_t``, in the original since its paper release) uses torchvision's V2 blocks: cosine
window attention with a continuous position bias, and norms *after* the attention and the MLP (res-post-norm),
so the skip-aware ``norm{1,2}_skip`` stand in for those post-norms, and every ``PatchMergingV2`` normalises after
its reduction (``norm`` / ``norm_skip`` over ``2 * dim``). Windows are 8x8; stochastic depth 0.1 as for Swin-T.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torchvision.models.swin_transformer import PatchMerging as TorchvisionPatchMerging
from torchvision.models.swin_transformer import PatchMergingV2 as TorchvisionPatchMergingV2
from torchvision.models.swin_transformer import SwinTransformerBlock as TorchvisionSwinBlock
from torchvision.models.swin_transformer import SwinTransformerBlockV2 as TorchvisionSwinBlockV2
from torchvision.models.swin_transformer import _patch_merging_pad
from torchvision.ops.misc import Permute

from adn.models.skip import AdaptiveDepthMixin, SkippableSequential

LayerNorm = partial(nn.LayerNorm, eps=1e-5)


def add_skip_norms(block: nn.Module, skippable: bool, skip_aware_norms: bool) -> None:
    """Give a mandatory block (of a stage with skip-aware norms) its ``norm1_skip`` / ``norm2_skip``, the norms it
    runs in skip mode."""
    block.skippable = skippable
    block.has_skip_norms = not skippable and skip_aware_norms
    if block.has_skip_norms:
        dim = block.norm1.normalized_shape[0]
        block.norm1_skip = LayerNorm(dim)
        block.norm2_skip = LayerNorm(dim)


class SwinTransformerBlock(TorchvisionSwinBlock):
    """(Shifted-)window attention + MLP; mandatory blocks switch to ``norm{1,2}_skip`` in skip mode."""

    def __init__(self, *args, skippable: bool = False, skip_aware_norms: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        add_skip_norms(self, skippable, skip_aware_norms)

    def forward(self, x: torch.Tensor, skip: bool = False) -> torch.Tensor:
        if skip and self.has_skip_norms:
            x = x + self.attn(self.norm1_skip(x))
            return x + self.mlp(self.norm2_skip(x))
        x = x + self.stochastic_depth(self.attn(self.norm1(x)))
        return x + self.stochastic_depth(self.mlp(self.norm2(x)))


class SwinTransformerBlockV2(TorchvisionSwinBlockV2):
    """Swin V2 block (post-norm residuals); mandatory blocks switch to ``norm{1,2}_skip`` in skip mode, without
    stochastic depth, as the V1 block."""

    def __init__(self, *args, skippable: bool = False, skip_aware_norms: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        add_skip_norms(self, skippable, skip_aware_norms)

    def forward(self, x: torch.Tensor, skip: bool = False) -> torch.Tensor:
        if skip and self.has_skip_norms:
            x = x + self.norm1_skip(self.attn(x))
            return x + self.norm2_skip(self.mlp(x))
        x = x + self.stochastic_depth(self.norm1(self.attn(x)))
        return x + self.stochastic_depth(self.norm2(self.mlp(x)))


class PatchMerging(TorchvisionPatchMerging):
    """2x2 patch merging with a skip-aware ``norm_skip``."""

    def __init__(self, dim: int, skip_aware_norms: bool = True):
        super().__init__(dim, LayerNorm)
        self.has_skip_norms = skip_aware_norms
        if skip_aware_norms:
            self.norm_skip = LayerNorm(4 * dim)

    def forward(self, x: torch.Tensor, skip: bool = False) -> torch.Tensor:
        x = _patch_merging_pad(x)
        return self.reduction((self.norm_skip if skip and self.has_skip_norms else self.norm)(x))


class PatchMergingV2(TorchvisionPatchMergingV2):
    """Swin V2 patch merging (reduction, then the norm over ``2 * dim``) with a skip-aware ``norm_skip``."""

    def __init__(self, dim: int, skip_aware_norms: bool = True):
        super().__init__(dim, LayerNorm)
        self.has_skip_norms = skip_aware_norms
        if skip_aware_norms:
            self.norm_skip = LayerNorm(2 * dim)

    def forward(self, x: torch.Tensor, skip: bool = False) -> torch.Tensor:
        x = self.reduction(_patch_merging_pad(x))
        return (self.norm_skip if skip and self.has_skip_norms else self.norm)(x)


VERSIONS = {1: (SwinTransformerBlock, PatchMerging), 2: (SwinTransformerBlockV2, PatchMergingV2)}


class SwinTransformerADN(AdaptiveDepthMixin, nn.Module):
    """Swin Transformer (``version`` 1 or 2) with one skip flag per stage."""

    classifier_name = "head"

    def __init__(self, patch_size: int = 4, embed_dim: int = 96, depths=(2, 2, 6, 2), depths_base=(1, 1, 3, 1),
                 num_heads=(3, 6, 12, 24), window_size: int = 7, mlp_ratio: float = 4.0, dropout: float = 0.0,
                 attention_dropout: float = 0.0, stochastic_depth_prob: float = 0.1, num_classes: int = 1000,
                 skip_aware_norms: bool = True, version: int = 1):
        super().__init__()
        if version not in VERSIONS:
            raise ValueError(f"Swin version must be one of {sorted(VERSIONS)}, got {version!r}")
        block, downsample = VERSIONS[version]
        self.arch = {"patch_size": patch_size, "embed_dim": embed_dim, "depths": list(depths),
                     "depths_base": list(depths_base), "num_heads": list(num_heads), "window_size": window_size,
                     "mlp_ratio": mlp_ratio, "version": version}
        self.num_skippable_stages = len(depths)
        self._skip_cfg = (False,) * len(depths)
        self.pre = nn.Sequential(nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size),
                                 Permute([0, 2, 3, 1]), LayerNorm(embed_dim))
        total_blocks, block_id = sum(depths), 0
        layers: list[nn.Module] = []
        for i_stage, (depth, base) in enumerate(zip(depths, depths_base, strict=True)):
            dim = embed_dim * 2**i_stage
            stage = []
            for i_layer in range(depth):
                stage.append(block(
                    dim, num_heads[i_stage], window_size=[window_size, window_size],
                    shift_size=[0 if i_layer % 2 == 0 else window_size // 2] * 2, mlp_ratio=mlp_ratio,
                    dropout=dropout, attention_dropout=attention_dropout,
                    stochastic_depth_prob=stochastic_depth_prob * block_id / (total_blocks - 1),
                    norm_layer=LayerNorm, skippable=i_layer >= base, skip_aware_norms=skip_aware_norms))
                block_id += 1
            layers.append(SkippableSequential(*stage))
            if i_stage < len(depths) - 1:
                layers.append(downsample(dim, skip_aware_norms))
        self.features = nn.Sequential(*layers)
        num_features = embed_dim * 2 ** (len(depths) - 1)
        self.norm = LayerNorm(num_features)
        self.permute = Permute([0, 3, 1, 2])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.head = nn.Linear(num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, skip_cfg=None) -> torch.Tensor:
        cfg = self.resolve_skip_cfg(skip_cfg)
        x = self.pre(x)
        for i, module in enumerate(self.features):
            x = module(x, cfg[(i + 1) // 2])
        return self.norm(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.avgpool(self.permute(x))))

    def forward(self, x: torch.Tensor, skip_cfg=None) -> torch.Tensor:
        return self.forward_head(self.forward_features(x, skip_cfg))


def swin_t(**kwargs) -> SwinTransformerADN:
    """Swin-T-ADN: depths [2, 2, 6, 2], base depths [1, 1, 3, 1], stochastic depth 0.1."""
    return SwinTransformerADN(**kwargs)


def swin_v2_t(**kwargs) -> SwinTransformerADN:
    """Swin-V2-T-ADN: depths [2, 2, 6, 2], base depths [1, 1, 3, 1], 8x8 windows, stochastic depth 0.1 (the
    original's; torchvision's own swin_v2_t uses 0.2)."""
    return SwinTransformerADN(window_size=8, version=2, **kwargs)
