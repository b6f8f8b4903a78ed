"""Confidence-threshold early exit on JEI-DNN's own classifiers: the baseline of spec Sec. g step 5.

The thresholds follow MSDNet's dynamic evaluation (Huang et al., ICLR 2018), which the original's removed
``boosted_adaptive_inference.py`` (commit a560acb) reuses: for a ratio q, the target share of samples leaving
at exit k is p_k ∝ q^(k+1); on validation, exits are visited in order and exit k's threshold on p_max is set so
that floor(N p_k) of the samples still in the network leave there; the final head takes everyone left. One
operating point per q. The thresholds are then applied unchanged to the test set.

Differences from a560acb, all documented choices:

* the schedule is normalised over all E exits, final head included, as in MSDNet (a560acb normalised over the
  G intermediate exits only, so the final head received only rounding leftovers); pass
  ``include_final=False`` for theirs;
* the grid is q = i/20, i = 1..39 (MSDNet's; a560acb used i/15);
* the returned probabilities are the real softmax outputs (a560acb softmaxed them twice, Sec. f item 9), and
  no temperature scaling is applied.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jeidnn.metrics import average_cost, check_probs, exit_statistics, gated_probs, to_numpy

Q_GRID = tuple(i / 20 for i in range(1, 40))


def geometric_exit_fractions(q: float, num_exits: int, include_final: bool = True) -> np.ndarray:
    """Target exit shares p_k = q^(k+1) / Σ_j q^(j+1) (MSDNet's schedule), one per exit, final head last.

    With ``include_final=False`` the shares are normalised over the ``num_exits - 1`` intermediate exits and
    the final one is 0 (the a560acb variant).
    """
    if q <= 0:
        raise ValueError(f"the geometric ratio q must be positive, got {q}")
    k = num_exits if include_final else num_exits - 1
    shares = np.zeros(num_exits)
    shares[:k] = q ** np.arange(1, k + 1, dtype=np.float64)
    return shares / shares[:k].sum()


def find_thresholds(val_probs, fractions: Sequence[float]) -> np.ndarray:
    """p_max thresholds per exit that realise ``fractions`` on validation (MSDNet ``dynamic_eval_find_threshold``).

    For exit k < E - 1, among the samples not taken by an earlier exit, the threshold is the p_max of the
    floor(N p_k)-th most confident one; if that count is 0 or larger than the samples left, no sample exits
    there (threshold +inf). Ties can make an exit take a few more. The final threshold is -inf.
    """
    probs = check_probs(to_numpy(val_probs))
    num_exits, n, _ = probs.shape
    p_max = probs.max(axis=2)
    thresholds = np.full(num_exits, np.inf)
    taken = np.zeros(n, dtype=bool)
    for k in range(num_exits - 1):
        wanted = math.floor(n * fractions[k])
        remaining = np.sort(p_max[k][~taken])[::-1]
        if 0 < wanted <= len(remaining):
            thresholds[k] = remaining[wanted - 1]
        taken |= p_max[k] >= thresholds[k]
    thresholds[-1] = -np.inf
    return thresholds


def apply_thresholds(probs, thresholds: Sequence[float]) -> np.ndarray:
    """Exit level of every sample: the first exit whose p_max >= its threshold, else the final head."""
    p_max = check_probs(to_numpy(probs)).max(axis=2)
    passes = p_max >= np.asarray(thresholds, dtype=np.float64)[:, None]
    passes[-1] = True
    return passes.argmax(axis=0)


@dataclass
class OperatingPoint:
    """One threshold setting evaluated on test (and validation)."""

    q: float
    thresholds: np.ndarray  # (E,) p_max thresholds, final -inf
    accuracy: float  # % on test, of the exited predictions
    exit_fractions: np.ndarray  # (E,) share of test samples leaving at each exit, final included
    average_cost: float  # mean of cost_per_exit over test samples
    exit_levels: np.ndarray  # (N_test,)
    exited_probs: np.ndarray  # (N_test, C) probabilities of the prediction each test sample got
    val_exit_levels: np.ndarray  # (N_val,) for calibrating conformal sets on validation
    val_accuracy: float | None = None


def threshold_baseline(val_probs, test_probs, test_labels, cost_per_exit: Sequence[float],
                       q_grid: Sequence[float] = Q_GRID, val_labels=None,
                       include_final: bool = True) -> list[OperatingPoint]:
    """The confidence-threshold baseline at every q of ``q_grid`` (Sec. g step 5).

    ``val_probs`` / ``test_probs`` are ``(E, N, C)`` softmax probabilities of the same classifiers (final head
    last); ``cost_per_exit`` has E entries. Feed ``exited_probs`` to :func:`jeidnn.metrics.ece` for calibration
    on proper probabilities, and ``val_exit_levels`` to :func:`jeidnn.metrics.calibrate_conformal`.
    """
    val = check_probs(to_numpy(val_probs))
    test = check_probs(to_numpy(test_probs))
    labels = to_numpy(test_labels).astype(np.int64)
    if val.shape[0] != test.shape[0] or len(cost_per_exit) != test.shape[0]:
        raise ValueError(f"val ({val.shape[0]}), test ({test.shape[0]}) and cost ({len(cost_per_exit)}) must "
                         "count the same exits")
    points = []
    for q in q_grid:
        thresholds = find_thresholds(val, geometric_exit_fractions(q, val.shape[0], include_final))
        levels = apply_thresholds(test, thresholds)
        probs = gated_probs(test, levels)
        val_levels = apply_thresholds(val, thresholds)
        val_acc = None
        if val_labels is not None:
            val_pred = gated_probs(val, val_levels).argmax(axis=1)
            val_acc = 100.0 * float((val_pred == to_numpy(val_labels)).mean())
        points.append(OperatingPoint(
            q=q, thresholds=thresholds, accuracy=100.0 * float((probs.argmax(axis=1) == labels).mean()),
            exit_fractions=exit_statistics(levels, test.shape[0]), average_cost=average_cost(levels, cost_per_exit),
            exit_levels=levels, exited_probs=probs, val_exit_levels=val_levels, val_accuracy=val_acc))
    return points
