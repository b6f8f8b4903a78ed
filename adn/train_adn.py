"""Train and evaluate ADN models (spec Sec. d): the torchvision classification reference with self-distillation.

    torchrun --nproc_per_node=4 adn/train_adn.py --model resnet50 --data-path /path/to/imagenet ...
    python adn/train_adn.py --dataset digits --model resnet_adn_cifar --device cpu ...       (no download)
    python adn/train_adn.py --model resnet50 --test-only --weights W.pth --eval-all-skip-cfgs ...

Every step trains the super-net with the labels and the base-net by distillation from it (spec Sec. b;
:func:`adn.engine.train_step`); after every epoch both are evaluated. Flags and defaults are the original
``train_adn.py``'s; the additions and fixes are listed in ``adn/README.md`` ("Differences from the original").
Mistakes the user can fix (a missing data folder, a bad flag value or config key, a checkpoint of another
model) print one line and exit with status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from adn.engine import (
    evaluate,
    evaluate_all_skip_cfgs,
    format_skip_cfg_table,
    freeze_all_but_classifier,
    super_and_base_cfgs,
    train_one_epoch,
    write_skip_cfg_csv,
)
from adn.features import StageFeatures
from adn.losses import DEFAULT_TOPK
from adn.models import MODELS, create_model, parse_skip_cfg, skip_cfg_name
from adn.optim import (
    LR_SCHEDULERS,
    OPTIMIZERS,
    WARMUP_METHODS,
    ExponentialMovingAverage,
    build_lr_scheduler,
    build_optimizer,
    ema_decay,
    parameter_groups,
)
from adn.presets import AUTO_AUGMENT_POLICIES, MixupCutmixCollate, eval_preset, interpolation_mode, train_preset
from adn.sampler import RASampler
from adn.weights import load_weights
from common.checkpoint import resume, save_checkpoint, training_state
from common.config import add_config_argument, non_negative_float, parse_args_with_config, positive_float
from common.data import build_dataset, build_loader, set_epoch
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

__all__ = ["evaluate", "get_args_parser", "load_data", "main", "train_one_epoch"]

PROG = "train_adn.py"
DATASETS = ("imagefolder", "digits", "synthetic")
FPN_MODELS = tuple(name for name in MODELS if name.startswith("resnet"))
SKIP_TOKEN = re.compile(r"^(true|false|t|f|1|0|[tf01]+)$", re.IGNORECASE)
TABLE_FILE = "skip_cfgs.csv"
SUMMARY_FILE = "run_summary.json"


# ------------------------------------------------------------------------------------------------------- data
def load_data(args: argparse.Namespace) -> tuple[Dataset | None, Dataset]:
    """The training set (None with ``--test-only``) and the validation set of ``--dataset``.

    ``imagefolder`` reads ``<data-path>/train`` and ``<data-path>/val`` with the torchvision-reference presets
    (:mod:`adn.presets`). ``digits`` and ``synthetic`` are built in (no download); their images are tensors of
    ``--val-crop-size`` pixels for both splits and get no augmentation (mixup / cutmix still apply).
    """
    if args.dataset == "imagefolder":
        interpolation = interpolation_mode(args.interpolation)
        val_tf = eval_preset(args.val_crop_size, args.val_resize_size, interpolation)
        skip = {"skip_corrupt": args.skip_corrupt_images}
        val_set = build_dataset("imagenet", args.data_path, "val", transform=val_tf, **skip)
        train_set = None
        if not args.test_only:
            train_tf = train_preset(args.train_crop_size, interpolation, args.auto_augment, args.random_erase,
                                    args.ra_magnitude, args.augmix_severity)
            train_set = build_dataset("imagenet", args.data_path, "train", transform=train_tf, **skip)
        return train_set, val_set
    extra = {"num_classes": args.num_classes or 10} if args.dataset == "synthetic" else {}
    if args.auto_augment or args.random_erase > 0:
        print_main(f"note: --auto-augment / --random-erase apply to --dataset imagefolder only; {args.dataset} "
                   "images are used as they are")
    val_set = build_dataset(args.dataset, split="val", img_size=args.val_crop_size, transform=None, **extra)
    train_set = None if args.test_only else build_dataset(args.dataset, split="train", img_size=args.val_crop_size,
                                                          transform=None, **extra)
    return train_set, val_set


def build_loaders(train_set: Dataset | None, val_set: Dataset, num_classes: int, args: argparse.Namespace,
                  info: DistInfo) -> tuple[DataLoader | None, DataLoader]:
    """Training loader (shuffled; distributed or repeated-augmentation sampler under torchrun; mixup / cutmix
    collate) and validation loader (sequential, or sharded without shuffling under torchrun)."""
    pin = info.device.type == "cuda"
    val_loader = build_loader(val_set, args.batch_size, train=False, num_workers=args.workers, seed=args.seed,
                              pin_memory=pin)
    if train_set is None:
        return None, val_loader
    collate = None
    if args.mixup_alpha > 0 or args.cutmix_alpha > 0:
        collate = MixupCutmixCollate(num_classes, args.mixup_alpha, args.cutmix_alpha)
    if args.ra_sampler and info.distributed:
        sampler = RASampler(train_set, shuffle=True, seed=args.seed, repetitions=args.ra_reps)
        train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                  pin_memory=pin, collate_fn=collate, drop_last=True,
                                  persistent_workers=args.workers > 0)
    else:
        if args.ra_sampler:
            print_main("note: --ra-sampler spreads repeated views over processes; with one process it is not used "
                       "(as in the original)")
        train_loader = build_loader(train_set, args.batch_size, train=True, num_workers=args.workers,
                                    seed=args.seed, pin_memory=pin, collate_fn=collate)
    return train_loader, val_loader



# ------------------------------------------------------------------------------------------------ checks
def check_args(args: argparse.Namespace) -> None:
    """Reject flag values that cannot work, before anything is loaded or written."""
    if args.imagenet21k or args.tree_path is not None:
        raise UserError("--imagenet21k / --tree_path (the original's semantic-softmax training on ImageNet-21K) are "
                        "not supported: the original deleted that loss and its class tree; train on ImageNet-21K "
                        "as an ImageFolder with --num-classes instead (see adn/README.md, Differences)")
    if args.model not in MODELS:
        raise UserError(f"--model {args.model} is not an ADN model; choose one of: {', '.join(MODELS)}")
    if args.fpn and args.model not in FPN_MODELS:
        raise UserError(f"--fpn (distillation of stage outputs) works with ResNet models only ("
                        f"{', '.join(FPN_MODELS)}), not --model {args.model}")
    for flag, tokens in (("--skip-cfg", args.skip_cfg), ("--train-skip-cfg", args.train_skip_cfg)):
        for token in tokens or []:
            if not SKIP_TOKEN.match(str(token)):
                raise UserError(f"{flag}: {token!r} is not a skip flag; write one flag per skippable stage as "
                                "True/False/T/F/1/0, or compactly as e.g. TFTF (T = skip the stage's sub-path)")
    if args.torch_compile and args.test_only:
        raise UserError("--torch-compile compiles the training passes (as in the original); drop it with --test-only")
    if args.train_skip_cfg is not None and args.test_only:
        raise UserError("--train-skip-cfg chooses what to train; with --test-only use --skip-cfg")
    if args.train_skip_cfg is not None and args.fpn:
        raise UserError("--fpn distils the super-net's stage outputs into the base-net; it cannot go with "
                        "--train-skip-cfg, which trains one configuration alone")
    positive = {"--batch-size": args.batch_size, "--epochs": args.epochs, "--subpath-topk": args.subpath_topk,
                "--ra-reps": args.ra_reps, "--model-ema-steps": args.model_ema_steps,
                "--val-crop-size": args.val_crop_size, "--train-crop-size": args.train_crop_size,
                "--val-resize-size": args.val_resize_size, "--print-freq": args.print_freq}
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.num_classes is not None and args.num_classes < 2:
        raise UserError(f"--num-classes must be at least 2, got {args.num_classes}")
    if args.workers < 0:
        raise UserError(f"-j/--workers must be 0 or more, got {args.workers}")
    if not 0.0 <= args.subpath_alpha <= 1.0:
        raise UserError(f"--subpath-alpha must lie in [0, 1], got {args.subpath_alpha}")
    if args.subpath_temp <= 0:
        raise UserError(f"--subpath-temp must be positive, got {args.subpath_temp}")
    if args.opt.lower() not in OPTIMIZERS and not args.opt.lower().startswith("sgd"):
        raise UserError(f"--opt {args.opt} is not supported; choose one of: {', '.join(OPTIMIZERS)}")
    if args.lr_scheduler.lower() not in LR_SCHEDULERS:
        raise UserError(f"--lr-scheduler {args.lr_scheduler} is not supported; choose one of: "
                        f"{', '.join(LR_SCHEDULERS)}")
    if args.lr_warmup_epochs > 0 and args.lr_warmup_method.lower() not in WARMUP_METHODS:
        raise UserError(f"--lr-warmup-method {args.lr_warmup_method} is not supported; choose one of: "
                        f"{', '.join(WARMUP_METHODS)}")
    if args.auto_augment is not None and args.auto_augment not in AUTO_AUGMENT_POLICIES:
        raise UserError(f"--auto-augment {args.auto_augment} is not one of: {', '.join(AUTO_AUGMENT_POLICIES)}")
    interpolation_mode(args.interpolation)
    if args.weights and not args.test_only:
        raise UserError("--weights is read with --test-only only; to continue a training run use --resume")
    if args.eval_all_skip_cfgs and not args.output_dir:
        raise UserError("--eval-all-skip-cfgs writes its table to --output-dir; give a folder")


def resolve_skip_cfg(model: nn.Module, args: argparse.Namespace, flag: str = "--skip-cfg") -> tuple[bool, ...]:
    """``--skip-cfg`` (or ``--train-skip-cfg``) for this model (default: the super-net); a wrong count is a
    UserError."""
    try:
        return parse_skip_cfg(getattr(args, flag[2:].replace("-", "_")), model.num_skippable_stages)
    except ValueError as err:
        raise UserError(f"{flag}: {err}") from None


# --------------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or, with ``--test-only``, evaluate) as the flags say; returns the last results."""
    check_args(args)
    writes = not args.test_only or args.eval_all_skip_cfgs
    return run_distributed(lambda info: _run(args, info), args.device, args.dist_timeout,
                           output_dir=args.output_dir if writes else None)


