"""adn.losses: the top-K logit distillation and the feature distillation of --fpn (spec Sec. b)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adn.losses import feature_kd_loss, pool_features, topk_kd_loss


def _logits(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 3


def _plain_kd(base, sup, temperature=1.0):
    p = F.softmax(sup / temperature, dim=1)
    return (p * (p.log() - F.log_softmax(base / temperature, dim=1))).sum(1).mean() * temperature**2


def test_k_equal_to_classes_is_plain_kl():
    base, sup = _logits(4, 10), _logits(4, 10, seed=1)
    torch.testing.assert_close(topk_kd_loss(base, sup, k=10), _plain_kd(base, sup))
    torch.testing.assert_close(topk_kd_loss(base, sup, k=10, temperature=2.0), _plain_kd(base, sup, 2.0))


def test_k_is_clipped_to_the_class_count():
    base, sup = _logits(4, 10), _logits(4, 10, seed=1)
    torch.testing.assert_close(topk_kd_loss(base, sup, k=500), topk_kd_loss(base, sup, k=10))
    with pytest.raises(ValueError):
        topk_kd_loss(base, sup, k=0)


def test_zero_when_base_equals_super():
    sup = _logits(3, 50)
    assert topk_kd_loss(sup.clone(), sup, k=7).abs().item() < 1e-6
    assert topk_kd_loss(sup.clone(), sup, k=50, temperature=4.0).abs().item() < 1e-6


def test_only_the_super_nets_top_k_classes_count():
    base, sup = _logits(2, 20), _logits(2, 20, seed=1)
    k = 5
    index = sup.topk(k, dim=1).indices
    expected = _plain_kd(base.gather(1, index), sup.gather(1, index))
    torch.testing.assert_close(topk_kd_loss(base, sup, k=k), expected)
    # Changing the base-net's logits outside the super-net's top-K changes nothing.
    outside = torch.ones_like(base, dtype=torch.bool).scatter_(1, index, False)
    moved = base + outside * 100.0
    torch.testing.assert_close(topk_kd_loss(moved, sup, k=k), expected)


def test_temperature_squared_scaling():
    base, sup = _logits(4, 10), _logits(4, 10, seed=1)
    t = 3.0
    p = F.softmax(sup / t, dim=1)
    kl = (p * (p.log() - F.log_softmax(base / t, dim=1))).sum(1).mean()
    torch.testing.assert_close(topk_kd_loss(base, sup, k=10, temperature=t), kl * t * t)


def test_teacher_is_detached():
    base = _logits(4, 10).requires_grad_()
    sup = _logits(4, 10, seed=1).requires_grad_()
    topk_kd_loss(base, sup, k=5).backward()
    assert sup.grad is None and base.grad is not None and base.grad.abs().sum() > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        topk_kd_loss(_logits(4, 10), _logits(4, 11))


def test_feature_kd_pools_sums_and_detaches():
    gen = torch.Generator().manual_seed(0)
    sup = [torch.randn(2, 8, 4, 4, generator=gen, requires_grad=True), torch.randn(2, 16, 2, 2, generator=gen)]
    base = [torch.randn(2, 8, 4, 4, generator=gen, requires_grad=True), torch.randn(2, 16, 2, 2, generator=gen)]
    t = 2.0
    expected = sum(_plain_kd(pool_features(b), pool_features(s), t) for s, b in zip(sup, base, strict=True))
    loss = feature_kd_loss(sup, base, temperature=t)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert sup[0].grad is None and base[0].grad is not None
    assert feature_kd_loss(sup, [s.detach().clone() for s in sup]).abs().item() < 1e-6
    # Already pooled (B, C) features are used as they are.
    pooled = [pool_features(s).detach() for s in sup]
    torch.testing.assert_close(feature_kd_loss(pooled, [pool_features(b) for b in base], t), expected)
    with pytest.raises(ValueError):
        feature_kd_loss(sup, base[:1])
