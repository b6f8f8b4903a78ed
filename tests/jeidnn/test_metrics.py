"""JEI-DNN metrics: ECE, conformal sets, exit statistics, cost, flat names (spec Sec. b, e, f items 9-13)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jeidnn.metrics import (
    ALPHAS,
    average_cost,
    batch_ece,
    calibrate_conformal,
    conformal_metrics,
    conformal_quantile,
    conformal_sets,
    early_exit_metrics,
    ece,
    exit_statistics,
    largest_valid_alpha,
    mean_over_splits,
    prediction_sets,
    set_metrics,
)


def _probs(rng, shape, scale=3.0):
    return torch.softmax(torch.tensor(rng.normal(size=shape) * scale), dim=-1).numpy()


def _reference_ece(conf, correct, n_bins, strategy):
    """A plain loop over bins (edges as sklearn's calibration_curve: inner edges, right-closed)."""
    if strategy == "uniform":
        edges = [i / n_bins for i in range(n_bins + 1)]
    else:
        edges = list(np.percentile(conf, np.linspace(0, 100, n_bins + 1)))
    total = 0.0
    for b in range(n_bins):
        lo = -math.inf if b == 0 else edges[b]
        hi = math.inf if b == n_bins - 1 else edges[b + 1]
        members = [i for i in range(len(conf)) if lo < conf[i] <= hi]
        if members:
            acc = np.mean([correct[i] for i in members])
            avg = np.mean([conf[i] for i in members])
            total += abs(acc - avg) * len(members) / len(conf)
    return total


def test_ece_by_hand():
    # two bins of width 0.5: {0.35 wrong} -> |0 - 0.35|; {0.8 right, 0.9 wrong} -> |0.5 - 0.85|
    probs = np.array([[0.35, 0.3, 0.35], [0.8, 0.1, 0.1], [0.9, 0.05, 0.05]])  # row 0: argmax 0, label 1
    labels = np.array([1, 0, 1])
    expected = (abs(0 - 0.35) * 1 + abs(0.5 - 0.85) * 2) / 3
    assert ece(probs, labels, n_bins=2) == pytest.approx(expected)
    perfect = np.eye(4)
    assert ece(perfect, np.arange(4)) == 0.0


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_matches_a_loop(strategy):
    rng = np.random.default_rng(0)
    probs = _probs(rng, (300, 5))
    labels = rng.integers(0, 5, 300)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    assert ece(probs, labels, 15, strategy) == pytest.approx(_reference_ece(conf, correct, 15, strategy))


def test_ece_uniform_agrees_with_sklearn_reliability_curve():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(1)
    probs = _probs(rng, (500, 4))
    labels = rng.integers(0, 4, 500)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    acc_bins, conf_bins = calibration_curve(correct, conf, n_bins=15, strategy="uniform")
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 16)[1:-1], conf), minlength=15)
    counts = counts[counts > 0]
    assert ece(probs, labels) == pytest.approx(np.sum(np.abs(acc_bins - conf_bins) * counts / 500))


def test_batch_ece_is_the_weighted_mean_of_batches():
    rng = np.random.default_rng(2)
    probs, labels = _probs(rng, (250, 10)), rng.integers(0, 10, 250)
    per_batch = [ece(probs[i:i + 100], labels[i:i + 100], strategy="quantile") * len(labels[i:i + 100])
                 for i in range(0, 250, 100)]
    assert batch_ece(probs, labels, 100) == pytest.approx(sum(per_batch) / 250)


def test_logits_are_rejected():
    logits = np.random.default_rng(0).normal(size=(8, 3))
    with pytest.raises(ValueError, match="softmax"):
        ece(logits, np.zeros(8, dtype=int))


def test_conformal_quantile_rule():
    scores = np.arange(1, 11) / 10.0  # 0.1 .. 1.0, n = 10
    # alpha 0.3: level ceil(11 * 0.7) / 10 = 0.8; NumPy position 0.8 * (n - 1) = 7.2 -> 'higher' -> index 8
    assert conformal_quantile(scores, 0.3) == pytest.approx(0.9)
    # alpha 0.2: level 0.9, position 8.1 -> index 9
    assert conformal_quantile(scores, 0.2) == pytest.approx(1.0)
    # alpha 0.01: level ceil(10.89) / 10 = 1.1 -> capped at 1 -> max
    assert conformal_quantile(scores, 0.01) == pytest.approx(1.0)
    assert conformal_quantile([], 0.05) == pytest.approx(0.95)
    # 'higher' between order statistics
    assert conformal_quantile([0.0, 0.5, 1.0], 0.4) == pytest.approx(np.quantile([0, .5, 1], 2 / 3, method="higher"))


def test_prediction_sets_and_set_metrics():
    probs = np.array([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [0.1, 0.1, 0.8]])
    sets = prediction_sets(probs, qhat=0.75)  # keep p >= 0.25
    assert sets.tolist() == [[True, False, False], [True, True, True], [False, False, True]]
    size, emp_alpha = set_metrics(sets, np.array([1, 2, 2]))
    assert size == pytest.approx(5 / 3) and emp_alpha == pytest.approx(1 / 3)


def _toy_exits(rng, n=200, num_exits=3, classes=4):
    probs = _probs(rng, (num_exits, n, classes))
    labels = rng.integers(0, classes, n)
    levels = rng.integers(0, num_exits, n)
    return probs, levels, labels


