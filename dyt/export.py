"""Static exports of DyT's inference configurations (``VisionTransformer.configurations()``): plain timm ViTs.

:func:`to_static` returns a ``timm.models.vision_transformer.VisionTransformer`` (class token, ``global_pool=
"token"``, LayerNorm eps 1e-6: the layout of the original, so every key keeps its name) whose blocks are

* :class:`AdapterBlock` for ``"all tokens"``: timm's block with AdaptFormer's parallel adapter (Sec. 3.2,
  ``X' = X_a + MLP(LN2(X_a)) + A(X_a)``), no dispatcher; the adapter is DyT's :class:`~dyt.models.Adapter` or
  :class:`~dyt.models.MoEAdapter` (Sec. 3.4) with its weights;
* :class:`DispatchBlock` for ``"dispatch"`` and ``"rate=r"``: the same block with the dispatchers' ``Linear(C, 1)``
  and only the gathered inference path (Sec. 3.1, "Inference"): the kept tokens are gathered, run through the
  dispatched sub-block (MLP, attention or both, Sec. 3.3) and scattered back. ``"dispatch"`` keeps a token when its
  logit is > 0, so the number of kept tokens depends on the input (``torch.export`` traces it with unbacked sizes);
  ``"rate=r"`` keeps the ``ceil(r (N-1))`` highest logits of each sample, static shapes.

No Gumbel noise, no masked execution, no masks or logits returned: ``forward(x)`` gives the logits. The export's
state dict is the dynamic model's (without the dispatchers for ``"all tokens"``), key for key.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from timm.models.vision_transformer import Block as TimmBlock
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn

from common.configurations import ConfigurationError, check_exportable
from dyt.models import Adapter, MoEAdapter, VisionTransformer, top_tokens


class Dispatcher(nn.Module):
    """DyT's token dispatcher at inference (Sec. 3.1): ``mlp_head = Linear(C, 1)`` on the patch tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp_head = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The logits [B, N-1, 1] of the patch tokens of ``x`` [B, N, C]."""
        return self.mlp_head(x[:, 1:])


