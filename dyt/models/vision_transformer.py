"""DyT Vision Transformer (Zhao et al., NeurIPS 2024): a timm ViT with adapters and token dispatchers per block.

The key layout is the original's (``models/vision_transformer_IN21K.py``, timm 0.9 names): ``blocks.i.norm1``,
``.attn.qkv``, ``.attn.proj``, ``.norm2``, ``.mlp.fc1/fc2``, ``.adaptmlp.down_proj/up_proj``,
``.mlp_token_select.mlp_head``, so the IN21K backbone loads into it and the reference state dict loads strictly.

Dispatch variants (Sec. 3.3; only ``"mlp"`` is in the released code):

* ``"mlp"``: skipped tokens bypass the MLP only (Eq. 2 with "Block" = MLP); the paper's choice.
* ``"attn"``: skipped tokens bypass multi-head self-attention: they are neither queries nor keys/values.
* ``"attn_mlp"``: two dispatchers, one before the attention and one before the MLP.
* ``"layer"``: one dispatcher; skipped tokens bypass the whole block (attention and MLP).
* ``"none"``: no dispatcher (AdaptFormer when ``ffn_num > 0``; the plain ViT when ``ffn_num == 0``).

The adapter always processes every token. In training the masks multiply the skipped outputs (straight-through
gradients); in eval, ``execution = "gather"`` really removes the skipped tokens from the computation (Sec. 3.1,
"Inference"; the original's ``models/model_speed_test.py``) and ``"masked"`` multiplies as in training.

Inference configurations (``configurations()`` / ``set_configuration(name)``, the protocol of
:mod:`common.configurations`; eval mode only, training always samples the Gumbel-sigmoid masks):

* ``"dispatch"``: the paper's inference, a token is kept when its dispatcher logit is > 0, gathered execution.
* ``"rate=r"`` for r in :data:`DISPATCH_RATES` (the paper's activation rates): every dispatcher keeps the
  ``ceil(r (N-1))`` patch tokens of highest logit in each sample (and CLS); gathered. Not in the original: a
  fixed-cost operating point of the same learned dispatchers, with static shapes (``dyt/README.md``).
* ``"all tokens"``: no token skipped (the "complete model"; AdaptFormer with DyT's weights).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import DropPath, Mlp, PatchEmbed, trunc_normal_, use_fused_attn
from torch import nn

from common.configurations import check_configuration
from common.errors import UserError
from dyt.models.layers import TOKEN_MASKS, Adapter, MoEAdapter, TokenSelect

DISPATCH_MODES = ("mlp", "attn", "attn_mlp", "layer", "none")
EXECUTION_MODES = ("gather", "masked")
DISPATCH_RATES = (0.3, 0.5, 0.7, 0.9)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)


class ModelError(UserError):
    """An unknown model name or an invalid DyT option."""


class Attention(nn.Module):
    """Multi-head self-attention (timm layout ``qkv``/``proj``) with an optional differentiable key mask.

    With ``key_mask`` [B, N, 1] (0/1, CLS = 1), masked keys get zero attention weight:
    ``w_ij = exp(s_ij) m_j / sum_k exp(s_ik) m_k`` (gradients reach the mask through the straight-through value).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.fused_attn = use_fused_attn()
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def attend(self, qkv: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attention from the projected ``qkv`` [B, N, 3C] to the pre-projection output [B, N, C]."""
        b, n, _ = qkv.shape
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if key_mask is None and self.fused_attn:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = (q * self.scale) @ k.transpose(-2, -1)
            if key_mask is None:
                weights = scores.softmax(dim=-1)
            else:
                mask = key_mask.reshape(b, 1, 1, n)
                top = scores.masked_fill(mask == 0, float("-inf")).amax(dim=-1, keepdim=True).detach()
                weights = (scores - top).exp() * mask
                weights = weights / weights.sum(dim=-1, keepdim=True)
            out = weights @ v
        return out.transpose(1, 2).reshape(b, n, -1)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.attend(self.qkv(x), key_mask))


def _gather_rows(select: torch.Tensor) -> torch.Tensor:
    """Flat indices (into B*N rows) of the activated tokens of a [B, N, 1] mask."""
    return select.reshape(-1).nonzero().squeeze(1)


def _scatter_rows(values: torch.Tensor, rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A zero [B, N, C] tensor with ``values`` [K, C] written at the flat ``rows``."""
    out = values.new_zeros(shape[0] * shape[1], shape[2])
    return out.index_copy_(0, rows, values).view(shape)


class Block(nn.Module):
    """ViT block with DyT's adapter and token dispatcher(s) (Sec. 3.1-3.3, Eq. 2).

    MLP dispatch, in order: ``X_a = X + Attn(LN1(X))``; ``M = TD(X_a)``; ``X' = X_a + M * MLP(LN2(X_a)) + A(X_a)``.
    ``forward(x, complete_model)`` returns ``(x, masks)`` with ``masks[name] = (select [B,N,1], logits)`` for each
    dispatcher (``"attn"``, ``"mlp"`` or ``"layer"``); ``complete_model`` runs the dispatchers but applies no mask.
    In eval mode with ``all_tokens`` (the model's ``"all tokens"`` configuration) no dispatcher runs: no masks.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, ffn_num: int = 64, adapter_scale: float | str = 0.1, dispatch: str = "mlp",
                 moe_experts: int = 0, moe_router: str = "sample", moe_merge: bool = False, tau: float = 5.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if ffn_num > 0 and moe_experts > 0:
            self.adaptmlp = MoEAdapter(dim, ffn_num, moe_experts, moe_router, moe_merge, 0.1, adapter_scale)
        elif ffn_num > 0:
            self.adaptmlp = Adapter(dim, ffn_num, dropout=0.1, adapter_scalar=adapter_scale)
        else:
            self.adaptmlp = None
        self.dispatch = dispatch
        self.mlp_token_select = TokenSelect(dim, tau) if dispatch in ("mlp", "attn_mlp") else None
        self.attn_token_select = TokenSelect(dim, tau) if dispatch in ("attn", "attn_mlp") else None
        self.layer_token_select = TokenSelect(dim, tau) if dispatch == "layer" else None
        self.execution = "gather"
        self.all_tokens = False  # set by VisionTransformer.set_configuration

    # ----------------------------------------------------------------------------------------------- paths
    def _attention(self, x: torch.Tensor, select: torch.Tensor | None, gather: bool) -> torch.Tensor:
        if select is None:
            return x + self.drop_path1(self.attn(self.norm1(x)))
        if not gather:
            return x + self.drop_path1(select * self.attn(self.norm1(x), key_mask=select))
        # gather: LN1/qkv/proj on the kept tokens only; attention among them, padded to the longest sample
        b, n, c = x.shape
        keep = select.reshape(b, n) > 0
        counts = keep.sum(dim=1)
        kmax = int(counts.max())
        order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :kmax]
        valid = torch.arange(kmax, device=x.device)[None] < counts[:, None]
        rows = (order + n * torch.arange(b, device=x.device)[:, None])[valid]
        qkv = self.attn.qkv(self.norm1(x.reshape(b * n, c).index_select(0, rows)))
        padded = qkv.new_zeros(b, kmax, qkv.shape[-1])
        padded[valid] = qkv
        out = self.attn.proj(self.attn.attend(padded, valid[..., None].to(qkv.dtype))[valid])
        return x + _scatter_rows(out, rows, x.shape)

    def _mlp(self, x: torch.Tensor, select: torch.Tensor | None, gather: bool) -> torch.Tensor:
        if select is None:
            return self.drop_path2(self.mlp(self.norm2(x)))
        if not gather:
            return select * self.drop_path2(self.mlp(self.norm2(x)))
        rows = _gather_rows(select)
        kept = self.mlp(self.norm2(x.reshape(-1, x.shape[-1]).index_select(0, rows)))
        return _scatter_rows(kept, rows, x.shape)

    def forward(self, x: torch.Tensor, complete_model: bool = False
                ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        masks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        gather = not self.training and self.execution == "gather"
        dispatchers = self.training or not self.all_tokens  # "all tokens" runs no dispatcher at inference
        if dispatchers and self.attn_token_select is not None:
            masks["attn"] = self.attn_token_select(x)
        elif dispatchers and self.layer_token_select is not None:
            masks["layer"] = self.layer_token_select(x)
        attn_select = None if complete_model or not masks else next(iter(masks.values()))[0]
        x = self._attention(x, attn_select, gather)

        if dispatchers and self.mlp_token_select is not None:
            masks["mlp"] = self.mlp_token_select(x)
        mlp_select = masks.get("mlp", masks.get("layer", (None,)))[0]
        adapt_x = self.adaptmlp(x) if self.adaptmlp is not None else None
        x = x + self._mlp(x, None if complete_model else mlp_select, gather)
        if adapt_x is not None:
            x = x + adapt_x
        return x, masks


class VisionTransformer(nn.Module):
    """ViT with DyT blocks: patch_embed -> [CLS] + pos_embed -> blocks -> norm -> CLS token -> head.

    ``forward(x, complete_model=False)`` returns ``(logits, aux)`` with ``aux["token_select"]`` [B, L, N-1, 1] (hard
    0/1, CLS removed) and ``aux["token_logits"]`` [B, L, N-1, 1] (Sec. 3.1). With ``dispatch="attn_mlp"`` those are
    the MLP dispatcher's and ``aux["attn_token_select"]``/``aux["attn_token_logits"]`` the attention dispatcher's;
    with ``dispatch="none"`` ``token_select`` is all ones and ``token_logits`` is None. In eval mode ``forward``
    runs the configuration chosen by :meth:`set_configuration` (``"dispatch"`` when built, ``"all tokens"`` with
    ``dispatch="none"``); ``"all tokens"`` runs no dispatcher and reports ``token_select`` all ones (every token
    is processed) and ``token_logits`` None, as ``dispatch="none"`` does.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path_rate: float = 0.0, ffn_num: int = 64,
                 adapter_scale: float | str = 0.1, dispatch: str = "mlp", moe_experts: int = 0,
                 moe_router: str = "sample", moe_merge: bool = False, tau: float = 5.0):
        super().__init__()
        if dispatch not in DISPATCH_MODES:
            raise ModelError(f"unknown dispatch {dispatch!r}; choose one of: {', '.join(DISPATCH_MODES)}")
        if moe_router not in ("token", "sample"):
            raise ModelError(f"unknown moe_router {moe_router!r}; choose 'token' or 'sample'")
        if moe_experts > 0 and ffn_num <= 0:
            raise ModelError("the MoE adapter needs a bottleneck: set ffn_num > 0 with moe_experts > 0")
        self.num_classes, self.embed_dim, self.dispatch = num_classes, embed_dim, dispatch
        self.num_features = embed_dim
        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.randn(1, num_patches + 1, embed_dim) * 0.02)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear stochastic-depth rule
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i], ffn_num, adapter_scale, dispatch, moe_experts,
                  moe_router, moe_merge, tau) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(self.init_weights)
        self.dyt_config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                               embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                               mlp_hidden=int(embed_dim * mlp_ratio), ffn_num=ffn_num, dispatch=dispatch,
                               moe_experts=moe_experts, moe_router=moe_router, moe_merge=moe_merge)
        self.pretrained_cfg = dict(mean=INCEPTION_MEAN, std=INCEPTION_STD, input_size=(in_chans, img_size, img_size),
                                   num_classes=num_classes, interpolation="bicubic")
        self.configuration = "all tokens" if dispatch == "none" else "dispatch"

    @staticmethod
    def init_weights(module: nn.Module) -> None:
        """The original's ``init_weights``: trunc-normal(0.02) Linears with zero bias, then adapter re-init."""
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif hasattr(module, "_init_weights"):
            module._init_weights()

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def num_tokens(self) -> int:
        return self.pos_embed.shape[1]

    @property
    def execution(self) -> str:
        """Eval-time path of the dispatched sub-blocks: ``"gather"`` (real skipping) or ``"masked"``."""
        return self.blocks[0].execution

    @execution.setter
    def execution(self, mode: str) -> None:
        if mode not in EXECUTION_MODES:
            raise ModelError(f"unknown execution {mode!r}; choose one of: {', '.join(EXECUTION_MODES)}")
        for blk in self.blocks:
            blk.execution = mode

    def token_selects(self) -> list[TokenSelect]:
        """Every token dispatcher, in forward order."""
        return [m for m in self.modules() if isinstance(m, TokenSelect)]

    def configurations(self) -> list[str]:
        """The inference configurations (module docstring): ``"dispatch"``, ``"rate=0.3"`` ... ``"rate=0.9"``,
        ``"all tokens"``; only ``"all tokens"`` without dispatchers."""
        if not self.token_selects():
            return ["all tokens"]
        return ["dispatch", *(f"rate={r}" for r in DISPATCH_RATES), "all tokens"]

    def set_configuration(self, name: str) -> None:
        """Run configuration ``name`` in eval mode from now on (``ConfigurationError`` for an unknown name); the
        dispatch configurations use the gathered execution."""
        self.configuration = check_configuration(self, name)
        keep_rate = float(name.removeprefix("rate=")) if name.startswith("rate=") else None
        for select in self.token_selects():
            select.keep_rate = keep_rate
        for blk in self.blocks:
            blk.all_tokens = name == "all tokens"
        if name != "all tokens":
            self.execution = "gather"

    def set_token_mask(self, token_mask: str, rate: float) -> None:
        """Every dispatcher's mask: ``"learned"`` (DyT) or a control at ``rate`` (:class:`TokenSelect`)."""
        if token_mask not in TOKEN_MASKS:
            raise ModelError(f"unknown token mask {token_mask!r}; choose one of: {', '.join(TOKEN_MASKS)}")
        selects = self.token_selects()
        if token_mask != "learned" and not selects:
            raise ModelError(f"a {token_mask} token mask needs dispatchers; this model has dispatch='none'")
        for select in selects:
            select.token_mask, select.rate = token_mask, rate

    def forward_features(self, x: torch.Tensor, complete_model: bool = False
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        per_layer: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for blk in self.blocks:
            x, masks = blk(x, complete_model)
            for name, value in masks.items():
                per_layer.setdefault(name, []).append(value)
        return self.norm(x), self._aux(per_layer, x)

    def _aux(self, per_layer: dict[str, list[tuple[torch.Tensor, torch.Tensor]]], x: torch.Tensor
             ) -> dict[str, torch.Tensor | None]:
        def stack(name: str) -> tuple[torch.Tensor, torch.Tensor]:
            selects, logits = zip(*per_layer[name], strict=True)
            return torch.stack(selects, dim=1)[:, :, 1:], torch.stack(logits, dim=1)

        if not per_layer:
            ones = x.new_ones(x.shape[0], self.num_layers, x.shape[1] - 1, 1)
            return {"token_select": ones, "token_logits": None}
        main = "mlp" if "mlp" in per_layer else next(iter(per_layer))
        aux: dict[str, torch.Tensor | None] = dict(zip(("token_select", "token_logits"), stack(main), strict=True))
        if main == "mlp" and "attn" in per_layer:
            aux["attn_token_select"], aux["attn_token_logits"] = stack("attn")
        return aux

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x[:, 0])

    def forward(self, x: torch.Tensor, complete_model: bool = False
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor | None]]:
        x, aux = self.forward_features(x, complete_model)
        return self.forward_head(x), aux


