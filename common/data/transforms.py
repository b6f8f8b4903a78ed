"""Train and eval transform presets; every size, statistic and interpolation is a parameter.

* ImageNet preset (torchvision reference / timm): random-resized-crop + horizontal flip for training,
  resize to ``img_size / crop_pct`` + center crop for evaluation.
* Small-image preset (CIFAR-style): random crop with padding + horizontal flip for training, plain resize for
  evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.24703, 0.24348, 0.26158)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)
HALF_MEAN = (0.5, 0.5, 0.5)  # the "mean = std = 0.5" normalisation of ViT IN21K weights
HALF_STD = (0.5, 0.5, 0.5)


def _interp(name: str) -> InterpolationMode:
    return InterpolationMode(name)


def imagenet_train_transform(
    img_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
) -> T.Compose:
    """RandomResizedCrop(img_size, scale) + RandomHorizontalFlip + ToTensor + Normalize."""
    steps = [T.RandomResizedCrop(img_size, scale=scale, interpolation=_interp(interpolation))]
    if hflip > 0:
        steps.append(T.RandomHorizontalFlip(hflip))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def imagenet_eval_transform(
    img_size: int = 224,
    crop_pct: float = 0.875,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bilinear",
) -> T.Compose:
    """Resize(int(img_size / crop_pct)) + CenterCrop(img_size) + ToTensor + Normalize (256 -> 224 by default)."""
    resize = int(img_size / crop_pct)
    return T.Compose([T.Resize(resize, interpolation=_interp(interpolation)), T.CenterCrop(img_size),
                      T.ToTensor(), T.Normalize(mean, std)])


def small_train_transform(
    img_size: int = 32,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    padding: int | None = None,
    native_size: int = 32,
) -> T.Compose:
    """[Resize(img_size)] + RandomCrop(img_size, padding) + RandomHorizontalFlip + ToTensor + Normalize.

    The padding defaults to 4 pixels at the native 32x32 size and scales with ``img_size`` (28 at 224, as the
    JEI-DNN transfer-learning recipe uses).
    """
    padding = img_size // 8 if padding is None else padding
    steps = [] if img_size == native_size else [T.Resize(img_size)]
    steps += [T.RandomCrop(img_size, padding=padding), T.RandomHorizontalFlip()]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def small_eval_transform(
    img_size: int = 32,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    native_size: int = 32,
) -> T.Compose:
    """[Resize(img_size)] + ToTensor + Normalize."""
    steps = [] if img_size == native_size else [T.Resize(img_size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def build_transform(
    preset: str,
    train: bool,
    img_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    **kwargs,
) -> T.Compose:
    """The ``'imagenet'`` or ``'small'`` preset for training or evaluation."""
    if preset == "imagenet":
        return (imagenet_train_transform if train else imagenet_eval_transform)(img_size, mean=mean, std=std,
                                                                              **kwargs)
    if preset == "small":
        return (small_train_transform if train else small_eval_transform)(img_size, mean=mean, std=std, **kwargs)
    raise ValueError(f"unknown transform preset {preset!r}; expected 'imagenet' or 'small'")
