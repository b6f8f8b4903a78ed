"""DyT's datasets, transforms and metrics (spec Sec. e "Image pre-processing" and "Metrics").

* ``main_image.py`` datasets: CIFAR-10/100, SVHN, Food-101, Flowers-102, FGVC-Aircraft, Stanford Cars, DTD and
  Oxford-IIIT Pet, read from ``--data_path`` with torchvision's dataset classes (never downloaded) or, when
  ``<data_path>/train`` exists, as an ImageFolder tree (``train/`` and ``test/`` or ``val/``). The original's
  ``*_full`` names (``cifar100_full``, ...) are accepted as aliases. Training uses MAE's RandomResizedCrop
  (224, scale (0.08, 1), bicubic) and a horizontal flip, evaluation Resize(256, bicubic) + CenterCrop(224); both
  normalise with mean = std = 0.5 (the IN21K ViT's inception statistics).
* ``main_vtab.py``: the 19 VTAB-1K tasks in the SSF layout (:func:`common.data.build_dataset` ``vtab1k/<task>``),
  Resize((224, 224), bicubic) for every split, no augmentation.
* ``digits`` / ``synthetic``: the embedded sets of :mod:`common.data` (already normalised tensors, no
  augmentation), at the model's image size. For the transfer proxy, ``digits`` can be restricted to a class subset
  (relabelled 0..k-1) and drawn shifted: the digit at half size in a random quadrant of a noisy canvas,
  optionally with inverted contrast (:class:`DigitsVariant`; ``--digits_classes`` / ``--digits_shift``,
  additions of this repository, see ``dyt/README.md``).

Each builder also returns the class count and the metric the original reports for the dataset: ``accuracy``
(top-1) or ``mean_per_class_acc`` (Flowers-102, FGVC-Aircraft, Oxford-IIIT Pet).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset
from torchvision import datasets as tvd
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from common.data import VTAB_TASKS, DataError, build_dataset
from common.data.transforms import HALF_MEAN, HALF_STD
from common.data.vision import CheckedImageFolder, TensorImageDataset

EMBEDDED = ("digits", "synthetic")
ACCURACY, MEAN_PER_CLASS = "accuracy", "mean_per_class_acc"


@dataclass(frozen=True)
class ImageDatasetSpec:
    """One ``main_image.py`` dataset: its torchvision class, splits, class count and reported metric."""

    factory: Callable[..., Dataset] | None  # None: read by common.data (CIFAR, SVHN)
    train_split: str
    test_split: str
    num_classes: int
    metric: str


IMAGE_DATASETS: dict[str, ImageDatasetSpec] = {
    "imagenet": ImageDatasetSpec(None, "train", "val", 1000, ACCURACY),  # ImageFolder only
    "cifar10": ImageDatasetSpec(None, "train", "test", 10, ACCURACY),
    "cifar100": ImageDatasetSpec(None, "train", "test", 100, ACCURACY),
    "svhn": ImageDatasetSpec(None, "train", "test", 10, ACCURACY),
    "food101": ImageDatasetSpec(tvd.Food101, "train", "test", 101, ACCURACY),
    "flowers102": ImageDatasetSpec(tvd.Flowers102, "train", "test", 102, MEAN_PER_CLASS),
    "fgvc_aircraft": ImageDatasetSpec(tvd.FGVCAircraft, "trainval", "test", 100, MEAN_PER_CLASS),
    "stanford_cars": ImageDatasetSpec(tvd.StanfordCars, "train", "test", 196, ACCURACY),
    "dtd": ImageDatasetSpec(tvd.DTD, "train", "test", 47, ACCURACY),
    "oxford_iiit_pet": ImageDatasetSpec(tvd.OxfordIIITPet, "trainval", "test", 37, MEAN_PER_CLASS),
}
IMAGE_CHOICES = (*IMAGE_DATASETS, *EMBEDDED)
VTAB_CHOICES = (*VTAB_TASKS, *EMBEDDED)

# What torchvision expects under the root, for the error message.
_LAYOUT = {
    "imagenet": "{train,val}/<class>/<image>",
    "cifar10": "cifar-10-batches-py/", "cifar100": "cifar-100-python/", "svhn": "{train,test}_32x32.mat",
    "food101": "food-101/", "flowers102": "flowers-102/", "fgvc_aircraft": "fgvc-aircraft-2013b/",
    "stanford_cars": "stanford_cars/", "dtd": "dtd/dtd/", "oxford_iiit_pet": "oxford-iiit-pet/",
}
EMBEDDED_HINT = "or run on the embedded data with --dataset digits or --dataset synthetic"


def canonical_name(name: str, choices: tuple[str, ...] = IMAGE_CHOICES) -> str:
    """The dataset name without the original's ``_full`` suffix; an unknown name is a :class:`DataError`."""
    base = name.removesuffix("_full")
    if base not in choices:
        raise DataError(f"unknown dataset '{name}'; choose one of: {', '.join(choices)} (the original's '*_full' "
                        "names are accepted too)")
    return base


