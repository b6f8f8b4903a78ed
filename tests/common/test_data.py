"""Tests of the data layer (common.data): embedded, on-disk and long-tailed datasets, loaders, transforms."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler, RandomSampler, SequentialSampler, TensorDataset
from torchvision import datasets as tvd
from torchvision import transforms as T

from common.data import (
    DataError,
    build_dataset,
    build_loader,
    build_transform,
    default_transform,
    set_epoch,
)
from common.data import loader as loader_module
from common.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from common.data.vision import CorruptImageError, FileListDataset, LongTailSubset, long_tail_counts, long_tail_indices
from common.errors import ArgumentParser, UserError, run_cli

EMBEDDED_HINT = "--dataset digits"


def _png(path: Path, color: tuple[int, int, int] = (200, 30, 60), size: tuple[int, int] = (12, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# ------------------------------------------------------------------------------------------------ digits
@pytest.fixture(scope="module")
def digits_8():
    """Both digits splits at the native 8x8 size, where pixels map back exactly to scikit-learn's."""
    return build_dataset("digits", split="train", img_size=8), build_dataset("digits", split="val", img_size=8)


def _raw_pixels(dataset) -> np.ndarray:
    """Undo the normalisation of an 8x8 digits split: (N, 64) integer pixels in 0..16."""
    images = dataset.images[:, 0] * 0.5 + 0.5
    return np.rint(images.numpy() * 16).astype(np.int64).reshape(len(dataset), -1)


def test_digits_split_sizes_and_classes(digits_8):
    train, val = digits_8
    assert (len(train), len(val)) == (1437, 360)
    assert train.num_classes == val.num_classes == 10
    assert set(train.targets) == set(range(10))


@pytest.mark.parametrize("img_size", [32, 8])
def test_digits_sample_shape_and_range(img_size):
    dataset = build_dataset("digits", split="val", img_size=img_size)
    image, label = dataset[0]
    assert image.shape == (3, img_size, img_size)
    assert image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10
    assert dataset.images.min() >= -1.0 and dataset.images.max() <= 1.0
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])  # grey copied to 3 channels


def test_digits_is_deterministic(digits_8):
    again = build_dataset("digits", split="train", img_size=8)
    assert torch.equal(again.images, digits_8[0].images)
    assert again.targets == digits_8[0].targets


def test_digits_seed_changes_the_split(digits_8):
    other = build_dataset("digits", split="val", img_size=8, seed=1)
    assert len(other) == 360
    assert not torch.equal(other.images, digits_8[1].images)


def test_digits_train_and_val_partition_the_real_data(digits_8):
    from sklearn.datasets import load_digits

    data = load_digits()
    train, val = digits_8
    ours = np.concatenate([_raw_pixels(train), _raw_pixels(val)])
    ours_targets = np.concatenate([train.targets, val.targets])
    full = data.images.reshape(len(data.target), -1).astype(np.int64)
    assert _sorted_rows(ours, ours_targets) == _sorted_rows(full, data.target)  # each image exactly once


def _sorted_rows(pixels: np.ndarray, targets) -> list[tuple[int, ...]]:
    return sorted(map(tuple, np.column_stack([pixels, targets]).tolist()))


def test_digits_split_is_stratified(digits_8):
    train, val = digits_8
    train_counts, val_counts = Counter(train.targets), Counter(val.targets)
    assert set(val_counts) == set(range(10))
    for cls in range(10):
        total = train_counts[cls] + val_counts[cls]
        assert abs(val_counts[cls] - 0.2 * total) <= 1


def test_digits_transform_is_applied():
    dataset = build_dataset("digits", split="val", img_size=8, transform=lambda x: x[:1] * 0 + 7)
    image, _ = dataset[5]
    assert image.shape == (1, 8, 8) and torch.all(image == 7)


def test_digits_unknown_split():
    with pytest.raises(DataError, match="no split 'validation'.*train, val, test"):
        build_dataset("digits", split="validation")


