"""Data presets of ``adn/train_adn.py``: the torchvision classification reference's (spec Sec. d and e).

* :func:`train_preset`: RandomResizedCrop(``--train-crop-size``, ``--interpolation``), horizontal flip, an
  optional ``--auto-augment`` policy (``ra`` with ``--ra-magnitude``, ``ta_wide``, ``augmix`` with
  ``--augmix-severity``, or an AutoAugment policy ``imagenet`` / ``cifar10`` / ``svhn``), to tensor, ImageNet
  normalisation, and RandomErasing(``--random-erase``).
* :func:`eval_preset`: Resize(``--val-resize-size``) + CenterCrop(``--val-crop-size``) (spec Sec. e).
* :class:`MixupCutmixCollate`: ``--mixup-alpha`` / ``--cutmix-alpha``, one of them chosen per batch (p = 1),
  with ``torchvision.transforms.v2``; the targets become soft (B, C).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import default_collate
from torchvision.transforms import InterpolationMode, autoaugment, v2
from torchvision.transforms import transforms as T

from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from common.errors import UserError

AUTO_AUGMENT_POLICIES = ("ra", "ta_wide", "augmix", *(p.value for p in autoaugment.AutoAugmentPolicy))
INTERPOLATIONS = tuple(mode.value for mode in InterpolationMode)


def interpolation_mode(name: str) -> InterpolationMode:
    """``--interpolation`` as an InterpolationMode (``bilinear``, ``bicubic``, ``nearest``, ...)."""
    try:
        return InterpolationMode(name)
    except ValueError:
        raise UserError(f"--interpolation {name} is not one of: {', '.join(INTERPOLATIONS)}") from None


def auto_augment_transform(policy: str, interpolation: InterpolationMode, ra_magnitude: int = 9,
                           augmix_severity: int = 3) -> torch.nn.Module:
    """The ``--auto-augment`` policy: RandAugment, TrivialAugmentWide, AugMix or an AutoAugment policy."""
    if policy == "ra":
        return autoaugment.RandAugment(interpolation=interpolation, magnitude=ra_magnitude)
    if policy == "ta_wide":
        return autoaugment.TrivialAugmentWide(interpolation=interpolation)
    if policy == "augmix":
        return autoaugment.AugMix(interpolation=interpolation, severity=augmix_severity)
    try:
        return autoaugment.AutoAugment(policy=autoaugment.AutoAugmentPolicy(policy), interpolation=interpolation)
    except ValueError:
        raise UserError(f"--auto-augment {policy} is not one of: {', '.join(AUTO_AUGMENT_POLICIES)}") from None


def train_preset(
    crop_size: int,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    auto_augment_policy: str | None = None,
    random_erase_prob: float = 0.0,
    ra_magnitude: int = 9,
    augmix_severity: int = 3,
    hflip_prob: float = 0.5,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Training transform of a PIL image: crop, flip, auto-augment, tensor, normalise, random erasing."""
    steps: list[Any] = [T.RandomResizedCrop(crop_size, interpolation=interpolation)]
    if hflip_prob > 0:
        steps.append(T.RandomHorizontalFlip(hflip_prob))
    if auto_augment_policy is not None:
        steps.append(auto_augment_transform(auto_augment_policy, interpolation, ra_magnitude, augmix_severity))
    steps += [T.PILToTensor(), T.ConvertImageDtype(torch.float), T.Normalize(mean=mean, std=std)]
    if random_erase_prob > 0:
        steps.append(T.RandomErasing(p=random_erase_prob))
    return T.Compose(steps)


def eval_preset(
    crop_size: int,
    resize_size: int = 256,
    interpolation: InterpolationMode = InterpolationMode.BILINEAR,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Evaluation transform of a PIL image: resize the short side, centre-crop, tensor, normalise."""
    return T.Compose([T.Resize(resize_size, interpolation=interpolation), T.CenterCrop(crop_size), T.PILToTensor(),
                      T.ConvertImageDtype(torch.float), T.Normalize(mean=mean, std=std)])


class MixupCutmixCollate:
    """Collate a batch, then apply MixUp or CutMix (one chosen at random per batch, each with p = 1).

    Only the transforms with ``alpha > 0`` take part. Targets come out as soft labels (B, ``num_classes``),
    which ``CrossEntropyLoss`` accepts as class probabilities. A class (not a closure) so that DataLoader
    workers can pickle it.
    """

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0):
        choices = []
        if mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        if not choices:
            raise ValueError("MixupCutmixCollate needs mixup_alpha > 0 or cutmix_alpha > 0")
        self.transform = v2.RandomChoice(choices)

    def __call__(self, batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, targets = default_collate(batch)
        return self.transform(images, targets)
