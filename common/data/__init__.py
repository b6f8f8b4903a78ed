"""Datasets and loaders for every entry point: ``build_dataset(name, root, split, ...)`` and ``build_loader``.

Names:

==================  ==========================================================  ====================
name                layout under ``root``                                      splits
==================  ==========================================================  ====================
``imagenet``        ``train/<class>/*.JPEG``, ``val/<class>/*.JPEG``            train, val
``imagefolder``     the same, any classes                                       train, val
``cifar10``         torchvision's ``cifar-10-batches-py/``                      train, test
``cifar100``        torchvision's ``cifar-100-python/``                         train, test
``cifar100_lt``     CIFAR-100, long-tailed (``imb_factor`` 0.01, seed 0)        train, test
``svhn``            torchvision's ``{train,test,extra}_32x32.mat``              train, test, extra
``vtab1k/<task>``   SSF layout ``<task>/{train800val200,...}.txt`` + images     train800val200,
                                                                                train800, val200, test
``glue/<task>``     GLUE tsv files ``<TASK>/{train,dev,test}.tsv``              train, dev, test
``digits``          embedded (scikit-learn), no root                            train, val
``synthetic``       embedded (seeded random), no root                           train, val, test
==================  ==========================================================  ====================

Every image dataset carries ``num_classes`` (a GLUE dataset: ``num_labels``). With ``transform="default"``
the image datasets get the train or eval preset of :mod:`common.data.transforms` that fits them; pass ``None``
for raw samples or your own transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from torch.utils.data import Dataset
from torchvision import transforms as T

from common.data.glue import GLUE_TASKS, GlueDataset, read_glue
from common.data.loader import build_loader, set_epoch
from common.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    HALF_MEAN,
    HALF_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transform,
)
from common.data.vision import (
    VTAB_TASKS,
    DataError,
    LongTailSubset,
    SyntheticImages,
    digits,
    image_folder,
    torchvision_dataset,
    vtab1k,
)

DATASETS = ("imagenet", "imagefolder", "cifar10", "cifar100", "cifar100_lt", "svhn", "vtab1k/<task>",
            "glue/<task>", "digits", "synthetic")

# name -> (transform preset, default image size, mean, std)
_PRESETS = {
    "imagenet": ("imagenet", 224, IMAGENET_MEAN, IMAGENET_STD),
    "imagefolder": ("imagenet", 224, IMAGENET_MEAN, IMAGENET_STD),
    "cifar10": ("small", 32, CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ("small", 32, CIFAR100_MEAN, CIFAR100_STD),
    "cifar100_lt": ("small", 32, CIFAR100_MEAN, CIFAR100_STD),
    "svhn": ("small", 32, HALF_MEAN, HALF_STD),
    "vtab1k": ("resize", 224, IMAGENET_MEAN, IMAGENET_STD),
}

__all__ = ["DATASETS", "GLUE_TASKS", "VTAB_TASKS", "DataError", "GlueDataset", "build_dataset", "build_loader",
           "build_transform", "default_transform", "read_glue", "set_epoch"]


def default_transform(name: str, split: str, img_size: int | None = None, mean: Sequence[float] | None = None,
                      std: Sequence[float] | None = None) -> Callable:
    """The preset a dataset uses when none is given: augmentation on the training split only.

    SVHN is never flipped (digits change meaning); VTAB-1K uses a plain square resize for every split (the
    NOAH/SSF ``noaug`` protocol).
    """
    family = name.split("/", 1)[0]
    preset, size, default_mean, default_std = _PRESETS[family]
    size, mean, std = img_size or size, mean or default_mean, std or default_std
    if preset == "resize":
        return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                          T.Normalize(mean, std)])
    train = split == "train" and family != "svhn"
    return build_transform(preset, train, size, mean, std)


def build_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    img_size: int | None = None,
    transform: Callable | str | None = "default",
    download: bool = False,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **kwargs,
) -> Dataset:
    """Build a dataset by name (table in the module docstring); raises :class:`DataError` with the fix.

    Extra keyword arguments: ``imb_factor`` and ``seed`` for ``cifar100_lt``; ``num_samples``, ``num_classes``
    and ``seed`` for ``synthetic``; ``val_fraction`` and ``seed`` for ``digits``; ``skip_corrupt`` for
    ``imagenet`` / ``imagefolder`` (skip and count undecodable images instead of stopping at the first).
    """
    family = name.split("/", 1)[0]
    if family in ("digits", "synthetic"):
        tf = None if transform == "default" else transform
        if family == "digits":
            dataset = digits(split, img_size=img_size or 32, transform=tf, **kwargs)
        else:
            if split not in ("train", "val", "test"):
                raise DataError(f"dataset 'synthetic' has no split '{split}'; choose one of: train, val, test")
            kwargs.setdefault("num_samples", 256 if split == "train" else 128)
            stream = ("train", "val", "test").index(split)
            dataset = SyntheticImages(img_size=img_size or 32, stream=stream, transform=tf, **kwargs)
        dataset.num_classes = len(dataset.classes)
        return dataset
    if family == "glue":
        if root is None:
            raise DataError(f"dataset '{name}' needs --data-root pointing at the GLUE data folder")
        return GlueDataset(name.split("/", 1)[1] if "/" in name else "", root, split)
    if family not in _PRESETS:
        raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(DATASETS)}")
    if root is None:
        raise DataError(f"dataset '{name}' needs a data folder (--data-root / DATA); or run on the embedded "
                        "data with --dataset digits or --dataset synthetic")
    tf = default_transform(name, split, img_size, mean, std) if transform == "default" else transform
    if family in ("imagenet", "imagefolder"):
        dataset = image_folder(root, split, tf, name=family, skip_corrupt=kwargs.get("skip_corrupt", False))
    elif family in ("cifar10", "cifar100", "svhn"):
        dataset = torchvision_dataset(family, root, split, tf, download=download)
    elif family == "cifar100_lt":
        base = torchvision_dataset("cifar100", root, split, tf, download=download)
        dataset = LongTailSubset(base, imb_factor=kwargs.get("imb_factor", 0.01), seed=kwargs.get("seed", 0))
    else:
        if "/" not in name:
            raise DataError(f"name the VTAB-1K task as vtab1k/<task>, one of: {', '.join(VTAB_TASKS)}")
        dataset = vtab1k(root, name.split("/", 1)[1], split, tf)
    if family == "svhn":
        dataset.classes = list(range(10))
    dataset.num_classes = len(dataset.classes)
    return dataset
