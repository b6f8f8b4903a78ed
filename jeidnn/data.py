"""JEI-DNN's datasets, transforms, validation split and test sub-splits (spec Sec. d "Data", Sec. e).

Names are the original's ``--dataset`` choices (``cifar10``, ``cifar100``, ``cifar100LT``, ``svhn``) plus the
embedded ``digits`` of quick mode. The files themselves are read by :mod:`common.data`; this module only fixes
JEI-DNN's recipe on top of it:

* CIFAR-10/100(-LT): train ``Resize(224) -> RandomCrop(224, padding 28) -> HFlip -> ToTensor -> Normalize``,
  test ``Resize(224) -> ToTensor -> Normalize``, with each dataset's own mean/std;
* SVHN: 32x32, ``ToTensor`` only (no augmentation, no normalisation);
* validation carved out of the training set by ``random_split`` with a generator seeded 42, and, as in the
  original, it keeps the *training* augmentation (sizes in :data:`VAL_SIZE`);
* CIFAR-100-LT: imbalance 0.01 (NumPy seed 0) on both train (10,847 images, 1,000 of them val) and test (2,131);
* ``digits``: common's stratified 1,437 / 360 split; the 360 held-out images are the *test* set and
  :data:`VAL_SIZE` ``["digits"]`` images of the 1,437 are carved out as val by the same seeded ``random_split``,
  so val and test never share an image. No augmentation (the images are already normalised tensors, and a
  flipped digit is another digit).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, random_split
from torchvision import transforms as T

from common.data import DataError, build_dataset
from common.data.transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    small_eval_transform,
    small_train_transform,
)

DATASETS = ("cifar10", "cifar100", "cifar100LT", "svhn", "digits")

# Validation images taken from the training set (train_dynn.py's val_size per dataset).
VAL_SIZE = {"cifar10": 5000, "cifar100": 10000, "cifar100LT": 1000, "svhn": 5000, "digits": 300}

# Default image side: 224 for the CIFAR family (T2T-ViT at ImageNet resolution), 32 for SVHN and quick mode.
IMG_SIZE = {"cifar10": 224, "cifar100": 224, "cifar100LT": 224, "svhn": 32, "digits": 32}

NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "cifar100LT": 100, "svhn": 10, "digits": 10}

CIFAR100_LT_IMB_FACTOR = 0.01
SPLIT_SEED = 42

# our name -> (common.data name, mean, std)
_COMMON = {
    "cifar10": ("cifar10", CIFAR10_MEAN, CIFAR10_STD),
    "cifar100": ("cifar100", CIFAR100_MEAN, CIFAR100_STD),
    "cifar100LT": ("cifar100_lt", CIFAR100_MEAN, CIFAR100_STD),
    "svhn": ("svhn", None, None),
}


def jeidnn_transform(dataset: str, train: bool, img_size: int | None = None) -> Callable:
    """The original's transform for ``dataset`` (Sec. d "Data"); the crop padding is ``img_size // 8`` (28 at 224).

    SVHN gets ``ToTensor`` only (plus a resize when ``img_size`` is not its native 32).
    """
    if dataset not in _COMMON:
        raise DataError(f"no JEI-DNN transform for dataset '{dataset}'; choose one of: {', '.join(_COMMON)}")
    size = img_size or IMG_SIZE[dataset]
    if dataset == "svhn":
        return T.ToTensor() if size == 32 else T.Compose([T.Resize(size), T.ToTensor()])
    _, mean, std = _COMMON[dataset]
    if train:
        return small_train_transform(size, mean=mean, std=std, padding=size // 8)
    return small_eval_transform(size, mean=mean, std=std)


def _split_val(train_set: Dataset, val_size: int, seed: int) -> tuple[Dataset, Dataset]:
    """``random_split(train, [n - val_size, val_size])`` with a fresh generator seeded ``seed`` (the original's)."""
    n = len(train_set)
    if not 0 < val_size < n:
        raise DataError(f"cannot take {val_size} validation images from a training set of {n}")
    train, val = random_split(train_set, [n - val_size, val_size], generator=torch.Generator().manual_seed(seed))
    return train, val


def build_jeidnn_datasets(
    dataset: str,
    data_root: str | Path | None,
    img_size: int | None = None,
    seed: int = SPLIT_SEED,
    download: bool = False,
) -> tuple[Dataset, Dataset, Dataset, int]:
    """``(train, val, test, num_classes)`` for one of :data:`DATASETS` (Sec. d "Data").

    ``train`` and ``val`` are disjoint :class:`~torch.utils.data.Subset` s of one training set that carries the
    training augmentation (as in the original); ``test`` is the dataset's own held-out split. ``img_size``
    defaults to :data:`IMG_SIZE`. Missing files raise :class:`common.data.DataError` naming ``--data-root`` and
    the embedded ``--dataset digits``.
    """
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset '{dataset}'; choose one of: {', '.join(DATASETS)}")
    size = img_size or IMG_SIZE[dataset]
    if dataset == "digits":
        train_set = build_dataset("digits", split="train", img_size=size, transform=None)
        test_set = build_dataset("digits", split="val", img_size=size, transform=None)
    else:
        name, _, _ = _COMMON[dataset]
        extra = {"imb_factor": CIFAR100_LT_IMB_FACTOR, "seed": 0} if dataset == "cifar100LT" else {}
        train_set = build_dataset(name, data_root, "train", transform=jeidnn_transform(dataset, True, size),
                                  download=download, **extra)
        test_set = build_dataset(name, data_root, "test", transform=jeidnn_transform(dataset, False, size),
                                 download=download, **extra)
    train, val = _split_val(train_set, VAL_SIZE[dataset], seed)
    return train, val, test_set, NUM_CLASSES[dataset]


def test_splits(n: int, num_splits: int = 10, seed: int | None = 0) -> list[np.ndarray]:
    """Disjoint index subsets of a test set of ``n`` samples covering it once (Sec. e "Evaluation").

    Every test metric is computed per subset and then averaged (the std across subsets is what the authors'
    pickles hold). The original calls ``np.array_split`` on the test loader's indices; its test loader is not
    shuffled, so its subsets are *contiguous* chunks, which ``seed=None`` reproduces. With an integer ``seed``
    (the default) the indices are permuted first by ``np.random.default_rng(seed)``: CIFAR-100-LT's test set is
    sorted by class, so contiguous chunks would each hold only a few classes.
    """
    if n < num_splits or num_splits < 1:
        raise ValueError(f"cannot cut {n} samples into {num_splits} non-empty splits")
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    return np.array_split(order, num_splits)


test_splits.__test__ = False  # a library function, not a pytest test