# --------------------------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic():
    a = build_dataset("synthetic", split="train", num_samples=16)
    b = build_dataset("synthetic", split="train", num_samples=16)
    x1, y1 = a[3]
    x2, y2 = a[3]
    x3, y3 = b[3]
    assert torch.equal(x1, x2) and torch.equal(x1, x3)
    assert y1 == y2 == y3
    assert a.targets == b.targets


def test_synthetic_custom_sizes():
    dataset = build_dataset("synthetic", split="val", num_classes=5, img_size=16, num_samples=20)
    assert len(dataset) == 20
    assert dataset.num_classes == 5
    assert dataset[0][0].shape == (3, 16, 16)
    assert set(dataset.targets) <= set(range(5))
    with pytest.raises(IndexError):
        dataset[20]


def test_synthetic_default_sizes():
    train, val = build_dataset("synthetic", split="train"), build_dataset("synthetic", split="val")
    assert (len(train), len(val)) == (256, 128)
    assert train.num_classes == 10 and train[0][0].shape == (3, 32, 32)


def test_synthetic_train_and_val_differ():
    train = build_dataset("synthetic", split="train", num_samples=8)
    val = build_dataset("synthetic", split="val", num_samples=8)
    assert not torch.equal(train[0][0], val[0][0])


def test_synthetic_splits_pose_one_task_without_sharing_samples():
    """Nearest class mean fitted on train scores well above chance on val: the class patterns are shared."""
    train = build_dataset("synthetic", split="train", num_samples=200, img_size=8)
    val = build_dataset("synthetic", split="val", num_samples=100, img_size=8)
    other_seed = build_dataset("synthetic", split="train", num_samples=200, img_size=8, seed=1)
    train_x = torch.stack([x for x, _ in train]).flatten(1)
    val_x = torch.stack([x for x, _ in val]).flatten(1)
    assert not any(torch.equal(v, t) for v in val_x[:20] for t in train_x)
    assert not torch.equal(torch.stack([x for x, _ in other_seed]).flatten(1)[0], val_x[0])
    means = torch.stack([train_x[torch.tensor(train.targets) == c].mean(0) for c in range(10)])
    predicted = torch.cdist(val_x, means).argmin(1)
    assert (predicted == torch.tensor(val.targets)).float().mean() > 0.5


def test_synthetic_seeds_differ():
    a = build_dataset("synthetic", split="train", num_samples=32, seed=0)
    b = build_dataset("synthetic", split="train", num_samples=32, seed=7)
    assert not torch.equal(a[0][0], b[0][0])
    assert a.targets != b.targets


def test_synthetic_unknown_split():
    with pytest.raises(DataError, match="train, val, test"):
        build_dataset("synthetic", split="dev")


# ------------------------------------------------------------------------------------------- long tail
def _balanced_targets(per_class: int, num_classes: int = 100, shuffle_seed: int = 123) -> np.ndarray:
    targets = np.repeat(np.arange(num_classes), per_class)
    return np.random.RandomState(shuffle_seed).permutation(targets)


@pytest.mark.parametrize(("per_class", "kept"), [(500, 10_847), (100, 2_131)])
def test_long_tail_total_matches_cifar100_lt(per_class, kept):
    assert sum(long_tail_counts(per_class, 100, 0.01)) == kept
    indices = long_tail_indices(_balanced_targets(per_class), imb_factor=0.01, seed=0)
    assert len(indices) == kept
    assert len(set(indices)) == kept


@pytest.mark.parametrize("per_class", [500, 100])
def test_long_tail_per_class_counts(per_class):
    targets = _balanced_targets(per_class)
    counts = Counter(targets[long_tail_indices(targets, 0.01, seed=0)].tolist())
    assert counts[0] == per_class
    assert counts[99] == int(per_class * 0.01)
    assert [counts[c] for c in range(100)] == long_tail_counts(per_class, 100, 0.01)
    assert all(counts[c] >= counts[c + 1] for c in range(99))


