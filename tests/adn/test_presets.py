"""adn.presets: the torchvision-reference transforms and the mixup / cutmix collate."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from adn.presets import MixupCutmixCollate, eval_preset, interpolation_mode, train_preset
from common.errors import UserError


def test_presets_give_the_requested_sizes():
    image = Image.new("RGB", (300, 200), color=(120, 30, 200))
    for policy in (None, "ra", "ta_wide", "augmix", "imagenet"):
        out = train_preset(64, auto_augment_policy=policy, random_erase_prob=0.5)(image)
        assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    assert eval_preset(56, resize_size=64, interpolation=interpolation_mode("bicubic"))(image).shape == (3, 56, 56)
    with pytest.raises(UserError):
        train_preset(64, auto_augment_policy="best")
    with pytest.raises(UserError):
        interpolation_mode("sinc")


def test_mixup_cutmix_collate_gives_soft_targets():
    torch.manual_seed(0)
    batch = [(torch.randn(3, 8, 8), i % 4) for i in range(6)]
    images, targets = MixupCutmixCollate(4, mixup_alpha=0.2, cutmix_alpha=1.0)(batch)
    assert images.shape == (6, 3, 8, 8) and targets.shape == (6, 4)
    torch.testing.assert_close(targets.sum(1), torch.ones(6))
    with pytest.raises(ValueError):
        MixupCutmixCollate(4)