def num_classes_of(name: str, vtab: bool = False, digits: DigitsVariant | None = None) -> int:
    """The class count of a ``main_image`` (or, with ``vtab``, ``main_vtab``) dataset; 10 for the embedded sets
    (the size of the class subset of ``digits`` when one is given)."""
    name = canonical_name(name, VTAB_CHOICES if vtab else IMAGE_CHOICES)
    if name == "digits" and digits is not None and digits.classes:
        return len(digits.classes)
    if name in EMBEDDED:
        return 10
    return VTAB_TASKS[name] if vtab else IMAGE_DATASETS[name].num_classes


# ------------------------------------------------------------------------------------------ transforms
class MAERandomResizedCrop(T.RandomResizedCrop):
    """MAE's RandomResizedCrop (``util/crop.py``): one draw of area and ratio, clipped to the image, no retries."""

    @staticmethod
    def get_params(img, scale, ratio):
        width, height = img.size
        area = width * height * torch.empty(1).uniform_(scale[0], scale[1]).item()
        log_ratio = torch.log(torch.tensor(ratio))
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0].item(), log_ratio[1].item()).item())
        w = min(int(round(math.sqrt(area * aspect))), width)
        h = min(int(round(math.sqrt(area / aspect))), height)
        i = int(torch.randint(0, height - h + 1, (1,)).item())
        j = int(torch.randint(0, width - w + 1, (1,)).item())
        return i, j, h, w


def image_transform(train: bool, img_size: int = 224, mean=HALF_MEAN, std=HALF_STD) -> T.Compose:
    """``main_image``'s transforms: MAE crop + flip for training; Resize(256) + CenterCrop(224) for evaluation."""
    bicubic = InterpolationMode.BICUBIC
    if train:
        steps = [MAERandomResizedCrop(img_size, interpolation=bicubic), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(int(img_size * 256 / 224), interpolation=bicubic), T.CenterCrop(img_size)]
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


def vtab_transform(img_size: int = 224, mean=HALF_MEAN, std=HALF_STD) -> T.Compose:
    """``image_datasets_noaug``: Resize((224, 224), bicubic) for training and test alike."""
    return T.Compose([T.Resize((img_size, img_size), interpolation=InterpolationMode.BICUBIC), T.ToTensor(),
                      T.Normalize(mean, std)])


# ----------------------------------------------------------------------------------- shifted digits
DIGITS_SHIFTS = ("none", "canvas", "canvas_inverted")
CANVAS_BACKGROUND, CANVAS_NOISE = 0.2, 0.1  # background grey level and the std of its pixel noise ([0, 1] scale)


@dataclass(frozen=True)
class DigitsVariant:
    """What ``digits`` becomes for the transfer proxy: a class subset and a visual shift.

    ``classes``: the digits kept, relabelled 0..k-1 in the given order (empty: all ten). ``shift``: ``"none"`` (the
    plain upsampled digits), ``"canvas"`` (the digit at half the side in a random quadrant of a noisy grey
    canvas, so three quarters of the patch tokens are background) or ``"canvas_inverted"`` (the same with dark
    strokes on a light canvas). The placements and the noise are fixed per split (not per run), so every seed
    trains and is scored on the same images.
    """

    classes: tuple[int, ...] = ()
    shift: str = "none"

    def __post_init__(self) -> None:
        if self.shift not in DIGITS_SHIFTS:
            raise DataError(f"unknown digits shift '{self.shift}'; choose one of: {', '.join(DIGITS_SHIFTS)}")


