"""Train and evaluate DS-Net (Li et al., CVPR 2021; spec Sec. 4-8): the original timm-style ``train.py``.

The three stages of the paper (Sec. 3.3), each a config file; every stage's final checkpoint is the next one's
``resume:`` (the configs name the previous stage's output; ``--resume FILE`` for another one)::

    python dsnet/train.py /PATH/TO/ImageNet -c dsnet/configs/supernet.yml     # Stage I: slimmable supernet
    python dsnet/train.py /PATH/TO/ImageNet -c dsnet/configs/reset_bn.yml     # BN recalibration
    python dsnet/train.py /PATH/TO/ImageNet -c dsnet/configs/gate.yml         # Stage II: the gate
    torchrun --nproc_per_node=8 dsnet/train.py ...                            # the same on 8 GPUs
    python dsnet/train.py --dataset digits --model slimmable_mbnet_v1_bn_uniform_tiny ...   # no download

Stage I (spec Sec. 4) trains the supernet with the sandwich rule and in-place bootstrapping
(:func:`dsnet.engine.train_epoch_slim`); ``reset_bn`` re-estimates every width's BN statistics (Sec. 5); Stage II
(Sec. 6) trains only the gate (:func:`dsnet.engine.train_epoch_slim_gate`). Flags, defaults and config keys are
the original's (spec Sec. 7-8); the additions and fixes are listed in ``dsnet/README.md`` ("Differences from
the original"). Mistakes the user can fix (a missing data folder or checkpoint, a bad flag value or config key,
a checkpoint of another model) print one line and exit with status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from timm.data import create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler
from timm.utils import ModelEmaV2, distribute_bn
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tvd

from common.checkpoint import (
    CheckpointError,
    load_checkpoint_file,
    load_pretrained,
    load_state_dict,
    save_checkpoint,
    select_state_dict,
    unwrap_model,
)
from common.config import finite_float, non_negative_float, parse_args_with_config, positive_float
from common.data import DataError, build_dataset, build_loader, set_epoch
from common.distributed import (
    DistInfo,
    add_distributed_args,
    is_main_process,
    print_main,
    run_distributed,
    seed_everything,
    wrap_ddp,
)
from common.errors import ArgumentParser, UserError, run_cli
from common.tracking import add_tracking_args, start_tracking
from dsnet.engine import reset_bn, train_epoch_slim, train_epoch_slim_gate, validate_gate, validate_slim
from dsnet.madds import madds, mode_widths
from dsnet.models import MODELS, DSNet, create_model

__all__ = ["get_args_parser", "load_data", "main", "parse_args"]

PROG = "train.py"
DATASETS = ("imagefolder", "digits", "synthetic")
# keys of the original configs that are no flags (the original reads them through parser.set_defaults)
CONFIG_ONLY_DEFAULTS = {"num_choice": None, "train_mode": "all", "reset_bn": False, "optimizer_step": 1, "mixup": 0.0}
CONFIGS = Path(__file__).resolve().parent / "configs"
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos")
EVAL_METRICS = ("prec1", "prec5", "loss")
CHECKPOINT_VERSION = 2  # the original's: a checkpoint's epoch is the last finished one, resume at epoch + 1
RESULTS_JSON, RESULTS_CSV, SUMMARY_CSV = "results.json", "results.csv", "summary.csv"
MISSING_DATA = ("DATA is missing: give the ImageFolder root (with train/ and val/ folders, one sub-folder per class) "
                "as the first argument, or train on the embedded data with --dataset digits")
# flags of the original whose feature is not implemented here: (dest, default, why)
UNSUPPORTED = (
    ("pretrained", False, "no pretrained DS-Net weights are registered; load released weights such as "
                          "DS_MBNet-70_1.pth.tar with --initial-checkpoint (weights only) or --resume"),
    ("gp", "avg", "DS-Net's head is a slimmable average pool; only --gp avg exists"),
    ("jsd", False, "the Jensen-Shannon (AugMix) loss is not implemented"),
    ("aug_splits", 0, "augmentation splits (AugMix) are not implemented"),
    ("split_bn", False, "split batch norm (AugMix) is not implemented"),
    ("resplit", False, "random-erasing splits (AugMix) are not implemented"),
    ("bn_tf", False, "the slimmable batch norm has fixed PyTorch defaults (eps 1e-5, momentum 0.1)"),
    ("bn_momentum", None, "the slimmable batch norm has fixed PyTorch defaults (eps 1e-5, momentum 0.1)"),
    ("bn_eps", None, "the slimmable batch norm has fixed PyTorch defaults (eps 1e-5, momentum 0.1)"),
    ("sync_bn", False, "the slimmable batch norm computes batch statistics per process; it has no synchronised "
                       "variant (in the original the conversion swapped only the inner BatchNorm2d holders, "
                       "which DSBatchNorm2d never calls)"),
    ("save_images", False, "saving input batches as images is not implemented"),
    ("recovery_interval", 0, "mid-epoch recovery checkpoints are not implemented; last.pth.tar is written after "
                             "every epoch"),
    ("tta", 0, "test-time augmentation is not implemented (the original train.py ignores it too)"),
    ("drop_path", 0.0, "DS-Net has no drop-path (the original asserts a rate of 0)"),
)


# ------------------------------------------------------------------------------------------------------- data
def _eval_split(root: Path) -> str:
    """The original's validation folder: ``val/``, else ``validation/``."""
    return "validation" if not (root / "val").is_dir() and (root / "validation").is_dir() else "val"


