"""padnet/dyconv/engine.py: the temperature and learning-rate schedules of the original main.py, its label-smoothing
loss, the mixup ramp, and one training / validation epoch."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from padnet.dyconv.engine import (
    get_temperature,
    label_smoothing_loss,
    learning_rate,
    mixup_alpha,
    mixup_data,
    train_one_epoch,
    validate,
)
from padnet.dyconv.layers import DynamicNet


# ----------------------------------------------------------------------------------------- temperature
def test_temperature_falls_linearly_from_temp_init_to_one():
    iters, temp_epoch = 10, 15
    assert get_temperature(0, 0, iters, temp_epoch, 30.0) == 30.0
    # halfway through the annealing: 1 + 29 / 2
    assert get_temperature(5, 7, iters, temp_epoch, 30.0) == pytest.approx(1 + 29 * (1 - 75 / 150))
    values = [get_temperature(i, e, iters, temp_epoch, 30.0) for e in range(temp_epoch) for i in range(iters)]
    steps = np.diff(values)
    assert np.allclose(steps, -29 / 150)  # the same decrement every iteration
    assert values[-1] == pytest.approx(1 + 29 / 150)  # the last annealed iteration is just above 1
    assert get_temperature(0, temp_epoch, iters, temp_epoch, 30.0) == 1.0
    assert get_temperature(3, 40, iters, temp_epoch, 30.0) == 1.0


def test_temperature_matches_the_original_formula():
    def original(iteration, epoch, iter_per_epoch, temp_epoch, temp_init):  # utils/misc.py get_temperature
        total = iter_per_epoch * temp_epoch
        current = iteration + epoch * iter_per_epoch
        return 1.0 + max(0, (temp_init - 1.0) * ((total - current) / total))

    for it, ep in [(0, 0), (3, 1), (499, 14), (0, 15), (7, 20)]:
        assert get_temperature(it, ep, 500, 15, 30.0) == pytest.approx(original(it, ep, 500, 15, 30.0))
    assert get_temperature(5, 0, 10, 0, 30.0) == 1.0  # --temp_epoch 0: no annealing


# --------------------------------------------------------------------------------------- learning rate
def _lrs(lr_decay, epochs=10, iters=4, **kw):
    return [[learning_rate(0.1, e, i, iters, epochs, lr_decay, **kw) for i in range(iters)] for e in range(epochs)]


def test_step_decays_every_step_epochs():
    lrs = _lrs("step", epochs=10, step=3, gamma=0.1)
    for epoch, row in enumerate(lrs):
        assert row == pytest.approx([0.1 * 0.1 ** (epoch // 3)] * 4)


def test_step_with_the_defaults_decays_at_30_and_60():
    at = {e: learning_rate(0.1, e, 0, 100, 90, "step") for e in (0, 29, 30, 59, 60, 89)}
    assert at == pytest.approx({0: 0.1, 29: 0.1, 30: 0.01, 59: 0.01, 60: 0.001, 89: 0.001})


def test_cos_and_linear_per_iteration():
    epochs, iters = 10, 4
    total = epochs * iters
    cos = [lr for row in _lrs("cos", epochs, iters) for lr in row]
    lin = [lr for row in _lrs("linear", epochs, iters) for lr in row]
    for t in range(total):
        assert cos[t] == pytest.approx(0.1 * (1 + math.cos(math.pi * t / total)) / 2)
        assert lin[t] == pytest.approx(0.1 * (1 - t / total))
    assert cos[0] == pytest.approx(0.1) and all(np.diff(cos) < 0)


def test_schedule_multiplies_by_gamma_at_each_milestone():
    lrs = _lrs("schedule", epochs=8, schedule=[2, 5], gamma=0.5)
    assert [row[0] for row in lrs] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025, 0.025])
    assert all(len(set(row)) == 1 for row in lrs)  # constant within an epoch


def test_warmup_ramps_linearly_over_five_epochs_then_decays():
    iters, epochs = 4, 12
    lrs = [lr for row in _lrs("cos", epochs, iters, warmup=True) for lr in row]
    warm = 5 * iters
    assert lrs[:warm] == pytest.approx([0.1 * t / warm for t in range(warm)])
    assert lrs[warm] == pytest.approx(0.1)  # the cosine starts after the warm-up
    assert lrs[-1] < 0.01


def test_unknown_lr_decay_raises():
    with pytest.raises(ValueError, match="unknown --lr-decay"):
        learning_rate(0.1, 0, 0, 10, 90, "poly")


# ------------------------------------------------------------------------------------------- loss, mixup
def test_label_smoothing_loss_is_the_originals():
    torch.manual_seed(0)
    logits, target = torch.randn(6, 7), torch.randint(0, 7, (6,))
    s = 0.1
    log_prob = logits.log_softmax(-1)  # main.py LabelSmoothingLoss: 1 - s on the label, s / (C - 1) elsewhere
    weight = torch.full_like(logits, s / 6).scatter_(-1, target[:, None], 1 - s)
    expected = (-weight * log_prob).sum(-1).mean()
    assert label_smoothing_loss(s, 7)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    plain = nn.functional.cross_entropy(logits, target)
    assert label_smoothing_loss(0.0, 7)(logits, target).item() == pytest.approx(plain.item())


def test_mixup_alpha_ramps_over_100_epochs_and_mixes():
    assert [mixup_alpha(0.2, e) for e in (0, 50, 100, 150)] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    x, y = torch.arange(8.0).view(4, 2), torch.arange(4)
    same, y_a, y_b, lam = mixup_data(x, y, 0.0)
    assert lam == 1.0 and torch.equal(same, x) and torch.equal(y_a, y)
    np.random.seed(0)
    mixed, y_a, y_b, lam = mixup_data(x, y, 0.4)
    assert 0 < lam < 1 and torch.allclose(mixed, lam * x + (1 - lam) * x[y_b])


# ------------------------------------------------------------------------------------------- epochs
class _TempNet(DynamicNet):
    """A linear classifier on the models' base class, whose ``temperature`` the engine anneals (31 at init)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) / self.temperature