def set_dispatch_rate(model: VisionTransformer, x: torch.Tensor, rate: float = 0.5, seed: int = 0) -> None:
    """Calibrate the dispatchers of an untrained model so that the ``"dispatch"`` configuration keeps about a
    fraction ``rate`` of the patch tokens of ``x`` in every block, as a model fine-tuned at activation rate r
    does (Sec. 3.1: at inference a token is kept when its logit is > 0; r = 0.5 is the paper's default).

    Every dispatcher's ``Linear(C, 1)`` gets a random unit direction (from ``seed``) and, during one eval forward
    of ``x`` in the ``"dispatch"`` configuration, block after block, the bias that puts the ``1 - rate`` quantile
    of the logits of the tokens reaching it at 0: the rate is controlled, which tokens are kept still depends on
    the input, and later blocks see the tokens the earlier ones really produced. The model's training mode,
    configuration and execution are restored afterwards.
    """
    if not 0.0 <= rate <= 1.0:
        raise ModelError(f"the dispatch rate must lie in [0, 1], got {rate}")
    selects = model.token_selects()
    if not selects:
        raise ModelError("set_dispatch_rate needs dispatchers; this model has dispatch='none'")
    generator = torch.Generator().manual_seed(seed)

    def calibrate(module: TokenSelect, args: tuple[torch.Tensor, ...]) -> None:
        head = module.mlp_head
        direction = torch.randn(head.in_features, generator=generator).to(head.weight)
        head.weight.copy_(direction[None] / direction.norm())
        scores = (args[0][:, 1:, :] @ head.weight[0]).flatten().float()
        head.bias.fill_(-float(torch.quantile(scores, 1.0 - rate)))

    was_training, configuration, execution = model.training, model.configuration, model.execution
    handles = [select.register_forward_pre_hook(calibrate) for select in selects]
    try:
        model.eval().set_configuration("dispatch")
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training).set_configuration(configuration)
        model.execution = execution


