"""DS-Net training steps on the tiny supernet: Stage I, BN recalibration, Stage II, validation."""

from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import pytest
import torch
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV2
from torch import nn

from dsnet.engine import (
    gate_target,
    reset_bn,
    sandwich_step,
    train_epoch_slim,
    train_epoch_slim_gate,
    validate_gate,
    validate_slim,
)
from dsnet.madds import madds, mode_widths
from dsnet.models import DSBatchNorm2d, create_model

TINY = "slimmable_mbnet_v1_bn_uniform_tiny"
CPU = torch.device("cpu")


def _args(**kw) -> SimpleNamespace:
    base = dict(inplace_bootstrap=True, ensemble_ib=False, optimizer_step=1, log_interval=10, amp=False,
                original_dynamic_madds=False, sgs_on_logits=False)
    return SimpleNamespace(**{**base, **kw})


@pytest.fixture
def loader():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(24, 3, 16, 16, generator=g), torch.randint(0, 10, (24,), generator=g)
    return [(x[i:i + 8], y[i:i + 8]) for i in range(0, 24, 8)]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_model(TINY, num_classes=10)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_sandwich_step_sums_four_backward_passes(model, loader):
    """Sec. 3.3: largest on labels, two random uniform and the smallest on the teacher's soft labels, each
    backward on its own; the step's gradients are the sum of the four separate ones."""
    x, y = loader[0]
    teacher = copy.deepcopy(model).eval()
    model.train()
    ce, soft = LabelSmoothingCrossEntropy(0.1), SoftTargetCrossEntropy()
    out = sandwich_step(model, teacher, x, y, ce, soft, seed=7)
    step_grads = _grads(model)
    teacher.set_mode("largest")
    with torch.no_grad():
        soft_target = teacher(x).softmax(1)
    expected: dict[str, torch.Tensor] = {}
    for k, mode in enumerate(["largest", "uniform", "uniform", "smallest"]):
        random.seed(7 + k + 1)  # the reseeding of the original: the same widths on every process
        model.set_mode(mode)
        model.zero_grad(set_to_none=True)
        output = model(x)
        loss = ce(output, y) if mode == "largest" else soft(output, soft_target)
        assert loss.item() == pytest.approx(out["losses"][k].item(), abs=1e-6)
        loss.backward()
        for n, g in _grads(model).items():
            expected[n] = expected.get(n, 0) + g
    assert step_grads.keys() == expected.keys()
    for n, g in step_grads.items():
        torch.testing.assert_close(g, expected[n], atol=1e-6, rtol=1e-5)


def test_stage1_epoch_trains_and_skips_the_gate(model, loader):
    optimizer = create_optimizer_v2(model, opt="sgd", lr=0.1, weight_decay=1e-4, momentum=0.9)
    ema = ModelEmaV2(model, decay=0.9)
    gate_before = model.get_gate()[0][0].weight.clone()
    before = copy.deepcopy(model.state_dict())
    result = train_epoch_slim(0, model, loader, optimizer, LabelSmoothingCrossEntropy(0.1),
                              SoftTargetCrossEntropy(), _args(), device=CPU, model_ema=ema)
    assert set(result) == {"loss_largest", "loss_smallest"}
    assert torch.equal(model.get_gate()[0][0].weight, gate_before)  # no gradient: no step, no weight decay
    assert not torch.equal(model.conv_stem.weight, before["conv_stem.weight"])
    assert not torch.equal(ema.module.conv_stem.weight, before["conv_stem.weight"])


def test_reset_bn_recalibrates_the_uniform_widths(model, loader):
    bn = model.blocks[4].residual_blocks[0].bn2.aux_bn
    stem_largest = model.bn1.aux_bn[1]
    for m in (bn[5], stem_largest):
        m.running_mean.fill_(3.0)
    reset_bn(model, loader, num_choice=14, device=CPU, max_batches=2)
    assert bn[5].running_mean.abs().sum() > 0 and not torch.all(bn[5].running_mean == 3.0)
    # widths only 'largest' uses keep their reset statistics (quirk 11) unless asked
    assert torch.all(stem_largest.running_mean == 0) and torch.all(stem_largest.running_var == 1)
    reset_bn(model, loader, num_choice=14, device=CPU, max_batches=2, include_largest=True)
    assert stem_largest.running_mean.abs().sum() > 0


