"""Iterative Mode Partition for PAD-MoE (PAD-Net Sec. 3.3; the original ``Trainer_Pad`` + ``prune_loop``).

The mode mask of a PAD-MoE layer (out x in) is shared by its experts, so one entry switches the same weight
position of every expert between dynamic (its own ``W_e``) and static (the shared ``W_static``). The generic
:func:`padnet.imp.iterative_mode_partition` sets the masks; this module gives it the MoE masks and the MoE SNIP
score: ``|dL/dM|`` with ``L`` = task loss + the load-balancing losses of all MoE layers, summed over the pruning
batches and normalised by ``sum(s / max s)`` as in the original MoE pruner (the DY-Conv side divides by ``sum s``;
the masks do not depend on the normalisation).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from padnet.imp import ModeMask, iterative_mode_partition, rand_scores
from padnet.moe.layers import PadMoE
from padnet.moe.modeling import moe_aux_loss, moe_layers

PRUNERS = ("snip", "rand")


def pad_moe_masks(model: nn.Module) -> dict[str, ModeMask]:
    """The mode masks of every PAD-MoE layer: ``name -> (mask, [W_e for each expert], W_static)``."""
    return {name: ModeMask(layer.mask, [expert.dense.weight for expert in layer.experts], layer.static_fc.weight)
            for name, layer in moe_layers(model).items() if isinstance(layer, PadMoE)}


def moe_task_loss(model: nn.Module, batch: Mapping[str, Any]) -> torch.Tensor:
    """Task loss of a Hugging Face sequence-classification model on a tokenised batch, plus the MoE aux losses."""
    loss = model(**batch).loss
    aux = moe_aux_loss(model)
    return loss if aux is None else loss + aux


def moe_snip_scores(model: nn.Module, masks: Mapping[str, ModeMask], batches: Iterable[Any],
                    loss_fn: Callable[[nn.Module, Any], torch.Tensor] = moe_task_loss) -> dict[str, torch.Tensor]:
    """SNIP scores ``|sum_batches dL/dM|``, normalised by ``sum(s / max s)`` over all masks (the original ``SNIP``).

    Gradients are taken with respect to the masks only (``torch.autograd.grad``), so no parameter gradient is
    stored. Runs in the model's current mode.
    """
    names = list(masks)
    tensors = [masks[n].mask for n in names]
    grads = [torch.zeros_like(t) for t in tensors]
    for t in tensors:
        t.requires_grad_(True)
    try:
        for batch in batches:
            loss = loss_fn(model, batch)
            for total, g in zip(grads, torch.autograd.grad(loss, tensors, allow_unused=True), strict=True):
                if g is not None:
                    total += g.float()
    finally:
        for t in tensors:
            t.requires_grad_(False)
    scores = [g.abs() for g in grads]
    flat = torch.cat([s.flatten() for s in scores])
    flat = torch.where(torch.isinf(flat), torch.ones_like(flat), flat)
    norm = (flat / flat.max()).sum() if flat.max() > 0 else flat.new_ones(())
    return {name: s / norm for name, s in zip(names, scores, strict=True)}


def mode_partition(model: nn.Module, batches: list[Any], pruner: str = "snip", sparsity: float = 0.5,
                   prune_epochs: int = 1, schedule: str = "exponential", scope: str = "global",
                   train_mode: bool = False, loss_fn: Callable[[nn.Module, Any], torch.Tensor] = moe_task_loss,
                   seed: int = 0) -> dict[str, float]:
    """Run IMP on the PAD-MoE masks of ``model`` at dynamic ratio ``sparsity`` (kappa); returns the per-layer ratio.

    ``pruner``: ``snip`` (the paper's IMP score) or ``rand`` (a random partition, seeded by ``seed``).
    """
    if pruner not in PRUNERS:
        raise ValueError(f"unknown pruner {pruner!r}; choose one of: {', '.join(PRUNERS)}")
    masks = pad_moe_masks(model)
    if pruner == "snip":
        def score_fn(m: nn.Module, mm: Mapping[str, ModeMask]) -> dict[str, torch.Tensor]:
            return moe_snip_scores(m, mm, batches, loss_fn)
    else:
        generator = torch.Generator().manual_seed(seed)

        def score_fn(m: nn.Module, mm: Mapping[str, ModeMask]) -> dict[str, torch.Tensor]:
            return rand_scores(m, mm, generator)
    return iterative_mode_partition(model, masks, score_fn, sparsity, prune_epochs, schedule, scope, train_mode)
