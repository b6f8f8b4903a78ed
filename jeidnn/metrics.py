"""Calibration, conformal prediction, exit statistics and cost of an early-exit network (spec Sec. b, e, f 9-13).

Everything here takes *probabilities* (rows of a softmax), never logits, and checks that it got them: the
original's baseline evaluation applied softmax to stored probabilities a second time (Sec. f item 9), which
makes every confidence close to 1/C; here that mistake raises instead.

Shapes: ``exit_probs`` is ``(E, N, C)`` for E exits (the G intermediate classifiers, then the final head, so
exit ``E - 1`` is the final head), N samples and C classes; ``exit_levels`` is ``(N,)`` with the exit each
sample took, in ``0..E-1``; ``labels`` is ``(N,)``.

Units: :func:`ece` and :func:`batch_ece` return a fraction in [0, 1]; :func:`flat_metrics` reports the
original's MLflow names and units (accuracies and ECEs x100, exit fractions and set sizes as they are).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

# The α grid of conformal_eedn.py; literal so that the metric names read sets_general_C_0.015, not 0.015000000000000001.
ALPHAS = (0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05)
MIN_POINTS_FOR_CONF = 20
SET_VARIANTS = ("sets_general", "sets_gated", "sets_gated_all", "sets_gated_strict")


def to_numpy(x: torch.Tensor | np.ndarray | Sequence) -> np.ndarray:
    """A tensor, array or list as a NumPy array (tensors detached and moved to the CPU)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def check_probs(probs: np.ndarray, atol: float = 1e-3) -> np.ndarray:
    """``probs`` as float64 if its rows are probability vectors; raise ValueError on logits (Sec. f item 9)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.size and (probs.min() < -atol or probs.max() > 1 + atol
                       or not np.allclose(probs.sum(axis=-1), 1.0, atol=atol)):
        raise ValueError("expected probabilities (non-negative rows summing to 1), got something else; apply "
                         "softmax to logits once before calling the JEI-DNN metrics")
    return probs


# ---------------------------------------------------------------------------------------------------- ECE
def _ece_binned(confidence: np.ndarray, correct: np.ndarray, n_bins: int, strategy: str) -> float:
    """Σ_bins |acc - conf| n_bin / n with the bin edges of sklearn's ``calibration_curve`` (Sec. b "ECE").

    A value on an inner edge falls into the lower bin (``searchsorted`` on the inner edges, side left), as in
    the copy of ``calibration_curve`` the original uses.
    """
    n = len(confidence)
    if n == 0:
        return 0.0
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.percentile(confidence, np.linspace(0, 1, n_bins + 1) * 100)
    else:
        raise ValueError(f"unknown ECE binning strategy {strategy!r}; expected 'uniform' or 'quantile'")
    bin_of = np.searchsorted(edges[1:-1], confidence)
    total = np.bincount(bin_of, minlength=n_bins)
    conf_sum = np.bincount(bin_of, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(bin_of, weights=correct.astype(np.float64), minlength=n_bins)
    used = total > 0
    gap = np.abs(acc_sum[used] - conf_sum[used]) / total[used]
    return float(np.sum(gap * total[used] / n))


def _confidence_and_correct(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    probs = check_probs(to_numpy(probs))
    labels = to_numpy(labels).astype(np.int64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be (N, C) and labels (N,); got {probs.shape} and {labels.shape}")
    return probs.max(axis=1), probs.argmax(axis=1) == labels


def ece(probs, labels, n_bins: int = 15, strategy: str = "uniform") -> float:
    """Expected calibration error of the top-class probability over a whole dataset, as a fraction (Sec. b "ECE",
    Sec. f item 11).

    ECE = Σ_bins |acc(bin) - conf(bin)| n_bin / n, where conf is p_max and acc is whether argmax is the label.
    ``strategy='uniform'`` (the default, our fix) uses ``n_bins`` equal-width bins on [0, 1]; ``'quantile'``
    uses equal-count bins as the original. Multiply by 100 for the original's units.
    """
    confidence, correct = _confidence_and_correct(probs, labels)
    return _ece_binned(confidence, correct, n_bins, strategy)


def batch_ece(probs, labels, batch_size: int, n_bins: int = 15, strategy: str = "quantile") -> float:
    """The original's ECE variant: :func:`ece` with 15 quantile bins per batch of ``batch_size`` consecutive
    samples, averaged with batch-size weights, as a fraction (Sec. b "ECE", Sec. f item 11).

    It is biased (15 bins on 64-100 samples) and depends on how samples fall into batches; report it only to
    compare with the authors' numbers, next to :func:`ece`.
    """
    confidence, correct = _confidence_and_correct(probs, labels)
    n = len(confidence)
    if n == 0:
        return 0.0
    total = 0.0
    for start in range(0, n, batch_size):
        chunk = slice(start, start + batch_size)
        total += _ece_binned(confidence[chunk], correct[chunk], n_bins, strategy) * len(confidence[chunk])
    return total / n


# ------------------------------------------------------------------------------------ conformal prediction
def conformal_quantile(scores, alpha: float) -> float:
    """Split-conformal threshold q̂ = Quantile(scores, ceil((n+1)(1-α))/n, 'higher'), level capped at 1
    (Sec. b "Conformal prediction"); with no scores it returns 1 - α, as the original does."""
    scores = to_numpy(scores).astype(np.float64).ravel()
    n = len(scores)
    if n == 0:
        return 1.0 - alpha
    level = min(np.ceil((n + 1) * (1 - alpha)) / n, 1.0)
    return float(np.quantile(scores, level, method="higher"))


def conformity_scores(probs, labels) -> np.ndarray:
    """Non-conformity score s = 1 - p_y of every sample (Sec. b)."""
    probs = check_probs(to_numpy(probs))
    labels = to_numpy(labels).astype(np.int64)
    return 1.0 - probs[np.arange(len(labels)), labels]


def prediction_sets(probs, qhat: float) -> np.ndarray:
    """Boolean ``(N, C)`` conformal sets C = {k : p_k >= 1 - q̂} (Sec. b)."""
    return check_probs(to_numpy(probs)) >= 1.0 - qhat


def set_metrics(sets, labels) -> tuple[float, float]:
    """``(mean set size, empirical α)`` of boolean ``(N, C)`` sets, where empirical α = 1 - coverage (Sec. b)."""
    sets = to_numpy(sets).astype(bool)
    labels = to_numpy(labels).astype(np.int64)
    if len(labels) == 0:
        return 0.0, 0.0
    covered = sets[np.arange(len(labels)), labels]
    return float(sets.sum(axis=1).mean()), float(1.0 - covered.mean())


def gated_probs(exit_probs, exit_levels) -> np.ndarray:
    """The ``(N, C)`` probabilities each sample was predicted with: those of the exit it took."""
    exit_probs = to_numpy(exit_probs)
    levels = to_numpy(exit_levels).astype(np.int64)
    return exit_probs[levels, np.arange(len(levels))]


@dataclass
class ConformalThresholds:
    """q̂ per α for each set variant, calibrated on validation (Sec. b "Conformal prediction").

    ``general[α]`` is one q̂; ``gated``, ``gated_all`` and ``gated_strict`` hold one q̂ per exit (final head
    last). In the original these dicts are ``qhat``, ``qhats``, ``qhats_all`` and ``qhats_per_gate``.
    """

    general: dict[float, float] = field(default_factory=dict)
    gated: dict[float, list[float]] = field(default_factory=dict)
    gated_all: dict[float, list[float]] = field(default_factory=dict)
    gated_strict: dict[float, list[float]] = field(default_factory=dict)


def calibrate_conformal(exit_probs, exit_levels, labels, alphas: Sequence[float] = ALPHAS,
                        min_points: int = MIN_POINTS_FOR_CONF) -> ConformalThresholds:
    """Fit the four conformal variants on a calibration (validation) set (Sec. b, ``compute_conf_threshold``).

    * general: q̂ from the scores of the gated predictions;
    * gated_all: per exit, q̂ from the scores of *all* samples at that classifier;
    * gated_strict: per exit, q̂ from the samples that *exited* there (1 - α when none did);
    * gated: gated_strict where more than ``min_points`` (20) samples exited there, else gated_all.

    Fixed relative to the original (Sec. f item 10): the final head's exited samples are those at level
    E - 1 = G; the original filtered on ``num_layers`` = G + 1, found none, and always fell back.
    """
    exit_probs = check_probs(to_numpy(exit_probs))
    levels = to_numpy(exit_levels).astype(np.int64)
    labels = to_numpy(labels).astype(np.int64)
    num_exits = exit_probs.shape[0]
    all_scores = [conformity_scores(exit_probs[e], labels) for e in range(num_exits)]
    exited_scores = [all_scores[e][levels == e] for e in range(num_exits)]
    gated_scores = conformity_scores(gated_probs(exit_probs, levels), labels)
    out = ConformalThresholds()
    for alpha in alphas:
        out.general[alpha] = conformal_quantile(gated_scores, alpha)
        out.gated_all[alpha] = [conformal_quantile(s, alpha) for s in all_scores]
        out.gated_strict[alpha] = [conformal_quantile(s, alpha) for s in exited_scores]
        out.gated[alpha] = [strict if len(s) > min_points else every for s, strict, every in
                            zip(exited_scores, out.gated_strict[alpha], out.gated_all[alpha], strict=True)]
    return out


def conformal_sets(exit_probs, exit_levels, thresholds: ConformalThresholds) -> dict[str, dict[float, np.ndarray]]:
    """Boolean ``(N, C)`` sets per variant and α on new data (Sec. b, ``early_exit_conf_sets``).

    The general sets apply the single q̂ to the gated probabilities; the per-exit variants apply to each sample
    the q̂ of the exit it took.
    """
    exit_probs = check_probs(to_numpy(exit_probs))
    levels = to_numpy(exit_levels).astype(np.int64)
    probs = gated_probs(exit_probs, levels)
    sets: dict[str, dict[float, np.ndarray]] = {name: {} for name in SET_VARIANTS}
    for alpha, qhat in thresholds.general.items():
        sets["sets_general"][alpha] = prediction_sets(probs, qhat)
        for name, per_exit in (("sets_gated", thresholds.gated), ("sets_gated_all", thresholds.gated_all),
                               ("sets_gated_strict", thresholds.gated_strict)):
            qhat_per_sample = np.asarray(per_exit[alpha], dtype=np.float64)[levels]
            sets[name][alpha] = probs >= 1.0 - qhat_per_sample[:, None]
    return sets


def conformal_metrics(exit_probs, exit_levels, labels, thresholds: ConformalThresholds) -> dict[str, float]:
    """``{'{variant}_C_{α}': mean set size, '{variant}_emp_alpha_{α}': 1 - coverage}`` (the original's names)."""
    out: dict[str, float] = {}
    for name, by_alpha in conformal_sets(exit_probs, exit_levels, thresholds).items():
        for alpha, sets in by_alpha.items():
            size, emp_alpha = set_metrics(sets, labels)
            out[f"{name}_C_{alpha}"] = size
            out[f"{name}_emp_alpha_{alpha}"] = emp_alpha
    return out


# --------------------------------------------------------------------------------------- exits and cost
def exit_statistics(exit_levels, num_exits: int) -> np.ndarray:
    """Fraction of samples leaving at each of the ``num_exits`` exits, final head included (Sec. e).

    The original logged the final head's share as 0 always (Sec. f item 13); here it is counted like any other.
    """
    levels = to_numpy(exit_levels).astype(np.int64)
    if len(levels) and (levels.min() < 0 or levels.max() >= num_exits):
        raise ValueError(f"exit levels must lie in 0..{num_exits - 1}")
    counts = np.bincount(levels, minlength=num_exits).astype(np.float64)
    return counts / max(len(levels), 1)


def average_cost(exit_levels, cost_per_exit: Sequence[float]) -> float:
    """Mean per-sample cost Σ_l (#exits at l) c_l / N (Sec. e "cost"); ``cost_per_exit`` has one entry per exit,
    final head last (normalised, or Mul-Add in millions for the original's ``total_cost``)."""
    cost = np.asarray(cost_per_exit, dtype=np.float64)
    return float(np.dot(exit_statistics(exit_levels, len(cost)), cost))


# ------------------------------------------------------------------------------------------ flat results
def early_exit_metrics(exit_probs, exit_levels, labels, cost_per_exit: Sequence[float] | None = None,
                       thresholds: ConformalThresholds | None = None, n_bins: int = 15,
                       batch_size: int | None = None) -> dict[str, float]:
    """Every per-epoch metric of one evaluation under the original's MLflow names (Sec. d "mlflow", Sec. e).

    * ``gated_acc`` / ``test_acc`` (%), ``total_cost`` (mean of ``cost_per_exit`` over samples);
    * ``acc{l}`` (%, all samples at intermediate classifier l), ``acc_final`` (final head);
    * ``gated_acc_{l}`` (%, among the samples that exited at l; absent when none did, as in the original);
    * ``percent_exit{l}`` and ``percent_exitfinal`` (fractions; the final one is now right, Sec. f item 13);
    * ``gated_ece``, ``ece{l}``, ``final_ece`` (x100): dataset-level ECE with ``n_bins`` equal-width bins
      (Sec. f item 11). With ``batch_size``, also ``gated_ece_batch``, ``ece_batch{l}``, ``final_ece_batch``:
      the original's per-batch quantile variant (:func:`batch_ece`) over consecutive chunks of the given order;
    * with ``thresholds``: ``sets_{general,gated,gated_all,gated_strict}_{C,emp_alpha}_{α}``.

    Note: the original's ``gated_ece`` etc. held the batch variant; compare the authors' numbers with the
    ``*_batch`` keys.
    """
    exit_probs = check_probs(to_numpy(exit_probs))
    levels = to_numpy(exit_levels).astype(np.int64)
    labels = to_numpy(labels).astype(np.int64)
    num_exits = exit_probs.shape[0]
    final = num_exits - 1
    probs = gated_probs(exit_probs, levels)
    correct = probs.argmax(axis=1) == labels
    out: dict[str, float] = {"gated_acc": 100.0 * float(correct.mean())}
    out["test_acc"] = out["gated_acc"]
    if cost_per_exit is not None:
        out["total_cost"] = average_cost(levels, cost_per_exit)
    out["gated_ece"] = 100.0 * ece(probs, labels, n_bins)
    if batch_size:
        out["gated_ece_batch"] = 100.0 * batch_ece(probs, labels, batch_size, n_bins)
    fractions = exit_statistics(levels, num_exits)
    for e in range(num_exits):
        tag = "final" if e == final else str(e)
        head_correct = exit_probs[e].argmax(axis=1) == labels
        out["acc_final" if e == final else f"acc{e}"] = 100.0 * float(head_correct.mean())
        out["final_ece" if e == final else f"ece{e}"] = 100.0 * ece(exit_probs[e], labels, n_bins)
        if batch_size:
            key = "final_ece_batch" if e == final else f"ece_batch{e}"
            out[key] = 100.0 * batch_ece(exit_probs[e], labels, batch_size, n_bins)
        out[f"percent_exit{tag}"] = float(fractions[e])
        exited = levels == e
        if exited.any() and e != final:
            out[f"gated_acc_{e}"] = 100.0 * float(correct[exited].mean())
    if thresholds is not None:
        out.update(conformal_metrics(exit_probs, levels, labels, thresholds))
    return out


def mean_over_splits(results: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """``(mean, std)`` of each key over per-split results (Sec. e: metrics averaged over 10 test splits); a key
    missing from some splits is averaged over the splits that have it."""
    keys = {k for r in results for k in r}
    mean, std = {}, {}
    for key in sorted(keys):
        values = np.asarray([r[key] for r in results if key in r], dtype=np.float64)
        mean[key], std[key] = float(values.mean()), float(values.std())
    return mean, std


def largest_valid_alpha(metrics: dict[str, float], variant: str = "sets_general",
                        alphas: Sequence[float] = ALPHAS, target: float = 0.05) -> tuple[float, float] | None:
    """``(α, mean set size)`` at the largest α whose empirical α is below ``target`` (Sec. a, the notebook's
    rule for the conformal figures), or None when no α qualifies."""
    best = None
    for alpha in alphas:
        emp = metrics.get(f"{variant}_emp_alpha_{alpha}", math.inf)
        if emp < target:
            best = (alpha, metrics[f"{variant}_C_{alpha}"])
    return best
