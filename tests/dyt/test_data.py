"""dyt/data.py: dataset names and aliases, the original transforms, the metric per dataset, the VTAB-1K protocols,
clear errors for missing data, and the shifted digits of the transfer proxy."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.data import Subset

from common.data import DataError
from dyt.data import (
    ACCURACY,
    IMAGE_DATASETS,
    MEAN_PER_CLASS,
    DigitsVariant,
    MAERandomResizedCrop,
    build_image_dataset,
    build_vtab_dataset,
    canonical_name,
    digit_classes,
    image_transform,
    num_classes_of,
    vtab_transform,
)


def test_original_full_names_are_aliases():
    assert canonical_name("cifar100_full") == "cifar100"
    assert canonical_name("oxford_iiit_pet_full") == "oxford_iiit_pet"
    assert canonical_name("digits") == "digits"
    with pytest.raises(DataError, match="unknown dataset 'cifar1000'.*cifar100"):
        canonical_name("cifar1000")


def test_metric_and_classes_per_dataset_as_the_original():
    mean_per_class = {name for name, spec in IMAGE_DATASETS.items() if spec.metric == MEAN_PER_CLASS}
    assert mean_per_class == {"flowers102", "fgvc_aircraft", "oxford_iiit_pet"}
    assert IMAGE_DATASETS["fgvc_aircraft"].train_split == "trainval"
    assert IMAGE_DATASETS["oxford_iiit_pet"].train_split == "trainval"
    assert [num_classes_of(n) for n in ("cifar100_full", "food101", "stanford_cars", "dtd", "digits")] == \
        [100, 101, 196, 47, 10]
    assert [num_classes_of(t, vtab=True) for t in ("cifar", "sun397", "patch_camelyon", "smallnorb_ele")] == \
        [100, 397, 2, 9]


def test_image_transforms_are_mae_crop_and_resize_256_center_224():
    image = Image.new("RGB", (300, 200), color=(255, 0, 0))
    train, test = image_transform(True), image_transform(False)
    assert isinstance(train.transforms[0], MAERandomResizedCrop)
    assert train.transforms[0].interpolation.value == "bicubic"
    assert train(image).shape == test(image).shape == (3, 224, 224)
    assert test.transforms[0].size == 256 and test.transforms[1].size == (224, 224)
    assert torch.allclose(test(image)[0], torch.ones(224, 224))  # (1 - 0.5) / 0.5
    assert torch.allclose(test(image)[1], -torch.ones(224, 224))


def test_mae_crop_stays_inside_the_image():
    torch.manual_seed(0)
    image = Image.new("RGB", (50, 20))
    for _ in range(200):
        i, j, h, w = MAERandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= i and 0 <= j and 1 <= h and 1 <= w and i + h <= 20 and j + w <= 50


def test_vtab_transform_is_a_square_resize_without_augmentation():
    tf = vtab_transform()
    image = Image.new("RGB", (320, 100), color=(0, 255, 0))
    assert tf(image).shape == (3, 224, 224)
    assert torch.equal(tf(image), tf(image))


def test_embedded_sets_at_the_model_size():
    train, test, classes, metric = build_image_dataset("digits", None, img_size=16)
    assert (len(train), len(test), classes, metric) == (1437, 360, 10, ACCURACY)
    assert train[0][0].shape == (3, 16, 16)
    train, test, classes, _ = build_image_dataset("synthetic", None, img_size=8)
    assert (len(train), len(test), classes) == (256, 128, 10) and test[0][0].shape == (3, 8, 8)


def test_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="needs --data_path.*digits"):
        build_image_dataset("cifar100_full", "")
    with pytest.raises(DataError, match="does not exist"):
        build_image_dataset("food101", tmp_path / "nowhere")
    with pytest.raises(DataError, match=r"flowers102 not found.*flowers-102/"):
        build_image_dataset("flowers102", tmp_path)
    with pytest.raises(DataError, match="cifar100 not found"):
        build_image_dataset("cifar100", tmp_path)


def _image_folder(root, splits=("train", "test"), classes=("a", "b", "c")):
    for split in splits:
        for k, cls in enumerate(classes):
            folder = root / split / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (40, 30), color=(40 * k, 0, 0)).save(folder / "0.png")


def test_image_folder_layout(tmp_path):
    _image_folder(tmp_path)
    train, test, classes, metric = build_image_dataset("oxford_iiit_pet_full", tmp_path, img_size=32)
    assert (len(train), len(test), classes, metric) == (3, 3, 37, MEAN_PER_CLASS)
    assert train[0][0].shape == test[2][0].shape == (3, 32, 32) and test[2][1] == 2


def _vtab_task(root, task, sizes):
    folder = root / task
    (folder / "images").mkdir(parents=True)
    Image.new("RGB", (60, 40)).save(folder / "images" / "0.jpg")
    for split, n in sizes.items():
        (folder / f"{split}.txt").write_text("".join(f"images/0.jpg {i % 10}\n" for i in range(n)))


def test_vtab_protocols(tmp_path):
    _vtab_task(tmp_path, "eurosat", {"train800val200": 10, "train800": 8, "val200": 2, "test": 5})
    original = build_vtab_dataset("eurosat", tmp_path)
    assert (len(original.train), len(original.test), original.nb_classes) == (10, 5, 10)
    assert original.select is original.test and original.metric == ACCURACY
    assert original.train[0][0].shape == (3, 224, 224)
    val200 = build_vtab_dataset("eurosat", tmp_path, protocol="val200")
    assert (len(val200.train), len(val200.select), len(val200.test)) == (8, 2, 5)
    with pytest.raises(DataError, match="train800val200"):
        build_vtab_dataset("dtd", tmp_path)
    with pytest.raises(DataError, match="unknown --vtab_protocol"):
        build_vtab_dataset("eurosat", tmp_path, protocol="test")
    with pytest.raises(DataError, match="unknown dataset 'cifar100'"):
        build_vtab_dataset("cifar100", tmp_path)


def test_embedded_vtab_stand_in_keeps_selection_and_test_apart():
    original = build_vtab_dataset("digits", None, img_size=8)
    assert original.select is original.test and len(original.train) == 1437
    val200 = build_vtab_dataset("digits", None, protocol="val200", img_size=8)
    assert isinstance(val200.select, Subset) and isinstance(val200.test, Subset)
    assert not set(val200.select.indices) & set(val200.test.indices)
    assert len(val200.select) + len(val200.test) == 360


def test_digit_class_lists():
    assert digit_classes("5-9") == (5, 6, 7, 8, 9)
    assert digit_classes("0,2, 4") == (0, 2, 4)
    assert digit_classes("7-8,1") == (7, 8, 1)
    for bad in ("5", "1,1", "8-10", "x"):
        with pytest.raises(Exception, match="digits"):
            digit_classes(bad)


def test_digits_subset_relabelled_and_drawn_on_a_canvas():
    plain_train, plain_val, _, _ = build_image_dataset("digits", None, img_size=24)
    variant = DigitsVariant((7, 3), "canvas")
    train, val, classes, _ = build_image_dataset("digits", None, img_size=24, digits=variant)
    assert classes == num_classes_of("digits", digits=variant) == 2 and set(train.targets) == {0, 1}
    keep = [t in (7, 3) for t in plain_val.targets]
    assert len(val) == sum(keep) and val.targets == [0 if t == 7 else 1 for t in plain_val.targets if t in (7, 3)]
    # the digit covers one 12 px quadrant: the other three hold only the noisy background (grey level 0.2)
    quadrants = val.images[:, 0].unfold(1, 12, 12).unfold(2, 12, 12).amax(dim=(-1, -2)).flatten(1) * 0.5 + 0.5
    assert ((quadrants > 0.75).sum(dim=1) == 1).all()
    again = build_image_dataset("digits", None, img_size=24, digits=variant)[1]
    assert torch.equal(again.images, val.images)  # placements and noise are fixed per split
    inverted = build_image_dataset("digits", None, img_size=24, digits=DigitsVariant((7, 3), "canvas_inverted"))[1]
    assert torch.allclose(inverted.images, -val.images, atol=1e-6)
    with pytest.raises(DataError, match="unknown digits shift"):
        DigitsVariant((), "rotate")