class AdapterBlock(TimmBlock):
    """timm's pre-norm block plus DyT's parallel adapter on the attention output (Sec. 3.2):
    ``X_a = X + Attn(LN1(X))``, ``X' = X_a + MLP(LN2(X_a)) + A(X_a)``."""

    def __init__(self, *args: Any, adapter: functools.partial | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.adaptmlp = adapter() if adapter is not None else None

    def _adapt(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return out if self.adaptmlp is None else out + self.adaptmlp(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = x + self.attn(self.norm1(x))
        return self._adapt(x, x + self.mlp(self.norm2(x)))


class DispatchBlock(AdapterBlock):
    """:class:`AdapterBlock` with DyT's dispatchers (``dispatch`` of Sec. 3.3: ``"mlp"``, ``"attn"``,
    ``"attn_mlp"``, ``"layer"``) and only the gathered path. ``rate=None`` keeps the tokens whose logit is > 0
    (``"dispatch"``), a number the :func:`~dyt.models.top_tokens` of each sample (``"rate=r"``). The CLS token is
    always kept; a skipped token bypasses the dispatched sub-block (residual only) and still goes through the
    adapter."""

    def __init__(self, *args: Any, dispatch: str = "mlp", rate: float | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        dim = self.norm1.normalized_shape[0]
        self.mlp_token_select = Dispatcher(dim) if dispatch in ("mlp", "attn_mlp") else None
        self.attn_token_select = Dispatcher(dim) if dispatch in ("attn", "attn_mlp") else None
        self.layer_token_select = Dispatcher(dim) if dispatch == "layer" else None
        self.rate = rate

    # ------------------------------------------------------------------------------------ fixed rate: indices
    def _top(self, dispatcher: Dispatcher, x: torch.Tensor) -> torch.Tensor:
        """[B, k+1, C] gather indices of CLS and the top-k patch tokens."""
        top = top_tokens(dispatcher(x), self.rate) + 1
        index = torch.cat((top.new_zeros(x.shape[0], 1), top), dim=1)
        return index[..., None].expand(-1, -1, x.shape[-1])

    @staticmethod
    def _on_indices(fn: Any, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x).scatter_(1, index, fn(x.gather(1, index)))

    # ------------------------------------------------------------------------------- threshold: flat rows
    @staticmethod
    def _keep(dispatcher: Dispatcher, x: torch.Tensor) -> torch.Tensor:
        """[B, N] bool: CLS and the patch tokens whose logit is > 0."""
        keep = dispatcher(x)[..., 0] > 0
        return torch.cat((keep.new_ones(x.shape[0], 1), keep), dim=1)

    @staticmethod
    def _on_rows(fn: Any, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``fn`` on the kept rows of the flattened [B*N, C] tokens (any number), zero elsewhere."""
        rows = keep.reshape(-1).nonzero().squeeze(1)
        flat = x.reshape(-1, x.shape[-1])
        return flat.new_zeros(flat.shape).index_copy_(0, rows, fn(flat.index_select(0, rows))).view_as(x)

    def _attend_kept(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Attention among the kept tokens of each sample, padded to the sample with the most (the padding rows
        are the sample's first skipped tokens, masked as keys and zeroed in the output)."""
        b, n, c = x.shape
        counts = keep.sum(dim=1)
        # at least 2 rows (one padding row when only CLS is kept), so that torch.export can tell the unbacked
        # size from the broadcastable size 1
        kmax = counts.max().clamp(min=2).item()
        torch._check(kmax >= 2)
        torch._check(kmax <= n)
        order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :kmax]
        valid = torch.arange(kmax, device=x.device)[None] < counts[:, None]
        index = order[..., None].expand(-1, -1, c)
        bias = torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_fill(~valid, float("-inf"))
        out = self.attn(self.norm1(x.gather(1, index)), attn_mask=bias[:, None, None, :])
        return torch.zeros_like(x).scatter_(1, index, out * valid[..., None].to(out.dtype))

    # ------------------------------------------------------------------------------------------- forward
    def _kept(self, dispatcher: Dispatcher, x: torch.Tensor) -> torch.Tensor:
        """The kept tokens: gather indices (fixed rate) or a [B, N] mask (threshold)."""
        return self._top(dispatcher, x) if self.rate is not None else self._keep(dispatcher, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        attention = self.attn_token_select or self.layer_token_select
        if attention is None:
            x = x + self.attn(self.norm1(x))
            kept = None
        else:  # attention among the kept tokens only, on the block input's decision
            kept = self._kept(attention, x)
            x = x + (self._on_indices(lambda t: self.attn(self.norm1(t)), x, kept) if self.rate is not None
                     else self._attend_kept(x, kept))
        if self.mlp_token_select is not None:  # the MLP's own decision, on X_a
            kept = self._kept(self.mlp_token_select, x)
        elif self.layer_token_select is None:
            kept = None  # attention dispatch: every token goes through the MLP
        mlp = lambda t: self.mlp(self.norm2(t))  # noqa: E731
        if kept is None:
            out = x + mlp(x)
        elif self.rate is not None:
            out = x + self._on_indices(mlp, x, kept)
        else:
            out = x + self._on_rows(mlp, x, kept)
        return self._adapt(x, out)


def _adapter_factory(model: VisionTransformer) -> functools.partial | None:
    """A builder of the model's adapter (same class and options), or None without adapters."""
    adapter = model.blocks[0].adaptmlp
    if adapter is None:
        return None
    cfg = model.dyt_config
    scale = "learnable_scalar" if isinstance(adapter.scale, nn.Parameter) else adapter.scale
    if isinstance(adapter, MoEAdapter):
        return functools.partial(MoEAdapter, cfg["embed_dim"], cfg["ffn_num"], cfg["moe_experts"], cfg["moe_router"],
                                 cfg["moe_merge"], adapter.dropout, scale)
    return functools.partial(Adapter, cfg["embed_dim"], cfg["ffn_num"], adapter.dropout, scale)


def to_static(model: VisionTransformer, configuration: str, *, fold_bn: bool = False) -> nn.Module:
    """The configuration ``configuration`` of the DyT ``model`` (eval mode) as a plain timm ViT (module docstring);
    the model is not modified. ``fold_bn`` changes nothing: a ViT has no BatchNorm (LayerNorm only)."""
    check_exportable(model, configuration)
    if type(model) is not VisionTransformer:
        raise ConfigurationError(f"to_static exports the image ViT (dyt.models.VisionTransformer), not a "
                                 f"{type(model).__name__}")
    masks = {s.token_mask for s in model.token_selects()}
    if configuration != "all tokens" and masks != {"learned"}:
        raise ConfigurationError(f"the dispatchers use a {'/'.join(sorted(masks - {'learned'}))} token mask control; "
                                 "only the learned dispatcher can be exported (model.set_token_mask('learned', 0.5)), "
                                 "or export 'all tokens'")
    cfg = model.dyt_config
    adapter = _adapter_factory(model)
    if configuration == "all tokens":
        block = functools.partial(AdapterBlock, adapter=adapter)
    else:
        rate = float(configuration.removeprefix("rate=")) if configuration.startswith("rate=") else None
        block = functools.partial(DispatchBlock, adapter=adapter, dispatch=cfg["dispatch"], rate=rate)
    static = TimmViT(img_size=cfg["img_size"], patch_size=cfg["patch_size"], in_chans=cfg["in_chans"],
                     num_classes=cfg["num_classes"], global_pool="token", embed_dim=cfg["embed_dim"],
                     depth=cfg["depth"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_hidden"] / cfg["embed_dim"],
                     qkv_bias=model.blocks[0].attn.qkv.bias is not None, weight_init="skip", block_fn=block)
    wanted = static.state_dict()
    state = {k: v for k, v in model.state_dict().items() if k in wanted}
    static.load_state_dict(state, strict=True)
    return static.eval()