def test_long_tail_selection_depends_on_seed_only():
    targets = _balanced_targets(100)
    first = long_tail_indices(targets, 0.01, seed=0)
    assert long_tail_indices(targets, 0.01, seed=0) == first
    other = long_tail_indices(targets, 0.01, seed=1)
    assert len(other) == len(first) and other != first


class _FakeLabelled(Dataset):
    def __init__(self, targets):
        self.targets = list(targets)
        self.classes = [f"c{i}" for i in range(max(self.targets) + 1)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        return index, self.targets[index]


def test_long_tail_subset_keeps_classes_and_targets():
    base = _FakeLabelled(_balanced_targets(20, num_classes=10).tolist())
    subset = LongTailSubset(base, imb_factor=0.1, seed=0)
    assert len(subset) == sum(long_tail_counts(20, 10, 0.1))
    assert subset.classes == base.classes
    assert subset.targets == [subset[i][1] for i in range(len(subset))]
    assert subset.targets == [base.targets[i] for i in subset.indices]


# ---------------------------------------------------------------------------------------- image folders
@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    for split in ("train", "val"):
        for cls, color in (("cat", (250, 0, 0)), ("dog", (0, 0, 250))):
            for i in range(2):
                _png(tmp_path / split / cls / f"{i}.png", color, size=(20 + i, 14))
    return tmp_path


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("name", ["imagenet", "imagefolder"])
def test_image_folder_loads(image_tree, name, split):
    dataset = build_dataset(name, image_tree, split, img_size=32)
    assert len(dataset) == 4
    assert dataset.num_classes == 2
    assert dataset.classes == ["cat", "dog"]
    image, label = dataset[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == 1


def test_image_folder_honours_mean_and_std(image_tree):
    mean, std = (0.1, 0.2, 0.3), (0.4, 0.5, 0.6)
    dataset = build_dataset("imagenet", image_tree, "val", img_size=32, mean=mean, std=std)
    normalize = dataset.transform.transforms[-1]
    assert isinstance(normalize, T.Normalize)
    assert tuple(normalize.mean) == mean and tuple(normalize.std) == std


def test_image_folder_missing_split_folder(tmp_path):
    with pytest.raises(DataError) as info:
        build_dataset("imagenet", tmp_path, "train", img_size=32)
    message = str(info.value)
    assert str(tmp_path / "train") in message
    assert EMBEDDED_HINT in message


def test_image_folder_empty_folder(tmp_path):
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError) as info:
        build_dataset("imagenet", tmp_path, "val", img_size=32)
    assert str(tmp_path / "val") in str(info.value)
    assert EMBEDDED_HINT in str(info.value)


def test_image_folder_class_folders_without_images(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="holds no readable images"):
        build_dataset("imagefolder", tmp_path, "train", img_size=32)


def test_image_folder_unknown_split(image_tree):
    with pytest.raises(DataError, match="no split 'test'.*train, val"):
        build_dataset("imagenet", image_tree, "test")


def test_image_dataset_needs_a_root():
    with pytest.raises(DataError, match="--data-root.*--dataset digits"):
        build_dataset("imagenet", None, "train")


# ----------------------------------------------------------------------------------- torchvision formats
@pytest.fixture
def no_torchvision_construction(monkeypatch):
    """Fail the test if a torchvision dataset (and so a download) is even constructed."""

    def boom(self, *args, **kwargs):
        raise AssertionError("a torchvision dataset was constructed")

    monkeypatch.setattr(tvd.CIFAR10, "__init__", boom)  # CIFAR100 inherits it
    monkeypatch.setattr(tvd.SVHN, "__init__", boom)


@pytest.mark.parametrize(
    ("name", "split", "expected"),
    [
        ("cifar10", "train", "cifar-10-batches-py"),
        ("cifar100", "test", "cifar-100-python"),
        ("cifar100_lt", "train", "cifar-100-python"),
        ("svhn", "train", "train_32x32.mat"),
        ("svhn", "extra", "extra_32x32.mat"),
    ],
)
def test_torchvision_dataset_missing(tmp_path, no_torchvision_construction, name, split, expected):
    root = tmp_path / "data"
    with pytest.raises(DataError) as info:
        build_dataset(name, root, split)
    message = str(info.value)
    assert str(root / expected) in message
    assert "--download" in message
    assert EMBEDDED_HINT in message
    assert not root.exists()  # nothing was fetched or created


@pytest.mark.parametrize(("name", "split"), [("cifar10", "val"), ("cifar100_lt", "extra"), ("svhn", "val")])
def test_torchvision_dataset_unknown_split(tmp_path, name, split):
    with pytest.raises(DataError, match=f"no split '{split}'; choose one of: train, test"):
        build_dataset(name, tmp_path, split)


@pytest.mark.parametrize(("name", "present"), [("cifar10", "cifar-10-batches-py"), ("svhn", "test_32x32.mat")])
def test_torchvision_dataset_corrupted(tmp_path, name, present):
    if present.endswith(".mat"):
        (tmp_path / present).write_bytes(b"not a mat file")
    else:
        (tmp_path / present).mkdir()
    with pytest.raises(DataError, match="incomplete or corrupted.*--download"):
        build_dataset(name, tmp_path, "test")


# ------------------------------------------------------------------------------------------------ vtab1k
@pytest.fixture
def vtab_root(tmp_path: Path) -> Path:
    task = tmp_path / "dtd"
    _png(task / "images" / "a.png", (255, 0, 0))
    _png(task / "images" / "b c.png", (0, 255, 0), size=(7, 9))  # a space in the path
    _png(task / "images" / "t.png", (0, 0, 255))
    (task / "train800val200.txt").write_text("images/a.png 3\n\nimages/b c.png 46\n")
    (task / "test.txt").write_text("images/t.png 0\n")
    return tmp_path


def test_vtab1k_loads(vtab_root):
    dataset = build_dataset("vtab1k/dtd", vtab_root, "train800val200", img_size=16)
    assert len(dataset) == 2
    assert dataset.targets == [3, 46]
    assert dataset.num_classes == 47
    image, label = dataset[1]
    assert image.shape == (3, 16, 16) and label == 46
    test = build_dataset("vtab1k/dtd", vtab_root, "test", img_size=16)
    assert test.targets == [0] and test[0][0].shape == (3, 16, 16)


def test_vtab1k_default_transform_is_a_square_resize(vtab_root):
    dataset = build_dataset("vtab1k/dtd", vtab_root, "train800val200")
    assert dataset[1][0].shape == (3, 224, 224)  # a 7x9 image, squashed to a square
    assert not any(isinstance(t, T.RandomResizedCrop | T.RandomHorizontalFlip)
                   for t in dataset.transform.transforms)


def test_vtab1k_raw_images(vtab_root):
    image, label = build_dataset("vtab1k/dtd", vtab_root, "train800val200", transform=None)[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 0, 0) and label == 3


def test_vtab1k_unknown_task(vtab_root):
    with pytest.raises(DataError, match="unknown VTAB-1K task 'textures'.*dtd"):
        build_dataset("vtab1k/textures", vtab_root, "test")


def test_vtab1k_needs_a_task(vtab_root):
    with pytest.raises(DataError, match="vtab1k/<task>.*caltech101"):
        build_dataset("vtab1k", vtab_root, "test")


def test_vtab1k_unknown_split(vtab_root):
    with pytest.raises(DataError, match="no split 'train'.*train800val200, train800, val200, test"):
        build_dataset("vtab1k/dtd", vtab_root, "train")


def test_vtab1k_missing_split_file(vtab_root):
    with pytest.raises(DataError) as info:
        build_dataset("vtab1k/dtd", vtab_root, "val200")
    assert str(vtab_root / "dtd" / "val200.txt") in str(info.value)
    assert EMBEDDED_HINT in str(info.value)


@pytest.mark.parametrize("bad_line", ["images/a.png", "images/a.png three", "images/a.png 2.0"])
def test_vtab1k_malformed_line(vtab_root, bad_line):
    list_file = vtab_root / "dtd" / "test.txt"
    list_file.write_text(f"images/t.png 0\n{bad_line}\n")
    with pytest.raises(DataError, match=f"{list_file}:2: expected 'relative/image/path label'"):
        build_dataset("vtab1k/dtd", vtab_root, "test")


@pytest.mark.parametrize("label", [47, -1])
def test_vtab1k_label_out_of_range(vtab_root, label):
    list_file = vtab_root / "dtd" / "test.txt"
    list_file.write_text(f"images/t.png {label}\n")
    with pytest.raises(DataError, match=f"{list_file}:1: label {label} is outside 0..46"):
        build_dataset("vtab1k/dtd", vtab_root, "test")


def test_vtab1k_listed_image_missing(vtab_root):
    (vtab_root / "dtd" / "test.txt").write_text("elsewhere/t.png 0\n")
    with pytest.raises(DataError, match="which does not exist"):
        build_dataset("vtab1k/dtd", vtab_root, "test")


def test_vtab1k_empty_list(vtab_root):
    (vtab_root / "dtd" / "test.txt").write_text("\n")
    with pytest.raises(DataError, match="lists no images"):
        build_dataset("vtab1k/dtd", vtab_root, "test")


def test_vtab1k_unreadable_image(vtab_root):
    (vtab_root / "dtd" / "images" / "t.png").write_bytes(b"not a png")
    dataset = build_dataset("vtab1k/dtd", vtab_root, "test")
    with pytest.raises(DataError, match="corrupt image .*t.png"):
        dataset[0]


def test_file_list_negative_label_without_class_count(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "list.txt").write_text("a.png -2\n")
    with pytest.raises(DataError, match=r"list.txt:1: label -2 is outside"):
        FileListDataset(tmp_path, tmp_path / "list.txt")


def test_file_list_infers_class_count(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "list.txt").write_text("a.png 4\na.png 1\n")
    assert FileListDataset(tmp_path, tmp_path / "list.txt").classes == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------------- names
def test_unknown_dataset_lists_choices():
    with pytest.raises(DataError) as info:
        build_dataset("mnist", "/nonexistent")
    message = str(info.value)
    assert "unknown dataset 'mnist'" in message
    for choice in ("imagenet", "cifar100_lt", "vtab1k/<task>", "glue/<task>", "digits", "synthetic"):
        assert choice in message


def test_data_error_is_a_user_error():
    assert issubclass(DataError, UserError)


# ------------------------------------------------------------------------------------------------ loader
def _order(loader) -> list[int]:
    return torch.cat([batch[0] for batch in loader]).tolist()


@pytest.fixture
def numbers() -> TensorDataset:
    return TensorDataset(torch.arange(20))


def test_train_loader_is_shuffled_by_seed(numbers):
    first = _order(build_loader(numbers, batch_size=4, train=True, seed=0))
    assert sorted(first) == list(range(20))
    assert first != list(range(20))
    assert _order(build_loader(numbers, batch_size=4, train=True, seed=0)) == first
    assert _order(build_loader(numbers, batch_size=4, train=True, seed=1)) != first


def test_train_loader_reshuffles_every_epoch_reproducibly(numbers):
    a = build_loader(numbers, batch_size=4, train=True, seed=3)
    b = build_loader(numbers, batch_size=4, train=True, seed=3)
    epochs_a = [_order(a), _order(a)]
    assert epochs_a[0] != epochs_a[1]
    assert [_order(b), _order(b)] == epochs_a


def test_eval_loader_is_sequential(numbers):
    loader = build_loader(numbers, batch_size=6, train=False, seed=5)
    assert isinstance(loader.sampler, SequentialSampler)
    assert _order(loader) == list(range(20))


def test_drop_last_defaults_to_train(numbers):
    train = build_loader(numbers, batch_size=6, train=True)
    evaluation = build_loader(numbers, batch_size=6, train=False)
    assert (train.drop_last, evaluation.drop_last) == (True, False)
    assert (len(list(train)), len(list(evaluation))) == (3, 4)
    assert build_loader(numbers, batch_size=6, train=True, drop_last=False).drop_last is False
    assert build_loader(numbers, batch_size=6, train=False, drop_last=True).drop_last is True


def test_set_epoch_without_process_group_depends_only_on_seed_and_epoch(numbers):
    assert not torch.distributed.is_initialized()
    a = build_loader(numbers, batch_size=4, train=True, seed=2)
    b = build_loader(numbers, batch_size=4, train=True, seed=2)
    assert isinstance(a.sampler, RandomSampler)
    set_epoch(a, 0, seed=2)
    epoch0 = _order(a)
    _order(a)  # a second pass without set_epoch moves the generator on
    set_epoch(a, 5, seed=2)
    set_epoch(b, 5, seed=2)
    assert _order(a) == _order(b) != epoch0
    set_epoch(a, 0, seed=2)
    assert _order(a) == epoch0


def test_loader_shards_under_a_process_group(numbers, monkeypatch):
    monkeypatch.setattr(loader_module, "get_world_size", lambda: 2)
    shards = []
    for rank in (0, 1):
        monkeypatch.setattr(loader_module, "get_rank", lambda rank=rank: rank)
        loader = build_loader(numbers, batch_size=5, train=True, seed=0)
        assert isinstance(loader.sampler, DistributedSampler) and loader.sampler.rank == rank
        shards.append(_order(loader))
    assert sorted(shards[0] + shards[1]) == list(range(20))
    epoch0 = _order(loader)
    set_epoch(loader, 1)
    assert loader.sampler.epoch == 1
    assert _order(loader) != epoch0


class _RandomDraws(Dataset):
    """Each item is (index, a NumPy draw, a ``random`` draw): shows how worker processes were seeded."""

    def __len__(self):
        return 8

    def __getitem__(self, index):
        return index, float(np.random.rand()), random.random(), torch.initial_seed()


def test_workers_are_seeded():
    def run(seed):
        loader = build_loader(_RandomDraws(), batch_size=1, train=False, num_workers=2, seed=seed)
        rows = [(int(i), float(a), float(b), int(s)) for i, a, b, s in loader]
        del loader
        return rows

    first = run(0)
    assert [row[0] for row in first] == list(range(8))
    assert run(0) == first
    assert run(1) != first
    # items 0 and 1 are the first draws of workers 0 and 1: distinct streams, both seeded from the worker's
    # torch seed
    assert first[0][1] != first[1][1] and first[0][2] != first[1][2]
    for _, np_draw, py_draw, torch_seed in first[:2]:
        assert np_draw == np.random.RandomState(torch_seed % 2**32).rand()
        assert py_draw == random.Random(torch_seed % 2**32).random()


# -------------------------------------------------------------------------------------------- transforms
def test_imagenet_eval_preset_shape():
    transform = build_transform("imagenet", False, 224, IMAGENET_MEAN, IMAGENET_STD)
    assert transform(Image.new("RGB", (400, 300))).shape == (3, 224, 224)
    assert transform.transforms[0].size == 256


def test_imagenet_train_preset_shape():
    transform = build_transform("imagenet", True, 64, IMAGENET_MEAN, IMAGENET_STD)
    assert transform(Image.new("RGB", (300, 400))).shape == (3, 64, 64)


@pytest.mark.parametrize(("img_size", "padding"), [(224, 28), (32, 4)])
def test_small_train_preset_padding(img_size, padding):
    transform = build_transform("small", True, img_size, (0.5,) * 3, (0.5,) * 3)
    crops = [t for t in transform.transforms if isinstance(t, T.RandomCrop)]
    assert len(crops) == 1 and crops[0].padding == padding
    assert any(isinstance(t, T.Resize) for t in transform.transforms) == (img_size != 32)
    assert transform(Image.new("RGB", (32, 32))).shape == (3, img_size, img_size)


def test_transform_mean_and_std_are_honoured():
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    transform = build_transform("small", False, 32, mean, std)
    out = transform(Image.new("RGB", (32, 32), (51, 51, 51)))  # 51 / 255 = 0.2
    expected = torch.tensor([(0.2 - m) / s for m, s in zip(mean, std, strict=True)])
    assert torch.allclose(out[:, 0, 0], expected, atol=1e-5)
    assert torch.allclose(out, expected[:, None, None].expand(3, 32, 32), atol=1e-5)


def test_unknown_transform_preset():
    with pytest.raises(ValueError, match="unknown transform preset"):
        build_transform("huge", True, 32, (0.5,) * 3, (0.5,) * 3)


def test_svhn_is_never_flipped():
    steps = default_transform("svhn", "train").transforms
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in steps)
    assert any(isinstance(t, T.RandomHorizontalFlip) for t in default_transform("cifar10", "train").transforms)


