"""JEI-DNN: the exit rule, the gate and IC objectives, and real early-exit inference (paper Sec. 3; spec Sec. b).

Notation of the spec: G intermediate exits (an IC after every block but the last) plus the final head; ``g_l``
the sigmoid of gate ``l``'s logit; ``c_l`` the normalised cost of exiting at ``l`` (``c_G = 1``); ``lambda`` the
accuracy/cost trade-off ``--ce_ic_tradeoff``.

Everything here works on logits, so the same functions serve training (full forward, masked), evaluation and
:func:`early_exit_forward`, which really stops computing a sample once it has exited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IC_LOSSES", "GATE_OBJECTIVES", "ExitDecisions", "calibrate_gates", "classifier_loss",
           "early_exit_forward", "exit_decisions", "exit_probabilities", "gate_loss", "gate_targets", "oracle_exit",
           "pos_weights_from_validation", "warmup_loss"]

GATE_OBJECTIVES = ("ce", "zeroOne", "prob")
IC_LOSSES = ("mean", "pi_weighted")
EXIT_THRESHOLD = 0.5


def exit_probabilities(gates: torch.Tensor) -> torch.Tensor:
    """``pi_l = max(0, min(g_l, 1 - sum_{j<l} g_j))``: truncated stick-breaking over the raw gate values ``[B, G]``."""
    before = torch.cumsum(gates, dim=1) - gates
    return torch.minimum(gates, 1 - before).clamp_min(0)


@dataclass
class ExitDecisions:
    """Where every sample exits: ``exit_level`` in 0..G (G = the final head), the exit probabilities ``pi`` and the
    recursive exit activations ``alpha`` (both ``[B, G]``)."""

    exit_level: torch.Tensor
    pi: torch.Tensor
    alpha: torch.Tensor

    def gated_logits(self, ic_logits: Sequence[torch.Tensor], final_logits: torch.Tensor) -> torch.Tensor:
        """Each sample's prediction: the logits of the exit it took."""
        stacked = torch.stack([*ic_logits, final_logits], dim=1)
        return stacked[torch.arange(stacked.size(0), device=stacked.device), self.exit_level]

    def counts(self) -> torch.Tensor:
        """Samples per exit, ``[G + 1]``."""
        return torch.bincount(self.exit_level, minlength=self.pi.size(1) + 1)


def _exit_step(pi_l: torch.Tensor, survive: torch.Tensor) -> torch.Tensor:
    """``alpha_l = clip(pi_l / prod_{j<l} (1 - alpha_j), 0, 1)``; a 0/0 gives NaN, which never exits (as originally)."""
    return torch.clip(pi_l / survive, 0, 1)


def exit_decisions(gates: torch.Tensor) -> ExitDecisions:
    """The exit rule of the spec (Sec. b): a sample exits at the first gate whose recursive activation reaches 0.5,
    else at the final head. Deterministic; the same at training-time evaluation and at test time."""
    pi = exit_probabilities(gates)
    batch, num_gates = gates.shape
    survive = torch.ones(batch, dtype=gates.dtype, device=gates.device)
    exit_level = torch.full((batch,), num_gates, dtype=torch.long, device=gates.device)
    alphas = []
    for gate in range(num_gates):
        alpha = _exit_step(pi[:, gate], survive)
        alphas.append(alpha)
        exit_level = torch.where((alpha >= EXIT_THRESHOLD) & (exit_level == num_gates), gate, exit_level)
        survive = survive * (1 - alpha)
    return ExitDecisions(exit_level=exit_level, pi=pi, alpha=torch.stack(alphas, dim=1))


def _prediction_loss(logits: torch.Tensor, targets: torch.Tensor, objective: str) -> torch.Tensor:
    """Per-sample loss of one exit under ``--gate_objective``: CE, minus correctness, or minus p_max if correct."""
    if objective == "ce":
        return F.cross_entropy(logits, targets, reduction="none")
    correct = logits.argmax(dim=1).eq(targets)
    if objective == "zeroOne":
        return -correct.to(logits.dtype)
    if objective == "prob":
        return -(logits.softmax(dim=1).amax(dim=1) * correct)
    raise ValueError(f"unknown gate objective {objective!r}; choose one of {', '.join(GATE_OBJECTIVES)}")