def _args(**kw):
    base = dict(epochs=4, temp_epoch=2, temp_init=30.0, lr=0.5, lr_decay="cos", step=30, schedule=[30, 60, 90],
                gamma=0.1, warmup=False, mixup=0.0)
    return SimpleNamespace(**{**base, **kw})


def _data():
    torch.manual_seed(0)
    x = torch.randn(40, 4)
    y = x[:, :3].argmax(1)
    return DataLoader(TensorDataset(x, y), batch_size=10, shuffle=False)


def test_train_one_epoch_anneals_temperature_sets_lr_and_learns():
    torch.manual_seed(0)
    model, loader = _TempNet(), _data()
    criterion = label_smoothing_loss(0.1, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=123.0, momentum=0.9)
    before = validate(model, criterion, loader, torch.device("cpu"))
    first = train_one_epoch(model, criterion, optimizer, loader, torch.device("cpu"), 0, _args())
    # epoch 0 of a 2-epoch annealing with 4 iterations per epoch: the last T is that of iteration 3
    assert first["temperature"] == pytest.approx(get_temperature(3, 0, 4, 2, 30.0))
    assert first["lr"] == pytest.approx(learning_rate(0.5, 0, 3, 4, 4, "cos"))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(first["lr"])
    for epoch in (1, 2, 3):
        last = train_one_epoch(model, criterion, optimizer, loader, torch.device("cpu"), epoch, _args())
    assert last["temperature"] == pytest.approx(get_temperature(3, 1, 4, 2, 30.0))  # kept after temp_epoch
    after = validate(model, criterion, loader, torch.device("cpu"))
    assert set(after) == {"loss", "acc1", "acc5"} and after["acc5"] == 100.0  # 3 classes: top-5 is everything
    assert after["loss"] < before["loss"] and after["acc1"] > before["acc1"]


def test_mixup_epoch_runs_and_reports_weighted_accuracy():
    torch.manual_seed(0)
    np.random.seed(0)
    model, loader = _TempNet(), _data()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = train_one_epoch(model, label_smoothing_loss(0.0, 3), optimizer, loader, torch.device("cpu"), 50,
                          _args(mixup=1.0, epochs=100))
    assert 0.0 <= out["acc1"] <= 100.0 and math.isfinite(out["loss"])
    assert out["temperature"] == 31.0  # past --temp_epoch the engine leaves T alone