# ------------------------------------------------------------------------------------------------ errors
def test_run_cli_prints_one_line_and_exits_2(capsys):
    def main():
        raise DataError("no data at /x; use --dataset digits")

    with pytest.raises(SystemExit) as info:
        run_cli(main, prog="train")
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "train: error: no data at /x; use --dataset digits\n"
    assert "Traceback" not in captured.err and captured.out == ""


def test_run_cli_joins_a_multi_line_message_and_parser_errors_are_user_errors(capsys):
    def main():
        raise UserError("checkpoint does not match:\n  missing: a.weight\n  unexpected: b.weight\n")

    with pytest.raises(SystemExit):
        run_cli(main, prog="train")
    assert capsys.readouterr().err == "train: error: checkpoint does not match:; missing: a.weight; unexpected: " \
                                      "b.weight\n"
    parser = ArgumentParser(prog="train")
    parser.add_argument("--epochs", type=int)
    with pytest.raises(SystemExit) as info:
        run_cli(parser.parse_args, ["--epochs", "ten"], prog="train")
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("train: error: argument --epochs: invalid int value: 'ten' (see --help)")


def test_run_cli_passes_results_and_programming_errors_through():
    assert run_cli(lambda a, b=0: a + b, 1, b=2, prog="x") == 3

    def broken():
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        run_cli(broken, prog="x")