def _run(args: argparse.Namespace, info: DistInfo) -> dict[str, Any]:
    device = info.device
    args.world_size = info.world_size  # the EMA decay adjustment uses the real number of processes
    seed_everything(args.seed)
    if args.use_deterministic_algorithms:
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    else:
        torch.backends.cudnn.benchmark = True
    if args.cache_dataset:
        print_main("note: --cache-dataset is accepted for compatibility and has no effect")

    print_main("Loading data")
    train_set, val_set = load_data(args)
    num_classes = args.num_classes or val_set.num_classes
    if num_classes < val_set.num_classes:
        raise UserError(f"--num-classes {num_classes} is smaller than the {val_set.num_classes} classes of the data")

    print_main(f"Creating model {args.model} ({num_classes} classes)")
    model = create_model(args.model, num_classes=num_classes, skip_aware_norms=args.skip_aware_norms)
    skip_cfg = resolve_skip_cfg(model, args)
    if args.train_skip_cfg is not None:  # the engine reads the name, e.g. "TTTT"
        args.train_skip_cfg = skip_cfg_name(resolve_skip_cfg(model, args, "--train-skip-cfg"))
    if args.weights:
        load_weights(model, args.weights, use_ema=args.model_ema)
    model.to(device)
    if info.distributed and args.sync_bn:
        if device.type == "cpu":
            raise UserError("--sync-bn needs GPUs (SyncBatchNorm has no CPU implementation); drop it with "
                            "--device cpu")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    train_loader, val_loader = build_loaders(train_set, val_set, num_classes, args, info)
    if args.freeze_params:
        trainable = freeze_all_but_classifier(model)
        print_main(f"--freeze_params: training only {model.classifier_name} ({trainable:,} parameters); "
                   "BatchNorm statistics frozen")

    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    optimizer = build_optimizer(parameter_groups(model, args), args)
    scaler = torch.amp.GradScaler(device.type) if args.amp else None
    lr_scheduler = build_lr_scheduler(optimizer, args)
    net = wrap_ddp(StageFeatures(model) if args.fpn else model, info, find_unused_parameters=True)
    if args.torch_compile:  # the original compiled the (DDP-wrapped) model for training only
        net = torch.compile(net)

    model_ema = None
    if args.model_ema:
        decay = ema_decay(args.model_ema_decay, info.world_size, args.batch_size, args.model_ema_steps, args.epochs)
        model_ema = ExponentialMovingAverage(model, decay=decay, device=device)

    if args.resume:
        checkpoint = resume(args.resume, model, optimizer=None if args.test_only else optimizer,
                            scheduler=None if args.test_only else lr_scheduler,
                            scaler=None if args.test_only else scaler, ema=model_ema,
                            restore_rng=not info.distributed)
        args.start_epoch = checkpoint["epoch"] + 1
        if info.distributed:  # every rank gets its own stream again (the file holds rank 0's RNG state)
            seed_everything(args.seed + args.start_epoch)
        print_main(f"Resumed from {args.resume} (epoch {checkpoint['epoch']}); continuing at epoch {args.start_epoch}")

    with start_tracking(args, run_name=f"{args.model}{'-test' if args.test_only else ''}") as tracker:
        tracker.log_params(vars(args))
        if args.test_only:
            return _test_only(net, model_ema, criterion, val_loader, device, skip_cfg, args, tracker)
        return _train(net, model, model_ema, criterion, optimizer, lr_scheduler, scaler, train_loader, val_loader,
                      device, args, tracker)


