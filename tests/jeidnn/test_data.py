"""JEI-DNN data: transforms, validation split, CIFAR-100-LT counts, test splits (spec Sec. d "Data", Sec. e)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import transforms as T

from common.data import DataError
from common.data.vision import long_tail_counts, long_tail_indices
from jeidnn.data import build_jeidnn_datasets, jeidnn_transform, test_splits


def test_digits_splits_are_disjoint_and_sized():
    train, val, test, num_classes = build_jeidnn_datasets("digits", None)
    assert num_classes == 10
    assert (len(train), len(val), len(test)) == (1137, 300, 360)
    assert set(train.indices).isdisjoint(val.indices)
    assert train.dataset is val.dataset  # val is carved out of train, as in the original
    image, label = test[0]
    assert image.shape == (3, 32, 32) and 0 <= label < 10
    # test = common's held-out digits, which share no image with the training pool
    pool = val.dataset.images.flatten(1)
    held_out = test.images.flatten(1)
    assert torch.cdist(held_out[:50], pool).min() > 0


def test_digits_img_size_and_seeded_split():
    a = build_jeidnn_datasets("digits", None, img_size=16)
    b = build_jeidnn_datasets("digits", None, img_size=16)
    c = build_jeidnn_datasets("digits", None, img_size=16, seed=1)
    assert a[0][0][0].shape == (3, 16, 16)
    assert list(a[1].indices) == list(b[1].indices) != list(c[1].indices)


def test_val_split_matches_the_original_random_split():
    """The original: random_split(train, [n - v, v], generator=Generator().manual_seed(42))."""
    _, val, _, _ = build_jeidnn_datasets("digits", None)
    expected = torch.utils.data.random_split(range(1437), [1137, 300], generator=torch.Generator().manual_seed(42))
    assert list(val.indices) == list(expected[1].indices)


def _names(transform):
    return [type(t).__name__ for t in transform.transforms]


def test_cifar_transforms_follow_the_original():
    train = jeidnn_transform("cifar10", True)
    assert _names(train) == ["Resize", "RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    assert train.transforms[0].size == 224 and train.transforms[1].padding == 28
    assert tuple(train.transforms[-1].mean) == (0.4914, 0.4822, 0.4465)
    test = jeidnn_transform("cifar100", False)
    assert _names(test) == ["Resize", "ToTensor", "Normalize"]
    assert tuple(test.transforms[-1].std) == (0.2675, 0.2565, 0.2761)
    assert isinstance(jeidnn_transform("svhn", True), T.ToTensor)


def test_cifar100_lt_counts_from_the_class_formula():
    assert sum(long_tail_counts(500, 100, 0.01)) == 10847
    assert sum(long_tail_counts(100, 100, 0.01)) == 2131


def test_long_tail_indices_on_fake_targets():
    train_targets = np.repeat(np.arange(100), 500)
    np.random.default_rng(0).shuffle(train_targets)
    keep = long_tail_indices(train_targets, 0.01, seed=0)
    assert len(keep) == 10847 and len(set(keep)) == 10847
    counts = np.bincount(train_targets[keep], minlength=100)
    assert counts[0] == 500 and counts[-1] == 5 and (np.diff(counts) <= 0).all()
    assert len(long_tail_indices(np.repeat(np.arange(100), 100), 0.01, seed=0)) == 2131


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "cifar100LT", "svhn"])
def test_missing_data_names_the_fix(name, tmp_path):
    with pytest.raises(DataError, match="digits"):
        build_jeidnn_datasets(name, tmp_path)
    with pytest.raises(DataError, match="--data-root"):
        build_jeidnn_datasets(name, None)


def test_unknown_dataset():
    with pytest.raises(DataError, match="cifar100LT"):
        build_jeidnn_datasets("mnist", None)


def test_test_splits_cover_once():
    splits = test_splits(103, 10, seed=3)
    assert len(splits) == 10 and sorted(len(s) for s in splits) == [10] * 7 + [11] * 3
    assert sorted(np.concatenate(splits).tolist()) == list(range(103))
    assert not np.array_equal(np.concatenate(splits), np.arange(103))
    contiguous = test_splits(103, 10, seed=None)  # the original's unshuffled loader
    assert np.array_equal(np.concatenate(contiguous), np.arange(103))
    with pytest.raises(ValueError):
        test_splits(5, 10)
