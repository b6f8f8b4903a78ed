"""JEI-DNN training and evaluation loops (paper Sec. 3.3; spec Sec. b "Warm-up", "Bi-level training", Sec. e).

* :func:`warmup_epoch` / :class:`WarmupState`: the "dynamic warm-up" of the ICs with per-IC patience, best-IC
  checkpoints, restore-and-freeze;
* :func:`train_bilevel_epoch`: the GATE / CLASSIFIER alternation every ``bilevel_batch_count`` batches, each epoch
  starting in GATE;
* :func:`collect_outputs` + :func:`evaluate_split` / :func:`evaluate_test`: one pass over a set, metrics on val and
  averaged over the test sub-splits;
* :func:`set_from_validation`: the gate pos-weights and the conformal thresholds taken from validation.

The backbone is frozen by the caller (:func:`freeze_backbone`); ``model.train()`` keeps its DropPath and dropout
active, as the original does, unless ``backbone_eval`` is set. Under torchrun the gradients of the trainable
parameters are averaged by hand (:func:`sync_gradients`): the gate path does not go through ``forward``, so DDP's
hooks would not see it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.checkpoint import save_checkpoint
from common.distributed import get_world_size, is_main_process
from jeidnn import dynn, metrics

GATE, CLASSIFIER = "gate", "classifier"
TRAINABLE = ("intermediate_heads", "gates")
WARMUP_PATIENCE = 2


# --------------------------------------------------------------------------------------------------- helpers
def freeze_backbone(model: nn.Module) -> int:
    """``requires_grad = False`` everywhere but the ICs and gates (the original's ``freeze_backbone``); returns the
    number of trainable parameters left."""
    for name, param in model.named_parameters():
        param.requires_grad = name.split(".", 1)[0] in TRAINABLE
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def set_ic_frozen(model: nn.Module, level: int, frozen: bool) -> None:
    for param in model.intermediate_heads[level].parameters():
        param.requires_grad = not frozen


def set_train_mode(model: nn.Module, backbone_eval: bool) -> None:
    """``model.train()`` as the original (DropPath and dropout of the frozen backbone active); with
    ``backbone_eval`` everything but the ICs and gates is put in eval mode."""
    model.train()
    if backbone_eval:
        for name, child in model.named_children():
            if name not in TRAINABLE:
                child.eval()


def sync_gradients(model: nn.Module) -> None:
    """Average the gradients of the parameters that have one over the processes (no-op in one process)."""
    world = get_world_size()
    if world == 1:
        return
    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank, so that decisions taken from metrics are identical everywhere."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _batches(loader: DataLoader, max_batches: int | None, desc: str):
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    bar = tqdm(loader, total=total, desc=desc, leave=False, disable=not is_main_process(), dynamic_ncols=True)
    for index, batch in enumerate(bar):
        if index >= total:
            break
        yield index, batch, bar


class _Running:
    """Running means of the per-batch training metrics, reset when the phase changes (as the original)."""

    def __init__(self, num_exits: int):
        self.num_exits = num_exits
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.loss = 0.0
        self.correct = torch.zeros(self.num_exits + 1, dtype=torch.float64)
        self.gated_correct = 0.0
        self.exits = torch.zeros(self.num_exits + 1, dtype=torch.float64)
        self.cost = 0.0

    def update(self, loss: float, final_logits, ic_logits, targets, decisions: dynn.ExitDecisions | None,
               costs: Sequence[float]) -> None:
        batch = targets.size(0)
        self.n += batch
        self.loss += loss * batch
        for level, logits in enumerate([*ic_logits, final_logits]):
            self.correct[level] += logits.argmax(1).eq(targets).sum().item()
        if decisions is not None:
            counts = decisions.counts().double().cpu()
            self.exits += counts
            self.cost += float((counts * torch.tensor(costs, dtype=torch.float64)).sum())
            gated = decisions.gated_logits(ic_logits, final_logits)
            self.gated_correct += gated.argmax(1).eq(targets).sum().item()

    def as_metrics(self, prefix: str = "train") -> dict[str, float]:
        n = max(self.n, 1)
        out = {f"{prefix}/loss": self.loss / n}
        for level in range(self.num_exits):
            out[f"{prefix}/acc{level}"] = 100.0 * float(self.correct[level]) / n
        out[f"{prefix}/acc_final"] = 100.0 * float(self.correct[-1]) / n
        if self.exits.sum() > 0:
            out[f"{prefix}/gated_acc"] = 100.0 * self.gated_correct / n
            out[f"{prefix}/total_cost"] = self.cost / n
            for level in range(self.num_exits):
                out[f"{prefix}/percent_exit{level}"] = float(self.exits[level]) / n
            out[f"{prefix}/percent_exitfinal"] = float(self.exits[-1]) / n
        return out


# ---------------------------------------------------------------------------------------------------- warm-up
@dataclass
class WarmupState:
    """Per-IC bookkeeping of the dynamic warm-up: best val accuracy, patience, frozen flag and best weights."""

    best_acc: list[float]
    patience: list[int]
    frozen: list[bool]
    best_states: list[dict[str, torch.Tensor] | None]
    epochs_done: int = 0
    finished: bool = False

    @classmethod
    def fresh(cls, num_exits: int) -> WarmupState:
        return cls([0.0] * num_exits, [0] * num_exits, [False] * num_exits, [None] * num_exits)

    def state_dict(self) -> dict[str, Any]:
        return {"best_acc": self.best_acc, "patience": self.patience, "frozen": self.frozen,
                "best_states": self.best_states, "epochs_done": self.epochs_done, "finished": self.finished}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> WarmupState:
        return cls(list(state["best_acc"]), list(state["patience"]), list(state["frozen"]),
                   list(state["best_states"]), int(state["epochs_done"]), bool(state["finished"]))


def warmup_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader, device: torch.device,
                 costs: Sequence[float], epoch: int, max_batches: int | None = None, backbone_eval: bool = False,
                 log: Callable[[dict[str, float], int], None] | None = None) -> dict[str, float]:
    """One epoch of the warm-up loss ``CE(y_L) + sum_l (G + 1 - l) CE(y_l)`` on the unfrozen ICs (spec Sec. b)."""
    set_train_mode(model, backbone_eval)
    running = _Running(model.num_exits)
    for index, (images, targets), bar in _batches(loader, max_batches, f"warm-up {epoch}"):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        optimizer.zero_grad()
        final_logits, ic_logits = model(images)
        loss = dynn.warmup_loss(final_logits, ic_logits, targets)
        loss.backward()
        sync_gradients(model)
        optimizer.step()
        running.update(loss.item(), final_logits.detach(), [x.detach() for x in ic_logits], targets, None, costs)
        bar.set_postfix(loss=f"{running.loss / running.n:.3f}")
        if log is not None:
            log(running.as_metrics(), epoch * len(loader) + index)
    return running.as_metrics()


def update_warmup(model: nn.Module, state: WarmupState, ic_accuracies: Sequence[float], epoch: int,
                  folder: Path | None, patience: int = WARMUP_PATIENCE) -> list[str]:
    """After a warm-up epoch: save each improved IC (``folder/{l}.pth``, the original's ``{'state', 'acc',
    'epoch'}``), count patience for the others, and restore-and-freeze an IC whose patience runs out.
    Returns the messages to print."""
    notes = []
    for level, acc in enumerate(ic_accuracies):
        if state.frozen[level]:
            continue
        head = model.intermediate_heads[level]
        if acc > state.best_acc[level]:
            state.best_acc[level], state.patience[level] = acc, 0
            state.best_states[level] = {k: v.detach().clone().cpu() for k, v in head.state_dict().items()}
            if folder is not None:
                save_checkpoint({"state": state.best_states[level], "acc": acc, "epoch": epoch},
                                folder / f"{level}.pth")
        else:
            state.patience[level] += 1
            if state.patience[level] >= patience:
                head.load_state_dict(state.best_states[level])
                set_ic_frozen(model, level, True)
                state.frozen[level] = True
                notes.append(f"IC {level} converged: restored its best weights (val acc {state.best_acc[level]:.2f}) "
                             "and froze it")
    state.epochs_done = epoch + 1
    return notes


def finish_warmup(model: nn.Module, state: WarmupState) -> list[str]:
    """End of warm-up: unconverged ICs get their best weights back, then every IC is trainable again."""
    notes = []
    for level in range(model.num_exits):
        if not state.frozen[level] and state.best_states[level] is not None:
            model.intermediate_heads[level].load_state_dict(state.best_states[level])
            notes.append(f"IC {level} did not converge: restored its best weights (val acc "
                         f"{state.best_acc[level]:.2f})")
        set_ic_frozen(model, level, False)
    state.finished = True
    return notes


# --------------------------------------------------------------------------------------------------- bi-level
@dataclass
class BilevelSettings:
    """What the bi-level phases need besides the model: lambda, costs, gate objective, IC loss, pos-weights."""

    ce_ic_tradeoff: float
    costs: list[float]  # normalised, G + 1 entries, final = 1
    gate_objective: str = "ce"
    ic_loss: str = "mean"
    bilevel_batch_count: int = 200
    pos_weights: list[float] = field(default_factory=list)


def gate_phase_loss(model: nn.Module, final_logits, ic_logits, targets, settings: BilevelSettings):
    """GATE phase: BCE of every gate against the oracle's targets, weighted by the val pos-weights (Sec. 3.2)."""
    oracle = dynn.oracle_exit(ic_logits, final_logits, targets, settings.costs[:-1], settings.ce_ic_tradeoff,
                              settings.gate_objective)
    targets_gate = dynn.gate_targets(oracle, model.num_exits)
    gate_logits = torch.cat(model.gate_logits(ic_logits), dim=1)
    loss = dynn.gate_loss(gate_logits, targets_gate, settings.pos_weights or None)
    return loss, gate_logits, oracle