def _test_only(net, model_ema, criterion, val_loader, device, skip_cfg, args, tracker) -> dict[str, Any]:
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    eval_model = model_ema if model_ema is not None else net
    tag = " (EMA)" if model_ema is not None else ""
    if args.eval_all_skip_cfgs:
        rows = evaluate_all_skip_cfgs(eval_model, criterion, val_loader, device)
        print_main(f"All skip configurations{tag} (MACs = multiply-adds per image):")
        print_main(format_skip_cfg_table(rows))
        if is_main_process():
            path = write_skip_cfg_csv(rows, Path(args.output_dir) / TABLE_FILE)
            print_main(f"Wrote {path}")
            tracker.log_artifact(path)
        tracker.log_metrics({f"test/{r['skip_cfg']}_acc1": r["acc1"] for r in rows})
        return {"skip_cfgs": rows}
    name = skip_cfg_name(skip_cfg)
    result = evaluate(eval_model, criterion, val_loader, device, skip_cfg)
    print_main(f"[{name}]{tag} Test: Acc@1 {result['acc1']:.3f} Acc@5 {result['acc5']:.3f} loss {result['loss']:.4f}")
    tracker.log_metrics({"test/acc1": result["acc1"], "test/acc5": result["acc5"], "test/loss": result["loss"]})
    return {name: result}


