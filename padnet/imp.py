"""Iterative Mode Partition (IMP), PAD-Net Sec. 3.3 (spec b.3), generic over "mode masks".

A mode mask ``M`` marks which intrinsic parameters of a layer stay dynamic (1) and which become static (0). IMP
scores every mask entry by the effect on the loss of switching its mode, keeps the ``kappa`` most important
entries dynamic and makes the others static, over ``prune_epochs`` rounds with the target dynamic ratio
``kappa_e = kappa ** (e / E)`` (exponential) or ``1 - (1 - kappa) e / E`` (linear). Every round re-scores with
the current mask, so entries made static earlier may come back.

The same code partitions the DY-Conv kernels (``padnet.dyconv.imp_masks``) and the MoE experts (PAD-MoE): a
``masks`` mapping gives, per layer name, a :class:`ModeMask` ``(mask, dynamic, static)``. Scorers have the
signature ``score_fn(model, masks) -> {name: scores of the mask's shape}``:

* :func:`snip_scores`: ``|dL/dM|`` summed over batches and normalised by the global sum (the paper's IMP score,
  the first-order Taylor estimate of the loss change; SNIP, Lee et al. 2019);
* :func:`rand_scores`: Gaussian noise (random partition, the paper's ablation);
* :func:`mag_scores`: ``|Theta|`` averaged over the K dynamic factors (so that it fits the mask, which the
  original's ``Mag`` does not).

Exactly ``N - floor((1 - kappa_e) N)`` entries stay dynamic: ties at the threshold (e.g. zero gradients at
kernel positions that only ever see padding) are broken by position, earlier entries staying dynamic. Scores that
are *all* equal (a partition position alone would decide) raise :class:`NoSignalError`. Without
ties this is the original's ``M = score > kthvalue(scores, floor((1 - kappa_e) N))``, which with ties leaves
fewer dynamic entries than asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

__all__ = ["SCHEDULES", "SCOPES", "SCORERS", "ModeMask", "NoSignalError", "classification_loss", "dynamic_ratio",
           "iterative_mode_partition", "mag_scores", "mode_mask_from_scores", "rand_scores", "round_target",
           "snip_scores"]

SCHEDULES = ("exponential", "linear")
SCOPES = ("global", "local")

Scores = dict[str, torch.Tensor]


class ModeMask(NamedTuple):
    """One layer's mode mask and what it selects between.

    ``mask``: the float buffer (1 = dynamic); ``dynamic``: the K dynamic factors, a tensor (K, *mask.shape[1:])
    or a sequence of K tensors of the mask's shape (MoE experts); ``static``: the static parameter.
    """

    mask: torch.Tensor
    dynamic: torch.Tensor | Sequence[torch.Tensor]
    static: torch.Tensor


def round_target(kappa: float, epoch: int, epochs: int, schedule: str = "exponential") -> float:
    """The dynamic ratio after round ``epoch`` (1-based) of ``epochs`` (spec b.3; the original ``prune_loop``)."""
    if schedule == "exponential":
        return kappa ** (epoch / epochs)
    if schedule == "linear":
        return 1.0 - (1.0 - kappa) * epoch / epochs
    raise ValueError(f"unknown IMP schedule {schedule!r}; choose one of: {', '.join(SCHEDULES)}")


def mode_mask_from_scores(scores: torch.Tensor, kappa: float, tie_break: bool = True) -> torch.Tensor:
    """The 0/1 mask keeping the ``N - floor((1 - kappa) N)`` highest ``scores`` dynamic.

    Among equal scores the earlier positions stay dynamic, so the count is exact. ``tie_break=False`` is the
    original rule ``scores > kthvalue(scores, floor((1 - kappa) N))``, identical without ties and otherwise
    leaving fewer entries dynamic.
    """
    flat = scores.detach().flatten()
    num_static = int((1.0 - kappa) * flat.numel())
    if num_static < 1:
        return torch.ones_like(scores, dtype=torch.float32)
    if not tie_break:
        return (flat > torch.kthvalue(flat, num_static).values).float().view_as(scores)
    order = torch.sort(flat, descending=True, stable=True).indices
    keep = torch.zeros_like(flat, dtype=torch.float32)
    keep[order[:flat.numel() - num_static]] = 1.0
    return keep.view_as(scores)


def dynamic_ratio(masks: Mapping[str, ModeMask]) -> dict[str, float]:
    """The fraction of dynamic entries of every mask."""
    return {name: int(m.mask.count_nonzero()) / m.mask.numel() for name, m in masks.items()}


def _check_masks(masks: Mapping[str, ModeMask]) -> None:
    if not masks:
        raise ValueError("Iterative Mode Partition got no mode masks: the model has no PAD layers "
                         "(use a *_PAD model or a PAD-MoE model)")
    seen: dict[int, str] = {}
    for name, m in masks.items():
        key = m.mask.data_ptr()
        if key in seen:
            raise ValueError(f"mode masks {seen[key]!r} and {name!r} are the same tensor; list each mask once")
        seen[key] = name


class NoSignalError(ValueError):
    """All IMP scores that a threshold would compare are equal: the partition would follow position, not data."""


def _check_signal(scores: torch.Tensor, kappa: float, where: str) -> None:
    """Refuse a partition that only the position tie-break would decide (every score equal, e.g. all zero)."""
    num_static = int((1.0 - kappa) * scores.numel())
    scores = torch.nan_to_num(scores.detach().flatten(), nan=0.0)  # 0 / 0 from normalising all-zero scores
    if 0 < num_static < scores.numel() and bool((scores == scores[0]).all()):
        raise NoSignalError(f"all {scores.numel()} IMP scores {where} equal {float(scores[0]):g}: they "
                            "carry no signal, and the partition would only follow parameter position")


@torch.no_grad()
def _apply(masks: Mapping[str, ModeMask], scores: Scores, kappa: float, scope: str, tie_break: bool) -> None:
    if scope == "global":
        names = list(masks)
        flat = torch.cat([scores[n].flatten().to(masks[names[0]].mask.device) for n in names])
        _check_signal(flat, kappa, "over all layers")
        keep = mode_mask_from_scores(flat, kappa, tie_break)
        for name, part in zip(names, torch.split(keep, [masks[n].mask.numel() for n in names]), strict=True):
            masks[name].mask.copy_(part.view_as(masks[name].mask))
    else:
        for name, m in masks.items():
            _check_signal(scores[name], kappa, f"of {name}")
            m.mask.copy_(mode_mask_from_scores(scores[name], kappa, tie_break).view_as(m.mask))


def _expected_dynamic(masks: Mapping[str, ModeMask], kappa: float, scope: str) -> int:
    sizes = [m.mask.numel() for m in masks.values()] if scope == "local" else [sum(m.mask.numel()
                                                                                  for m in masks.values())]
    return sum(n - int((1.0 - kappa) * n) for n in sizes)


def iterative_mode_partition(
    model: nn.Module,
    masks: Mapping[str, ModeMask],
    score_fn: Callable[[nn.Module, Mapping[str, ModeMask]], Scores],
    sparsity: float = 0.5,
    prune_epochs: int = 1,
    schedule: str = "exponential",
    scope: str = "global",
    train_mode: bool = False,
    tie_break: bool = True,
) -> dict[str, float]:
    """Partition the mode masks in place so that a fraction ``sparsity`` (= kappa, the *dynamic* ratio; the
    original's flag name) stays dynamic, in ``prune_epochs`` rounds (Sec. 3.3; spec b.3). Scores are taken in
    eval mode unless ``train_mode`` (``--prune-train-mode``); the model's mode is restored afterwards.
    ``tie_break=False`` applies the original threshold rule (see :func:`mode_mask_from_scores`).

    Returns the dynamic ratio of every layer. Raises ValueError for a bad argument, :class:`NoSignalError` (a
    ValueError) when every score of a threshold is equal, and RuntimeError when the
    realised number of dynamic entries misses the target (the original printed an error and quit()); with
    ``tie_break=False`` fewer dynamic entries than the target are accepted, as in the original.
    """
    if not 0.0 <= sparsity <= 1.0:
        raise ValueError(f"the dynamic ratio (--sparsity) must lie in [0, 1], got {sparsity}")
    if prune_epochs < 1:
        raise ValueError(f"--prune-epochs must be at least 1, got {prune_epochs}")
    round_target(sparsity, 1, prune_epochs, schedule)  # validates the schedule name
    if scope not in SCOPES:
        raise ValueError(f"unknown IMP scope {scope!r}; choose one of: {', '.join(SCOPES)}")
    _check_masks(masks)
    was_training = model.training
    model.train(train_mode)
    try:
        for epoch in range(1, prune_epochs + 1):
            kappa = round_target(sparsity, epoch, prune_epochs, schedule)
            _apply(masks, score_fn(model, masks), kappa, scope, tie_break)
    finally:
        model.train(was_training)
    realised = sum(int(m.mask.count_nonzero()) for m in masks.values())
    expected = _expected_dynamic(masks, kappa, scope)
    if realised > expected or (tie_break and realised != expected):
        raise RuntimeError(f"IMP left {realised} dynamic entries, expected {expected} (kappa={sparsity})")
    return dynamic_ratio(masks)


# ------------------------------------------------------------------------------------------------------ scorers
def snip_scores(
    model: nn.Module,
    masks: Mapping[str, ModeMask],
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
) -> Scores:
    """The IMP importance ``|dL/dM|`` (Sec. 3.3; spec b.3), summed over ``batches`` and divided by its sum over all
    masks. ``loss_fn(model, batch)`` returns the training loss of one batch (e.g. :func:`classification_loss`).

    Runs in the model's current mode and temperature; the gradients it creates are cleared afterwards.
    """
    for m in masks.values():
        m.mask.grad = None
        m.mask.requires_grad_(True)
    try:
        for batch in batches:
            loss_fn(model, batch).backward()
        grads = {name: m.mask.grad for name, m in masks.items()}
    finally:
        for m in masks.values():
            m.mask.requires_grad_(False)
            m.mask.grad = None
        model.zero_grad(set_to_none=True)
    if any(g is None for g in grads.values()):
        missing = [name for name, g in grads.items() if g is None]
        raise ValueError(f"the loss does not depend on the mode masks of {', '.join(missing[:3])}; "
                         "SNIP needs at least one batch through the model")
    scores = {name: g.detach().abs() for name, g in grads.items()}
    total = sum(s.sum() for s in scores.values())
    return {name: s / total for name, s in scores.items()}


def classification_loss(criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                        ) -> Callable[[nn.Module, Any], torch.Tensor]:
    """``loss_fn`` for :func:`snip_scores` on ``(inputs, targets)`` batches: ``criterion(model(inputs), targets)``,
    with the batch moved to the model's device."""
    def loss_fn(model: nn.Module, batch: Any) -> torch.Tensor:
        device = next(model.parameters()).device
        inputs, targets = batch[0].to(device), batch[1].to(device)
        return criterion(model(inputs), targets)
    return loss_fn


def rand_scores(model: nn.Module, masks: Mapping[str, ModeMask], generator: torch.Generator | None = None
                ) -> Scores:
    """Gaussian scores of the mask's shape: a random partition (the original ``Rand`` pruner; an ablation)."""
    return {name: torch.randn(m.mask.shape, generator=generator).to(m.mask.device) for name, m in masks.items()}


def mag_scores(model: nn.Module, masks: Mapping[str, ModeMask]) -> Scores:
    """``|Theta|`` averaged over the K dynamic factors, in the mask's shape (the original ``Mag`` scored the
    (K, ...) tensor itself, which does not fit the shared mask)."""
    return {name: torch.stack([d.detach().abs() for d in m.dynamic]).mean(0).reshape(m.mask.shape)
            for name, m in masks.items()}


SCORERS = ("snip", "rand", "mag")