def classifier_phase_loss(model: nn.Module, ic_logits, targets, settings: BilevelSettings):
    """CLASSIFIER phase: the IC loss with the gates run without gradient (Sec. b, ``--ic_loss``)."""
    with torch.no_grad():
        gate_logits = torch.cat(model.gate_logits([x.detach() for x in ic_logits]), dim=1)
    decisions = dynn.exit_decisions(torch.sigmoid(gate_logits.float()))
    return dynn.classifier_loss(ic_logits, targets, decisions.pi, settings.ic_loss), decisions


def train_bilevel_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, loader: DataLoader,
                        device: torch.device, settings: BilevelSettings, epoch: int,
                        max_batches: int | None = None, backbone_eval: bool = False,
                        log: Callable[[dict[str, float], int], None] | None = None) -> dict[str, float]:
    """One epoch of bi-level training: GATE for ``bilevel_batch_count`` batches, then CLASSIFIER, and so on; the
    epoch starts in GATE (the original switches from CLASSIFIER at batch 0). Metrics restart at every switch."""
    set_train_mode(model, backbone_eval)
    running = _Running(model.num_exits)
    phase = CLASSIFIER
    for index, (images, targets), bar in _batches(loader, max_batches, f"epoch {epoch}"):
        if index % settings.bilevel_batch_count == 0:
            phase = GATE if phase == CLASSIFIER else CLASSIFIER
            running.reset()
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        optimizer.zero_grad()
        final_logits, ic_logits = model(images)
        if phase == GATE:
            loss, gate_logits, _ = gate_phase_loss(model, final_logits, ic_logits, targets, settings)
            decisions = dynn.exit_decisions(torch.sigmoid(gate_logits.detach().float()))
        else:
            loss, decisions = classifier_phase_loss(model, ic_logits, targets, settings)
        loss.backward()
        sync_gradients(model)
        optimizer.step()
        running.update(loss.item(), final_logits.detach(), [x.detach() for x in ic_logits], targets, decisions,
                       settings.costs)
        bar.set_postfix(phase=phase, loss=f"{running.loss / running.n:.3f}")
        if log is not None:
            log(running.as_metrics(), epoch * len(loader) + index)
    return running.as_metrics()