def digit_classes(text: str) -> tuple[int, ...]:
    """``--digits_classes``: ``"5-9"`` or ``"0,2,4"`` (or a mix, ``"0-2,7"``) to the tuple of digits, in order."""
    classes: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            low, _, high = part.partition("-")
            classes += range(int(low), int(high or low) + 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of digits such as 5-9 or 0,2,4") from None
    if len(classes) < 2 or len(set(classes)) != len(classes) or not all(0 <= c <= 9 for c in classes):
        raise argparse.ArgumentTypeError(f"'{text}' must name at least two distinct digits 0-9, e.g. 5-9")
    return tuple(classes)


def draw_on_canvas(images: torch.Tensor, inverted: bool, seed: int) -> torch.Tensor:
    """Normalised digits [B, 3, S, S] redrawn at half the side on a noisy canvas of side S (see
    :class:`DigitsVariant`); each digit's quadrant is drawn from ``seed``."""
    side = images.shape[-1]
    small = side // 2
    gen = torch.Generator().manual_seed(seed)
    ink = F.interpolate(images[:, :1] * 0.5 + 0.5, size=(small, small), mode="bilinear", align_corners=False)
    canvas = (CANVAS_BACKGROUND + CANVAS_NOISE * torch.randn(len(images), 1, side, side, generator=gen)).clamp(0, 1)
    places = torch.randint(0, 2, (len(images), 2), generator=gen) * small
    for i, (y, x) in enumerate(places.tolist()):
        region = canvas[i, :, y:y + small, x:x + small]
        canvas[i, :, y:y + small, x:x + small] = torch.maximum(region, ink[i].clamp(0, 1))
    if inverted:
        canvas = 1.0 - canvas
    return ((canvas.expand(-1, 3, -1, -1) - 0.5) / 0.5).contiguous()


def _variant(dataset: TensorImageDataset, variant: DigitsVariant, split: str) -> TensorImageDataset:
    images, targets = dataset.images, dataset.targets_tensor
    classes = variant.classes or tuple(range(10))
    if variant.classes:
        keep = torch.isin(targets, torch.tensor(classes))
        images, targets = images[keep], targets[keep]
        targets = torch.tensor([classes.index(int(t)) for t in targets])
    if variant.shift != "none":
        images = draw_on_canvas(images, variant.shift == "canvas_inverted", seed=("train", "val", "test").index(split))
    out = TensorImageDataset(images, targets, len(classes))
    out.num_classes = len(classes)
    return out


# -------------------------------------------------------------------------------------------- datasets
def _embedded(name: str, split: str, img_size: int, num_classes: int | None,
              digits: DigitsVariant | None = None) -> Dataset:
    extra = {"num_classes": num_classes or 10} if name == "synthetic" else {}
    dataset = build_dataset(name, split=split, img_size=img_size, transform=None, **extra)
    if name == "digits" and digits is not None and digits != DigitsVariant():
        return _variant(dataset, digits, split)
    return dataset


def _image_folder(root: Path, tf: Callable, split: str, skip_corrupt: bool = False) -> Dataset:
    folder = root / split
    try:
        dataset = CheckedImageFolder(str(folder), transform=tf, skip_corrupt=skip_corrupt)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"{folder} holds no readable images ({err}); the ImageFolder layout is "
                        f"{root}/train/<class>/<image> and {root}/test/<class>/<image>") from None
    dataset.num_classes = len(dataset.classes)
    return dataset


def _real_image_split(name: str, root: Path, split: str, tf: Callable, skip_corrupt: bool = False) -> Dataset:
    spec = IMAGE_DATASETS[name]
    if (root / "train").is_dir():  # an ImageFolder tree
        if split == spec.train_split:
            return _image_folder(root, tf, "train", skip_corrupt)
        return _image_folder(root, tf, "test" if (root / "test").is_dir() else "val", skip_corrupt)
    if name == "imagenet":
        raise DataError(f"no ImageFolder tree at --data_path {root}; imagenet expects {root}/{_LAYOUT[name]}")
    if spec.factory is None:
        return build_dataset(name, root, "train" if split == spec.train_split else "test", transform=tf)
    try:
        dataset = spec.factory(str(root), split=split, transform=tf, download=False)
    except (RuntimeError, FileNotFoundError, OSError) as err:
        raise DataError(f"{name} not found under --data_path {root} ({' '.join(str(err).split())[:160]}); "
                        f"expected torchvision's layout {root}/{_LAYOUT[name]} or an ImageFolder tree "
                        f"{root}/{{train,test}}/<class>/<image>; {EMBEDDED_HINT}") from None
    dataset.num_classes = spec.num_classes
    return dataset


