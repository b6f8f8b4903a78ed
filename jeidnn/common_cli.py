"""Flag helpers shared by JEI-DNN's two entry points: string booleans, default paths, data and model set-up."""

from __future__ import annotations

import argparse
from pathlib import Path

from common.errors import UserError
from jeidnn.data import DATASETS, IMG_SIZE, NUM_CLASSES
from jeidnn.models import MODELS

TRUE_STRINGS, FALSE_STRINGS = ("true", "1", "yes", "y", "t"), ("false", "0", "no", "n", "f")
IMAGENET_WEIGHTS = {"t2t_vit_7": "model_weights/71.7_T2T_ViT_7.pth.tar",
                    "t2t_vit_14": "model_weights/81.5_T2T_ViT_14.pth.tar"}
BEST_BACKBONE = "best.pth"


def str_bool(value: str | bool) -> bool:
    """The original's string flags (``--use_mlflow False``, ``--transfer-learning True``) as real booleans."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_STRINGS:
        return True
    if text in FALSE_STRINGS:
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


str_bool.__name__ = "boolean"


def backbone_folder(output_dir: str | Path, dataset: str, arch: str) -> Path:
    """``{output_dir}/checkpoint/checkpoint_{dataset}_{arch}``, the original's transfer-learning folder."""
    return Path(output_dir) / "checkpoint" / f"checkpoint_{dataset}_{arch}"


def default_backbone_checkpoint(output_dir: str | Path, dataset: str, arch: str) -> Path:
    """Where ``transfer_learning.py`` leaves the backbone selected on val and ``train_dynn.py`` looks for it."""
    return backbone_folder(output_dir, dataset, arch) / BEST_BACKBONE


def check_common(args: argparse.Namespace) -> None:
    """Checks of the flags both scripts share."""
    if args.dataset not in DATASETS:
        raise UserError(f"--dataset {args.dataset} is not supported; choose one of: {', '.join(DATASETS)}")
    if args.arch not in MODELS:
        raise UserError(f"--arch {args.arch} is not supported; choose one of: {', '.join(MODELS)}")
    for flag, value in (("--batch", args.batch), ("--lr", args.lr)):
        if value <= 0:
            raise UserError(f"{flag} must be positive, got {value}")
    if args.wd < 0 or args.min_lr < 0:
        raise UserError("--wd and --min-lr must be 0 or more")
    if args.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {args.workers}")
    if args.max_batches is not None and args.max_batches < 1:
        raise UserError(f"--max-batches must be at least 1, got {args.max_batches}")
    if args.img_size is not None and args.img_size < 16:
        raise UserError(f"--img-size must be at least 16 pixels (the T2T module shrinks it 16 times), got "
                        f"{args.img_size}")
    if args.img_size is not None and args.img_size % 16:
        raise UserError(f"--img-size must be a multiple of 16 (T2T-ViT's token grid), got {args.img_size}")
    if args.drop_path < 0 or args.drop_path >= 1:
        raise UserError(f"--drop-path must lie in [0, 1), got {args.drop_path}")


def resolve_sizes(args: argparse.Namespace) -> tuple[int, int]:
    """``(num_classes, img_size)``: the dataset's unless given; a class count that does not fit is an error."""
    classes = NUM_CLASSES[args.dataset]
    num_classes = getattr(args, "num_classes", None) or classes
    if num_classes != classes:
        fits = [name for name, count in NUM_CLASSES.items() if count == num_classes]
        hint = f"; add --dataset {' or --dataset '.join(fits)}" if fits else ""
        raise UserError(f"--num-classes {num_classes} does not fit --dataset {args.dataset} ({classes} classes){hint}")
    return num_classes, args.img_size or IMG_SIZE[args.dataset]


def add_shared_flags(add, parser_defaults: dict) -> None:
    """Our additions that both scripts take (see jeidnn/README.md, "Differences from the original")."""
    add("--data-root", default=parser_defaults.get("data_root", "data"),
        help="folder with the torchvision files of --dataset (cifar-10-batches-py/, cifar-100-python/, "
             "{train,test}_32x32.mat); not read for digits (default: %(default)s)")
    add("--download", action="store_true", help="let torchvision download CIFAR / SVHN into --data-root")
    add("--img-size", type=int, default=None,
        help="input size (default: 224 for CIFAR, 32 for SVHN and digits); a multiple of 16")
    add("--output-dir", default=".",
        help="root of checkpoint/ (the original's project root; default: the current folder)")
    add("--device", default=None, help="cuda or cpu (default: cuda when available)")
    add("--workers", "-j", type=int, default=0, help="data-loading worker processes (default: %(default)s)")
    add("--max-batches", type=int, default=None,
        help="stop every pass over the data after N batches (smoke tests; default: all)")
