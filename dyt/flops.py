"""FLOPs of DyT, two ways (spec Sec. e).

1. **The original accounting** (``block_flops_dict.py``), computed analytically on the CPU instead of by running
   fvcore on a GPU. fvcore counts one multiply-add as one FLOP (so these "FLOPs" are MACs), and counts Linear,
   Conv, matmul (the attention's ``Q K^T`` and ``A V``) and LayerNorm (5 per element with affine); element-wise
   ops, softmax and GELU are free. ``block_flops_table(model)[t]`` is the cost of one block in which ``t`` tokens
   (CLS included) go through the dispatched part; a sample costs ``base + sum_l table[kept_l + 1]``
   (``select_flops``, Sec. e.3). The original's numbers give the dispatchers no cost (the manifests' per-operator
   totals, "linear" and "matmul", hold no term for their ``Linear(C, 1)``); that is reproduced here.
2. **Executed MACs** on real masks: :func:`executed_macs_per_sample` runs the model with ``execution="gather"``
   under ``common.flops`` (``torch.utils.flop_counter``), so a skipped token really costs nothing. That counter
   does not count LayerNorm, and it counts the dispatchers at their real cost, (N-1)·C each.

All functions here return GFLOPs (1e9 multiply-adds) except :func:`executed_macs_per_sample` (MACs).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import torch
from torch import nn

from common.flops import average_macs_per_sample

LN_PER_ELEMENT = 5  # fvcore: LayerNorm with affine costs 5 per element
GIGA = 1e9


def _config(model: nn.Module) -> tuple:
    cfg = model.dyt_config
    keys = ("img_size", "patch_size", "in_chans", "num_classes", "embed_dim", "depth", "mlp_hidden", "ffn_num",
            "dispatch", "moe_experts", "moe_router", "moe_merge")
    return tuple(cfg[k] for k in keys)


def _adapter_flops(n: int, c: int, r: int, experts: int, router: str, merge: bool) -> int:
    """One block's adapter on all ``n`` tokens: 2·n·C·r; the MoE adapter adds its router and its experts."""
    if r <= 0:
        return 0
    single = 2 * n * c * r
    if experts <= 0:
        return single
    routing = (n if router == "token" else 1) * c * experts
    if merge and router == "sample":  # merged per sample: build the weights once, run one adapter
        return routing + experts * 2 * c * r + single
    return routing + experts * single


def _block_flops(cfg: tuple, t_attn: int, t_mlp: int) -> int:
    """FLOPs of one block with ``t_attn`` tokens in the attention and ``t_mlp`` in the MLP (CLS included)."""
    img, patch, _, _, c, _, hidden, ffn, _, experts, router, merge = cfg
    n = (img // patch) ** 2 + 1
    attention = LN_PER_ELEMENT * t_attn * c + 3 * t_attn * c * c + 2 * t_attn * t_attn * c + t_attn * c * c
    mlp = LN_PER_ELEMENT * t_mlp * c + 2 * t_mlp * c * hidden
    return attention + mlp + _adapter_flops(n, c, ffn, experts, router, merge)


@lru_cache(maxsize=64)
def _table(cfg: tuple) -> tuple[float, ...]:
    img, patch, *_, dispatch = cfg[:9]
    n = (img // patch) ** 2 + 1
    if dispatch == "attn_mlp":
        raise ValueError("dispatch 'attn_mlp' has two masks per block; use dyt.flops.sample_flops(model, aux)")
    entries = [0.0]
    for t in range(1, n + 1):
        t_attn = t if dispatch in ("attn", "layer") else n
        t_mlp = t if dispatch in ("mlp", "layer", "none") else n
        entries.append(_block_flops(cfg, t_attn, t_mlp) / GIGA)
    return tuple(entries)


def block_flops_table(model: nn.Module) -> list[float]:
    """``get_block_flops``: GFLOPs of one block for t = 1..N dispatched tokens (entry 0 unused), Sec. e.2.

    For MLP dispatch (and ``"none"``) t tokens go through LN2 + MLP; for ``"attn"`` through the attention (as
    queries and keys); for ``"layer"`` through both. Cached per configuration.
    """
    return list(_table(_config(model)))


def base_flops(model: nn.Module) -> float:
    """``get_base_flops``: GFLOPs of the model without blocks: patch embedding, final LayerNorm, head (Sec. e.1)."""
    img, patch, in_chans, num_classes, c = _config(model)[:5]
    patches = (img // patch) ** 2
    conv = patches * c * in_chans * patch * patch
    return (conv + LN_PER_ELEMENT * (patches + 1) * c + c * max(num_classes, 0)) / GIGA


def select_flops(token_select: torch.Tensor, table: list[float], base: float) -> torch.Tensor:
    """``batch_select_flops``: per-sample GFLOPs ``base + sum_l table[kept_l + 1]`` from masks [B, L, N-1, 1]."""
    kept = token_select.detach().reshape(token_select.shape[0], token_select.shape[1], -1).sum(-1).round().long()
    lookup = torch.tensor(table, dtype=torch.float64)
    return base + lookup[(kept + 1).cpu()].sum(dim=1)


def sample_flops(model: nn.Module, aux: dict[str, Any]) -> torch.Tensor:
    """Per-sample GFLOPs of any dispatch variant from a forward's ``aux`` (handles ``attn_mlp``'s two masks)."""
    cfg = _config(model)
    if cfg[8] != "attn_mlp":
        return select_flops(aux["token_select"], block_flops_table(model), base_flops(model))
    kept_mlp = aux["token_select"].detach().flatten(2).sum(-1).round().long().cpu() + 1
    kept_attn = aux["attn_token_select"].detach().flatten(2).sum(-1).round().long().cpu() + 1
    per_block = [[_block_flops(cfg, a, m) for a, m in zip(row_a, row_m, strict=True)]
                 for row_a, row_m in zip(kept_attn.tolist(), kept_mlp.tolist(), strict=True)]
    return base_flops(model) + torch.tensor(per_block, dtype=torch.float64).sum(dim=1) / GIGA


def uniform_rate_flops(model: nn.Module, rate: float) -> float:
    """The manifests' uniform-rate estimate: ``base + L * table[round(rate * (N-1)) + 1]``."""
    table = block_flops_table(model)
    return base_flops(model) + model.num_layers * table[round(rate * (len(table) - 2)) + 1]


def complete_flops(model: nn.Module) -> float:
    """GFLOPs with every token through every sub-block (the complete model; AdaptFormer at the same bottleneck)."""
    cfg = _config(model)
    n = model.num_tokens
    return base_flops(model) + model.num_layers * _block_flops(cfg, n, n) / GIGA


def layer_rates(token_select: torch.Tensor) -> torch.Tensor:
    """Mean activation per layer [L] of masks [B, L, N-1, 1] (the paper's per-layer activation-rate figure)."""
    return token_select.detach().float().flatten(2).mean(dim=(0, 2))


def executed_macs_per_sample(model: nn.Module, loader: Iterable[Any], device: torch.device | str = "cpu",
                             max_batches: int | None = None) -> float:
    """Executed MACs per sample over a loader, with the real gather/scatter path (``common.flops``).

    The model is put in eval mode with ``execution="gather"`` for the count and its previous mode is restored.
    """
    was_training, previous = model.training, model.execution
    model.eval()
    model.execution = "gather"
    try:
        return average_macs_per_sample(model, loader, forward=lambda batch: model(batch[0].to(device)),
                                       max_batches=max_batches)
    finally:
        model.execution = previous
        model.train(was_training)