def oracle_exit(ic_logits: Sequence[torch.Tensor], final_logits: torch.Tensor, targets: torch.Tensor,
                costs: Sequence[float], ce_ic_tradeoff: float, objective: str = "ce") -> torch.Tensor:
    """``l*(x) = argmin_l [loss(y_l, y) + lambda * c_l]`` over the G ICs and the final head (cost 1) (Sec. 3.2)."""
    if len(costs) != len(ic_logits):
        raise ValueError(f"{len(costs)} costs for {len(ic_logits)} intermediate exits")
    levels = [_prediction_loss(logits, targets, objective) + ce_ic_tradeoff * cost
              for logits, cost in zip(ic_logits, costs, strict=True)]
    levels.append(_prediction_loss(final_logits, targets, objective) + ce_ic_tradeoff * 1.0)
    return torch.stack(levels, dim=1).argmin(dim=1)


def gate_targets(oracle: torch.Tensor, num_gates: int) -> torch.Tensor:
    """``t_l = 1`` if ``l >= l*`` ("exit here or at any later gate"), for the G gates: ``[B, G]`` float64."""
    one_hot = F.one_hot(oracle, num_gates + 1)[:, :num_gates]
    return one_hot.cumsum(dim=1).double()


def gate_loss(gate_logits: torch.Tensor, targets: torch.Tensor, pos_weights: torch.Tensor | None = None
              ) -> torch.Tensor:
    """``mean_{b,l} BCEWithLogits(a_l, t_l) * (t_l w_l + (1 - t_l))`` in float64, as the original (Sec. b)."""
    loss = F.binary_cross_entropy_with_logits(gate_logits.double(), targets, reduction="none")
    weights = torch.ones(targets.size(1), dtype=torch.float64, device=targets.device) if pos_weights is None \
        else torch.as_tensor(pos_weights, dtype=torch.float64, device=targets.device)
    return (loss * (targets * weights + (1 - targets))).mean()


def pos_weights_from_validation(oracle: torch.Tensor, num_gates: int, cap: float = 5.0) -> list[float]:
    """Per-gate weight of the positive targets from the validation set's oracle exits:
    ``w_l = min(cap, (N - n_l) / max(n_l, 0.1))`` with ``n_l`` the samples whose oracle exit is ``l``."""
    total = oracle.numel()
    counts = torch.bincount(oracle.flatten(), minlength=num_gates + 1)[:num_gates].tolist()
    return [min((total - max(n, 0.1)) / max(n, 0.1), cap) for n in counts]


def classifier_loss(ic_logits: Sequence[torch.Tensor], targets: torch.Tensor, pi: torch.Tensor,
                    mode: str = "mean") -> torch.Tensor:
    """IC loss of the CLASSIFIER phase (Sec. b).

    ``mean``: the mean CE over samples and ICs, which is what the original's exit-weighted loss computes exactly
    (its ``pi`` weights cancel against the un-detached ratio ``sum L / sum pi L``, and it is NaN when that sum is 0).
    ``pi_weighted``: the paper's intent, ``mean_{b,l} pi_l L_l`` with the (gradient-free) exit probabilities.
    """
    losses = torch.stack([F.cross_entropy(logits, targets, reduction="none") for logits in ic_logits], dim=1)
    if mode == "mean":
        return losses.mean()
    if mode == "pi_weighted":
        return (pi.detach() * losses).mean()
    raise ValueError(f"unknown IC loss {mode!r}; choose one of {', '.join(IC_LOSSES)}")


