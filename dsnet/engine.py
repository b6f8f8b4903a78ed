"""DS-Net training and evaluation loops (paper Sec. 3.3; spec Sec. 4-6).

* Stage I, :func:`train_epoch_slim`: the sandwich rule with in-place (ensemble) bootstrapping, one
  backward per sub-network, summed gradients (:func:`sandwich_step`).
* BN recalibration, :func:`reset_bn`: fresh statistics for every width from training batches.
* Stage II, :func:`train_epoch_slim_gate`: sandwich gate sparsification + CE + MAdds loss, only the gate
  learns, BN frozen (:func:`gate_step`).
* :func:`validate_slim` (one static sub-network) and :func:`validate_gate` (the gated dynamic model, with its
  MAdds averaged over the data).

Every function accepts a bare or a DDP-wrapped model; metrics are reduced over processes.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils import distribute_bn
from torch import nn
from tqdm import tqdm

from common.checkpoint import unwrap_model
from common.distributed import all_reduce_sum, get_world_size, is_main_process
from dsnet.madds import dynamic_madds, madds, mode_widths
from dsnet.models import DSBatchNorm2d, DSNet

__all__ = ["SANDWICH", "freeze_bn", "gate_step", "gate_target", "reset_bn", "sandwich_step", "train_epoch_slim",
           "train_epoch_slim_gate", "validate_gate", "validate_slim"]

# the sandwich rule (Sec. 3.3): the largest, two random uniform sub-networks, the smallest
SANDWICH: tuple[tuple[str, int | None], ...] = (("largest", None), ("uniform", None), ("uniform", None),
                                                 ("smallest", None))


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type) if enabled else nullcontext()


def _backward(loss: torch.Tensor, scaler: torch.amp.GradScaler | None) -> None:
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _num_correct(output: torch.Tensor, target: torch.Tensor, topk: Sequence[int] = (1, 5)) -> list[float]:
    maxk = min(max(topk), output.size(1))
    pred = output.topk(maxk, dim=1).indices
    hits = pred.eq(target[:, None])
    return [hits[:, :min(k, maxk)].any(dim=1).sum().item() for k in topk]


def _progress(loader: Iterable, desc: str) -> tqdm:
    return tqdm(loader, desc=desc, leave=False, dynamic_ncols=True, disable=not is_main_process())


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------- Stage I
def sandwich_step(model: nn.Module, teacher: DSNet | None, images: torch.Tensor, target: torch.Tensor,
                  loss_fn: nn.Module, distill_loss_fn: nn.Module, *, inplace_bootstrap: bool = True,
                  ensemble_ib: bool = False, optimizer_step: int = 1, scaler: torch.amp.GradScaler | None = None,
                  amp: bool = False, seed: int | None = None,
                  sample_list: Sequence[tuple[str, int | None]] = SANDWICH) -> dict[str, Any]:
    """Forward and backward every sub-network of the sandwich on one batch (Sec. 3.3; spec Sec. 4).

    The largest learns from the labels (``loss_fn``); the others, with in-place bootstrapping, from the soft
    prediction of ``teacher`` (the EMA model) in ``largest`` mode, and with ``ensemble_ib`` the smallest from the
    mean of the teacher's predictions for the largest and both uniform sub-networks. Each loss is divided by
    ``optimizer_step`` and back-propagated on its own, so the gradients add up. Without a teacher the model's
    own detached largest output is the target (in-place distillation). Before every sub-network the Python,
    NumPy and torch generators are reseeded with ``seed + 1``, ``seed + 2``, ... as the original does, so all
    processes draw the same widths. Returns the losses and logits per sub-network.
    """
    core = unwrap_model(model)
    device = images.device
    out: dict[str, Any] = {"losses": [], "logits": []}
    soft_target = None
    guides: list[torch.Tensor] = []
    for k, (mode, choice) in enumerate(sample_list):
        if seed is not None:
            _seed_all(seed + k + 1)
        core.set_mode(mode, choice)
        with _autocast(device, amp):
            output = model(images)
            if mode == "largest":
                loss = loss_fn(output, target)
                if inplace_bootstrap:
                    if teacher is not None:
                        with torch.no_grad():
                            teacher.set_mode("largest")
                            soft_target = teacher(images).float()
                    else:
                        soft_target = output.detach().float()
                    guides.append(soft_target)
            elif not inplace_bootstrap:
                loss = loss_fn(output, target)
            elif mode == "smallest" and ensemble_ib:
                probs = torch.stack([F.softmax(g, dim=1) for g in guides]).mean(0)
                loss = distill_loss_fn(output, probs)
            else:
                loss = distill_loss_fn(output, F.softmax(soft_target, dim=1))
                if ensemble_ib and teacher is not None:
                    with torch.no_grad():  # as the original: a uniform teacher draws its own random choice
                        teacher.set_mode(mode, choice)
                        guides.append(teacher(images).float())
        _backward(loss / optimizer_step, scaler)
        out["losses"].append(loss.detach())
        out["logits"].append(output.detach())
        out[f"loss_{mode}"] = loss.detach()
    return out


def _drop_zero_grads(optimizer: torch.optim.Optimizer) -> None:
    """Parameters whose gradient is exactly zero get none, so the step leaves them (and their momentum) alone."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.grad is not None and not p.grad.any():
                p.grad = None


