"""PAD-Net DY-Conv training and evaluation loops (spec Sec. b.1, b.5): the original ``main.py``'s ``train`` and
``validate``, with its temperature annealing, per-iteration learning rate, label smoothing and mixup.

* :func:`get_temperature`: the attention temperature, annealed linearly from ``--temp_init`` towards 1 over the
  first ``--temp_epoch`` epochs, set every iteration of those epochs only; it then stays at its last value,
  ``1 + (temp_init - 1) / (temp_epoch * iterations per epoch)``, just above 1 (as in the original).
* :func:`learning_rate`: ``--lr-decay`` step / cos / linear / schedule per iteration, with ``--warmup``
  (spec Sec. b.5). The original's ``step`` mode never decays (see :func:`learning_rate`).
* :func:`label_smoothing_loss`: the original ``LabelSmoothingLoss`` (target 1 - s, every other class s / (C - 1)).
* :func:`mixup_data`: mixup whose alpha ramps as ``--mixup * epoch / 100`` over the first 100 epochs.
* :func:`train_one_epoch` / :func:`validate`: one epoch; top-1 / top-5 / loss reduced over all processes.

Every function accepts a bare or a DDP-wrapped model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from common.checkpoint import unwrap_model
from common.distributed import is_main_process, reduce_weighted_mean
from padnet.dyconv.layers import set_temperature

__all__ = ["LR_DECAYS", "WARMUP_EPOCHS", "get_temperature", "label_smoothing_loss", "learning_rate", "mixup_alpha",
           "mixup_criterion", "mixup_data", "train_one_epoch", "validate"]

LR_DECAYS = ("step", "cos", "linear", "schedule")
WARMUP_EPOCHS = 5  # the original's --warmup: a linear ramp over 5 epochs


# -------------------------------------------------------------------------------------------- schedules
def get_temperature(iteration: int, epoch: int, iters_per_epoch: int, temp_epoch: int = 15,
                    temp_init: float = 30.0) -> float:
    """The softmax temperature of the DY-Conv attention at ``iteration`` of ``epoch`` (spec Sec. b.1):
    ``T = 1 + max(0, (T0 - 1) * (1 - it / (temp_epoch * iters_per_epoch)))`` with ``it`` counted from the start
    of training. :func:`train_one_epoch` sets it during the first ``temp_epoch`` epochs only, so the last value set
    is that of the final iteration, ``1 + (T0 - 1) / (temp_epoch * iters_per_epoch)``, and it stays there: T never
    reaches exactly 1 (the original's behaviour, kept)."""
    total = temp_epoch * iters_per_epoch
    if total <= 0:
        return 1.0
    current = iteration + epoch * iters_per_epoch
    return 1.0 + max(0.0, (temp_init - 1.0) * (total - current) / total)


def learning_rate(base_lr: float, epoch: int, iteration: int, iters_per_epoch: int, epochs: int,
                  lr_decay: str = "step", *, step: int = 30, schedule: Sequence[int] = (30, 60, 90),
                  gamma: float = 0.1, warmup: bool = False) -> float:
    """The learning rate of one iteration (the original ``adjust_learning_rate``; spec Sec. b.5).

    With ``warmup`` the first 5 epochs ramp linearly from 0 to ``base_lr``; the decay below is measured from the
    end of the warm-up (``t`` = fraction of the post-warm-up iterations done):

    * ``step``: ``base_lr * gamma ** (epochs since warm-up // step)``, a decay every ``--step`` epochs. The
      original computes ``gamma ** (t_iter // max_iter)``, which is 0 until the last iteration, so its default
      schedule keeps the learning rate constant; here ``--step`` (unused there) is the decay interval.
    * ``cos``: ``base_lr * (1 + cos(pi * t)) / 2``.
    * ``linear``: ``base_lr * (1 - t)``.
    * ``schedule``: ``base_lr * gamma ** (number of --schedule epochs <= epoch)``.
    """
    warmup_epochs = WARMUP_EPOCHS if warmup else 0
    warmup_iter = warmup_epochs * iters_per_epoch
    current = iteration + epoch * iters_per_epoch
    span = max(1, epochs * iters_per_epoch - warmup_iter)
    t = (current - warmup_iter) / span
    if lr_decay == "step":
        lr = base_lr * gamma ** (max(0, current - warmup_iter) // max(1, step * iters_per_epoch))
    elif lr_decay == "cos":
        lr = base_lr * (1 + math.cos(math.pi * t)) / 2
    elif lr_decay == "linear":
        lr = base_lr * (1 - t)
    elif lr_decay == "schedule":
        lr = base_lr * gamma ** sum(1 for s in schedule if s <= epoch)
    else:
        raise ValueError(f"unknown --lr-decay {lr_decay!r}; choose one of {', '.join(LR_DECAYS)}")
    if epoch < warmup_epochs:
        lr = base_lr * current / warmup_iter
    return lr


# ---------------------------------------------------------------------------------------- loss and mixup
def label_smoothing_loss(smoothing: float, num_classes: int) -> nn.Module:
    """The original ``LabelSmoothingLoss``: cross-entropy against a target of ``1 - s`` on the label and
    ``s / (C - 1)`` on each other class; plain CE for ``s = 0``.

    ``torch``'s ``label_smoothing=e`` puts ``e / C`` on every class, so ``e = s * C / (C - 1)`` gives the same
    target distribution.
    """
    if smoothing <= 0:
        return nn.CrossEntropyLoss()
    return nn.CrossEntropyLoss(label_smoothing=smoothing * num_classes / (num_classes - 1))


def mixup_alpha(mixup: float, epoch: int) -> float:
    """The original's ramp: ``mixup * epoch / 100`` during the first 100 epochs, then ``mixup``."""
    return mixup * epoch / 100 if epoch < 100 else mixup


def mixup_data(x: torch.Tensor, y: torch.Tensor, alpha: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Mixed inputs, both target sets and ``lam ~ Beta(alpha, alpha)`` (``lam = 1`` for ``alpha = 0``)."""
    lam = float(np.random.beta(alpha, alpha)) if alpha > 0 else 1.0
    index = torch.randperm(x.size(0), device=x.device)
    return lam * x + (1 - lam) * x[index], y, y[index], lam


def mixup_criterion(criterion: nn.Module, pred: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor,
                    lam: float) -> torch.Tensor:
    return lam * criterion(pred, y_a) + (1 - lam) * criterion(pred, y_b)


def _num_correct(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> list[float]:
    maxk = min(max(topk), output.size(1))
    hits = output.topk(maxk, dim=1).indices.eq(target[:, None])
    return [hits[:, :min(k, maxk)].any(dim=1).sum().item() for k in topk]


def _temperature(model: nn.Module) -> float:
    """The model's attention temperature; 1.0 for a static model (it has none)."""
    return float(getattr(model, "temperature", 1.0))


def _progress(loader: Iterable, desc: str) -> tqdm:
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not is_main_process())


# ------------------------------------------------------------------------------------------------ loops
def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, loader: Any,
                    device: torch.device, epoch: int, args: Any) -> dict[str, float]:
    """One training epoch of the original ``train`` (spec Sec. b.1, b.5).

    Every iteration first sets the temperature (during the first ``args.temp_epoch`` epochs) and the learning
    rate, then takes one SGD step on the label-smoothed loss, on mixup'ed inputs when ``args.mixup > 0``.
    Returns the loss and top-1 / top-5 (%) averaged over all samples of all processes, the last learning rate
    and the temperature the epoch ended with.
    """
    core = unwrap_model(model)
    model.train()
    iters = len(loader)
    alpha = mixup_alpha(args.mixup, epoch)
    totals = {"loss": 0.0, "acc1": 0.0, "acc5": 0.0}
    count, lr = 0, optimizer.param_groups[0]["lr"]
    bar = _progress(loader, f"Epoch {epoch + 1}/{args.epochs}")
    for i, (images, target) in enumerate(bar):
        if epoch < args.temp_epoch:
            set_temperature(core, get_temperature(i, epoch, iters, args.temp_epoch, args.temp_init))
        lr = learning_rate(args.lr, epoch, i, iters, args.epochs, args.lr_decay, step=args.step,
                           schedule=args.schedule, gamma=args.gamma, warmup=args.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        if args.mixup != 0:
            images, y_a, y_b, lam = mixup_data(images, target, alpha)
            output = model(images)
            loss = mixup_criterion(criterion, output, y_a, y_b, lam)
            hits_a, hits_b = _num_correct(output, y_a), _num_correct(output, y_b)
            top1, top5 = (lam * a + (1 - lam) * b for a, b in zip(hits_a, hits_b, strict=True))
        else:
            output = model(images)
            loss = criterion(output, target)
            top1, top5 = _num_correct(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = images.size(0)
        totals["loss"] += loss.item() * n
        totals["acc1"] += 100.0 * top1
        totals["acc5"] += 100.0 * top5
        count += n
        bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.3e}", T=f"{_temperature(core):.2f}")
    result = reduce_weighted_mean(totals, count)
    result.update(lr=lr, temperature=_temperature(core))
    return result


@torch.no_grad()
def validate(model: nn.Module, criterion: nn.Module, loader: Any, device: torch.device) -> dict[str, float]:
    """Top-1 / top-5 (%) and the loss over the validation set, in eval mode at the model's current temperature
    (spec Sec. e); sums are reduced over all processes."""
    model.eval()
    totals = {"loss": 0.0, "acc1": 0.0, "acc5": 0.0}
    count = 0
    for images, target in _progress(loader, "Test"):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        output = model(images)
        top1, top5 = _num_correct(output, target)
        n = images.size(0)
        totals["loss"] += criterion(output, target).item() * n
        totals["acc1"] += 100.0 * top1
        totals["acc5"] += 100.0 * top5
        count += n
    return reduce_weighted_mean(totals, count)
