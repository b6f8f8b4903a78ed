"""T2T-ViT-7 / T2T-ViT-14 with JEI-DNN's intermediate classifiers and gates (spec Sec. c).

The backbone is Tokens-to-Token ViT (Yuan et al., ICCV 2021) with the Performer T2T module, as the JEI-DNN
repository builds it: three soft splits (``nn.Unfold``) with two :class:`TokenPerformer` re-structurisations in
between, a linear projection to ``embed_dim``, a class token, a fixed sinusoid position table, and pre-LN
transformer blocks. JEI-DNN adds, after every block but the last, an intermediate classifier (IC)
``intermediate_heads[l] = Linear(embed_dim, C)`` on the CLS token normalised by the **shared** final ``norm``, and a
gate ``gates[l]`` on that IC's logits (Sec. b). State-dict keys are the original's, so its checkpoints load
strictly (``../shared/reference/jeidnn/manifest_*.json``).
"""

from __future__ import annotations

import math
from itertools import islice

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import Tensor, nn

from common.configurations import check_configuration
from jeidnn.dynn import early_exit_forward
from jeidnn.models.gates import build_gate


def sinusoid_table(n_position: int, dim: int) -> Tensor:
    """The fixed sinusoid position table ``[1, n_position, dim]`` (float64 angles, stored as float32).

    ``angle(pos, j) = pos / 10000^(2 floor(j/2) / dim)``; even dims take the sine, odd dims the cosine.
    """
    position = torch.arange(n_position, dtype=torch.float64)[:, None]
    exponent = 2 * (torch.arange(dim) // 2).to(torch.float64) / dim
    angles = position / torch.pow(10000.0, exponent)[None, :]
    table = torch.empty_like(angles)
    table[:, 0::2] = torch.sin(angles[:, 0::2])
    table[:, 1::2] = torch.cos(angles[:, 1::2])
    return table.to(torch.float32)[None]


def _unfold_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class TokenPerformer(nn.Module):
    """``Token_performer``: single-head linear attention with positive random features (spec Sec. c).

    ``phi(u) = exp(w u - |u|^2 / 2) / sqrt(m)`` with the fixed orthogonal ``w`` (``[m, in_dim]``, scaled by
    ``sqrt(m)``, ``m = kernel_ratio * in_dim``), a non-trainable parameter. The attention output is
    ``phi(q) (phi(k)^T v) / (phi(q) . sum_t phi(k_t) + 1e-8)``; ``v`` is the skip connection, then an MLP.
    """

    def __init__(self, dim: int, in_dim: int, kernel_ratio: float = 0.5, dp1: float = 0.1, dp2: float = 0.1):
        super().__init__()
        self.emb = in_dim
        self.m = int(in_dim * kernel_ratio)
        self.epsilon = 1e-8
        self.kqv = nn.Linear(dim, 3 * self.emb)
        self.dp = nn.Dropout(dp1)
        self.proj = nn.Linear(self.emb, self.emb)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(self.emb)
        self.mlp = nn.Sequential(nn.Linear(self.emb, self.emb), nn.GELU(), nn.Linear(self.emb, self.emb),
                                 nn.Dropout(dp2))
        # built last and from a normal draw, as the original does, so that a seed gives the original's weights
        self.w = nn.Parameter(nn.init.orthogonal_(torch.randn(self.m, self.emb)) * math.sqrt(self.m),
                              requires_grad=False)

    def prm_exp(self, x: Tensor) -> Tensor:
        """Positive random features ``[B, T, m]`` of ``x`` ``[B, T, in_dim]``."""
        half_sq_norm = (x * x).sum(dim=-1, keepdim=True) / 2
        wtx = torch.einsum("bti,mi->btm", x, self.w)
        return torch.exp(wtx - half_sq_norm) / math.sqrt(self.m)

    def single_attn(self, x: Tensor) -> Tensor:
        k, q, v = torch.split(self.kqv(x), self.emb, dim=-1)
        kp, qp = self.prm_exp(k), self.prm_exp(q)
        denominator = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)
        kptv = torch.einsum("bin,bim->bnm", v, kp)
        y = torch.einsum("bti,bni->btn", qp, kptv) / (denominator + self.epsilon)
        return v + self.dp(self.proj(y))

    def forward(self, x: Tensor) -> Tensor:
        x = self.single_attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class T2TModule(nn.Module):
    """Tokens-to-Token module, Performer variant (spec Sec. c): 224 px gives 56x56 -> 28x28 -> 14x14 tokens.

    ``soft_split0`` Unfold(7, stride 4, pad 2) -> ``attention1`` -> ``soft_split1`` Unfold(3, 2, 1) ->
    ``attention2`` -> ``soft_split2`` Unfold(3, 2, 1) -> ``project`` Linear(9 * token_dim, embed_dim).
    """

    def __init__(self, img_size: int = 224, in_chans: int = 3, embed_dim: int = 768, token_dim: int = 64):
        super().__init__()
        self.soft_split0 = nn.Unfold(kernel_size=(7, 7), stride=(4, 4), padding=(2, 2))
        self.soft_split1 = nn.Unfold(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        self.soft_split2 = nn.Unfold(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        self.attention1 = TokenPerformer(dim=in_chans * 7 * 7, in_dim=token_dim, kernel_ratio=0.5)
        self.attention2 = TokenPerformer(dim=token_dim * 3 * 3, in_dim=token_dim, kernel_ratio=0.5)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)
        self.grid_size = self.token_grid(img_size, img_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.micro_batch_pixels = 4 * 224 * 224

    @staticmethod
    def token_grid(height: int, width: int) -> tuple[int, int]:
        """The token grid after the three soft splits (``img_size // 16`` per side for multiples of 16)."""
        for kernel, stride, padding in ((7, 4, 2), (3, 2, 1), (3, 2, 1)):
            height = _unfold_size(height, kernel, stride, padding)
            width = _unfold_size(width, kernel, stride, padding)
        return height, width

    def forward(self, x: Tensor) -> Tensor:
        """In evaluation mode the images go through in micro-batches of about ``micro_batch_pixels`` input pixels
        (4 images at 224 px; every step here acts per image): at batch 32 the 56x56 and 28x28 token grids (up to
        59 MB) overflow the CPU's caches, and the memory-bound soft-split copies and LayerNorms ran 1.3x slower than
        in micro-batches of 4 (jeidnn/README.md). Small images fit as a whole batch and are not split."""
        size = max(1, self.micro_batch_pixels // (x.size(-2) * x.size(-1)))
        if self.training or self.micro_batch_pixels <= 0 or x.size(0) <= size:
            return self.forward_tokens(x)
        return torch.cat([self.forward_tokens(part) for part in x.split(size)])

    def forward_tokens(self, x: Tensor) -> Tensor:
        """Images ``[B, C, H, W]`` to tokens ``[B, N, embed_dim]``."""
        x = soft_split(self.soft_split0, x.permute(0, 2, 3, 1))
        x = self.attention1(x.flatten(1, 2)).unflatten(1, x.shape[1:3])
        x = soft_split(self.soft_split1, x)
        x = self.attention2(x.flatten(1, 2)).unflatten(1, x.shape[1:3])
        return self.project(soft_split(self.soft_split2, x).flatten(1, 2))


def soft_split(unfold: nn.Unfold, x: Tensor) -> Tensor:
    """``unfold`` on a channels-last grid ``x`` ``[B, H, W, C]``, giving the patch grid ``[B, H', W', C kh kw]``.

    The same patches in ``nn.Unfold``'s ``(C, kh, kw)`` order as ``unfold(x.permute(0, 3, 1, 2)).transpose(1, 2)``,
    equal bit for bit, gathered by one copy of a strided view instead of an im2col plus transpose copies.
    """
    (kh, kw), (sh, sw), (ph, pw) = unfold.kernel_size, unfold.stride, unfold.padding
    patches = F.pad(x, (0, 0, pw, pw, ph, ph)).unfold(1, kh, sh).unfold(2, kw, sw)
    return patches.flatten(3)


class Attention(nn.Module):
    """Multi-head self-attention, ``qkv`` without bias, scale ``head_dim^-0.5`` (the repo never sets qk_scale)."""

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = False, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + DropPath(Attn(LN x))``, then ``x + DropPath(Mlp(LN x))`` (GELU, exact erf)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU, drop=drop)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class T2TViT(nn.Module):
    """T2T-ViT backbone + JEI-DNN exits (Sec. b, c).

    * ``embed(x)``: T2T tokens, CLS token and position table, ``[B, N + 1, E]``;
    * ``forward_features(x)``: the CLS token normalised by the shared ``norm`` after every block (``depth`` of them);
    * ``forward_head(features)`` / ``forward(x)``: ``(head(z_L), [intermediate_heads[l](z_l) for l < G])``;
    * ``gate_logits(ic_logits)``: ``[gates[l](ic_logits[l])]``, the pre-sigmoid gate logits ``[B, 1]``.

    Initialisation follows the original: trunc_normal(.02) Linear weights, zero biases and unit LayerNorms for the
    backbone; the ICs and gates are built afterwards and keep PyTorch's default Linear init.
    """

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 token_dim: int = 64, gate: str = "unc"):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.embed_dim = embed_dim
        self.depth = depth
        self.num_exits = depth - 1
        self.img_size = img_size
        self.gate_type = gate
        self.in_chans, self.num_heads, self.mlp_ratio, self.qkv_bias, self.token_dim = (
            in_chans, num_heads, mlp_ratio, qkv_bias, token_dim)
        self.configuration: str | None = None
        self.exit_level: Tensor | None = None

        self.tokens_to_token = T2TModule(img_size=img_size, in_chans=in_chans, embed_dim=embed_dim,
                                         token_dim=token_dim)
        num_patches = self.tokens_to_token.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(sinusoid_table(num_patches + 1, embed_dim), requires_grad=False)
        self.pos_drop = nn.Dropout(p=drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=rates[i])
            for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_backbone_weights)

        self.intermediate_heads = nn.ModuleList([nn.Linear(embed_dim, num_classes) for _ in range(self.num_exits)])
        self.gates = nn.ModuleList([build_gate(gate) for _ in range(self.num_exits)])

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def embed(self, x: Tensor) -> Tensor:
        """T2T tokens with the CLS token prepended and the position table added: ``[B, N + 1, E]``."""
        x = self.tokens_to_token(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return self.pos_drop(x + self.pos_embed)

    def normed_cls(self, x: Tensor) -> Tensor:
        """``z_l = norm(x_l)[:, 0]``: the shared final LayerNorm on the CLS token (LayerNorm acts per token)."""
        return self.norm(x[:, 0])

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """``[z_0, ..., z_{L-1}]``: the normalised CLS feature ``[B, E]`` after every block (Sec. b)."""
        x = self.embed(x)
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(self.normed_cls(x))
        return features

    def forward_head(self, features: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """The final head on the last feature and IC ``l`` on feature ``l``, for the ``G`` exits."""
        ic_logits = [head(z) for head, z in zip(self.intermediate_heads, features, strict=False)]
        return self.head(features[-1]), ic_logits

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]] | Tensor:
        """``(final_logits [B, C], [ic_logits_l [B, C] for l in 0..G-1])``, as the original's ``net(x)``, while no
        configuration is set; after :meth:`set_configuration`, the logits ``[B, C]`` of that exit policy
        (:meth:`forward_configuration`)."""
        if self.configuration is not None:
            return self.forward_configuration(x)
        return self.forward_head(self.forward_features(x))

    # ---------------------------------------------------------------------------------------- configurations
    def configurations(self) -> list[str]:
        """The exit policies by name (cheapest first): ``exit 0`` ... ``exit G-1`` (every sample leaves at that IC),
        ``final`` (every sample runs all blocks and the final head) and ``gated`` (the learned gates decide)."""
        return [f"exit {level}" for level in range(self.num_exits)] + ["final", "gated"]

    def set_configuration(self, name: str | None) -> None:
        """From now on ``model(x)`` runs exit policy ``name`` and returns its logits ``[B, C]``; ``None`` restores
        the all-exits forward of training and evaluation (the original's ``net(x)``). An unknown name is a
        ``ConfigurationError``."""
        if name is not None:
            check_configuration(self, name)
        self.configuration = name

    def forward_exit(self, x: Tensor, level: int) -> Tensor:
        """Every sample leaves at exit ``level`` (``num_exits``: the final head): the blocks up to it, the shared
        norm on the CLS token and that exit's classifier; no gate runs, nothing after the exit is computed."""
        tokens = self.embed(x)
        for block in islice(self.blocks, level + 1):  # (slicing a ModuleList builds a new one)
            tokens = block(tokens)
        head = self.head if level == self.num_exits else self.intermediate_heads[level]
        return head(self.normed_cls(tokens))

    def forward_configuration(self, x: Tensor) -> Tensor:
        """The logits ``[B, C]`` of the configuration set (:meth:`configurations`); ``gated`` runs
        :func:`jeidnn.dynn.early_exit_forward` (samples leave the batch at their exit, Sec. 3.3) and keeps each
        sample's exit in ``exit_level``."""
        name = self.configuration
        if name == "gated":
            logits, self.exit_level = early_exit_forward(self, x)
            return logits
        level = self.num_exits if name == "final" else int(name.removeprefix("exit "))
        self.exit_level = None
        return self.forward_exit(x, level)

    def gate_logits(self, ic_logits: list[Tensor]) -> list[Tensor]:
        """Gate ``l`` on IC ``l``'s logits: pre-sigmoid ``[B, 1]`` (``unc``) or the logits unchanged (``identity``)."""
        return [gate(logits) for gate, logits in zip(self.gates, ic_logits, strict=True)]


def _init_backbone_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def t2t_vit_7(**kwargs) -> T2TViT:
    """T2T-ViT-7: embed 256, 7 blocks, 4 heads, MLP ratio 2, 6 exits."""
    return T2TViT(embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0, **kwargs)


def t2t_vit_14(**kwargs) -> T2TViT:
    """T2T-ViT-14: embed 384, 14 blocks, 6 heads, MLP ratio 3, 13 exits."""
    return T2TViT(embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0, **kwargs)