def load_data(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    """The training and validation sets of ``--dataset`` (spec Sec. 4, data).

    ``imagefolder`` reads ``DATA/train`` and ``DATA/val`` (or ``DATA/validation``) with timm's transforms as the
    original builds them: random-resized crop, flip, ``--aa`` auto-augment, random erasing for training;
    resize + centre crop (``--crop-pct``) for evaluation. ``digits`` and ``synthetic`` are built in (no
    download), ``--img-size`` pixels (default 32), used as they are.
    """
    if args.dataset != "imagefolder":
        if args.data:
            print_main(f"note: DATA ({args.data}) is not read with --dataset {args.dataset}")
        if args.aa or args.reprob > 0:
            print_main(f"note: --aa / --reprob / --color-jitter apply to --dataset imagefolder only; {args.dataset} "
                       "images are used as they are")
        extra = {"num_classes": 10 if args.num_classes == 1000 else args.num_classes} \
            if args.dataset == "synthetic" else {}
        size = args.img_size or 32
        train_set = build_dataset(args.dataset, split="train", img_size=size, transform=None, **extra)
        val_set = build_dataset(args.dataset, split="val", img_size=size, transform=None, **extra)
        return train_set, val_set
    if not args.data:
        raise UserError(MISSING_DATA)
    root = Path(args.data)
    if not root.is_dir():
        raise DataError(f"DATA {root} is not a folder; it should hold train/ and val/ (one sub-folder per class); "
                        "or train on the embedded data with --dataset digits")
    config = resolve_data_config(vars(args))
    try:
        train_tf = create_transform(config["input_size"], is_training=True, color_jitter=args.color_jitter,
                                    auto_augment=args.aa, interpolation=args.train_interpolation,
                                    mean=config["mean"], std=config["std"], re_prob=args.reprob,
                                    re_mode=args.remode, re_count=args.recount)
    except (AssertionError, KeyError, ValueError) as err:
        raise UserError(f"--aa {args.aa!r} is not a timm auto-augment policy (e.g. rand-m9-mstd0.5, "
                        f"original, v0, augmix-m5-w3): {err}") from None
    eval_tf = create_transform(config["input_size"], is_training=False, interpolation=config["interpolation"],
                               mean=config["mean"], std=config["std"], crop_pct=config["crop_pct"])
    train_set = build_dataset("imagefolder", root, "train", transform=train_tf, skip_corrupt=args.skip_corrupt_images)
    split = _eval_split(root)
    if split == "val":
        val_set = build_dataset("imagefolder", root, "val", transform=eval_tf, skip_corrupt=args.skip_corrupt_images)
    else:
        try:
            val_set = tvd.ImageFolder(str(root / split), transform=eval_tf)
        except (FileNotFoundError, RuntimeError) as err:
            raise DataError(f"{root / split} holds no readable images ({err})") from None
        val_set.num_classes = len(val_set.classes)
    return train_set, val_set


def build_loaders(train_set: Dataset, val_set: Dataset, args: argparse.Namespace,
                  info: DistInfo) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Training loader (``-b``), BN-recalibration loader (the training set with its augmentation, ``-vb`` times
    larger batches; spec Sec. 5) and evaluation loader (``-vb`` times larger batches), sharded under torchrun."""
    pin = args.pin_mem and info.device.type == "cuda"
    big = args.validation_batch_size_multiplier * args.batch_size
    common = {"num_workers": args.workers, "seed": args.seed, "pin_memory": pin}
    loader_train = build_loader(train_set, args.batch_size, train=True, **common)
    loader_bn = build_loader(train_set, big, train=True, **common)
    loader_eval = build_loader(val_set, big, train=False, **common)
    if len(loader_train) == 0 and not args.test_mode:
        raise UserError(f"the training set has {len(train_set)} images per process, fewer than one batch of "
                        f"-b {args.batch_size} (incomplete batches are dropped); lower -b")
    if len(loader_bn) == 0 and args.reset_bn:
        raise UserError(f"the training set has {len(train_set)} images per process, fewer than one BN-recalibration "
                        f"batch of -vb x -b = {big} (incomplete batches are dropped); lower -vb or -b")
    return loader_train, loader_bn, loader_eval



# ------------------------------------------------------------------------------------------------- checks
def stage_name(args: argparse.Namespace) -> str:
    """``supernet`` (Stage I), ``reset_bn`` (BN recalibration only), ``gate`` (Stage II) or ``test``."""
    if args.gate_train and not args.test_mode:
        return "gate"
    if args.test_mode:
        return "reset_bn" if args.reset_bn and not args.gate_train else "test"
    return "supernet"


def experiment_name(args: argparse.Namespace) -> str:
    """The original's ``train[-dynamic][-slimmable]-<model>``; ``reset_bn``/``test`` replace ``train`` when
    nothing is trained, so the three stages write to three folders."""
    name = {"reset_bn": "reset_bn", "test": "test"}.get(stage_name(args), "train")
    if args.gate_train:
        name += "-dynamic"
    if args.slim_train:
        name += "-slimmable"
    return f"{name}-{args.model}"


def _stage_input_hint(args: argparse.Namespace) -> str:
    model = args.model
    supernet = (f"the supernet checkpoint of Stage I (-c dsnet/configs/supernet.yml writes "
                f"output/train-slimmable-{model}/checkpoint-<epochs>.pth.tar), or a released one such as "
                "DS_MBNet-70_1.pth.tar")
    hints = {
        "reset_bn": f"the BN-recalibration stage (test_mode + reset_bn) re-estimates the statistics of a trained "
                    f"supernet: pass --resume with {supernet}",
        "gate": "the gate stage (gate_train, Stage II) trains the gate of a BN-recalibrated supernet: pass --resume "
                "with the checkpoint of the reset-BN stage (-c dsnet/configs/reset_bn.yml writes "
                f"output/reset_bn-slimmable-{model}/checkpoint-1.pth.tar)",
        "test": "--test_mode evaluates a trained model: pass --resume with the checkpoint to evaluate (of Stage I, "
                "the reset-BN stage or, with --gate-train, Stage II)",
    }
    return hints.get(stage_name(args), "")


def check_args(args: argparse.Namespace) -> None:
    """Reject flag and config values that cannot work, before anything is loaded or written."""
    if args.model not in MODELS:
        raise UserError(f"--model {args.model} is not a DS-Net model; choose one of: {', '.join(MODELS)}")
    for dest, default, why in UNSUPPORTED:
        if getattr(args, dest) != default:
            flag = "--" + dest.replace("_", "-")
            raise UserError(f"{flag} {getattr(args, dest)} is not supported: {why}")
    if not isinstance(args.num_choice, (int, type(None))) or isinstance(args.num_choice, bool):
        raise UserError(f"config key num_choice must be an integer, got {args.num_choice!r}")
    if args.train_mode not in ("all", "gate"):
        raise UserError(f"config key train_mode must be 'all' (optimise every parameter) or 'gate' (only the gate), "
                        f"got {args.train_mode!r}")
    if not isinstance(args.reset_bn, bool):
        raise UserError(f"config key reset_bn must be true or false, got {args.reset_bn!r}")
    if not isinstance(args.optimizer_step, int) or isinstance(args.optimizer_step, bool) or args.optimizer_step < 1:
        raise UserError(f"config key optimizer_step must be an integer of at least 1, got {args.optimizer_step!r}")
    if args.mixup not in (0, 0.0, None):
        raise UserError(f"config key mixup {args.mixup!r} is not supported: mixup is not implemented (the original "
                        "never reads this key); use 0")
    positive = {"-b/--batch-size": args.batch_size, "-vb/--validation-batch-size-multiplier":
                args.validation_batch_size_multiplier, "--epochs": args.epochs, "--log-interval": args.log_interval,
                "--recount": args.recount, "--reset_bn_batches": args.reset_bn_batches, "--num-gpu": args.num_gpu}
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    for flag, value in {"-j/--workers": args.workers, "--warmup-epochs": args.warmup_epochs,
                        "--cooldown-epochs": args.cooldown_epochs, "--start_chn_idx": args.start_chn_idx}.items():
        if value < 0:
            raise UserError(f"{flag} must be 0 or more, got {value}")
    if args.start_epoch is not None and args.start_epoch < 0:
        raise UserError(f"--start-epoch must be 0 or more, got {args.start_epoch}")
    if args.num_classes < 2:
        raise UserError(f"--num-classes must be at least 2, got {args.num_classes}")
    if args.img_size is not None and args.img_size < 8:
        raise UserError(f"--img-size must be at least 8 pixels, got {args.img_size}")
    for flag, value in (("--drop", args.drop), ("--smoothing", args.smoothing)):
        if not 0.0 <= value < 1.0:
            raise UserError(f"{flag} must lie in [0, 1), got {value}")
    for flag, value in (("--reprob", args.reprob), ("--model-ema-decay", args.model_ema_decay)):
        if not 0.0 <= value <= 1.0:
            raise UserError(f"{flag} must lie in [0, 1], got {value}")
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        raise UserError(f"--crop-pct must lie in (0, 1], got {args.crop_pct}")
    for flag, values in (("--mean", args.mean), ("--std", args.std)):
        if values is not None and len(values) not in (1, 3):
            raise UserError(f"{flag} takes 1 or 3 values (one per RGB channel), got {len(values)}")
    if args.interpolation and args.interpolation not in INTERPOLATIONS:
        raise UserError(f"--interpolation {args.interpolation} is not one of: {', '.join(INTERPOLATIONS)}")
    if args.train_interpolation not in INTERPOLATIONS + ("random",):
        raise UserError(f"--train-interpolation {args.train_interpolation} is not one of: random, "
                        f"{', '.join(INTERPOLATIONS)}")
    if args.remode not in ("const", "rand", "pixel"):
        raise UserError(f"--remode {args.remode} is not one of: const, rand, pixel")
    if args.dist_bn not in ("", "broadcast", "reduce"):
        raise UserError(f"--dist-bn {args.dist_bn} is not one of: '' (off), broadcast, reduce")
    if args.eval_metric not in EVAL_METRICS:
        raise UserError(f"--eval-metric {args.eval_metric} is not one of: {', '.join(EVAL_METRICS)}")
    if args.ensemble_ib and not args.inplace_bootstrap:
        raise UserError("--ensemble_ib (in-place ensemble bootstrapping) needs --inplace_bootstrap")
    if args.model_ema_force_cpu and args.model_ema and args.inplace_bootstrap and stage_name(args) == "supernet":
        raise UserError("--model-ema-force-cpu keeps the EMA on the CPU, but Stage I with --inplace_bootstrap uses "
                        "the EMA as the teacher on the training device; drop one of them")
    stage = stage_name(args)
    if stage != "supernet" and not args.resume and not args.initial_checkpoint:
        raise UserError(f"no input checkpoint: {_stage_input_hint(args)}")
    for flag, path in (("--resume", args.resume), ("--initial-checkpoint", args.initial_checkpoint)):
        if path and not Path(path).is_file():
            hint = f"; {_stage_input_hint(args)}" if stage != "supernet" else ""
            raise UserError(f"{flag} {path} does not exist{hint}")
    if args.dataset == "imagefolder" and not args.data:
        raise UserError(MISSING_DATA)


def resolve_routing_space(args: argparse.Namespace, model: DSNet) -> tuple[int, ...]:
    """The four sub-networks of the gate's routes (spec Sec. 3): ``--routing_space``, else ``start_chn_idx``
    .. ``start_chn_idx + 3``."""
    choices = args.routing_space if args.routing_space else list(range(args.start_chn_idx, args.start_chn_idx + 4))
    flag = "--routing_space" if args.routing_space else "--start_chn_idx"
    try:
        model.set_routing_space(choices)
    except ValueError as err:
        raise UserError(f"{flag}: {err} (the model {args.model} has sub-networks 0..{model.num_choices - 1})") \
            from None
    return tuple(choices)


# ------------------------------------------------------------------------------------------------ checkpoints
def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, args: argparse.Namespace, epoch: int,
                     model_ema: ModelEmaV2 | None = None, metric: float | None = None,
                     scaler: torch.amp.GradScaler | None = None, best: tuple[float, int] | None = None
                     ) -> dict[str, Any]:
    """The original's checkpoint dict (``CheckpointSaver._save``; spec Sec. 10), so released and our files load
    alike: ``epoch, arch, state_dict, optimizer, args, version [, state_dict_ema, metric]``, plus ``scaler``
    with ``--amp``. ``args`` is a plain dict, so the file loads with ``weights_only=True``."""
    state: dict[str, Any] = {"epoch": epoch, "arch": args.model, "state_dict": unwrap_model(model).state_dict(),
                             "optimizer": optimizer.state_dict(), "args": dict(vars(args)),
                             "version": CHECKPOINT_VERSION}
    if model_ema is not None:
        state["state_dict_ema"] = model_ema.module.state_dict()
    if metric is not None:
        state["metric"] = metric
    if best is not None:  # not in the original's files: lets a resumed run keep its best model and epoch
        state["best_metric"], state["best_epoch"] = best
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def _optimizer_fits(optimizer: torch.optim.Optimizer, saved: Any) -> bool:
    """Whether a saved optimizer state has the groups, parameter counts and buffer shapes of ``optimizer``."""
    if not isinstance(saved, dict) or "param_groups" not in saved or "state" not in saved:
        return False
    groups = optimizer.param_groups
    if len(saved["param_groups"]) != len(groups):
        return False
    if any(len(s["params"]) != len(g["params"]) for s, g in zip(saved["param_groups"], groups, strict=True)):
        return False
    params = [p for g in groups for p in g["params"]]
    ids = [i for s in saved["param_groups"] for i in s["params"]]
    for param, pid in zip(params, ids, strict=True):
        for value in saved["state"].get(pid, {}).values():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != param.shape:
                return False
    return True


def resume_checkpoint(path: str, model: DSNet, optimizer: torch.optim.Optimizer | None,
                      scaler: torch.amp.GradScaler | None, args: argparse.Namespace) -> tuple[int | None, Any]:
    """Load a checkpoint of the original format (ours or a released one; spec Sec. 10) into ``model`` with a
    strict key check; the optimizer (unless ``--no-resume-opt``) when it fits, the AMP scaler when present.
    Returns the epoch to resume at (the saved epoch + 1) and the whole checkpoint (for the EMA)."""
    try:
        ckpt = load_checkpoint_file(path)
        state = select_state_dict(ckpt)
        load_state_dict(model, state, strict=True, source=f"--resume {path}")
    except CheckpointError as err:
        hint = f" ({_stage_input_hint(args)})" if stage_name(args) != "supernet" else ""
        raise CheckpointError(f"--resume: {err}{hint}") from None
    if not isinstance(ckpt, dict):
        return None, ckpt
    if optimizer is not None and "optimizer" in ckpt:
        if _optimizer_fits(optimizer, ckpt["optimizer"]):
            optimizer.load_state_dict(ckpt["optimizer"])
            print_main("Restored the optimizer state")
        else:
            print_main("note: the optimizer state in the checkpoint does not fit this run's optimizer (another "
                       "train_mode?); it is not restored (pass --no-resume-opt to silence this)")
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    epoch = None
    if "epoch" in ckpt:
        epoch = int(ckpt["epoch"]) + (1 if ckpt.get("version", 1) > 1 else 0)
    print_main(f"Loaded checkpoint {path} (epoch {ckpt.get('epoch', '?')})")
    return epoch, ckpt


def load_ema_state(model_ema: ModelEmaV2, ckpt: Any, path: str) -> None:
    """The EMA weights of a resumed checkpoint (``state_dict_ema``), else the EMA starts from the loaded model."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict_ema"), dict):
        state = select_state_dict(ckpt, entry="state_dict_ema")
        load_state_dict(model_ema.module, state, strict=True, source=f"--resume {path} (state_dict_ema)")
        print_main("Loaded state_dict_ema")
    else:
        print_main("note: the checkpoint has no state_dict_ema; the EMA starts from the loaded weights")