def warmup_loss(final_logits: torch.Tensor, ic_logits: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """Warm-up of the ICs: ``CE(y_L) + sum_l (G + 1 - l) CE(y_l)``; earlier ICs get larger weights (spec Sec. b)."""
    loss = F.cross_entropy(final_logits, targets)
    for level, logits in enumerate(ic_logits):
        loss = loss + (len(ic_logits) + 1 - level) * F.cross_entropy(logits, targets)
    return loss


@torch.no_grad()
def early_exit_forward(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference that really exits (issue item 7): after block ``l`` the IC and gate run on the samples still in
    the batch, those whose activation reaches 0.5 leave it, and the later blocks run on the rest only. Only the CLS
    row is normalised (LayerNorm acts per token, so ``norm(x[:, 0]) == norm(x)[:, 0]``), and the batch is only
    re-indexed (a copy of the tokens) at a level where some sample leaves.

    Returns the gated logits ``[B, C]`` and the exit levels ``[B]``, equal to :func:`exit_decisions` on a full
    forward. ``model`` needs ``embed``, ``blocks``, ``norm``, ``intermediate_heads``, ``gates`` and ``head``.
    """
    tokens = model.embed(x)
    batch = x.size(0)
    logits = x.new_zeros(batch, model.num_classes)
    exit_level = torch.full((batch,), model.num_exits, dtype=torch.long, device=x.device)
    rows = torch.arange(batch, device=x.device)
    gate_sum = x.new_zeros(batch)
    survive = x.new_ones(batch)
    for level, block in enumerate(model.blocks):
        tokens = block(tokens)
        if level == model.num_exits:
            break
        ic = model.intermediate_heads[level](model.norm(tokens[:, 0]))
        g = torch.sigmoid(model.gates[level](ic)).flatten()
        alpha = _exit_step(torch.minimum(g, 1 - gate_sum).clamp_min(0), survive)
        gate_sum, survive = gate_sum + g, survive * (1 - alpha)
        leave = alpha >= EXIT_THRESHOLD
        if not leave.any():
            continue
        logits[rows[leave]] = ic[leave]
        exit_level[rows[leave]] = level
        stay = ~leave
        if not stay.any():
            return logits, exit_level
        tokens, rows, gate_sum, survive = tokens[stay], rows[stay], gate_sum[stay], survive[stay]
    logits[rows] = model.head(model.norm(tokens[:, 0]))
    return logits, exit_level


@torch.no_grad()
def calibrate_gates(model: nn.Module, x: torch.Tensor, fractions: Sequence[float] | None = None) -> None:
    """Set untrained uncertainty gates so that on ``x`` a fraction ``fractions[l]`` of the samples exits at exit
    ``l`` (``fractions[G]``: the final head; default: the same share at every exit), for timing an exit mix
    without a trained model (the ``gated`` configuration of :class:`~jeidnn.models.T2TViT`).

    Each gate ``nn.Linear(4, 1)`` reads its IC's uncertainty features (Sec. 3.1); it becomes a steep step on the
    first one, ``p_max``: ``a_l = k (p_max - t_l)``, with ``t_l`` half-way between the samples still in the batch
    that should leave at ``l`` (the most confident) and those that go on; a level where nobody leaves gets
    ``a_l = -30``. ``ValueError`` for identity gates (nothing to set) or ``fractions`` of the wrong length or sum.
    """
    from jeidnn.models.gates import LearnableUncGate, uncertainty_features  # jeidnn.models imports this module

    if not all(isinstance(gate, LearnableUncGate) for gate in model.gates):
        raise ValueError("calibrate_gates sets uncertainty gates ('unc'); this model's gates have no weights")
    if fractions is None:
        fractions = [1.0 / (model.num_exits + 1)] * (model.num_exits + 1)
    if len(fractions) != model.num_exits + 1 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"{model.num_exits + 1} non-negative exit fractions summing to 1 needed (exits 0.."
                         f"{model.num_exits - 1} and the final head), got {list(fractions)}")
    _, ic_logits = model.forward_head(model.forward_features(x))
    n = x.size(0)
    remaining = torch.ones(n, dtype=torch.bool, device=x.device)
    for level, gate in enumerate(model.gates):
        left = int(remaining.sum())  # the samples that did not exit before this level
        want = min(max(round(sum(fractions[:level + 1]) * n) - (n - left), 0), left)
        p_max = uncertainty_features(ic_logits[level])[:, 0]
        gate.linear.weight.zero_()
        gate.linear.bias.fill_(-30.0 if want == 0 else 30.0)
        if want == 0:
            continue
        candidates = p_max[remaining].sort(descending=True).values
        leave = remaining.clone()
        if want < len(candidates):
            upper, lower = float(candidates[want - 1]), float(candidates[want])
            threshold, gap = (upper + lower) / 2, max((upper - lower) / 2, 1e-12)
            gate.linear.weight[0, 0] = 30.0 / gap
            gate.linear.bias.fill_(-30.0 / gap * threshold)
            leave &= p_max > threshold
        remaining &= ~leave
