"""Confidence-threshold baseline with MSDNet's geometric exit schedule (spec Sec. g step 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from jeidnn.baseline import (
    Q_GRID,
    apply_thresholds,
    find_thresholds,
    geometric_exit_fractions,
    threshold_baseline,
)
from jeidnn.metrics import average_cost, ece


def _probs(rng, shape, scale=2.0):
    return torch.softmax(torch.tensor(rng.normal(size=shape) * scale), dim=-1).numpy()


def _msdnet_thresholds(probs, fractions):
    """MSDNet's dynamic_eval_find_threshold, loop for loop."""
    num_exits, n, _ = probs.shape
    p_max = probs.max(axis=2)
    order = np.argsort(-p_max, axis=1, kind="stable")
    filtered = np.zeros(n)
    thresholds = [1e8] * num_exits
    for k in range(num_exits - 1):
        out_n, count = math.floor(n * fractions[k]), 0
        for i in range(n):
            idx = order[k][i]
            if filtered[idx] == 0:
                count += 1
                if count == out_n:
                    thresholds[k] = p_max[k][idx]
                    break
        filtered += p_max[k] >= thresholds[k]
    thresholds[-1] = -1e8
    return thresholds


def test_geometric_fractions():
    shares = geometric_exit_fractions(0.5, 3)
    assert shares == pytest.approx(np.array([0.5, 0.25, 0.125]) / 0.875)
    assert geometric_exit_fractions(1.0, 4) == pytest.approx([0.25] * 4)
    theirs = geometric_exit_fractions(2.0, 3, include_final=False)
    assert theirs == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert len(Q_GRID) == 39 and Q_GRID[0] == 0.05


def test_thresholds_by_hand():
    # 2 exits + final, 4 samples, 2 classes; p_max at exit 0: .9 .8 .7 .6 ; at exit 1: .55 .95 .85 .65
    p0 = np.array([0.9, 0.8, 0.7, 0.6])
    p1 = np.array([0.55, 0.95, 0.85, 0.65])
    probs = np.stack([np.stack([p, 1 - p], 1) for p in (p0, p1, np.full(4, 0.5))])
    thresholds = find_thresholds(probs, [0.5, 0.25, 0.25])
    # exit 0 takes floor(4 * .5) = 2 -> threshold 0.8; among the rest (samples 2, 3) exit 1 takes 1 -> 0.85
    assert thresholds[:2].tolist() == [0.8, 0.85] and thresholds[2] == -np.inf
    assert apply_thresholds(probs, thresholds).tolist() == [0, 0, 1, 2]
    # asking for more samples than remain, or for none, closes the exit
    assert find_thresholds(probs, [0.2, 0.5, 0.3])[:2].tolist() == [np.inf, 0.85]  # floor(0.8) = 0 at exit 0
    assert find_thresholds(probs, [0.5, 0.75, 0.0])[:2].tolist() == [0.8, np.inf]  # 3 wanted, 2 left


def test_thresholds_match_msdnet_loop():
    rng = np.random.default_rng(0)
    probs = _probs(rng, (5, 400, 10))
    for q in (0.1, 0.7, 1.0, 1.6):
        fractions = geometric_exit_fractions(q, 5)
        ours = find_thresholds(probs, fractions)
        ref = _msdnet_thresholds(probs, fractions)
        assert [min(max(t, -1e8), 1e8) for t in ours] == pytest.approx(ref)


def test_baseline_realises_the_schedule_and_reports():
    rng = np.random.default_rng(1)
    val, test = _probs(rng, (4, 2000, 5)), _probs(rng, (4, 2000, 5))
    labels = rng.integers(0, 5, 2000)
    cost = [0.4, 0.6, 0.8, 1.0]
    points = threshold_baseline(val, test, labels, cost, q_grid=(0.5, 1.0), val_labels=labels)
    assert len(points) == 2
    for point in points:
        target = geometric_exit_fractions(point.q, 4)
        val_fractions = np.bincount(point.val_exit_levels, minlength=4) / 2000
        assert val_fractions == pytest.approx(target, abs=2e-3)  # exact up to floor() and ties
        assert point.exit_fractions == pytest.approx(target, abs=0.05)  # same distribution on test
        assert point.exit_fractions.sum() == pytest.approx(1.0)
        assert point.average_cost == pytest.approx(average_cost(point.exit_levels, cost))
        gated = test[point.exit_levels, np.arange(2000)]
        assert np.array_equal(point.exited_probs, gated)
        assert point.accuracy == pytest.approx(100 * np.mean(gated.argmax(1) == labels))
        assert 0 <= ece(point.exited_probs, labels) <= 1
    # a smaller q sends more samples out early: cheaper
    assert points[0].average_cost < points[1].average_cost


def test_first_passing_exit_wins():
    probs = np.array([[[0.6, 0.4]], [[0.99, 0.01]], [[0.5, 0.5]]])
    assert apply_thresholds(probs, [0.55, 0.9, -np.inf]).tolist() == [0]
    assert apply_thresholds(probs, [0.7, 0.9, -np.inf]).tolist() == [1]
    assert apply_thresholds(probs, [0.7, 1.0, np.inf]).tolist() == [2]  # the final head always accepts


def test_baseline_rejects_logits_and_mismatched_exits():
    rng = np.random.default_rng(2)
    probs = _probs(rng, (3, 10, 4))
    with pytest.raises(ValueError, match="softmax"):
        threshold_baseline(np.log(probs), probs, np.zeros(10, dtype=int), [0.5, 0.7, 1.0])
    with pytest.raises(ValueError, match="exits"):
        threshold_baseline(probs, probs, np.zeros(10, dtype=int), [0.5, 1.0])
