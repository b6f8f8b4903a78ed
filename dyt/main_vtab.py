"""Fine-tune DyT on a VTAB-1K task (the original ``main_vtab.py``; spec Sec. b.4, d, e, f).

    python dyt/main_vtab.py --dataset cifar --data_path /data/vtab-1k --finetune /weights/jx_vit_base_...pth \\
        --batch_size 64 --ffn_num 16 --token_target_ratio 0.5                       (train_vtab.sh, one task)
    python dyt/main_vtab.py --dataset cifar ... --vtab_protocol val200           (select on val200, report test)
    python dyt/main_vtab.py --dataset digits --model vit_digits --device cpu --epochs 3 ...       (no download)

The training is ``main_image``'s (:func:`dyt.main_image.run`) with the VTAB recipe: Resize((224, 224)) and no
augmentation, lr 1e-3, weight decay 1e-4, adapter scale 1, bottleneck 8, warm-up 10 epochs, min lr 1e-5. The
original hard-coded lr, weight decay and scale after parsing; here they are flag defaults and the flags are
honoured. ``--vtab_protocol original`` (default) trains on train800val200 and reports the best test accuracy over
the epochs, as the original (and NOAH / AdaptFormer) do; ``val200`` trains on train800, chooses the epoch on
val200 and reports the test accuracy of that epoch.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from common.config import add_config_argument, parse_args_with_config
from common.distributed import run_distributed
from common.errors import ArgumentParser, run_cli
from dyt.data import PROTOCOLS, VTAB_CHOICES, build_vtab_dataset
from dyt.main_image import Splits, add_dyt_args, check_args, digits_variant, output_folder, run

PROG = "main_vtab.py"

VTAB_DEFAULTS = {"weight_decay": 1e-4, "lr": 1e-3, "min_lr": 1e-5, "warmup_epochs": 10, "ffn_num": 8, "scale": 1.0,
                 "dataset": "imagenet",
                 "dataset_help": f"VTAB-1K task: one of {', '.join(VTAB_CHOICES)} (the last two are embedded "
                                 "stand-ins, no download) (default: %(default)s, which is not a VTAB task)"}


def load_data(args: argparse.Namespace, img_size: int) -> Splits:
    """The splits of ``--dataset`` under ``--vtab_protocol`` (:func:`dyt.data.build_vtab_dataset`)."""
    vtab = build_vtab_dataset(args.dataset, args.data_path, args.vtab_protocol, img_size,
                              digits=digits_variant(args))
    return Splits(None if args.eval else vtab.train, vtab.select, vtab.test, vtab.nb_classes, vtab.metric)


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune (or, with ``--eval``, evaluate the checkpoint of ``--eval_ckpt`` / ``--resume``) on one task."""
    check_args(args, VTAB_CHOICES)
    return run_distributed(lambda info: run(args, info, load_data, vtab=True), args.device, args.dist_timeout,
                           output_dir=output_folder(args), output_flag="--output_dir")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The original ``main_vtab.py`` flags with the defaults it actually used, plus the additions of dyt/README.md."""
    parser = ArgumentParser(prog=PROG, add_help=add_help,
                            description="DyT fine-tuning of an IN21K ViT on one VTAB-1K task.")
    add_config_argument(parser)
    add_dyt_args(parser, VTAB_DEFAULTS)
    parser.add_argument("--vtab_protocol", default="original", choices=PROTOCOLS,
                        help="original: train on train800val200, report the best test accuracy over the epochs "
                             "(model selection on test, as the original); val200: train on train800, select the "
                             "epoch on val200, report test at that epoch (default: %(default)s)")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line (and ``-c/--config`` YAML defaults) to a namespace; bad values raise UserError."""
    return parse_args_with_config(get_args_parser(), argv)


def cli(argv: Sequence[str] | None = None) -> None:
    """Entry point: parse, run, and turn every UserError into one line on stderr with exit status 2."""
    run_cli(lambda: main(parse_args(argv)), prog=PROG)


if __name__ == "__main__":
    cli(sys.argv[1:])