def build_image_dataset(name: str, data_path: str | Path | None, img_size: int = 224,
                        num_classes: int | None = None, digits: DigitsVariant | None = None,
                        skip_corrupt: bool = False) -> tuple[Dataset, Dataset, int, str]:
    """``(train, test, nb_classes, metric)`` for ``main_image.py`` (the original's ``build_image_dataset``).

    ``num_classes`` only sets the class count of ``synthetic``; ``digits`` the class subset and shift of
    ``digits``; ``skip_corrupt`` skips and counts undecodable images of an ImageFolder tree.
    """
    name = canonical_name(name)
    if name in EMBEDDED:
        train = _embedded(name, "train", img_size, num_classes, digits)
        return train, _embedded(name, "val", img_size, num_classes, digits), train.num_classes, ACCURACY
    if not data_path:
        raise DataError(f"dataset '{name}' needs --data_path, the folder that holds {_LAYOUT[name]} (torchvision's "
                        f"layout) or {{train,test}}/<class>/<image>; {EMBEDDED_HINT}")
    root = Path(data_path)
    if not root.is_dir():
        raise DataError(f"--data_path {root} does not exist; point it at the folder that holds {_LAYOUT[name]} "
                        f"for {name}; {EMBEDDED_HINT}")
    spec = IMAGE_DATASETS[name]
    train = _real_image_split(name, root, spec.train_split, image_transform(True, img_size), skip_corrupt)
    test = _real_image_split(name, root, spec.test_split, image_transform(False, img_size), skip_corrupt)
    return train, test, spec.num_classes, spec.metric


@dataclass
class VtabSplits:
    """The VTAB-1K splits of one protocol (see :func:`build_vtab_dataset`)."""

    train: Dataset
    select: Dataset  # the split the best epoch is chosen on
    test: Dataset  # the split reported; the same object as ``select`` under the original protocol
    nb_classes: int
    metric: str = ACCURACY


PROTOCOLS = ("original", "val200")


def build_vtab_dataset(task: str, data_path: str | Path | None, protocol: str = "original", img_size: int = 224,
                       num_classes: int | None = None, digits: DigitsVariant | None = None) -> VtabSplits:
    """VTAB-1K task ``task`` under ``protocol`` (spec Sec. d "main_vtab.py", Sec. f item 3).

    * ``original``: train on ``train800val200`` (1,000 images) and evaluate on ``test`` every epoch; the best test
      accuracy is reported (the NOAH/AdaptFormer protocol the original inherits: model selection on test).
    * ``val200``: train on ``train800``, choose the epoch on ``val200``, report ``test`` at that epoch.

    ``digits`` / ``synthetic`` stand in for a task (``digits`` as :class:`DigitsVariant` says): their ``train``
    split is trained on; under ``val200`` the held-out split is halved (even positions select, odd positions are
    the test).
    """
    if protocol not in PROTOCOLS:
        raise DataError(f"unknown --vtab_protocol '{protocol}'; choose one of: {', '.join(PROTOCOLS)}")
    task = canonical_name(task, VTAB_CHOICES)
    if task in EMBEDDED:
        train = _embedded(task, "train", img_size, num_classes, digits)
        held_out = _embedded(task, "val", img_size, num_classes, digits)
        if protocol == "original":
            return VtabSplits(train, held_out, held_out, train.num_classes)
        n = len(held_out)
        return VtabSplits(train, Subset(held_out, range(0, n, 2)), Subset(held_out, range(1, n, 2)),
                          train.num_classes)
    if not data_path:
        raise DataError(f"VTAB-1K task '{task}' needs --data_path, the VTAB-1K root holding "
                        f"<root>/{task}/{{train800val200,train800,val200,test}}.txt; {EMBEDDED_HINT}")
    tf = vtab_transform(img_size)

    def split(name: str) -> Dataset:
        return build_dataset(f"vtab1k/{task}", data_path, name, transform=tf)

    test = split("test")
    if protocol == "original":
        return VtabSplits(split("train800val200"), test, test, VTAB_TASKS[task])
    return VtabSplits(split("train800"), split("val200"), test, VTAB_TASKS[task])