# ------------------------------------------------------------------------------------------------- evaluation
@dataclass
class Outputs:
    """Everything one pass over a set produced, on the CPU: probabilities ``[E, N, C]`` (softmax once), labels,
    exit levels, oracle exits, gate logits ``[N, G]`` and per-sample losses of both phases."""

    probs: np.ndarray
    labels: np.ndarray
    exit_levels: np.ndarray
    oracle: np.ndarray
    gate_correct: np.ndarray  # [N, G] gate decision == target
    loss: np.ndarray  # [N] (classifier loss + gate loss) / 2 per sample, as the original's eval loss

    def subset(self, index: np.ndarray) -> Outputs:
        return Outputs(self.probs[:, index], self.labels[index], self.exit_levels[index], self.oracle[index],
                       self.gate_correct[index], self.loss[index])


@torch.no_grad()
def collect_outputs(model: nn.Module, loader: DataLoader, device: torch.device, settings: BilevelSettings,
                    max_batches: int | None = None, desc: str = "eval") -> Outputs:
    """One full forward per batch in eval mode; the exit rule decides (the same as the truly early-exiting
    :func:`jeidnn.dynn.early_exit_forward`, which skips the blocks after a sample's exit)."""
    model.eval()
    probs, labels, levels, oracles, gate_ok, losses = [], [], [], [], [], []
    for _, (images, targets), _ in _batches(loader, max_batches, desc):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        final_logits, ic_logits = model(images)
        gate_logits = torch.cat(model.gate_logits(ic_logits), dim=1)
        decisions = dynn.exit_decisions(torch.sigmoid(gate_logits.float()))
        oracle = dynn.oracle_exit(ic_logits, final_logits, targets, settings.costs[:-1], settings.ce_ic_tradeoff,
                                  settings.gate_objective)
        gate_target = dynn.gate_targets(oracle, model.num_exits)
        weights = torch.as_tensor(settings.pos_weights or [1.0] * model.num_exits, dtype=torch.float64,
                                  device=device)
        bce = F.binary_cross_entropy_with_logits(gate_logits.double(), gate_target, reduction="none")
        gate_per_sample = (bce * (gate_target * weights + (1 - gate_target))).mean(dim=1)
        ce = torch.stack([F.cross_entropy(x, targets, reduction="none") for x in ic_logits], dim=1)
        ic_per_sample = ce.mean(dim=1) if settings.ic_loss == "mean" else (decisions.pi * ce).mean(dim=1)
        losses.append(((gate_per_sample + ic_per_sample.double()) / 2).cpu())
        probs.append(torch.stack([*ic_logits, final_logits]).float().softmax(dim=-1).cpu())
        labels.append(targets.cpu())
        levels.append(decisions.exit_level.cpu())
        oracles.append(oracle.cpu())
        gate_ok.append(((torch.sigmoid(gate_logits) >= 0.5).double() == gate_target).cpu())
    return Outputs(torch.cat(probs, dim=1).double().numpy(), torch.cat(labels).numpy(), torch.cat(levels).numpy(),
                   torch.cat(oracles).numpy(), torch.cat(gate_ok).numpy(), torch.cat(losses).numpy())