# ---------------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the stage the flags describe (spec Sec. 4-6); returns the per-epoch and final results."""
    check_args(args)
    return run_distributed(lambda info: _run(args, info), args.device, args.dist_timeout,
                           output_dir=Path(args.output or "output") / experiment_name(args), output_flag="--output")


def _run(args: argparse.Namespace, info: DistInfo) -> dict[str, Any]:
    device = info.device
    args.distributed, args.world_size, args.rank = info.distributed, info.world_size, info.rank
    if args.num_gpu > 1:
        print_main("note: --num-gpu is accepted for compatibility; one process drives one device here, start "
                   "several with torchrun --nproc_per_node=N")
    torch.backends.cudnn.benchmark = True
    seed_everything(args.seed, per_rank=False)  # as the original: the same seed on every process

    train_set, val_set = load_data(args)
    data_classes = val_set.num_classes
    if args.dataset != "imagefolder" and args.num_classes == 1000:
        args.num_classes = data_classes
    if args.num_classes < data_classes:
        raise UserError(f"--num-classes {args.num_classes} is smaller than the {data_classes} classes of the data")

    try:
        model = create_model(args.model, num_classes=args.num_classes, drop_rate=args.drop,
                             drop_path_rate=args.drop_path)
    except ValueError as err:
        raise UserError(str(err)) from None
    if args.num_choice is None:
        args.num_choice = model.num_choices
    if not 1 <= args.num_choice <= model.num_choices:
        raise UserError(f"config key num_choice must lie in 1..{model.num_choices} for {args.model}, got "
                        f"{args.num_choice}")
    args.routing_space = list(resolve_routing_space(args, model))
    if args.initial_checkpoint:
        try:
            load_pretrained(model, args.initial_checkpoint, strict=True)
        except CheckpointError as err:
            raise CheckpointError(f"--initial-checkpoint: {err}") from None
    size = args.img_size or (32 if args.dataset != "imagefolder" else 224)
    print_main(f"Model {args.model} created, param count: {sum(p.numel() for p in model.parameters()):,}; MAdds "
               f"per {size}x{size} image: largest {madds(model, mode_widths(model, 'largest'), size) / 1e6:.4g}M, "
               f"smallest {madds(model, mode_widths(model, 'smallest'), size) / 1e6:.4g}M")
    model.to(device)

    params = model.get_gate() if args.train_mode == "gate" else model
    try:
        optimizer = create_optimizer_v2(params, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                        momentum=args.momentum, eps=args.opt_eps)
    except (ValueError, AssertionError, KeyError) as err:
        raise UserError(f"--opt {args.opt}: {err}") from None
    scaler = torch.amp.GradScaler(device.type) if args.amp else None

    resume_epoch, ckpt = None, None
    if args.resume:
        resume_epoch, ckpt = resume_checkpoint(args.resume, model, None if args.no_resume_opt else optimizer,
                                               scaler, args)
    model_ema = None
    if args.model_ema:  # after resume, before DDP, as the original
        model_ema = ModelEmaV2(model, decay=args.model_ema_decay, device="cpu" if args.model_ema_force_cpu else None)
        if args.resume:
            load_ema_state(model_ema, ckpt, args.resume)
    eval_ema = model_ema if model_ema is not None and not args.model_ema_force_cpu else None
    net = wrap_ddp(model, info, find_unused_parameters=True)

    try:
        lr_scheduler, num_epochs = create_scheduler(args, optimizer)
    except (ValueError, AssertionError) as err:
        raise UserError(f"--sched {args.sched}: {err}") from None
    start_epoch = args.start_epoch if args.start_epoch is not None else (resume_epoch or 0)
    if lr_scheduler is not None and start_epoch > 0:
        lr_scheduler.step(start_epoch)

    loader_train, loader_bn, loader_eval = build_loaders(train_set, val_set, args, info)
    train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing) if args.smoothing else nn.CrossEntropyLoss()
    validate_loss_fn = nn.CrossEntropyLoss()
    distill_loss_fn = SoftTargetCrossEntropy() if args.inplace_bootstrap else None

    output_dir = Path(args.output or "output") / experiment_name(args)
    run = _Run(args, device, net, model, model_ema, eval_ema, optimizer, lr_scheduler, scaler, output_dir)
    if ckpt is not None and "best_metric" in ckpt and not args.test_mode:
        run.best = (float(ckpt["best_metric"]), int(ckpt["best_epoch"]))
    plan = "no training (test_mode)" if args.test_mode else f"scheduled epochs {num_epochs}, starting at {start_epoch}"
    print_main(f"Stage {stage_name(args)}: {plan}; output in {output_dir}")
    with start_tracking(args, run_name=experiment_name(args)) as tracker:
        if is_main_process():
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "args.yaml").write_text(yaml.safe_dump(dict(vars(args)), default_flow_style=False))
        run.tracker = tracker
        tracker.log_params(vars(args))
        epochs = [] if args.test_mode else run.train(loader_train, loader_eval, train_loss_fn, distill_loss_fn,
                                                     validate_loss_fn, start_epoch, num_epochs)
        if args.reset_bn:
            run.recalibrate_bn(loader_bn)
        final_epoch = 1 if args.test_mode else (num_epochs if epochs else start_epoch)
        final = run.final_evaluation(loader_eval, validate_loss_fn)
        path = save_checkpoint(checkpoint_state(net, optimizer, args, final_epoch, model_ema, run.last_metric,
                                                scaler), output_dir / f"checkpoint-{final_epoch}.pth.tar")
        result = {"stage": stage_name(args), "epoch": final_epoch, "output_dir": str(output_dir),
                  "checkpoint": str(path) if path else None, "epochs": epochs, "final": final}
        run.write_results(result)
    return result