def _epoch_cfgs(model: nn.Module, args: argparse.Namespace) -> dict[str, str]:
    """What is evaluated after every epoch: ``{"base": "TTTT", "super": "FFFF"}`` as in the original, or
    ``{"trained": cfg}`` with ``--train-skip-cfg`` (the one network that is trained)."""
    if args.train_skip_cfg is not None:
        return {"trained": args.train_skip_cfg}
    super_cfg, base_cfg = super_and_base_cfgs(model)
    return {"base": skip_cfg_name(base_cfg), "super": skip_cfg_name(super_cfg)}


def _evaluate_epoch(net, model_ema, criterion, val_loader, device, cfgs: dict[str, str]) -> dict[str, dict[str, float]]:
    """The configurations of :func:`_epoch_cfgs`, of the model and of the EMA when there is one."""
    results = {}
    for prefix, candidate in (("", net), ("ema_", model_ema)):
        if candidate is None:
            continue
        for key, cfg in cfgs.items():
            results[f"{prefix}{key}"] = evaluate(candidate, criterion, val_loader, device, cfg)
    return results


NET_LABELS = {"base": "base-net", "super": "super-net", "trained": "trained"}


def _summary_line(epoch: int, args, train: dict[str, float], val: dict[str, dict[str, float]], seconds: float,
                  cfgs: dict[str, str]) -> str:
    if args.train_skip_cfg is not None:
        losses = f"loss_ce {train['loss_ce']:.4f} acc1 {train['acc1']:.2f}"
    else:
        losses = (f"loss_full_acc {train['loss_full_acc']:.4f} loss_kd {train['loss_kd']:.4f} "
                  f"acc1 {train['acc1']:.2f} acc1_skip {train['acc1_skip']:.2f}")
    parts = [f"Epoch {epoch}/{args.epochs - 1}", f"lr {train['lr']:.4g}", f"train: {losses}"]
    for prefix, label in (("", "val"), ("ema_", "EMA val")):
        nets = [f"{NET_LABELS[key]} {cfg} Acc@1 {val[prefix + key]['acc1']:.2f} Acc@5 {val[prefix + key]['acc5']:.2f}"
                for key, cfg in cfgs.items() if prefix + key in val]
        if nets:
            parts.append(f"{label}: " + ", ".join(nets))
    parts.append(f"{train['img/s']:.0f} img/s, {seconds:.1f} s")
    return " | ".join(parts)