def test_reset_bn_cumulative_weights_every_batch_equally(model, loader):
    """``cumulative`` (``--reset_bn_cumulative``): the stem's statistics at width 8 become the plain mean of the
    three batches' statistics (each batch runs through all 14 sub-networks, so it counts 14 times); the moving
    average instead keeps 0.9 ** n of the reset values. The momentum is 0.1 again afterwards."""
    with torch.no_grad():
        pre = [model.conv_stem(x, 8) for x, _ in loader]
    mean = torch.stack([p.mean(dim=(0, 2, 3)) for p in pre]).mean(0)
    var = torch.stack([p.var(dim=(0, 2, 3), unbiased=True) for p in pre]).mean(0)
    stem = model.bn1.aux_bn[0]
    reset_bn(model, loader, num_choice=14, device=CPU, max_batches=3, cumulative=True)
    torch.testing.assert_close(stem.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(stem.running_var, var, rtol=1e-4, atol=1e-5)
    assert int(stem.num_batches_tracked) == 3 * 14
    assert all(m.aux_bn[-1].momentum == 0.1 for m in model.modules() if isinstance(m, DSBatchNorm2d))
    reset_bn(model, loader, num_choice=14, device=CPU, max_batches=3)
    assert not torch.allclose(stem.running_var, var, rtol=1e-2)
    assert int(stem.num_batches_tracked) == 0  # the original's path never counts


@pytest.mark.parametrize("max_batches", [2, 7])
def test_reset_bn_runs_max_batches(model, loader, max_batches):
    """Stops after ``max_batches`` batches; a loader shorter than that (3 batches here) is repeated."""
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    reset_bn(model, loader, num_choice=3, device=CPU, max_batches=max_batches)
    assert len(seen) == max_batches * 3


def test_gate_target():
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    assert gate_target(logits, torch.tensor([0, 0, 1])).tolist() == [0, 3, 3]


def test_stage2_moves_only_the_gate(model, loader):
    reset_bn(model, loader, num_choice=14, device=CPU, max_batches=3)
    optimizer = create_optimizer_v2(model.get_gate(), opt="sgd", lr=0.5, weight_decay=0.01, momentum=0.9)
    before = copy.deepcopy(model.state_dict())
    result = train_epoch_slim_gate(0, model, loader, optimizer, LabelSmoothingCrossEntropy(0.1), _args(),
                                   device=CPU)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed == ["blocks.3.first_block.gate.gate.0.weight"]
    assert {"loss", "ce_loss", "gate_loss", "flops_loss", "acc", "flops"} <= set(result)
    low = madds(model, mode_widths(model, "uniform", 0), 16)
    high = madds(model, mode_widths(model, "uniform", 3), 16) + 4 * 8
    assert low <= result["flops"] <= high


def test_validation(model, loader):
    reset_bn(model, loader, num_choice=14, device=CPU, max_batches=3)
    loss_fn = nn.CrossEntropyLoss()
    small = validate_slim(model, loader, loss_fn, device=CPU, model_mode="smallest")
    assert small["flops"] == madds(model, mode_widths(model, "smallest"), 16)
    assert 0 <= small["prec1"] <= small["prec5"] <= 100
    assert validate_slim(model, loader, loss_fn, device=CPU, model_mode=13)["flops"] > small["flops"]
    dyn = validate_gate(model, loader, loss_fn, _args(), device=CPU)
    assert sum(dyn["route_counts"]) == 24
    assert 0 <= dyn["gate_acc"] <= 100
    routes = [madds(model, mode_widths(model, "uniform", c), 16) + 32 for c in range(4)]
    expected = sum(n * m for n, m in zip(dyn["route_counts"], routes, strict=True)) / 24
    assert dyn["flops"] == pytest.approx(expected)