class _Run:
    """The objects of one run and the steps of the original ``main``: epochs, BN recalibration, final test."""

    def __init__(self, args, device, net, model, model_ema, eval_ema, optimizer, lr_scheduler, scaler, output_dir):
        self.args, self.device, self.net, self.model = args, device, net, model
        self.model_ema, self.eval_ema = model_ema, eval_ema
        self.optimizer, self.lr_scheduler, self.scaler = optimizer, lr_scheduler, scaler
        self.output_dir = output_dir
        self.tracker = None
        self.last_metric: float | None = None
        self.best: tuple[float, int] | None = None

    def _candidates(self) -> list[tuple[str, nn.Module]]:
        """What the original evaluates and recalibrates: the model, and the EMA unless it is kept on the CPU."""
        out = [("", self.net)]
        if self.eval_ema is not None:
            out.append((" (EMA)", self.eval_ema.module))
        return out

    def _set_gate_noise(self, on: bool) -> None:
        """Gumbel noise in the gate (spec Sec. 3): always in training, ``--gate_eval_noise`` in evaluation."""
        for model in (self.net, self.model_ema.module if self.model_ema is not None else None):
            if model is not None:
                unwrap_model(model).gate_noise = on

    # ---- epochs
    def train(self, loader_train, loader_eval, train_loss_fn, distill_loss_fn, validate_loss_fn, start_epoch: int,
              num_epochs: int) -> list[dict[str, Any]]:
        """The original's epoch loop: train, average BN across processes (``--dist-bn``), evaluate, step the
        schedule with the checkpoint metric (the EMA's when there is one), save ``last`` / ``model_best``."""
        args, history = self.args, []
        if start_epoch >= num_epochs:
            print_main(f"Nothing to train: the run starts at epoch {start_epoch} of {num_epochs}")
        for epoch in range(start_epoch, num_epochs):
            begin = time.time()
            set_epoch(loader_train, epoch, args.seed)
            lr = self.optimizer.param_groups[0]["lr"]
            kwargs = {"device": self.device, "lr_scheduler": self.lr_scheduler, "model_ema": self.model_ema,
                      "scaler": self.scaler}
            self._set_gate_noise(True)
            if args.gate_train:
                train_metrics = train_epoch_slim_gate(epoch, self.net, loader_train, self.optimizer, train_loss_fn,
                                                      args, **kwargs)
            else:
                train_metrics = train_epoch_slim(epoch, self.net, loader_train, self.optimizer, train_loss_fn,
                                                 distill_loss_fn, args, **kwargs)
            if args.distributed and args.dist_bn in ("broadcast", "reduce"):
                distribute_bn(self.net, args.world_size, args.dist_bn == "reduce")
            evals = self._evaluate_epoch(epoch, loader_eval, validate_loss_fn)
            first = next(iter(evals[-1][1].values()))  # the EMA's first evaluation when there is one
            self.last_metric = metric = first[args.eval_metric]
            if self.lr_scheduler is not None:
                self.lr_scheduler.step(epoch + 1, metric)
            self._save_epoch(epoch, metric)
            record = {"epoch": epoch, "lr": lr, "train": train_metrics,
                      "eval": {("ema" if tag else "model"): e for tag, e in evals}}
            history.append(record)
            print_main(self._summary_line(record, num_epochs, time.time() - begin))
            self._log_epoch(record)
        if self.best is not None:
            print_main(f"*** Best metric: {self.best[0]:.4f} (epoch {self.best[1]})")
        return history

    def _evaluate_epoch(self, epoch: int, loader_eval, loss_fn) -> list[tuple[str, dict[str, dict[str, Any]]]]:
        args = self.args
        self._set_gate_noise(args.gate_eval_noise)
        evals = []
        for tag, candidate in self._candidates():
            if args.gate_train:
                evals.append((tag, {"dynamic": validate_gate(candidate, loader_eval, loss_fn, args,
                                                              device=self.device, log_suffix=tag)}))
                continue
            modes = ["smallest", "largest"] + (["uniform"] if epoch % 10 == 0 and epoch != 0 else [])
            evals.append((tag, {mode: validate_slim(candidate, loader_eval, loss_fn, device=self.device,
                                                    model_mode=mode, amp=args.amp, log_suffix=tag)
                                for mode in modes}))
        return evals

    def _save_epoch(self, epoch: int, metric: float) -> None:
        better = self.best is None or (metric < self.best[0] if self.args.eval_metric == "loss"
                                       else metric > self.best[0])
        best = (metric, epoch) if better else self.best
        state = checkpoint_state(self.net, self.optimizer, self.args, epoch, self.model_ema, metric, self.scaler,
                                 best)
        if better:  # model_best first: if it cannot be written, last.pth.tar still names the previous best
            save_checkpoint(state, self.output_dir / "model_best.pth.tar")
        save_checkpoint(state, self.output_dir / "last.pth.tar")
        self.best = best

    def _summary_line(self, record: dict[str, Any], num_epochs: int, seconds: float) -> str:
        train = record["train"]
        parts = [f"Epoch {record['epoch']}/{num_epochs - 1}", f"lr {record['lr']:.4g}"]
        if self.args.gate_train:
            parts.append(f"train: loss {train['loss']:.4f} ce {train['ce_loss']:.4f} gate {train['gate_loss']:.4f} "
                         f"flops {train['flops_loss']:.4g} acc {train['acc']:.2f} MAdds {train['flops'] / 1e6:.2f}M")
        else:
            parts.append(f"train: loss_largest {train['loss_largest']:.4f} "
                         f"loss_smallest {train['loss_smallest']:.4f}")
        for key, evals in record["eval"].items():
            label = "EMA val" if key == "ema" else "val"
            parts.append(f"{label}: " + ", ".join(
                f"{mode} Acc@1 {e['prec1']:.2f} MAdds {e['flops'] / 1e6:.2f}M" for mode, e in evals.items()))
        parts.append(f"{seconds:.1f} s")
        return " | ".join(parts)

    def _log_epoch(self, record: dict[str, Any]) -> None:
        metrics = {"lr": record["lr"], **{f"train/{k}": v for k, v in record["train"].items()}}
        row = {"epoch": record["epoch"], "lr": record["lr"], **{f"train_{k}": v for k, v in record["train"].items()}}
        for key, evals in record["eval"].items():
            prefix = "val" if key == "model" else "ema_val"
            for mode, e in evals.items():
                for name, value in e.items():
                    if isinstance(value, (int, float)):
                        metrics[f"{prefix}/{mode}_{name}"] = value
                        row[f"{prefix}_{mode}_{name}"] = value
        self.tracker.log_metrics(metrics, step=record["epoch"])
        if is_main_process():  # the columns of the first epoch (a resumed run appends under its header)
            path = self.output_dir / SUMMARY_CSV
            header = path.read_text().splitlines()[0].split(",") if path.exists() else None
            with path.open("a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=header or list(row), extrasaction="ignore", restval="")
                if header is None:
                    writer.writeheader()
                writer.writerow(row)

    # ---- after training
    def recalibrate_bn(self, loader_bn) -> None:
        """BN recalibration (spec Sec. 5) of the model and the EMA: every width's statistics re-estimated on
        ``--reset_bn_batches`` training batches, then averaged across processes (``--dist-bn``)."""
        args = self.args
        for tag, candidate in self._candidates():
            print_main(f"Recalibrating BatchNorm statistics{tag}...")
            reset_bn(candidate, loader_bn, args.num_choice, device=self.device, max_batches=args.reset_bn_batches,
                     include_largest=args.reset_bn_largest, dist_bn=args.dist_bn,
                     cumulative=args.reset_bn_cumulative)
            if tag:  # the EMA is always in eval mode
                candidate.eval()

    def final_evaluation(self, loader_eval, loss_fn) -> dict[str, Any]:
        """The original's test: the gated model (gate stages), else every one of the ``num_choice`` sub-networks;
        for the model and the EMA."""
        args = self.args
        self._set_gate_noise(args.gate_eval_noise)
        final: dict[str, Any] = {}
        for tag, candidate in self._candidates():
            key = "ema" if tag else "model"
            if args.gate_train:
                result = validate_gate(candidate, loader_eval, loss_fn, args, device=self.device, log_suffix=tag)
                final[key] = result
                print_main(f"Dynamic{tag}: Acc@1 {result['prec1']:.2f} Acc@5 {result['prec5']:.2f} MAdds "
                           f"{result['flops'] / 1e6:.2f}M gate_acc {result['gate_acc']:.2f} routes "
                           f"{list(args.routing_space)} taken {result['route_counts']}")
                continue
            rows = []
            core = unwrap_model(candidate)
            for choice in range(args.num_choice):
                result = validate_slim(candidate, loader_eval, loss_fn, device=self.device, model_mode=choice,
                                       amp=args.amp, log_suffix=tag)
                widths = mode_widths(core, "uniform", choice)
                rows.append({"choice": choice, "widths": widths, **result})
            final[key] = rows
            print_main(f"Sub-networks{tag} (MAdds per image, original convention):")
            print_main(format_table(rows))
        return final

    def write_results(self, result: dict[str, Any]) -> None:
        """``results.json`` (everything), ``results.csv`` (one row per sub-network) and the MLflow record."""
        final = result["final"]
        metrics = {}
        for key, value in final.items():
            prefix = "test" if key == "model" else "test_ema"
            if isinstance(value, list):
                for row in value:
                    metrics.update({f"{prefix}/{row['choice']}_{m}": row[m] for m in ("prec1", "prec5", "flops")})
            else:
                metrics.update({f"{prefix}/dynamic_{m}": value[m] for m in ("prec1", "prec5", "flops", "gate_acc")})
        self.tracker.log_metrics(metrics, step=result["epoch"])
        if not is_main_process():
            return
        paths = [self.output_dir / RESULTS_JSON]
        paths[0].write_text(json.dumps(result, indent=2, default=float))
        if any(isinstance(v, list) for v in final.values()):
            paths.append(self.output_dir / RESULTS_CSV)
            with paths[1].open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["network", "choice", "widths", "madds", "prec1", "prec5", "loss"])
                for key, rows in final.items():
                    for row in rows:
                        writer.writerow([key, row["choice"], "/".join(map(str, row["widths"])), int(row["flops"]),
                                         f"{row['prec1']:.3f}", f"{row['prec5']:.3f}", f"{row['loss']:.4f}"])
        summary = self.output_dir / SUMMARY_CSV
        for path in paths + ([summary] if summary.exists() else []):
            self.tracker.log_artifact(path)
        if result["checkpoint"]:
            self.tracker.set_tags({"final_checkpoint": str(Path(result["checkpoint"]).resolve())})
        print_main(f"Wrote {result['checkpoint']} and {', '.join(p.name for p in paths)}")


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The per-sub-network table (spec Sec. 9): choice, widths, MAdds, top-1/5, loss."""
    lines = [f"{'choice':>6}  {'widths (stem, blocks.0..)':<30} {'MAdds':>10} {'Acc@1':>7} {'Acc@5':>7} {'loss':>7}"]
    for row in rows:
        widths = "/".join(map(str, row["widths"]))
        lines.append(f"{row['choice']:>6}  {widths:<30} {row['flops'] / 1e6:>9.2f}M {row['prec1']:>7.2f} "
                     f"{row['prec5']:>7.2f} {row['loss']:>7.4f}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ arguments
CONFIG_KEYS_HELP = """\
config-only keys (the original's configs set them; no flags):
  num_choice INT        sub-networks recalibrated and evaluated at the end: uniform choices 0..num_choice-1
                        (default: all of the model's, 14)
  train_mode all|gate   what the optimizer holds: every parameter, or only the gate (default: all)
  reset_bn BOOL         recalibrate every sub-network's BN statistics after training (default: false)
  optimizer_step INT    accumulate the gradients of this many batches per optimizer step (default: 1)
  mixup 0               accepted for the original configs; mixup is not implemented (only 0)

stages (see dsnet/README.md): -c dsnet/configs/supernet.yml, then reset_bn.yml --resume <its checkpoint>, then
gate.yml --resume <the reset-BN checkpoint>; the original file names (mobilenetv1_bn_uniform*.yml) work too.
Output: <--output or ./output>/train[-dynamic][-slimmable]-<model>/ (reset_bn-... / test-... when nothing is
trained) with last.pth.tar, model_best.pth.tar, checkpoint-<epoch>.pth.tar, summary.csv, results.json/.csv."""


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The original ``train.py`` flags with their defaults (spec Sec. 8), plus the additions of dsnet/README.md."""
    parser = ArgumentParser(prog=PROG, add_help=add_help, epilog=CONFIG_KEYS_HELP,
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            description="DS-Net (dynamic slimmable networks): supernet training, BN recalibration "
                                        "and gate training,\nas the original timm-based train.py.")
    parser.add_argument("-c", "--config", default="", metavar="FILE",
                        help="YAML file whose keys set the defaults of the flags below (dsnet/configs/*.yml); "
                             "explicit flags still win")
    add = parser.add_argument
    # dataset / model
    add("data", metavar="DATA", nargs="?", default=None,
        help="ImageFolder root with train/ and val/ (or validation/); not needed with --dataset digits/synthetic")
    add("--model", default="resnet101", type=str, metavar="MODEL",
        help=f"model: {', '.join(MODELS)} (the original default %(default)s is no DS-Net model; the configs set one)")
    add("--pretrained", action="store_true", default=False, help="not supported (no registered weights): error")
    add("--initial-checkpoint", default="", type=str, metavar="PATH",
        help="initialise the model weights (state_dict) from this checkpoint, strictly (default: none)")
    add("--resume", default="", type=str, metavar="PATH",
        help="resume model, EMA and optimizer from a checkpoint of this script or a released one; the reset-BN and "
             "gate stages need the previous stage's checkpoint here (default: none)")
    add("--no-resume-opt", action="store_true", default=False, help="do not restore the optimizer state on resume")
    add("--num-classes", type=int, default=1000, metavar="N",
        help="number of classes (default: 1000; with digits / synthetic the 1000 means the data's own)")
    add("--gp", default="avg", type=str, metavar="POOL", help="global pool; only avg exists for DS-Net")
    add("--img-size", type=int, default=None, metavar="N",
        help="image size (default: 224 for imagefolder, 32 for digits / synthetic)")
    add("--crop-pct", default=None, type=non_negative_float, metavar="N",
        help="centre-crop fraction for evaluation (default 0.875)")
    add("--mean", type=finite_float, nargs="+", default=None, metavar="MEAN",
        help="normalisation mean (default: ImageNet)")
    add("--std", type=positive_float, nargs="+", default=None, metavar="STD",
        help="normalisation std (default: ImageNet)")
    add("--interpolation", default="", type=str, metavar="NAME",
        help="evaluation resize interpolation (default: bicubic)")
    add("-b", "--batch-size", type=int, default=32, metavar="N", help="batch size per process (default: %(default)s)")
    add("-vb", "--validation-batch-size-multiplier", type=int, default=4, metavar="N",
        help="evaluation and BN-recalibration batches are N times -b (default: %(default)s)")
    add("--drop", type=non_negative_float, default=0.0, metavar="DROP",
        help="dropout before the classifier, in the 'largest' mode only (default: %(default)s)")
    add("--drop-path", type=non_negative_float, default=0.0, metavar="DROP", help="DS-Net has no drop-path: only 0")
    add("--jsd", action="store_true", default=False, help="not supported (no AugMix): error")
    # optimizer
    add("--opt", default="sgd", type=str, metavar="OPTIMIZER",
        help="timm optimizer; sgd is SGD with Nesterov momentum, no weight decay on biases and 1-D parameters "
             "(default: %(default)s)")
    add("--opt-eps", default=1e-8, type=positive_float, metavar="EPSILON",
        help="optimizer epsilon (default: %(default)s)")
    add("--momentum", type=non_negative_float, default=0.9, metavar="M", help="SGD momentum (default: %(default)s)")
    add("--weight-decay", type=non_negative_float, default=0.0001, help="weight decay (default: %(default)s)")
    # schedule
    add("--sched", default="step", type=str, metavar="SCHEDULER",
        help="timm LR schedule: cosine, step, tanh, plateau, ... (default: %(default)s)")
    add("--lr", type=positive_float, default=0.01, metavar="LR", help="learning rate (default: %(default)s)")
    add("--warmup-lr", type=non_negative_float, default=0.0001, metavar="LR",
        help="warm-up start lr (default: %(default)s)")
    add("--min-lr", type=non_negative_float, default=1e-5, metavar="LR",
        help="lower lr bound of cyclic schedules and of the cooldown (default: %(default)s)")
    add("--min-step-lr", type=non_negative_float, default=0, metavar="LR",
        help="accepted for compatibility; unused, as in the original (default: %(default)s)")
    add("--epochs", type=int, default=200, metavar="N",
        help="epochs of the schedule; cyclic schedules add --cooldown-epochs (default: %(default)s)")
    add("--start-epoch", default=None, type=int, metavar="N",
        help="first epoch; overrides the resumed checkpoint's (the reset-BN and gate configs set 0)")
    add("--decay-epochs", type=non_negative_float, default=30, metavar="N", help="step schedule: epochs between decays")
    add("--warmup-epochs", type=int, default=3, metavar="N", help="linear warm-up epochs (default: %(default)s)")
    add("--cooldown-epochs", type=int, default=10, metavar="N",
        help="epochs at --min-lr after a cyclic schedule (default: %(default)s)")
    add("--decay-rate", "--dr", type=non_negative_float, default=0.1, metavar="RATE",
        help="LR decay rate (default: %(default)s)")
    # augmentation
    add("--color-jitter", type=non_negative_float, default=0.4, metavar="PCT",
        help="colour jitter (unused when --aa is set, as in timm) (default: %(default)s)")
    add("--aa", type=str, default=None, metavar="NAME", help="timm auto-augment policy, e.g. rand-m9-mstd0.5")
    add("--aug-splits", type=int, default=0, help="not supported (no AugMix): only 0")
    add("--reprob", type=non_negative_float, default=0.0, metavar="PCT",
        help="random-erasing probability (default: %(default)s)")
    add("--remode", type=str, default="const", help="random-erasing mode: const, rand, pixel (default: %(default)s)")
    add("--recount", type=int, default=1, help="random-erasing count (default: %(default)s)")
    add("--resplit", action="store_true", default=False, help="not supported (no augmentation splits): error")
    add("--smoothing", type=non_negative_float, default=0.1,
        help="label smoothing of the training CE (default: %(default)s)")
    add("--train-interpolation", type=str, default="random",
        help="training interpolation: random, bilinear, bicubic, ... (default: %(default)s)")
    # batch norm
    add("--bn-tf", action="store_true", default=False, help="not supported: error")
    add("--bn-momentum", type=float, default=None, help="not supported: error")
    add("--bn-eps", type=float, default=None, help="not supported: error")
    add("--sync-bn", action="store_true", help="not supported (the slimmable BN is per process): error")
    add("--dist-bn", type=str, default="",
        help="under torchrun, average ('reduce') or copy from rank 0 ('broadcast') the BN statistics after every "
             "epoch and after the recalibration; '' = off (default: '')")
    add("--split-bn", action="store_true", help="not supported (no AugMix): error")
    # EMA
    add("--model-ema", action="store_true", default=False,
        help="keep an EMA of the weights and buffers (the in-place-bootstrapping teacher); evaluated too")
    add("--model-ema-force-cpu", action="store_true", default=False,
        help="keep the EMA on the CPU and do not evaluate it (not with Stage I's --inplace_bootstrap)")
    add("--model-ema-decay", type=non_negative_float, default=0.9998,
        help="EMA decay per optimizer step (default: %(default)s)")
    # misc
    add("--seed", type=int, default=42, metavar="S", help="random seed, the same on every process (default: 42)")
    add("--log-interval", type=int, default=50, metavar="N",
        help="refresh the progress bar's numbers every N batches (default: %(default)s)")
    add("--recovery-interval", type=int, default=0, metavar="N", help="not supported (no recovery files): only 0")
    add("-j", "--workers", type=int, default=4, metavar="N", help="data-loading workers (default: %(default)s)")
    add("--num-gpu", type=int, default=1,
        help="accepted for compatibility; one process per GPU, start several with torchrun")
    add("--save-images", action="store_true", default=False, help="not supported: error")
    add("--amp", action="store_true", default=False,
        help="mixed precision (torch.autocast + GradScaler, instead of the original's NVIDIA apex)")
    add("--pin-mem", action="store_true", default=False, help="pin CPU memory in the data loaders (CUDA only)")
    add("--no-prefetcher", action="store_true", default=False,
        help="accepted for compatibility; there is no prefetcher (the loaders normalise on the CPU)")
    add("--output", default="", type=str, metavar="PATH",
        help="base folder of the run's folder (default: ./output)")
    add("--eval-metric", default="prec1", type=str, metavar="EVAL_METRIC",
        help="metric of model_best and of the plateau schedule: prec1, prec5 or loss (default: %(default)s)")
    add("--tta", type=int, default=0, metavar="N", help="not supported (unused by the original train.py): only 0")
    add("--local_rank", default=0, type=int,
        help="accepted for torch.distributed.launch; torchrun's LOCAL_RANK is used instead")
    # DS-Net
    add("--slim_train", action="store_true", default=False,
        help="slimmable training (names the run folder; the supernet is always slimmable here)")
    add("--gate-train", dest="gate_train", action="store_true", default=False,
        help="Stage II: train the gate (spec Sec. 6); needs --resume with the reset-BN checkpoint")
    add("--start_chn_idx", type=int, default=0,
        help="the gate's routing space is sub-networks start_chn_idx..start_chn_idx+3 (default: %(default)s)")
    add("--inplace_bootstrap", action=argparse.BooleanOptionalAction, default=False,
        help="Stage I: the sub-networks learn from the EMA's largest prediction (in-place bootstrapping); "
             "--no-inplace_bootstrap (added) turns a config's true off: every sub-network learns from the labels")
    add("--ensemble_ib", action=argparse.BooleanOptionalAction, default=False,
        help="Stage I: the smallest learns from the mean of the EMA's largest and uniform predictions; "
             "--no-ensemble_ib (added) turns a config's true off")
    add("--test_mode", action="store_true", default=False,
        help="no training: recalibrate BN (reset_bn) and/or evaluate the --resume checkpoint")
    # additions
    added = parser.add_argument_group("added (not in the original; see dsnet/README.md)")
    added.add_argument("--dataset", default="imagefolder", choices=DATASETS,
                       help="imagefolder (DATA), or the embedded digits / synthetic images, no download (default: "
                            "%(default)s)")
    added.add_argument("--device", default=None,
                       help="cuda or cpu (default: cuda if available, else cpu)")
    added.add_argument("--routing_space", type=int, nargs=4, default=None, metavar="C",
                       help="the four sub-networks (uniform choices) of the gate's routes; overrides --start_chn_idx")
    added.add_argument("--original_dynamic_madds", action="store_true",
                       help="reproduce the original's over-count of depthwise convs in the dynamic MAdds (Stage-II "
                            "loss and reported MAdds; spec Sec. 9)")
    added.add_argument("--gate_eval_noise", action=argparse.BooleanOptionalAction, default=True,
                       help="Gumbel noise in the gate at evaluation, as the original (training always has it)")
    added.add_argument("--sgs_on_logits", action="store_true",
                       help="apply the gate's SGS loss to its scores, not to its softmax probabilities as the original "
                            "(spec Sec. 13, quirk 7)")
    added.add_argument("--reset_bn_largest", action="store_true",
                       help="also recalibrate the widths only 'largest' uses, which the original leaves reset "
                            "(quirk 11)")
    added.add_argument("--reset_bn_batches", type=int, default=1001, metavar="N",
                       help="training batches of the BN recalibration (default: %(default)s, as the original)")
    added.add_argument("--reset_bn_cumulative", action="store_true",
                       help="the BN recalibration weights every batch equally (PyTorch's momentum=None) instead of "
                            "the original's momentum-0.1 moving average from the reset values; for short "
                            "recalibrations (a few batches of a small data set)")
    add("--skip-corrupt-images", action="store_true",
        help="skip and count undecodable images of the ImageNet folders instead of stopping at the first")
    add_distributed_args(parser)
    add_tracking_args(parser, "dsnet")
    parser.set_defaults(**CONFIG_ONLY_DEFAULTS)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line (and ``-c/--config`` YAML defaults) to a namespace; bad values raise UserError."""
    return parse_args_with_config(get_args_parser(), argv, extra_keys=CONFIG_ONLY_DEFAULTS)


def cli(argv: Sequence[str] | None = None) -> None:
    """Entry point: parse, run, and turn every UserError into one line on stderr with exit status 2."""
    run_cli(lambda: main(parse_args(argv)), prog=PROG)


if __name__ == "__main__":
    cli(sys.argv[1:])
