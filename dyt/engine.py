"""DyT's training and evaluation loops (the original ``engine_finetune.py`` and ``util/lr_sched.py``).

* :func:`lr_at` / :func:`adjust_learning_rate`: the per-iteration schedule, linear warm-up from 0 to ``lr`` over
  ``warmup_epochs`` and then a half-cycle cosine down to ``min_lr`` (spec Sec. b.4).
* :func:`train_one_epoch`: per batch, the dynamic pass (Gumbel masks) and the complete pass of the same model on
  the same batch under autocast, the DyT loss ``CE(z_s) + lambda (mean M - r)^2 + CE(z_t) + KL(z_t || z_s)``
  (spec Sec. b.3, :class:`dyt.losses.DyTLoss`), AdamW through a GradScaler; epoch means over all processes.
* :func:`evaluate`: hard masks in eval mode (the gather/scatter path unless the model says otherwise), top-1 /
  top-5 or mean-per-class accuracy, loss, the realised activation rate overall and per layer, and the FLOPs per
  sample with the original's per-block table accounting on the real masks (spec Sec. e "FLOPs"); everything is
  summed over processes, so a sharded evaluation gives the same numbers as one process.

Autocast (fp16) and the GradScaler are active on CUDA only, as in the original (``torch.cuda.amp``); on the CPU
both passes run in fp32.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from common.distributed import all_reduce_sum, is_main_process, reduce_weighted_mean
from dyt.data import ACCURACY, MEAN_PER_CLASS
from dyt.flops import layer_rates, sample_flops

LOSS_PARTS = ("base_loss", "token_loss", "teacher_loss", "distillation_loss")


# ----------------------------------------------------------------------------------------------- schedule
def lr_at(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: float) -> float:
    """The learning rate at fractional ``epoch``: linear warm-up, then half-cycle cosine to ``min_lr`` (Sec. b.4)."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def adjust_learning_rate(optimizer: torch.optim.Optimizer, epoch: float, args: Any) -> float:
    """Set every parameter group to :func:`lr_at` (times its ``lr_scale`` if it has one); returns the lr."""
    lr = lr_at(epoch, args.lr, args.min_lr, args.warmup_epochs, args.epochs)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr


def autocast(device: torch.device) -> torch.autocast:
    """fp16 autocast on CUDA (the original's ``torch.cuda.amp.autocast()``); disabled elsewhere."""
    return torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")


def make_scaler(device: torch.device) -> torch.amp.GradScaler:
    """The AMP GradScaler of ``NativeScalerWithGradNormCount``; a disabled pass-through off CUDA."""
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda")


def progress_bar(iterable: Iterable, desc: str) -> tqdm:
    return tqdm(iterable, desc=desc, disable=not is_main_process(), leave=False, dynamic_ncols=True)


# ----------------------------------------------------------------------------------------------- training
def train_one_epoch(
    model: nn.Module,
    criterion: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    epoch: int,
    scaler: torch.amp.GradScaler,
    args: Any,
) -> dict[str, float]:
    """One epoch of DyT fine-tuning (the original ``train_one_epoch``), with a tqdm progress bar.

    Per batch: set the lr of fractional epoch ``epoch + i / len(loader)`` (every ``args.accum_iter`` batches);
    run ``model(x)`` (dynamic: hard Gumbel masks, straight-through) and, when ``criterion.needs_complete``,
    ``model(x, complete_model=True)`` (no token skipped); ``criterion`` gives the total loss and its parts from
    the logits, the forward's ``aux`` (every dispatcher's masks; None without dispatchers) and the targets; the
    loss divided by ``accum_iter`` is back-propagated through ``scaler`` and the optimizer steps every
    ``accum_iter`` batches. ``args`` needs ``lr``, ``min_lr``, ``warmup_epochs``, ``epochs``, ``accum_iter``.

    Returns the epoch means over all processes (weighted by batch size) of ``loss``, ``base_loss``,
    ``token_loss`` (already times lambda), ``teacher_loss``, ``distillation_loss``, the last ``lr``, and ``img/s``.
    """
    model.train()
    accum_iter = max(int(getattr(args, "accum_iter", 1)), 1)
    distill = getattr(criterion, "needs_complete", True)
    num_batches = len(loader)  # type: ignore[arg-type]
    totals = dict.fromkeys(("loss", *LOSS_PARTS), 0.0)
    seen, lr, start = 0, 0.0, time.time()
    optimizer.zero_grad(set_to_none=True)
    bar = progress_bar(loader, f"Epoch {epoch}")
    for step, (images, targets) in enumerate(bar):
        if step % accum_iter == 0:
            lr = adjust_learning_rate(optimizer, epoch + step / num_batches, args)
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device):
            logits, aux = model(images)
            complete_logits = model(images, complete_model=True)[0] if distill else None
            masks = aux if aux.get("token_logits") is not None else None  # None: no dispatcher, no rate loss
            loss, parts = criterion(logits, masks, targets, complete_logits=complete_logits)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"the loss is {loss_value} at epoch {epoch}, batch {step}; lower --lr/--blr")
        scaler.scale(loss / accum_iter).backward()
        if (step + 1) % accum_iter == 0 or step + 1 == num_batches:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        batch = images.shape[0]
        seen += batch
        totals["loss"] += loss_value * batch
        for name in LOSS_PARTS:
            totals[name] += float(parts.get(name, 0.0)) * batch
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.3g}", refresh=False)
    stats = reduce_weighted_mean(totals, seen)
    images_all = all_reduce_sum([seen]).item()
    stats["lr"] = max(group["lr"] for group in optimizer.param_groups)
    stats["img/s"] = images_all / max(time.time() - start, 1e-9)
    return stats


