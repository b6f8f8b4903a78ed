"""Iterative Mode Partition (PAD-Net Sec. 3.3; spec b.3): schedules, scopes, tie-breaking, re-scoring, the
scorers, the errors, and a run on every PAD model type."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from padnet.dyconv import imp_masks
from padnet.dyconv.layers import pad_layers
from padnet.dyconv.models import MODELS, build_model
from padnet.imp import (
    ModeMask,
    classification_loss,
    iterative_mode_partition,
    mag_scores,
    mode_mask_from_scores,
    rand_scores,
    round_target,
    snip_scores,
)


def _toy_masks(sizes=(10, 30, 60)):
    """Stand-alone mode masks (like PAD-MoE's: a list of K expert weights of the mask's shape)."""
    masks = {}
    for i, n in enumerate(sizes):
        experts = [torch.randn(n) for _ in range(4)]
        masks[f"layer{i}"] = ModeMask(torch.ones(n), experts, torch.randn(n))
    return masks


def test_round_targets():
    assert [round(round_target(0.125, e, 3), 6) for e in (1, 2, 3)] == [0.5, 0.25, 0.125]
    assert [round(round_target(0.4, e, 3, "linear"), 6) for e in (1, 2, 3)] == [0.8, 0.6, 0.4]
    with pytest.raises(ValueError, match="exponential, linear"):
        round_target(0.5, 1, 1, "cosine")


def test_mode_mask_ties_and_original_rule():
    scores = torch.tensor([0.0, 3.0, 0.0, 1.0, 0.0, 2.0])
    exact = mode_mask_from_scores(scores, 0.5)  # 3 dynamic: 3.0, 2.0, 1.0
    assert exact.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    tied = mode_mask_from_scores(scores, 2 / 3)  # 4 dynamic: the three positives and the first zero
    assert tied.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    original = mode_mask_from_scores(scores, 2 / 3, tie_break=False)  # score > kthvalue(2) = 0: only 3
    assert original.tolist() == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    assert mode_mask_from_scores(scores, 1.0).tolist() == [1.0] * 6
    assert mode_mask_from_scores(scores, 0.0).tolist() == [0.0] * 6


@pytest.mark.parametrize("scope", ["global", "local"])
def test_scopes(scope):
    torch.manual_seed(0)
    masks = _toy_masks()
    # layer2 scores highest everywhere: global scope gives it all 30 dynamic slots, local scope 30% per layer
    scores = {name: torch.rand(m.mask.shape) + 10 * (name == "layer2") for name, m in masks.items()}
    ratios = iterative_mode_partition(nn.Identity(), masks, lambda model, masks: scores, sparsity=0.3, scope=scope)
    if scope == "global":
        assert ratios == {"layer0": 0.0, "layer1": 0.0, "layer2": 0.5}
    else:
        assert ratios == {"layer0": 0.3, "layer1": 0.3, "layer2": 0.3}
    assert sum(int(m.mask.sum()) for m in masks.values()) == 30


@pytest.mark.parametrize("schedule,kappa,targets", [("exponential", 0.125, [1.0, 0.5, 0.25]),
                                                    ("linear", 0.25, [1.0, 0.75, 0.5])])
def test_rounds_follow_the_schedule(schedule, kappa, targets):
    masks = _toy_masks((40,))
    mask = masks["layer0"].mask
    seen = []

    def score_fn(model, masks):
        seen.append(float(mask.mean()))  # the dynamic ratio left by the previous round
        return {"layer0": torch.arange(40.0)}

    iterative_mode_partition(nn.Identity(), masks, score_fn, sparsity=kappa, prune_epochs=3, schedule=schedule)
    assert seen == pytest.approx(targets)
    assert int(mask.sum()) == 40 - int((1 - kappa) * 40)


def test_static_positions_can_come_back():
    masks = _toy_masks((20,))
    mask = masks["layer0"].mask
    calls = []

    def score_fn(model, masks):
        calls.append(mask.clone())
        return {"layer0": 1 - mask + 0.01 * torch.arange(20.0)} if len(calls) > 1 else {"layer0": torch.arange(20.0)}

    iterative_mode_partition(nn.Identity(), masks, score_fn, sparsity=0.25, prune_epochs=2)
    after_first = calls[1]
    assert bool((mask[after_first == 0] == 1).any())


def test_scorers():
    masks = _toy_masks((5, 7))
    mag = mag_scores(nn.Identity(), masks)
    for name, m in masks.items():
        torch.testing.assert_close(mag[name], torch.stack([d.abs() for d in m.dynamic]).mean(0))
    conv = build_model("DyResNet10_PAD", num_classes=3, scale=0.125)
    conv_masks = imp_masks(conv)
    layer = pad_layers(conv)[0][1]
    mag = mag_scores(conv, conv_masks)
    first = next(iter(mag))
    assert mag[first].shape == layer.kernels_weights_mask.shape
    torch.testing.assert_close(mag[first], layer.kernels_weights.detach().abs().mean(0, keepdim=True))
    a = rand_scores(conv, conv_masks, torch.Generator().manual_seed(3))
    b = rand_scores(conv, conv_masks, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[n], b[n]) and a[n].shape == conv_masks[n].mask.shape for n in a)


def test_errors():
    masks = _toy_masks((10,))
    fn = functools.partial(rand_scores)
    with pytest.raises(ValueError, match="no PAD layers"):
        iterative_mode_partition(nn.Identity(), {}, fn)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        iterative_mode_partition(nn.Identity(), masks, fn, sparsity=1.5)
    with pytest.raises(ValueError, match="global, local"):
        iterative_mode_partition(nn.Identity(), masks, fn, scope="layer")
    with pytest.raises(ValueError, match="exponential, linear"):
        iterative_mode_partition(nn.Identity(), masks, fn, schedule="cos")
    with pytest.raises(ValueError, match="prune-epochs"):
        iterative_mode_partition(nn.Identity(), masks, fn, prune_epochs=0)
    shared = masks["layer0"]
    with pytest.raises(ValueError, match="same tensor"):
        iterative_mode_partition(nn.Identity(), {"a": shared, "b": shared}, fn)


def test_snip_in_eval_mode_keeps_bn_stats_and_restores_mode():
    torch.manual_seed(0)
    model = build_model("DyResNet10_PAD", num_classes=4, scale=0.125, Lambda="both").train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 4, (4,))) for _ in range(2)]
    score_fn = functools.partial(snip_scores, batches=batches, loss_fn=classification_loss(nn.CrossEntropyLoss()))
    masks = imp_masks(model)
    scores = score_fn(model.eval(), masks)
    torch.testing.assert_close(sum(s.sum() for s in scores.values()), torch.tensor(1.0))
    model.train()
    ratios = iterative_mode_partition(model, masks, score_fn, sparsity=0.3)
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in stats.items())
    dynamic = sum(int(m.mask.sum()) for m in masks.values())
    total = sum(m.mask.numel() for m in masks.values())
    assert dynamic == total - int(0.7 * total) and len(ratios) == len(masks)


@pytest.mark.parametrize("type_name", [name for name in MODELS if name.endswith("_PAD")])
def test_snip_imp_runs_on_every_pad_model(type_name):
    torch.manual_seed(0)
    kwargs = {"scale": 0.125} if "ResNet" in type_name else {"width_multiplier": 0.35}
    model = build_model(type_name, num_classes=4, Lambda="both", **kwargs)
    batch = (torch.randn(2, 3, 32, 32), torch.randint(0, 4, (2,)))
    score_fn = functools.partial(snip_scores, batches=[batch], loss_fn=classification_loss(nn.CrossEntropyLoss()))
    ratios = iterative_mode_partition(model, imp_masks(model), score_fn, sparsity=0.5, prune_epochs=2)
    assert len(ratios) == len(pad_layers(model))
    masks = [m.kernels_weights_mask for _, m in pad_layers(model)]
    total = sum(m.numel() for m in masks)
    assert sum(int(m.sum()) for m in masks) == total - int(0.5 * total)