@dataclass
class CostTables:
    """Per-exit costs, final head last: the original's Mul-Add (millions; ``total_cost``), executed MACs
    (millions; ``total_macs``) and the normalised costs (``normalized_cost``)."""

    mul_add: list[float]
    macs: list[float]
    normalized: list[float]


def evaluate_split(out: Outputs, costs: CostTables, batch_size: int,
                   thresholds: metrics.ConformalThresholds | None) -> dict[str, float]:
    """The original's per-epoch metrics of one set (Sec. d "mlflow", Sec. e) plus ours, without prefix."""
    result = metrics.early_exit_metrics(out.probs, out.exit_levels, out.labels, costs.mul_add, thresholds,
                                        batch_size=batch_size)
    result["total_macs"] = metrics.average_cost(out.exit_levels, costs.macs)
    result["normalized_cost"] = metrics.average_cost(out.exit_levels, costs.normalized)
    result["loss"] = float(out.loss.mean()) if len(out.loss) else 0.0
    result["acc_exit"] = 100.0 * float(out.gate_correct.mean()) if out.gate_correct.size else 0.0
    num_gates = out.gate_correct.shape[1]
    oracle_share = np.bincount(out.oracle, minlength=num_gates + 1) / max(len(out.oracle), 1)
    for level in range(num_gates):
        result[f"exit_optimal_gate{level}"] = float(oracle_share[level])
    result["exit_optimal_gatefinal"] = float(oracle_share[num_gates])
    return result


def evaluate_test(out: Outputs, costs: CostTables, batch_size: int, thresholds, splits: Sequence[np.ndarray]
                  ) -> tuple[dict[str, float], dict[str, float], list[dict[str, float]]]:
    """Metrics per test sub-split, then their mean and std (Sec. e); each split is scored on its own samples
    (the original's running totals carried over from split to split)."""
    per_split = [evaluate_split(out.subset(index), costs, batch_size, thresholds) for index in splits]
    mean, std = metrics.mean_over_splits(per_split)
    return mean, std, per_split


def set_from_validation(out: Outputs, num_gates: int) -> tuple[list[float], metrics.ConformalThresholds]:
    """The gate pos-weights from the val oracle exits and the conformal thresholds from the val predictions
    (the original's ``set_from_validation``; its final-exit calibration set is fixed, Sec. f item 10)."""
    pos_weights = dynn.pos_weights_from_validation(torch.as_tensor(out.oracle), num_gates)
    thresholds = metrics.calibrate_conformal(out.probs, out.exit_levels, out.labels)
    return pos_weights, thresholds


def prefixed(values: dict[str, float], prefix: str) -> dict[str, float]:
    return {f"{prefix}/{k}": v for k, v in values.items()}


def elapsed(start: float) -> str:
    return f"{time.time() - start:.1f} s"