def test_calibrate_conformal_variants():
    rng = np.random.default_rng(3)
    probs, levels, labels = _toy_exits(rng)
    levels[levels == 1] = 0
    levels[:5] = 1  # only 5 samples exit at 1: gated falls back to all samples there
    th = calibrate_conformal(probs, levels, labels)
    assert set(th.general) == set(ALPHAS)
    alpha = 0.05
    scores = [1 - probs[e, np.arange(len(labels)), labels] for e in range(3)]
    gated = np.array([scores[lvl][i] for i, lvl in enumerate(levels)])
    assert th.general[alpha] == conformal_quantile(gated, alpha)
    assert th.gated_all[alpha] == [conformal_quantile(s, alpha) for s in scores]
    assert th.gated_strict[alpha][1] == conformal_quantile(scores[1][levels == 1], alpha)
    assert th.gated[alpha][1] == th.gated_all[alpha][1]
    # the final head (level 2 = G) calibrates on its own exited samples (the original's filter never matched)
    assert (levels == 2).sum() > 20
    assert th.gated[alpha][2] == th.gated_strict[alpha][2] == conformal_quantile(scores[2][levels == 2], alpha)


def test_conformal_sets_use_each_samples_exit():
    rng = np.random.default_rng(4)
    probs, levels, labels = _toy_exits(rng, n=30)
    th = calibrate_conformal(probs, levels, labels, alphas=(0.1,))
    th.gated[0.1] = [0.2, 0.5, 0.9]
    sets = conformal_sets(probs, levels, th)["sets_gated"][0.1]
    for i, lvl in enumerate(levels):
        assert sets[i].tolist() == (probs[lvl, i] >= 1 - th.gated[0.1][lvl]).tolist()
    metrics = conformal_metrics(probs, levels, labels, th)
    assert set(metrics) == {f"{v}_{m}_0.1" for v in ("sets_general", "sets_gated", "sets_gated_all",
                                                       "sets_gated_strict") for m in ("C", "emp_alpha")}


def test_conformal_coverage_on_exchangeable_data():
    rng = np.random.default_rng(5)
    probs, levels, labels = _toy_exits(rng, n=4000)
    cal, new = slice(0, 2000), slice(2000, 4000)
    th = calibrate_conformal(probs[:, cal], levels[cal], labels[cal])
    metrics = conformal_metrics(probs[:, new], levels[new], labels[new], th)
    for variant in ("sets_general", "sets_gated", "sets_gated_all"):
        assert metrics[f"{variant}_emp_alpha_0.05"] < 0.05 + 0.02


def test_exit_statistics_and_cost():
    levels = np.array([0, 0, 1, 2, 2, 2, 2, 2])
    fractions = exit_statistics(levels, 4)
    assert fractions.tolist() == [0.25, 0.125, 0.625, 0.0]
    assert average_cost(levels, [0.4, 0.5, 1.0, 2.0]) == pytest.approx((0.8 + 0.5 + 5.0) / 8)
    with pytest.raises(ValueError):
        exit_statistics(np.array([3]), 3)


def test_early_exit_metrics_names_and_values():
    rng = np.random.default_rng(6)
    probs, levels, labels = _toy_exits(rng, n=120)
    th = calibrate_conformal(probs, levels, labels)
    out = early_exit_metrics(probs, levels, labels, cost_per_exit=[0.4, 0.7, 1.0], thresholds=th, batch_size=64)
    gated = probs[levels, np.arange(120)]
    assert out["gated_acc"] == pytest.approx(100 * np.mean(gated.argmax(1) == labels)) == out["test_acc"]
    assert out["acc0"] == pytest.approx(100 * np.mean(probs[0].argmax(1) == labels))
    assert out["acc_final"] == pytest.approx(100 * np.mean(probs[2].argmax(1) == labels))
    assert out["gated_ece"] == pytest.approx(100 * ece(gated, labels))
    assert out["final_ece"] == pytest.approx(100 * ece(probs[2], labels))
    assert out["gated_ece_batch"] == pytest.approx(100 * batch_ece(gated, labels, 64))
    assert out["percent_exit0"] + out["percent_exit1"] + out["percent_exitfinal"] == pytest.approx(1.0)
    assert out["percent_exitfinal"] > 0
    assert out["total_cost"] == pytest.approx(average_cost(levels, [0.4, 0.7, 1.0]))
    exited0 = levels == 0
    assert out["gated_acc_0"] == pytest.approx(100 * np.mean(gated[exited0].argmax(1) == labels[exited0]))
    for key in ("ece0", "ece1", "sets_general_C_0.015", "sets_gated_strict_emp_alpha_0.05"):
        assert key in out


def test_mean_over_splits_and_largest_valid_alpha():
    mean, std = mean_over_splits([{"a": 1.0, "b": 2.0}, {"a": 3.0}])
    assert mean == {"a": 2.0, "b": 2.0} and std["a"] == 1.0
    metrics = {f"sets_general_emp_alpha_{a}": a + (0.0 if a < 0.03 else 0.03) for a in ALPHAS}
    metrics |= {f"sets_general_C_{a}": 10 * a for a in ALPHAS}
    assert largest_valid_alpha(metrics) == (0.025, 0.25)
    assert largest_valid_alpha({k: 1.0 for k in metrics}) is None