# ------------------------------------------------------------------------------------------------ factories
MODELS: dict[str, Callable[..., VisionTransformer]] = {}


def register_model(fn: Callable[..., VisionTransformer]) -> Callable[..., VisionTransformer]:
    MODELS[fn.__name__] = fn
    return fn


@register_model
def vit_base_patch16_224_in21k(**kwargs: Any) -> VisionTransformer:
    """ViT-B/16 at 224 (the paper's backbone, IN21K weights from timm's jx release)."""
    return VisionTransformer(**{**dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12), **kwargs})


@register_model
def vit_tiny_d4_e192(**kwargs: Any) -> VisionTransformer:
    """The reduced model of ``ref_dyt_tiny_d4_e192.pt``: 224 px, patch 16, dim 192, depth 4, 3 heads."""
    return VisionTransformer(**{**dict(img_size=224, patch_size=16, embed_dim=192, depth=4, num_heads=3), **kwargs})


@register_model
def vit_digits(**kwargs: Any) -> VisionTransformer:
    """The proxy model of spec Sec. g: 32 px, patch 4 (64 patches + CLS), dim 192, depth 6, 3 heads."""
    return VisionTransformer(**{**dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=3), **kwargs})


@register_model
def vit_digits_tiny(**kwargs: Any) -> VisionTransformer:
    """A smaller proxy model for the CPU budget of ``benchmarks/proxies/dyt.py``: 24 px, patch 4 (36 patches +
    CLS), dim 64, depth 4, 2 heads."""
    return VisionTransformer(**{**dict(img_size=24, patch_size=4, embed_dim=48, depth=4, num_heads=2), **kwargs})


def build_model(name: str, num_classes: int = 1000, ffn_num: int = 64, adapter_scale: float | str = 0.1,
                dispatch: str = "mlp", moe_experts: int = 0, moe_router: str = "sample", moe_merge: bool = False,
                tau: float = 5.0, drop_path_rate: float = 0.0, img_size: int | None = None) -> VisionTransformer:
    """Build a registered model by name (:data:`MODELS`); ``img_size`` overrides the factory's input size."""
    if name not in MODELS:
        raise ModelError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
    extra = {} if img_size is None else {"img_size": img_size}
    return MODELS[name](num_classes=num_classes, ffn_num=ffn_num, adapter_scale=adapter_scale, dispatch=dispatch,
                        moe_experts=moe_experts, moe_router=moe_router, moe_merge=moe_merge, tau=tau,
                        drop_path_rate=drop_path_rate, **extra)