def _image_tree(root, corrupt: str = "truncated"):
    """``root/train/<class>/<n>.png``: two classes of two images, the second image of class ``b`` damaged."""
    for cls in ("a", "b"):
        (root / "train" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)).save(root / "train" / cls / f"{i}.png")
    bad = root / "train" / "b" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40] if corrupt == "truncated" else b"not an image")
    return bad


@pytest.mark.parametrize("corrupt", ["truncated", "garbage"])
def test_a_corrupt_image_is_one_line_naming_the_file(tmp_path, corrupt):
    bad = _image_tree(tmp_path, corrupt)
    dataset = build_dataset("imagefolder", tmp_path, "train", transform=None)
    assert dataset[0][1] == 0
    with pytest.raises(CorruptImageError, match=f"corrupt image {bad} .*--skip-corrupt-images") as err:
        dataset[3]
    assert "\n" not in str(err.value)


def test_a_corrupt_image_raised_in_a_loader_worker_keeps_its_one_line(tmp_path):
    bad = _image_tree(tmp_path)
    dataset = build_dataset("imagefolder", tmp_path, "train", transform=None)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, [3]), num_workers=1,
                                         collate_fn=lambda batch: batch)
    with pytest.raises(CorruptImageError) as err:
        next(iter(loader))
    assert str(err.value).startswith(f"corrupt image {bad} (") and "\n" not in str(err.value)


def test_skip_corrupt_images_replaces_and_counts_them(tmp_path, capsys):
    bad = _image_tree(tmp_path)
    dataset = build_dataset("imagefolder", tmp_path, "train", transform=None, skip_corrupt=True)
    labels = [dataset[i][1] for i in range(len(dataset))]
    assert labels == [0, 0, 1, 0]  # the damaged image is replaced by the next one (wrapping around)
    assert dataset.skipped == 1
    assert f"warning: skipped corrupt image {bad}" in capsys.readouterr().err
