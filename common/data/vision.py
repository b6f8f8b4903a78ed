"""Image datasets: the real ones in their standard on-disk layouts, and the two embedded ones.

Every constructor checks its files first and raises :class:`DataError` naming the path it looked at, the
layout it expects and the embedded alternative, instead of a traceback from deep inside a loader.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd

from common.errors import UserError

EMBEDDED_HINT = "or run on the embedded data with --dataset digits (real 8x8 handwritten digits, built in)"

# VTAB-1K tasks in the order of the SSF/NOAH release, with their class counts.
VTAB_TASKS = {
    "cifar": 100, "caltech101": 102, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37, "svhn": 10,
    "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45, "diabetic_retinopathy": 5,
    "clevr_count": 8, "clevr_dist": 6, "dmlab": 6, "kitti": 4, "dsprites_loc": 16, "dsprites_ori": 16,
    "smallnorb_azi": 18, "smallnorb_ele": 9,
}
VTAB_SPLITS = ("train800val200", "train800", "val200", "test")


class DataError(UserError):
    """Missing or malformed data, or an unknown dataset / split name."""


def check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise DataError(f"dataset '{name}' has no split '{split}'; choose one of: {', '.join(allowed)}")


class CorruptImageError(DataError):
    """An image file that cannot be decoded. Raised inside a DataLoader worker, torch re-raises it in the main
    process as ``CorruptImageError(<the worker's traceback>)``; the message keeps only the error's own line."""

    def __init__(self, message: str):
        if "Traceback" in message:
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


SKIP_HINT = "pass --skip-corrupt-images to skip such files"


def load_image(path: str) -> Image.Image:
    """Decode an image fully (a truncated file fails here, not later in a transform) as RGB."""
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:  # what PIL raises for truncated or non-image files
        raise CorruptImageError(f"corrupt image {path} ({' '.join(str(err).split())}); replace or delete it, or "
                                f"{SKIP_HINT}") from None


class CheckedImageFolder(tvd.ImageFolder):
    """``ImageFolder`` whose unreadable image is a one-line :class:`CorruptImageError` naming the file, or, with
    ``skip_corrupt``, is replaced by the next image and counted (``skipped``, and a line on stderr each time)."""

    def __init__(self, root: str, transform: Callable | None = None, skip_corrupt: bool = False):
        super().__init__(root, transform=transform, loader=load_image)
        self.skip_corrupt = skip_corrupt
        self.skipped = 0

    def __getitem__(self, index: int):
        for offset in range(len(self)):
            try:
                return super().__getitem__((index + offset) % len(self))
            except CorruptImageError as err:
                if not self.skip_corrupt:
                    raise
                self.skipped += 1
                print(f"warning: skipped {err} ({self.skipped} skipped so far in this process)".replace(
                    f"; replace or delete it, or {SKIP_HINT}", ""), file=sys.stderr)
        raise DataError(f"every image under {self.root} is corrupt")


# ------------------------------------------------------------------------------------------ real datasets
def image_folder(root: str | Path, split: str, transform: Callable | None, name: str = "imagenet",
                 skip_corrupt: bool = False) -> tvd.ImageFolder:
    """ImageNet / any ImageFolder tree: ``<root>/train/<class>/<image>`` and ``<root>/val/<class>/<image>``."""
    check_split(name, split, ("train", "val"))
    folder = Path(root) / split
    layout = f"{root}/{{train,val}}/<class name>/<image>.JPEG (the ImageNet 'train' and 'val' folders, one " \
             "sub-folder per class)"
    if not folder.is_dir():
        raise DataError(f"no '{split}' folder at {folder}; {name} expects {layout}; {EMBEDDED_HINT}")
    try:
        return CheckedImageFolder(str(folder), transform=transform, skip_corrupt=skip_corrupt)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{folder} holds no readable images ({err}); {name} expects {layout}; "
                        f"{EMBEDDED_HINT}") from None


_TORCHVISION_LAYOUT = {
    "cifar10": ("cifar-10-batches-py", tvd.CIFAR10),
    "cifar100": ("cifar-100-python", tvd.CIFAR100),
}


def torchvision_dataset(name: str, root: str | Path, split: str, transform: Callable | None,
                        download: bool = False) -> Dataset:
    """CIFAR-10, CIFAR-100 (splits train/test) and SVHN (train/test/extra) in torchvision's formats."""
    if name == "svhn":
        check_split(name, split, ("train", "test", "extra"))
        expected = Path(root) / f"{split}_32x32.mat"
    else:
        check_split(name, split, ("train", "test"))
        expected = Path(root) / _TORCHVISION_LAYOUT[name][0]
    if not download and not expected.exists():
        raise DataError(f"{name} not found: looked for {expected} (torchvision's format under --data-root "
                        f"{root}); pass --download to fetch it, {EMBEDDED_HINT}")
    try:
        if name == "svhn":
            return tvd.SVHN(str(root), split=split, transform=transform, download=download)
        return _TORCHVISION_LAYOUT[name][1](str(root), train=split == "train", transform=transform,
                                            download=download)
    except RuntimeError as err:  # torchvision's "Dataset not found or corrupted"
        raise DataError(f"{name} at {expected} is incomplete or corrupted ({err}); delete it and pass "
                        f"--download, {EMBEDDED_HINT}") from None


def long_tail_counts(n_max: int, num_classes: int, imb_factor: float) -> list[int]:
    """Exponential profile: class i keeps ``int(n_max * imb_factor ** (i / (C - 1)))`` images."""
    return [int(n_max * imb_factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def long_tail_indices(targets: list[int] | np.ndarray, imb_factor: float = 0.01, seed: int = 0) -> list[int]:
    """Indices of a long-tailed subset (the IMBALANCECIFAR convention of LDAM-DRW, used by JEI-DNN).

    Classes are visited in increasing order; each one's indices are shuffled by one seeded NumPy stream and
    the first ``long_tail_counts`` of them kept, so the subset is the same on every machine.
    """
    targets = np.asarray(targets)
    classes = np.unique(targets)
    n_max = len(targets) // len(classes)
    rng = np.random.RandomState(seed)
    keep: list[int] = []
    for cls, count in zip(classes, long_tail_counts(n_max, len(classes), imb_factor), strict=True):
        idx = np.where(targets == cls)[0]
        rng.shuffle(idx)
        keep.extend(idx[:count].tolist())
    return keep


class LongTailSubset(Subset):
    """A long-tailed subset that keeps the parent's class names and exposes its own ``targets``."""

    def __init__(self, dataset: Dataset, imb_factor: float, seed: int = 0):
        super().__init__(dataset, long_tail_indices(dataset.targets, imb_factor, seed))
        self.classes = dataset.classes
        self.targets = [dataset.targets[i] for i in self.indices]


class FileListDataset(Dataset):
    """Images listed in a text file, one ``relative/path label`` per line (the SSF/NOAH VTAB-1K lists)."""

    def __init__(self, root: str | Path, list_file: str | Path, transform: Callable | None = None,
                 num_classes: int | None = None):
        self.root, self.transform = Path(root), transform
        list_file = Path(list_file)
        self.samples: list[tuple[Path, int]] = []
        for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(f"{list_file}:{lineno}: expected 'relative/image/path label', got {line!r}")
            label = int(parts[1])
            if label < 0 or (num_classes is not None and label >= num_classes):
                allowed = "a label >= 0" if num_classes is None else f"0..{num_classes - 1}"
                raise DataError(f"{list_file}:{lineno}: label {label} is outside {allowed}")
            self.samples.append((self.root / parts[0], label))
        if not self.samples:
            raise DataError(f"{list_file} lists no images")
        first = self.samples[0][0]
        if not first.is_file():
            raise DataError(f"{list_file} lists {first}, which does not exist; image paths are read relative "
                            f"to {self.root}")
        self.targets = [label for _, label in self.samples]
        self.classes = list(range(num_classes if num_classes is not None else max(self.targets) + 1))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = load_image(path)
        return (self.transform(image) if self.transform else image), label


def vtab1k(root: str | Path, task: str, split: str, transform: Callable | None) -> FileListDataset:
    """VTAB-1K in the SSF layout: ``<root>/<task>/{train800val200,train800,val200,test}.txt`` + images."""
    if task not in VTAB_TASKS:
        raise DataError(f"unknown VTAB-1K task '{task}'; the 19 tasks are: {', '.join(VTAB_TASKS)}")
    check_split(f"vtab1k/{task}", split, VTAB_SPLITS)
    list_file = Path(root) / task / f"{split}.txt"
    if not list_file.is_file():
        raise DataError(f"VTAB-1K split file {list_file} not found; expected the SSF layout "
                        f"{root}/<task>/{{{','.join(VTAB_SPLITS)}}}.txt with lines 'relative/image/path label' "
                        f"and the images under {root}/<task>/; {EMBEDDED_HINT}")
    return FileListDataset(Path(root) / task, list_file, transform, num_classes=VTAB_TASKS[task])


# -------------------------------------------------------------------------------------- embedded datasets
class TensorImageDataset(Dataset):
    """Images held in memory as a float tensor (N, 3, H, W), with an optional tensor-to-tensor transform."""

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, num_classes: int,
                 transform: Callable | None = None):
        self.images, self.targets_tensor, self.transform = images, targets, transform
        self.targets = targets.tolist()
        self.classes = list(range(num_classes))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = self.images[index]
        return (self.transform(image) if self.transform else image), int(self.targets_tensor[index])


DIGITS_MEAN = (0.5, 0.5, 0.5)
DIGITS_STD = (0.5, 0.5, 0.5)


def digits(split: str, img_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
           transform: Callable | None = None) -> TensorImageDataset:
    """scikit-learn's 1,797 real 8x8 handwritten digits (10 classes), upsampled to ``img_size``, 3 channels.

    The split is stratified and fixed by ``seed`` (1,437 train / 360 val by default); pixels are scaled to
    [0, 1], bilinearly upsampled, then normalised with mean = std = 0.5.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    check_split("digits", split, ("train", "val", "test"))
    data = load_digits()
    index = np.arange(len(data.target))
    train_idx, val_idx = train_test_split(index, test_size=val_fraction, random_state=seed, stratify=data.target)
    chosen = np.sort(train_idx if split == "train" else val_idx)
    images = torch.tensor(data.images[chosen], dtype=torch.float32).unsqueeze(1) / 16.0
    if img_size != 8:
        images = F.interpolate(images, size=(img_size, img_size), mode="bilinear", align_corners=False)
    images = (images.clamp(0, 1).expand(-1, 3, -1, -1) - 0.5) / 0.5
    return TensorImageDataset(images.contiguous(), torch.tensor(data.target[chosen]), 10, transform)


class SyntheticImages(Dataset):
    """Seeded random images of any size and class count, for smoke tests and speed measurements.

    Sample i is N(0, 1) noise plus a per-class pattern of amplitude ``signal``. The patterns depend on ``seed``
    only, so every split of one seed poses the same task (a model trained on ``train`` is scored fairly on
    ``val``); labels and noise are drawn from a stream of their own per split (``stream``: 0 train, 1 val,
    2 test), so the splits never share a sample, and every sample is the same on every run.
    """

    def __init__(self, num_samples: int = 256, img_size: int = 32, num_classes: int = 10, seed: int = 0,
                 stream: int = 0, signal: float = 0.5, channels: int = 3, transform: Callable | None = None):
        self.num_samples, self.img_size, self.transform = num_samples, img_size, transform
        self.shape = (channels, img_size, img_size)
        self.patterns = signal * torch.randn(num_classes, *self.shape, generator=torch.Generator().manual_seed(seed))
        self.base_seed = (seed * 8 + stream + 1) * 1_000_003
        labels = torch.Generator().manual_seed(self.base_seed)
        self.targets = torch.randint(num_classes, (num_samples,), generator=labels).tolist()
        self.classes = list(range(num_classes))

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        if not 0 <= index < self.num_samples:
            raise IndexError(index)
        gen = torch.Generator().manual_seed(self.base_seed + index + 1)
        label = self.targets[index]
        image = torch.randn(self.shape, generator=gen) + self.patterns[label]
        return (self.transform(image) if self.transform else image), label