# --------------------------------------------------------------------------------------------- evaluation
def flops_counter(model: nn.Module) -> Callable[[dict[str, Any]], torch.Tensor]:
    """``aux -> GFLOPs per sample`` of ``model`` with the original's per-block table accounting (Sec. e "FLOPs")."""
    return partial(sample_flops, model)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1, 5)) -> list[float]:
    maxk = min(max(topk), logits.shape[1])
    hits = logits.topk(maxk, dim=1).indices.eq(targets.unsqueeze(1))
    return [hits[:, : min(k, maxk)].any(dim=1).sum().item() for k in topk]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    nb_classes: int,
    metric: str = ACCURACY,
    flops_fn: Callable[[dict[str, Any]], torch.Tensor] | None = None,
    desc: str = "Test",
) -> dict[str, Any]:
    """Evaluate with hard masks (eval mode); sums are reduced over processes (spec Sec. e).

    Returns ``acc1``, ``acc5``, ``mean_per_class_acc`` (percent; the mean over all ``nb_classes`` of the
    per-class recall, as the original's ``mean_per_class_accuracy``), ``metric`` (the one the dataset
    reports), ``loss`` (CE), ``activation_rate`` (mean of the patch-token masks over samples, layers and
    tokens), ``layer_rates`` (one per layer), ``flops`` (GFLOPs per sample, original accounting; with
    ``flops_fn``) and ``samples``.
    """
    if metric not in (ACCURACY, MEAN_PER_CLASS):
        raise ValueError(f"unknown metric {metric!r}")
    model.eval()
    ce = nn.CrossEntropyLoss(reduction="sum")
    correct1 = correct5 = loss_sum = flops_sum = rate_sum = 0.0
    samples = 0
    layer_sum: torch.Tensor | None = None
    hits = torch.zeros(nb_classes, dtype=torch.float64)
    counts = torch.zeros(nb_classes, dtype=torch.float64)
    for images, targets in progress_bar(loader, desc):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with autocast(device):
            logits, aux = model(images)
        logits = logits.float()
        loss_sum += ce(logits, targets).item()
        top1, top5 = topk_correct(logits, targets)
        correct1, correct5 = correct1 + top1, correct5 + top5
        pred, cpu_targets = logits.argmax(dim=1).cpu(), targets.cpu()
        counts += torch.bincount(cpu_targets, minlength=nb_classes)[:nb_classes].double()
        hits += torch.bincount(cpu_targets[pred == cpu_targets], minlength=nb_classes)[:nb_classes].double()
        samples += images.shape[0]
        token_select = aux.get("token_select") if isinstance(aux, dict) else None
        if token_select is not None:
            per_layer = layer_rates(token_select).double().cpu() * images.shape[0]
            layer_sum = per_layer if layer_sum is None else layer_sum + per_layer
            rate_sum += token_select.float().flatten(1).mean(dim=1).sum().item()
            if flops_fn is not None:
                flops_sum += flops_fn(aux).double().sum().item()
    num_layers = 0 if layer_sum is None else len(layer_sum)
    flat = torch.cat([torch.tensor([samples, correct1, correct5, loss_sum, flops_sum, rate_sum], dtype=torch.float64),
                      hits, counts, layer_sum if layer_sum is not None else torch.zeros(0, dtype=torch.float64)])
    total = all_reduce_sum(flat)
    n = max(total[0].item(), 1.0)
    hits_all, counts_all = total[6:6 + nb_classes], total[6 + nb_classes:6 + 2 * nb_classes]
    layers = total[6 + 2 * nb_classes:6 + 2 * nb_classes + num_layers]
    stats: dict[str, Any] = {
        "acc1": 100.0 * total[1].item() / n,
        "acc5": 100.0 * total[2].item() / n,
        "mean_per_class_acc": (100.0 * hits_all / counts_all.clamp(min=1)).mean().item(),
        "loss": total[3].item() / n,
        "samples": int(total[0].item()),
    }
    stats["metric"] = stats["acc1"] if metric == ACCURACY else stats["mean_per_class_acc"]
    if num_layers:
        stats["activation_rate"] = total[5].item() / n
        stats["layer_rates"] = (layers / n).tolist()
        if flops_fn is not None:
            stats["flops"] = total[4].item() / n
    return stats