def _train(net, model, model_ema, criterion, optimizer, lr_scheduler, scaler, train_loader, val_loader, device,
           args, tracker) -> dict[str, Any]:
    cfgs = _epoch_cfgs(model, args)
    output_dir = Path(args.output_dir) if args.output_dir else None
    last: dict[str, Any] = {}
    checkpoint_path = None
    if args.start_epoch >= args.epochs:
        print_main(f"Nothing to train: the run starts at epoch {args.start_epoch} and --epochs is {args.epochs}")
    else:
        print_main("Start training")
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        epoch_start = time.time()
        set_epoch(train_loader, epoch, args.seed)
        train_metrics = train_one_epoch(net, criterion, optimizer, train_loader, device, epoch, args, model_ema,
                                        scaler)
        lr_scheduler.step()
        val = _evaluate_epoch(net, model_ema, criterion, val_loader, device, cfgs)
        if output_dir is not None:
            state = training_state(model, optimizer, lr_scheduler, scaler, model_ema, epoch=epoch, args=args)
            if epoch % 10 == 0 or epoch > args.epochs - 30:
                save_checkpoint(state, output_dir / f"model_{epoch}.pth")
            checkpoint_path = save_checkpoint(state, output_dir / "checkpoint.pth")
        print_main(_summary_line(epoch, args, train_metrics, val, time.time() - epoch_start, cfgs))
        metrics = {f"train/{k.replace('img/s', 'img_per_s')}": v for k, v in train_metrics.items()}
        for key, result in val.items():
            metrics.update({f"val/{key}_{m}": result[m] for m in ("acc1", "acc5", "loss")})
        tracker.log_metrics(metrics, step=epoch)
        last = {"epoch": epoch, "train": train_metrics, "val": val}
    print_main(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")

    if args.eval_all_skip_cfgs:  # uncompiled: 2^S configurations would each compile a graph
        eval_model = model_ema if model_ema is not None else getattr(net, "_orig_mod", net)
        rows = evaluate_all_skip_cfgs(eval_model, criterion, val_loader, device)
        tag = " (EMA)" if model_ema is not None else ""
        print_main(f"All skip configurations{tag} (MACs = multiply-adds per image):")
        print_main(format_skip_cfg_table(rows))
        last["skip_cfgs"] = rows
        if is_main_process():
            table = write_skip_cfg_csv(rows, Path(args.output_dir) / TABLE_FILE)
            print_main(f"Wrote {table}")
            tracker.log_artifact(table)
    if checkpoint_path is not None:
        tracker.set_tags({"final_checkpoint": str(checkpoint_path.resolve())})
        summary = {"final_checkpoint": str(checkpoint_path.resolve()), **last}
        summary_path = output_dir / SUMMARY_FILE
        summary_path.write_text(json.dumps(summary, indent=2, default=str))
        tracker.log_artifact(summary_path)
    return last


# ------------------------------------------------------------------------------------------------ arguments
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The original ``train_adn.py`` flags with their defaults, plus ADN's additions (see adn/README.md)."""
    parser = ArgumentParser(prog=PROG, add_help=add_help,
                            description="ADN (adaptive depth networks with skippable sub-paths): self-distillation "
                                        "training and evaluation, after the torchvision classification reference.")
    add_config_argument(parser)
    add = parser.add_argument
    # ADN: the self-distillation objective (spec Sec. b)
    add("--subpath-alpha", default=0.5, type=non_negative_float,
        help="weight alpha of the super-net CE; the base-net's KD gets 1 - alpha (default: %(default)s)")
    add("--subpath-temp", default=1.0, type=positive_float, help="distillation temperature T (default: %(default)s)")
    add("--subpath-topk", default=DEFAULT_TOPK, type=int,
        help="distil over the super-net's top-K classes, clipped to the class count (default: %(default)s, the "
             "original's hard-coded value; K >= classes is plain KD)")
    add("--fpn", action="store_true",
        help="add feature distillation of the pooled stage outputs (all stages but the last); ResNet models only")
    add("--skip-cfg", nargs="+", default=None, metavar="FLAG",
        help="skip configuration evaluated by --test-only, one flag per skippable stage (T = skip its sub-path): "
             "True/False/T/F/1/0 in any case, or compact like TFTF (default: the super-net, all False)")
    add("--train-skip-cfg", nargs="+", default=None, metavar="FLAG",
        help="train this one configuration alone with cross-entropy on the labels (no self-distillation, no other "
             "sub-network): the individually trained network of that depth the paper compares with, e.g. TTTT "
             "for the base-net or FFFF for the super-net; same spellings as --skip-cfg (default: ADN training)")
    add("--skip-aware-norms", action=argparse.BooleanOptionalAction, default=True,
        help="give the mandatory layers the skip-aware norms they use when their stage is skipped (the paper's "
             "method); --no-skip-aware-norms is the ablation where every configuration shares one set of norms "
             "(default: on)")
    add("--eval-all-skip-cfgs", action="store_true",
        help=f"evaluate every skip configuration (accuracy and MACs per image); with --test-only instead of "
             f"--skip-cfg, else once after training; printed and written to <output-dir>/{TABLE_FILE}")
    # data
    add("--dataset", default="imagefolder", choices=DATASETS,
        help="imagefolder: <data-path>/{train,val}/<class>/<images>; digits (real 8x8 handwritten digits) and "
             "synthetic are built in, no download, at --val-crop-size pixels (default: %(default)s)")
    add("--data-path", default="/datasets01/imagenet_full_size/061417/", type=str,
        help="dataset path for --dataset imagefolder (default: %(default)s)")
    add("--num-classes", default=None, type=int,
        help="classifier outputs (default: the number of classes of the data; 10 for synthetic)")
    add("--model", default="resnet18", type=str,
        help=f"ADN model: {', '.join(MODELS)} (the default %(default)s is the original's and is not an ADN model)")
    add("--device", default="cuda", type=str, help="cuda or cpu (default: %(default)s)")
    add("-b", "--batch-size", default=32, type=int,
        help="images per process; the total batch is processes x batch-size (default: %(default)s)")
    add("--epochs", default=90, type=int, metavar="N", help="number of epochs to run (default: %(default)s)")
    add("-j", "--workers", default=16, type=int, metavar="N", help="data loading workers (default: %(default)s)")
    # optimisation
    add("--opt", default="sgd", type=str, help=f"optimizer: {', '.join(OPTIMIZERS)} (default: %(default)s)")
    add("--lr", default=0.1, type=positive_float, help="initial learning rate (default: %(default)s)")
    add("--momentum", default=0.9, type=non_negative_float, metavar="M", help="momentum (default: %(default)s)")
    add("--wd", "--weight-decay", default=1e-4, type=non_negative_float, metavar="W", dest="weight_decay",
        help="weight decay (default: %(default)s)")
    add("--norm-weight-decay", default=None, type=non_negative_float,
        help="weight decay of normalization layers (default: None, the same as --wd)")
    add("--bias-weight-decay", default=None, type=non_negative_float,
        help="weight decay of all biases (default: None, the same as --wd)")
    add("--transformer-embedding-decay", default=None, type=non_negative_float,
        help="weight decay of class_token, pos_embedding / position_embedding and relative_position_bias_table "
             "(default: None, the same as --wd)")
    add("--label-smoothing", default=0.0, type=non_negative_float, dest="label_smoothing",
        help="label smoothing of the super-net CE (default: %(default)s)")
    add("--mixup-alpha", default=0.0, type=non_negative_float, help="mixup alpha (default: %(default)s)")
    add("--cutmix-alpha", default=0.0, type=non_negative_float,
        help="cutmix alpha; with both alphas set, one of the two is applied per batch (default: %(default)s)")
    add("--lr-scheduler", default="steplr", type=str,
        help=f"learning-rate schedule, stepped per epoch: {', '.join(LR_SCHEDULERS)} (default: %(default)s)")
    add("--lr-warmup-epochs", default=0, type=int, help="warm-up epochs (default: %(default)s)")
    add("--lr-warmup-method", default="constant", type=str,
        help=f"warm-up: {', '.join(WARMUP_METHODS)} (default: %(default)s)")
    add("--lr-warmup-decay", default=0.01, type=non_negative_float,
        help="learning-rate factor at the start of the warm-up (default: %(default)s)")
    add("--lr-step-size", default=30, type=int, help="steplr: decay every N epochs (default: %(default)s)")
    add("--lr-multi-steps", nargs="+", default=[60, 100, 140], type=int,
        help="multisteplr milestones (default: 60 100 140)")
    add("--lr-gamma", default=0.1, type=non_negative_float,
        help="decay factor of the lr schedule (default: %(default)s)")
    add("--lr-min", default=0.0, type=non_negative_float, help="cosineannealinglr: minimum lr (default: %(default)s)")
    add("--clip-grad-norm", default=None, type=positive_float,
        help="clip the gradient norm to this value (default: None)")
    add("--amp", action="store_true", help="mixed precision (torch.autocast + one GradScaler for both passes)")
    add("--torch-compile", action="store_true",
        help="train through torch.compile (the original's HEAD flag; the first steps of each configuration compile)")
    add("--freeze_params", "--freeze-params", action="store_true", dest="freeze_params",
        help="freeze the parameters and the BatchNorm statistics of everything but the classification head (the "
             "original's HEAD help text; its code there is commented out)")
    add("--imagenet21k", action="store_true",
        help="the original's HEAD semantic-softmax ImageNet-21K training: not supported (an error; see README)")
    add("--tree_path", "--tree-path", default=None, dest="tree_path",
        help="the ImageNet-21K class tree of --imagenet21k: not supported (an error; see README)")
    # EMA
    add("--model-ema", action="store_true",
        help="keep an exponential moving average of the weights and buffers and evaluate it too; with "
             "--test-only --weights, read the 'model_ema' entry of a training checkpoint")
    add("--model-ema-steps", type=int, default=32, help="update the EMA every N iterations (default: %(default)s)")
    add("--model-ema-decay", type=non_negative_float, default=0.99998,
        help="EMA decay before torchvision's batch-size/epochs adjustment (default: %(default)s)")
    # augmentation
    add("--interpolation", default="bilinear", type=str, help="resize interpolation (default: %(default)s)")
    add("--val-resize-size", default=256, type=int, help="validation resize (default: %(default)s)")
    add("--val-crop-size", default=224, type=int,
        help="validation centre crop; also the image size of digits / synthetic (default: %(default)s)")
    add("--train-crop-size", default=224, type=int, help="training random-resized crop (default: %(default)s)")
    add("--auto-augment", default=None, type=str,
        help=f"auto-augment policy: {', '.join(AUTO_AUGMENT_POLICIES)} (default: None)")
    add("--ra-magnitude", default=9, type=int, help="RandAugment magnitude (default: %(default)s)")
    add("--augmix-severity", default=3, type=int, help="AugMix severity (default: %(default)s)")
    add("--random-erase", default=0.0, type=non_negative_float,
        help="random erasing probability (default: %(default)s)")
    add("--ra-sampler", action="store_true",
        help="repeated-augmentation sampler under torchrun (ignored with one process, as in the original)")
    add("--ra-reps", default=3, type=int, help="repetitions of the RA sampler (default: %(default)s)")
    add("--skip-corrupt-images", action="store_true",
        help="--dataset imagefolder: skip and count undecodable images instead of stopping at the first")
    add("--cache-dataset", action="store_true",
        help="accepted for compatibility with the original; has no effect here (no dataset cache)")
    # run control
    add("--print-freq", default=10, type=int, help="refresh the progress bar's numbers every N batches")
    add("--output-dir", default=".", type=str, help="where checkpoints and tables go (default: %(default)s)")
    add("--resume", default="", type=str, help="training checkpoint to continue from (its epoch + 1)")
    add("--start-epoch", default=0, type=int, metavar="N", help="first epoch (default: %(default)s)")
    add("--test-only", action="store_true", help="only evaluate (--skip-cfg, or --eval-all-skip-cfgs)")
    add("--weights", default=None, type=str,
        help="with --test-only: a released plain state dict, or a checkpoint.pth / model_N.pth of this script")
    add("--sync-bn", action="store_true", help="synchronised batch norm across processes (GPU)")
    add("--use-deterministic-algorithms", action="store_true", help="force deterministic algorithms")
    add("--seed", default=0, type=int, help="random seed; process r uses seed + r (default: %(default)s)")
    add("--world-size", default=1, type=int,
        help="accepted for compatibility; the number of processes comes from torchrun")
    add("--dist-url", default="env://", type=str,
        help="accepted for compatibility; torchrun's environment sets up the process group")
    add_distributed_args(parser)
    add_tracking_args(parser, "adn")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line (and ``-c/--config`` YAML defaults) to a namespace; bad values raise UserError."""
    return parse_args_with_config(get_args_parser(), argv)


def cli(argv: Sequence[str] | None = None) -> None:
    """Entry point: parse, run, and turn every UserError into one line on stderr with exit status 2."""
    run_cli(lambda: main(parse_args(argv)), prog=PROG)


if __name__ == "__main__":
    cli(sys.argv[1:])