def _optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
                    drop_zero_grads: bool = False) -> None:
    """One (AMP-scaled) optimizer step, then zero gradients; Stage I first drops all-zero gradients."""
    if drop_zero_grads:
        if scaler is not None:
            scaler.unscale_(optimizer)
        _drop_zero_grads(optimizer)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def train_epoch_slim(epoch: int, model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                     distill_loss_fn: nn.Module, args: Any, *, device: torch.device, lr_scheduler: Any = None,
                     model_ema: Any = None, scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One epoch of Stage I (supernet training); returns the mean largest and smallest losses."""
    core = unwrap_model(model)
    model.train()
    teacher = model_ema.module if model_ema is not None else None
    optimizer_step = getattr(args, "optimizer_step", 1)
    num_updates = epoch * len(loader)
    seed = num_updates
    totals = torch.zeros(3, dtype=torch.float64)
    bar = _progress(loader, f"Stage I epoch {epoch}")
    last = len(loader) - 1
    for batch_idx, (images, target) in enumerate(bar):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        step = sandwich_step(model, teacher, images, target, loss_fn, distill_loss_fn,
                             inplace_bootstrap=args.inplace_bootstrap, ensemble_ib=args.ensemble_ib,
                             optimizer_step=optimizer_step, scaler=scaler, amp=args.amp, seed=seed)
        seed += len(SANDWICH)
        if batch_idx == last or (batch_idx + 1) % optimizer_step == 0:
            _optimizer_step(optimizer, scaler, drop_zero_grads=True)
            if model_ema is not None:
                model_ema.update(core)
        num_updates += 1
        n = images.size(0)
        totals += torch.tensor([step["loss_largest"].item() * n, step["loss_smallest"].item() * n, n],
                               dtype=torch.float64)
        if batch_idx % args.log_interval == 0 or batch_idx == last:
            bar.set_postfix(largest=f"{step['loss_largest'].item():.4f}",
                            smallest=f"{step['loss_smallest'].item():.4f}",
                            lr=f"{optimizer.param_groups[0]['lr']:.3e}")
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
    totals = all_reduce_sum(totals)
    return {"loss_largest": (totals[0] / totals[2]).item(), "loss_smallest": (totals[1] / totals[2]).item()}


# ------------------------------------------------------------------------------------------- BN recalibration
def reset_bn(model: nn.Module, loader: Any, num_choice: int, *, device: torch.device, max_batches: int = 1001,
             include_largest: bool = False, dist_bn: str = "reduce", cumulative: bool = False) -> None:
    """Re-estimate every width's BN statistics (spec Sec. 5).

    All statistics are reset, then each training batch runs through the ``num_choice`` uniform sub-networks in
    train mode (momentum 0.1, so the estimates are moving averages), for ``max_batches`` batches. The original
    stops after at most one pass over the loader; here the loader is repeated until ``max_batches`` batches ran,
    which is the same on ImageNet (1001 batches are a fraction of an epoch) and keeps a small dataset's estimates
    from staying close to the reset values. With ``include_largest`` the ``largest`` widths are recalibrated too
    (the original leaves them reset; dsnet/README.md, "Differences"). With ``cumulative`` every batch's
    statistics get the same weight (PyTorch's ``momentum=None``) instead of the moving average, so nothing of the
    reset values remains: after
    ``n`` batches the moving average still holds ``0.9 ** n`` of the reset variance 1, which swamps channels whose
    true variance is smaller (a short run on a small data set has such channels). Under torchrun the statistics
    are then averaged (``reduce``) or broadcast from rank 0 across processes.
    """
    core = unwrap_model(model)
    for m in core.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    norms = [m for m in core.modules() if isinstance(m, DSBatchNorm2d)]
    momenta = [m.aux_bn[-1].momentum for m in norms]
    if cumulative:
        for m in norms:
            m.aux_bn[-1].momentum = None
    core.train()
    modes = [("uniform", c) for c in range(num_choice)] + ([("largest", None)] if include_largest else [])
    done = 0
    with torch.no_grad(), tqdm(total=max_batches, desc="BN recalibration", leave=False, dynamic_ncols=True,
                               disable=not is_main_process()) as bar:
        while done < max_batches:
            for images, _ in loader:
                images = images.to(device, non_blocking=True)
                for mode, choice in modes:
                    core.set_mode(mode, choice)
                    core(images)
                done += 1
                bar.update()
                if done >= max_batches:
                    break
    for m, momentum in zip(norms, momenta, strict=True):
        m.aux_bn[-1].momentum = momentum
    if get_world_size() > 1 and dist_bn in ("reduce", "broadcast"):
        distribute_bn(core, get_world_size(), dist_bn == "reduce")


# --------------------------------------------------------------------------------------------------- Stage II
def freeze_bn(model: nn.Module) -> None:
    """Batch norm in eval mode: running statistics used and never updated (Stage II)."""
    for m in unwrap_model(model).modules():
        if isinstance(m, (nn.BatchNorm2d, DSBatchNorm2d)):
            m.eval()


def gate_target(smallest_logits: torch.Tensor, target: torch.Tensor, num_routes: int = 4) -> torch.Tensor:
    """Sandwich gate sparsification targets (Sec. 3.3, Eq. 7): the slimmest route if the smallest sub-network
    classifies the sample correctly, else the widest route."""
    correct = smallest_logits.argmax(dim=1).eq(target)
    return torch.where(correct, 0, num_routes - 1)


def gate_step(model: nn.Module, images: torch.Tensor, target: torch.Tensor, loss_fn: nn.Module, *,
              original_dynamic_madds: bool = False, sgs_on_logits: bool = False, amp: bool = False
              ) -> dict[str, torch.Tensor]:
    """Losses of one Stage-II batch (Sec. 3.3; spec Sec. 6): ``gate_loss + ce_loss + 0.5 * flops_loss``.

    ``gate_loss``: ``loss_fn`` between the gate and the SGS target. As in the original it is applied to the
    Gumbel-softmax probabilities ``y_soft`` (quirk 7: log-softmax of probabilities); ``sgs_on_logits`` applies it
    to the noisy scores instead. ``flops_loss``: ``(mean per-sample MAdds / 1e9) ** 2`` through the
    straight-through widths. ``ce_loss``: ``loss_fn`` on the dynamic output, reaching the gate through the masks.
    """
    core = unwrap_model(model)
    device = images.device
    with torch.no_grad(), _autocast(device, amp):
        core.set_mode("smallest")
        smallest = core(images)
    routes = len(core.routing_space)
    targets = gate_target(smallest, target, routes)
    core.set_mode("dynamic")
    with _autocast(device, amp):
        output = model(images)
        route = core.route
        gate_input = route.scores if sgs_on_logits else route.y_soft
        gate_loss = loss_fn(gate_input, targets)
        running_flops = dynamic_madds(core, route, images.size(-1), original_dw_groups=original_dynamic_madds).mean()
        flops_loss = (running_flops / 1e9) ** 2
        ce_loss = loss_fn(output, target)
        loss = gate_loss + ce_loss + 0.5 * flops_loss
    return {"loss": loss, "gate_loss": gate_loss, "ce_loss": ce_loss, "flops_loss": flops_loss,
            "running_flops": running_flops, "output": output, "gate_target": targets, "smallest": smallest,
            "route": route}


def train_epoch_slim_gate(epoch: int, model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer,
                          loss_fn: nn.Module, args: Any, *, device: torch.device, lr_scheduler: Any = None,
                          model_ema: Any = None, scaler: torch.amp.GradScaler | None = None) -> dict[str, float]:
    """One epoch of Stage II (gate training); BN stays frozen and only the optimizer's gate moves."""
    core = unwrap_model(model)
    model.train()
    freeze_bn(model)
    optimizer_step = getattr(args, "optimizer_step", 1)
    num_updates = epoch * len(loader)
    keys = ("loss", "ce_loss", "gate_loss", "flops_loss", "running_flops")
    totals = torch.zeros(len(keys) + 2, dtype=torch.float64)
    bar = _progress(loader, f"Stage II epoch {epoch}")
    last = len(loader) - 1
    optimizer.zero_grad(set_to_none=True)
    for batch_idx, (images, target) in enumerate(bar):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        step = gate_step(model, images, target, loss_fn, original_dynamic_madds=args.original_dynamic_madds,
                         sgs_on_logits=args.sgs_on_logits, amp=args.amp)
        _backward(step["loss"] / optimizer_step, scaler)
        if batch_idx == last or (batch_idx + 1) % optimizer_step == 0:
            _optimizer_step(optimizer, scaler)
        if model_ema is not None:  # every batch in Stage II, as the original
            model_ema.update(core)
        num_updates += 1
        n = images.size(0)
        correct = step["output"].argmax(dim=1).eq(target).sum().item()
        totals += torch.tensor([step[k].item() * n for k in keys] + [correct, n], dtype=torch.float64)
        if batch_idx % args.log_interval == 0 or batch_idx == last:
            bar.set_postfix(loss=f"{step['loss'].item():.4f}", madds=f"{step['running_flops'].item() / 1e6:.1f}M",
                            lr=f"{optimizer.param_groups[0]['lr']:.3e}")
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
    totals = all_reduce_sum(totals)
    result = {k: (totals[i] / totals[-1]).item() for i, k in enumerate(keys)}
    result["flops"] = result.pop("running_flops")
    result["acc"] = (100.0 * totals[-2] / totals[-1]).item()
    return result


# ------------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def validate_slim(model: nn.Module, loader: Any, loss_fn: nn.Module, *, device: torch.device,
                  model_mode: str | int, amp: bool = False, log_suffix: str = "") -> dict[str, float]:
    """Top-1/5, loss and MAdds per image of one static sub-network (an int ``model_mode`` is a uniform choice)."""
    core = unwrap_model(model)
    model.eval()
    mode, choice = ("uniform", model_mode) if isinstance(model_mode, int) else (model_mode, None)
    totals = torch.zeros(4, dtype=torch.float64)
    size = None
    for images, target in _progress(loader, f"Test{log_suffix} {model_mode}"):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        core.set_mode(mode, choice)  # a random uniform choice is drawn per batch, as in the original
        with _autocast(device, amp):
            output = model(images)
        size = images.size(-1)
        top1, top5 = _num_correct(output, target)
        totals += torch.tensor([loss_fn(output.float(), target).item() * images.size(0), top1, top5,
                                images.size(0)], dtype=torch.float64)
    totals = all_reduce_sum(totals)
    n = totals[3].clamp_min(1)
    flops = madds(core, mode_widths(core, mode, core.choice if mode == "uniform" else None), size or 224)
    return {"loss": (totals[0] / n).item(), "prec1": (100 * totals[1] / n).item(),
            "prec5": (100 * totals[2] / n).item(), "flops": float(flops)}


@torch.no_grad()
def validate_gate(model: nn.Module, loader: Any, loss_fn: nn.Module, args: Any, *, device: torch.device,
                  log_suffix: str = "") -> dict[str, Any]:
    """The gated dynamic model: top-1/5, loss, gate accuracy against the SGS target, and the MAdds per image
    averaged over the data (how the paper reports dynamic MAdds); ``route_counts`` per route."""
    core = unwrap_model(model)
    model.eval()
    routes = len(core.routing_space)
    totals = torch.zeros(6 + routes, dtype=torch.float64)
    for images, target in _progress(loader, f"Test{log_suffix} dynamic"):
        images, target = images.to(device, non_blocking=True), target.to(device, non_blocking=True)
        with _autocast(device, args.amp):
            core.set_mode("smallest")
            targets = gate_target(core(images), target, routes)
            core.set_mode("dynamic")
            output = model(images)
        route = core.route
        flops = dynamic_madds(core, route, images.size(-1), original_dw_groups=args.original_dynamic_madds)
        top1, top5 = _num_correct(output, target)
        counts = torch.bincount(route.index, minlength=routes).cpu().double()
        totals += torch.cat([torch.tensor([loss_fn(output.float(), target).item() * images.size(0), top1, top5,
                                           route.index.eq(targets).sum().item(), flops.sum().item(),
                                           images.size(0)], dtype=torch.float64), counts])
    totals = all_reduce_sum(totals)
    n = totals[5].clamp_min(1)
    return {"loss": (totals[0] / n).item(), "prec1": (100 * totals[1] / n).item(),
            "prec5": (100 * totals[2] / n).item(), "gate_acc": (100 * totals[3] / n).item(),
            "flops": (totals[4] / n).item(),
            "route_counts": [int(c) for c in totals[6:].tolist()]}
