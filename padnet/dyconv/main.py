"""Train and evaluate PAD-Net DY-Conv models (He et al., ACL 2023; spec Sec. d): the original ``dyconv/main.py``.

    python padnet/dyconv/main.py -d /path/to/imagenet --config_file padnet/dyconv/configs/pad_resnet50.yml \\
        --sparsity 0.3 --pruner snip -c checkpoints/pad_resnet50_k0.3
    torchrun --nproc_per_node=8 padnet/dyconv/main.py ...                      # the same on 8 GPUs
    python padnet/dyconv/main.py --dataset digits --input-size 32 -j 0 \\
        --config_file padnet/dyconv/configs/digits_pad_resnet10_s025.yml --pruner snip -c /tmp/pad   # no download
    python padnet/dyconv/main.py -e --weight model_best.pth.tar --config_file ... -d /path/to/imagenet

The model comes from ``--config_file`` (``model: {type: <factory>, kwargs: {...}}``). For a PAD model, Iterative
Mode Partition (spec Sec. b.3) splits every PAD layer's kernel positions into dynamic and static ones once, before
the optimizer is created, at the dynamic ratio ``--sparsity``; the mask then stays fixed. Every epoch trains with
the temperature annealed from ``--temp_init`` to 1 over ``--temp_epoch`` epochs and a per-iteration learning rate
(:mod:`padnet.dyconv.engine`), validates, appends a row to ``log.txt`` and saves ``checkpoint.pth.tar`` (and
``model_best.pth.tar``) in ``-c/--checkpoint``; a run finds its ``checkpoint.pth.tar`` there and continues.
Flags and defaults are the original's; the additions and fixes are listed in ``padnet/README.md`` ("Differences
from the original"). Mistakes the user can fix print one line and exit with status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import transforms as T

from common.checkpoint import (
    CheckpointError,
    load_checkpoint_file,
    load_state_dict,
    save_checkpoint,
    select_state_dict,
    unwrap_model,
)
from common.config import ConfigError, load_yaml, non_negative_float, positive_float
from common.data import IMAGENET_MEAN, IMAGENET_STD, build_dataset, build_loader, set_epoch
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
from padnet.dyconv.engine import LR_DECAYS, label_smoothing_loss, train_one_epoch, validate
from padnet.dyconv.layers import imp_masks, is_pad_model, pad_layers, set_temperature
from padnet.dyconv.models import MODELS, build_model, checkpoint_filter_fn
from padnet.imp import classification_loss, iterative_mode_partition, mag_scores, rand_scores, snip_scores

__all__ = ["dynamic_ratios", "get_args_parser", "load_data", "load_model_config", "main", "parse_args",
           "run_mode_partition"]

PROG = "main.py"
DATASETS = ("imagenet", "digits", "synthetic")
PRUNERS = ("rand", "mag", "snip", "grasp", "synflow", "varient")
CHECKPOINT, BEST = "checkpoint.pth.tar", "model_best.pth.tar"
LOG_COLUMNS = ("Epoch", "Learning Rate", "Train Loss", "Valid Loss", "Train Acc.", "Valid Acc.", "Valid Acc5.")
CHECKPOINT_KEYS = ("temperature", "epoch", "arch", "state_dict", "best_prec1", "optimizer")
MISSING_DATA = ("-d/--data is missing: give the ImageNet root (with train/ and val/ folders, one sub-folder per "
                "class), or train on the embedded data with --dataset digits (or --dataset synthetic)")


def _strict_bool(value: str) -> bool:
    """The original's ``type=bool`` flags, read strictly: ``--prune-train-mode False`` is False here."""
    lowered = str(value).strip().lower()
    if lowered in ("1", "true", "yes", "y", "t"):
        return True
    if lowered in ("0", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"{value!r} is not true or false")


# ----------------------------------------------------------------------------------------------- config
def load_model_config(path: str) -> dict[str, Any]:
    """The ``--config_file`` YAML: ``model: {type: <factory name>, kwargs: {...}}`` (spec Sec. d), checked."""
    if not path:
        raise ConfigError("--config_file is required: a YAML file with `model: {type: <name>, kwargs: {...}}`; "
                          "the shipped ones are in padnet/dyconv/configs/")
    if not Path(path).is_file():
        raise ConfigError(f"--config_file {path} does not exist; the shipped model configs are in "
                          "padnet/dyconv/configs/")
    data = load_yaml(path)
    unknown = sorted(set(map(str, data)) - {"model"})
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}; only 'model' is read "
                          "(training settings are flags)")
    model = data.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("type"), str):
        raise ConfigError(f"config file {path} needs `model: {{type: <name>, kwargs: {{...}}}}`, e.g. "
                          "type: DyResNet50_PAD")
    extra = sorted(set(map(str, model)) - {"type", "kwargs"})
    if extra:
        raise ConfigError(f"config file {path}: unknown key(s) model.{', model.'.join(extra)}; use model.type and "
                          "model.kwargs")
    kwargs = model.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise ConfigError(f"config file {path}: model.kwargs must be a mapping of argument names to values")
    if model["type"] not in MODELS:
        raise ConfigError(f"config file {path}: unknown model type {model['type']!r}; choose one of: "
                          f"{', '.join(MODELS)}")
    return {"type": model["type"], "kwargs": dict(kwargs)}


def create_model(config: dict[str, Any], path: str) -> nn.Module:
    try:
        return build_model(config["type"], **config["kwargs"])
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config file {path}: cannot build {config['type']} with kwargs {config['kwargs']} "
                          f"({err})") from None


# ------------------------------------------------------------------------------------------------- data
def load_data(args: argparse.Namespace) -> tuple[Dataset | None, Dataset]:
    """Training (None with ``--evaluate``) and validation sets (spec Sec. b.5).

    ``imagenet``: ``DATA/train`` and ``DATA/val`` ImageFolders; RandomResizedCrop(``--input-size``) + flip for
    training, Resize(256) + CenterCrop(``--input-size``) for validation, ImageNet mean/std. ``digits`` (real 8x8
    handwritten digits) and ``synthetic`` are built in, at ``--input-size`` pixels, used as they are.
    """
    if args.dataset != "imagenet":
        if args.data:
            print_main(f"note: -d/--data ({args.data}) is not read with --dataset {args.dataset}")
        val_set = build_dataset(args.dataset, split="val", img_size=args.input_size, transform=None)
        if args.evaluate:
            return None, val_set
        return build_dataset(args.dataset, split="train", img_size=args.input_size, transform=None), val_set
    if not args.data:
        raise UserError(MISSING_DATA)
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_tf = T.Compose([T.RandomResizedCrop(args.input_size), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    val_tf = T.Compose([T.Resize(256), T.CenterCrop(args.input_size), T.ToTensor(), normalize])
    skip = {"skip_corrupt": args.skip_corrupt_images}
    val_set = build_dataset("imagenet", args.data, "val", transform=val_tf, **skip)
    if args.evaluate:
        return None, val_set
    return build_dataset("imagenet", args.data, "train", transform=train_tf, **skip), val_set


def prune_loader(train_set: Dataset, args: argparse.Namespace) -> DataLoader:
    """The IMP data (spec Sec. b.3): ``--prune_dataset_ratio * -b`` random training images in batches of ``-b``,
    not shuffled. The draw depends only on ``--seed``, so every process scores the same images."""
    generator = torch.Generator().manual_seed(args.seed)
    indices = torch.randperm(len(train_set), generator=generator)[:args.prune_dataset_ratio * args.batch_size]
    return DataLoader(Subset(train_set, indices.tolist()), batch_size=args.batch_size, shuffle=False,
                      num_workers=args.workers)


# ------------------------------------------------------------------------------------------------ checks
def check_args(args: argparse.Namespace) -> None:
    """Reject flag values that cannot work, before anything is loaded or written."""
    if args.epochs < 0:
        raise UserError(f"--epochs must be 0 (partition only) or more, got {args.epochs}")
    positive = {"-b/--batch-size": args.batch_size, "--input-size": args.input_size,
                "--prune_dataset_ratio": args.prune_dataset_ratio, "--prune-epochs": args.prune_epochs,
                "--step": args.step}
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.workers < 0:
        raise UserError(f"-j/--workers must be 0 or more, got {args.workers}")
    if not 0.0 < args.sparsity <= 1.0:
        raise UserError(f"--sparsity is the fraction of kernel positions kept dynamic and must lie in (0, 1], "
                        f"got {args.sparsity}")
    if not 0.0 <= args.label_smoothing < 1.0:
        raise UserError(f"--label-smoothing must lie in [0, 1), got {args.label_smoothing}")
    if args.mixup < 0:
        raise UserError(f"--mixup must be 0 or more, got {args.mixup}")
    if args.temp_epoch < 0 or args.temp_init < 1:
        raise UserError("--temp_epoch must be 0 or more and --temp_init at least 1")
    if args.pruner in ("grasp", "synflow", "varient"):
        raise UserError(f"--pruner {args.pruner} does not apply to PAD masks (spec Sec. b.3); use snip (the "
                        "paper's IMP), rand or mag")
    for flag in ("reinitialize", "shuffle", "invert"):
        if getattr(args, flag):
            raise UserError(f"--{flag} is not supported (mask ablations of the SynFlow code the original copied); "
                            "leave it False")
    if args.pretrained:
        raise UserError("--pretrained: no PAD-Net weights were released; to evaluate a checkpoint use "
                        "--evaluate --weight FILE")
    if args.evaluate and not args.weight:
        raise UserError("--evaluate needs --weight FILE (a checkpoint.pth.tar / model_best.pth.tar of this script "
                        "or of the original)")
    if args.weight and not args.evaluate:
        raise UserError("--weight is read with --evaluate only; to continue a run use --resume or -c/--checkpoint")


# ------------------------------------------------------------------------------------------ mode partition
def dynamic_ratios(model: nn.Module) -> dict[str, float]:
    """The fraction of dynamic kernel positions of every PAD layer, and ``overall`` over all of them."""
    ratios, dynamic, total = {}, 0.0, 0
    for name, layer in pad_layers(unwrap_model(model)):
        mask = layer.kernels_weights_mask
        ratios[name] = mask.float().mean().item()
        dynamic += mask.float().sum().item()
        total += mask.numel()
    ratios["overall"] = dynamic / max(total, 1)
    return ratios


def run_mode_partition(model: nn.Module, criterion: nn.Module, loader: DataLoader, args: argparse.Namespace
                       ) -> dict[str, float]:
    """Iterative Mode Partition (spec Sec. b.3) of every PAD layer's ``kernels_weights_mask``, scored by
    ``--pruner`` (snip: ``|dL/dM|`` of the training criterion over ``loader``; rand: seeded Gaussian noise; mag:
    ``|Theta|``), at the model's current temperature (31 before training). Returns the per-layer dynamic ratios."""
    generator = torch.Generator().manual_seed(args.seed)
    scorers = {
        "snip": lambda net, masks: snip_scores(net, masks, loader, classification_loss(criterion)),
        "rand": lambda net, masks: rand_scores(net, masks, generator),
        "mag": mag_scores,
    }
    return iterative_mode_partition(model, imp_masks(model), scorers[args.pruner], sparsity=args.sparsity,
                                    prune_epochs=args.prune_epochs, schedule=args.compression_schedule,
                                    scope=args.mask_scope, train_mode=args.prune_train_mode)


# ------------------------------------------------------------------------------------------- checkpoints
def load_weight(model: nn.Module, path: str) -> float:
    """Load ``--weight`` (this script's or the original's checkpoint: ``module.`` prefixes, optional
    ``*_mask`` keys) into ``model`` strictly; returns its temperature (1.0 when it has none, as the original)."""
    checkpoint = load_checkpoint_file(path)
    state = checkpoint_filter_fn(select_state_dict(checkpoint), model)
    load_state_dict(model, state, strict=True, source=str(path))
    temperature = checkpoint.get("temperature", 1.0) if isinstance(checkpoint, dict) else 1.0
    return float(temperature)


def resume_path(args: argparse.Namespace) -> Path | None:
    """``--resume FILE``, else the ``checkpoint.pth.tar`` of ``-c/--checkpoint`` when it exists (auto-resume)."""
    if args.resume:
        if not Path(args.resume).is_file():
            raise CheckpointError(f"--resume {args.resume} does not exist")
        return Path(args.resume)
    auto = Path(args.checkpoint) / CHECKPOINT
    return auto if auto.is_file() else None


def load_resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model (PAD masks included), optimizer and temperature from a checkpoint of this script."""
    checkpoint = load_checkpoint_file(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint of main.py (it lacks {', '.join(missing)}); "
                              "evaluate weights with --evaluate --weight, or start afresh in another -c folder")
    load_state_dict(model, checkpoint_filter_fn(select_state_dict(checkpoint), model), strict=True, source=str(path))
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError) as err:
        raise CheckpointError(f"{path}: the optimizer state does not fit this model ({err})") from None
    set_temperature(model, float(checkpoint["temperature"]))
    return checkpoint


def checkpoint_state(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, best_prec1: float,
                     config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The original's checkpoint dict (spec Sec. c) plus the model config and the flags of the run. ``epoch`` is
    the number of finished epochs (the one to resume at); state-dict keys carry no ``module.`` prefix."""
    core = unwrap_model(model)
    return {"temperature": float(getattr(core, "temperature", 1.0)), "epoch": epoch, "arch": args.arch,
            "state_dict": core.state_dict(), "best_prec1": best_prec1, "optimizer": optimizer.state_dict(),
            "model": config, "args": {k: v for k, v in vars(args).items() if not callable(v)}}


class Logger:
    """``log.txt`` of the original: one tab-separated header line, one ``%.6f`` row per epoch; appends on resume."""

    def __init__(self, path: Path, resume: bool):
        self.path = path
        if is_main_process() and not (resume and path.is_file()):
            path.write_text("\t".join(LOG_COLUMNS) + "\t\n")

    def append(self, numbers: Sequence[float]) -> None:
        if is_main_process():
            with self.path.open("a") as f:
                f.write("".join(f"{n:.6f}\t" for n in numbers) + "\n")


# --------------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or, with ``--evaluate``, validate) as the flags say; returns the results."""
    check_args(args)
    return run_distributed(lambda info: _run(args, info), args.device, args.dist_timeout,
                           output_dir=None if args.evaluate else args.checkpoint, output_flag="-c/--checkpoint")


def _run(args: argparse.Namespace, info: DistInfo) -> dict[str, Any]:
    config = load_model_config(args.config_file)
    train_set, val_set = load_data(args)
    seed_everything(args.seed, per_rank=False)  # every process builds the same initial model
    print_main(f"=> creating model '{args.arch}' ({config['type']}, {config['kwargs']})")
    model = create_model(config, args.config_file)
    num_classes = int(config["kwargs"].get("num_classes", 1000))
    if num_classes < val_set.num_classes:
        raise ConfigError(f"config file {args.config_file}: the model has {num_classes} outputs but the data has "
                          f"{val_set.num_classes} classes; set model.kwargs.num_classes: {val_set.num_classes}")
    criterion = label_smoothing_loss(args.label_smoothing, num_classes)
    batch = max(1, args.batch_size // info.world_size)  # -b is the total batch, as with the original's DataParallel
    pin = info.device.type == "cuda"
    val_loader = build_loader(val_set, batch, train=False, num_workers=args.workers, seed=args.seed, pin_memory=pin)
    train_loader = None if train_set is None else build_loader(train_set, batch, train=True, num_workers=args.workers,
                                                               seed=args.seed, pin_memory=pin)
    if train_loader is not None and len(train_loader) == 0:
        raise UserError(f"the training set has {len(train_set)} images, fewer than one batch of {batch} per process "
                        "(incomplete batches are dropped); lower -b")

    with start_tracking(args, run_name=f"{config['type']}{'-eval' if args.evaluate else ''}") as tracker:
        tracker.log_params({**vars(args), "model": config})
        if args.evaluate:
            return _evaluate(model, criterion, val_loader, info, args, tracker)
        return _train(model, config, criterion, train_set, train_loader, val_loader, info, args, tracker)


def _evaluate(model, criterion, val_loader, info, args, tracker) -> dict[str, Any]:
    temperature = load_weight(model, args.weight)
    set_temperature(model.to(info.device), temperature)
    print_main(f"=> loaded weight '{args.weight}' (temperature {temperature:g})")
    result = validate(wrap_ddp(model, info), criterion, val_loader, info.device)
    print_main(f" * Acc@1 {result['acc1']:.3f} Acc@5 {result['acc5']:.3f} Loss {result['loss']:.4f}")
    tracker.log_metrics({"test/acc1": result["acc1"], "test/acc5": result["acc5"], "test/loss": result["loss"]})
    return {"evaluate": result, "temperature": temperature}


def _partition(model, criterion, train_set, args, tracker) -> dict[str, float]:
    """Iterative Mode Partition before training (spec Sec. b.3), with the per-layer dynamic ratios logged."""
    print_main(f"=> Iterative Mode Partition: pruner {args.pruner}, kappa {args.sparsity}, {args.prune_epochs} "
               f"round(s), {args.compression_schedule} schedule, {args.mask_scope} scope")
    run_mode_partition(model, criterion, prune_loader(train_set, args), args)
    ratios = dynamic_ratios(model)
    overall = ratios.pop("overall")
    for name, ratio in ratios.items():
        print_main(f"   {name}: dynamic ratio {ratio:.4f}")
    print_main(f"=> mode partition done: {overall:.4f} of the kernel positions are dynamic (target {args.sparsity})")
    tracker.log_metrics({"imp/dynamic_ratio": overall})
    if is_main_process():
        lines = [f"{name}\t{ratio:.6f}" for name, ratio in ratios.items()] + [f"overall\t{overall:.6f}"]
        (Path(args.checkpoint) / "dynamic_ratios.txt").write_text("\n".join(lines) + "\n")
    return {**ratios, "overall": overall}


def _train(model, config, criterion, train_set, train_loader, val_loader, info, args, tracker) -> dict[str, Any]:
    device = info.device
    model.to(device)
    resume_from = resume_path(args)
    ckpt_dir = Path(args.checkpoint)
    ratios = None
    if resume_from is None:
        if is_pad_model(model):
            if is_main_process():
                ckpt_dir.mkdir(parents=True, exist_ok=True)
            ratios = _partition(model, criterion, train_set, args, tracker)
    # DDP copies rank 0's parameters and buffers (the masks included) to every process; phi_d takes no part in the
    # forward of a PAD layer with Lambda None, hence find_unused_parameters (as the original)
    net = wrap_ddp(model, info, find_unused_parameters=True)
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    best_prec1 = 0.0
    if resume_from is not None:
        checkpoint = load_resume(resume_from, model, optimizer)
        args.start_epoch, best_prec1 = int(checkpoint["epoch"]), float(checkpoint["best_prec1"])
        print_main(f"=> loaded checkpoint '{resume_from}' (epoch {args.start_epoch}, temperature "
                   f"{getattr(model, 'temperature', 1.0):g}); continuing")
        if is_pad_model(model):
            print_main(f"=> {dynamic_ratios(model)['overall']:.4f} of the kernel positions are dynamic")
    if is_main_process():
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        (ckpt_dir / "arch.txt").write_text(f"{model}\n")
        if resume_from is None:
            options = "".join(f"{k:>25}: {v!s:<30}\n" for k, v in sorted(vars(args).items()))
            (ckpt_dir / "options.txt").write_text(options)
    logger = Logger(ckpt_dir / "log.txt", resume=resume_from is not None)

    epochs = []
    if args.start_epoch >= args.epochs:
        print_main(f"Nothing to train: the run starts at epoch {args.start_epoch} and --epochs is {args.epochs}")
    for epoch in range(args.start_epoch, args.epochs):
        start = time.time()
        seed_everything(args.seed + epoch)  # mixup draws depend on (seed, epoch, rank) only: resume is exact
        set_epoch(train_loader, epoch, args.seed)
        train = train_one_epoch(net, criterion, optimizer, train_loader, device, epoch, args)
        val = validate(net, criterion, val_loader, device)
        is_best = val["acc1"] > best_prec1
        best_prec1 = max(val["acc1"], best_prec1)
        state = checkpoint_state(model, optimizer, epoch + 1, best_prec1, config, args)
        # model_best first: if it cannot be written, checkpoint.pth still names the previous best; the log row comes
        # last, so a crash before it never leaves a row that a resumed run writes again
        if is_best:
            save_checkpoint(state, ckpt_dir / BEST)
        save_checkpoint(state, ckpt_dir / CHECKPOINT)
        logger.append([epoch + 1, train["lr"], train["loss"], val["loss"], train["acc1"], val["acc1"], val["acc5"]])
        print_main(f"Epoch {epoch + 1}/{args.epochs} | lr {train['lr']:.4g} | T {train['temperature']:.3f} | train "
                   f"loss {train['loss']:.4f} acc1 {train['acc1']:.2f} | val loss {val['loss']:.4f} acc1 "
                   f"{val['acc1']:.2f} acc5 {val['acc5']:.2f} | best {best_prec1:.2f} | {time.time() - start:.1f} s")
        tracker.log_metrics({"train/loss": train["loss"], "train/acc1": train["acc1"], "train/lr": train["lr"],
                             "train/temperature": train["temperature"], "val/loss": val["loss"],
                             "val/acc1": val["acc1"], "val/acc5": val["acc5"], "val/best_acc1": best_prec1},
                            step=epoch + 1)
        epochs.append({"epoch": epoch + 1, "train": train, "val": val})
    if is_main_process() and (ckpt_dir / CHECKPOINT).is_file():
        tracker.set_tags({"final_checkpoint": str((ckpt_dir / CHECKPOINT).resolve())})
        tracker.log_artifact(ckpt_dir / "log.txt")
    return {"epochs": epochs, "best_prec1": best_prec1, "checkpoint": str(ckpt_dir / CHECKPOINT),
            "dynamic_ratios": ratios,
            "temperature": float(getattr(model, "temperature", 1.0))}


# ------------------------------------------------------------------------------------------------ arguments
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The original ``dyconv/main.py`` flags and defaults (spec Sec. d), plus ``--dataset``, ``--device`` and
    MLflow's (see padnet/README.md)."""
    parser = ArgumentParser(prog=PROG, add_help=add_help,
                            description="PAD-Net (partially dynamic networks) with DY-Conv on ImageNet or the embedded "
                                        "digits: Iterative Mode Partition, then training.")
    add = parser.add_argument
    add("-d", "--data", metavar="DIR", default="", help="ImageNet root with train/ and val/ (for --dataset imagenet)")
    add("--dataset", default="imagenet", choices=DATASETS,
        help="imagenet: ImageFolder at -d/--data; digits (real 8x8 handwritten digits) and synthetic are built in, "
             "no download, at --input-size pixels (default: %(default)s)")
    add("--config_file", type=str, default="",
        help="required: YAML with `model: {type: <factory>, kwargs: {...}}` (padnet/dyconv/configs/*.yml)")
    add("-a", "--arch", metavar="ARCH", default="resnet18",
        help="name for titles and the checkpoint's 'arch'; the model comes from --config_file (default: %(default)s)")
    add("-j", "--workers", default=16, type=int, metavar="N", help="data loading workers (default: %(default)s)")
    add("--epochs", default=90, type=int, metavar="N", help="total epochs (default: %(default)s)")
    add("--start-epoch", default=0, type=int, metavar="N", help="first epoch; a resumed run sets it (default: 0)")
    add("-b", "--batch-size", default=256, type=int, metavar="N",
        help="total batch size over all processes (default: %(default)s)")
    add("--lr", "--learning-rate", default=0.1, type=positive_float, metavar="LR", dest="lr",
        help="initial learning rate (default: %(default)s)")
    add("--momentum", default=0.9, type=non_negative_float, metavar="M", help="SGD momentum (default: %(default)s)")
    add("--wd", "--weight-decay", default=1e-4, type=non_negative_float, metavar="W", dest="weight_decay",
        help="weight decay on every parameter (default: %(default)s)")
    add("-p", "--print-freq", default=10, type=int, metavar="N", help="accepted; progress bars show every batch")
    add("--resume", default="", type=str, metavar="PATH",
        help="checkpoint to continue from (default: <checkpoint>/checkpoint.pth.tar when it exists)")
    add("-e", "--evaluate", dest="evaluate", action="store_true", help="only validate the --weight checkpoint")
    add("--pretrained", dest="pretrained", action="store_true", help="not available: no weights were released")
    add("--world-size", default=-1, type=int, help="accepted; torchrun sets the number of processes")
    add("--rank", "--local_rank", default=-1, type=int, help="accepted; torchrun sets the rank")
    add("--dist-url", default="tcp://224.66.41.62:23456", type=str, help="accepted; torchrun sets the rendezvous")
    add("--dist-backend", default="nccl", type=str, help="accepted; NCCL on GPUs, Gloo on CPUs")
    add("--seed", default=None, type=int, help="random seed (default: None, which seeds 0 as the original)")
    add("--lr-decay", type=str, default="step", choices=LR_DECAYS,
        help="per-iteration learning-rate schedule: step (x gamma every --step epochs), cos, linear, schedule "
             "(x gamma at each --schedule epoch) (default: %(default)s)")
    add("--step", type=int, default=30, help="decay interval in epochs of --lr-decay step (default: %(default)s)")
    add("--schedule", type=int, nargs="+", default=[30, 60, 90], help="epochs of --lr-decay schedule (default: "
                                                                       "30 60 90)")
    add("--gamma", type=non_negative_float, default=0.1, help="decay factor of step / schedule (default: %(default)s)")
    add("--warmup", action="store_true", help="linear learning-rate warm-up over the first 5 epochs")
    add("-c", "--checkpoint", default="checkpoints", type=str, metavar="PATH",
        help="folder of checkpoint.pth.tar, model_best.pth.tar, log.txt (default: %(default)s)")
    add("--width-mult", type=non_negative_float, default=1.0,
        help="accepted, unused: the width comes from the config kwargs")
    add("--fc-squeeze", type=int, default=8, help="accepted, unused (as in the original)")
    add("--input-size", type=int, default=224,
        help="crop size; the image size of digits / synthetic (default: %(default)s)")
    add("--weight", default="", type=str, metavar="WEIGHT",
        help="checkpoint to evaluate with -e (this script's or the original's, module. prefix or not)")
    add("--label-smoothing", type=non_negative_float, default=0.1,
        help="label smoothing of the loss (default: %(default)s)")
    add("--mixup", type=non_negative_float, default=0.0,
        help="mixup alpha, ramped as mixup*epoch/100 (default: %(default)s)")
    add("--mode", type=str, default="large", help="accepted, unused (MobileNetV3 size of the original)")
    add("--dropout", type=non_negative_float, default=None, help="accepted, unused (the models do not apply dropout)")
    add("--device_ids", type=str, default="0", help="accepted; use torchrun --nproc_per_node for several GPUs")
    add("--device", default=None, type=str, help="cuda or cpu (default: cuda when available)")
    pad = parser.add_argument_group("PAD / Iterative Mode Partition")
    pad.add_argument("--sparsity", type=non_negative_float, default=0.5,
                     help="dynamic ratio kappa: the fraction of kernel positions kept dynamic (default: %(default)s)")
    pad.add_argument("--r", action="store_true", help="accepted; a run resumes whenever a checkpoint exists")
    pad.add_argument("--prune_dataset_ratio", type=int, default=10,
                     help="IMP data: this many batches of -b random training images (default: %(default)s)")
    pad.add_argument("--pruner", type=str, default="rand", choices=PRUNERS,
                     help="IMP score: snip (|dL/dM|, the paper's), rand, mag (default: %(default)s, as the original)")
    for flag in ("prune-bias", "prune-batchnorm", "prune-residual"):
        pad.add_argument(f"--{flag}", type=_strict_bool, default=False,
                         help="accepted; only the PAD kernel masks are partitioned (default: False)")
    pad.add_argument("--prune-train-mode", type=_strict_bool, default=False,
                     help="score with BN in train mode (default: False: eval mode)")
    for flag in ("reinitialize", "shuffle", "invert"):
        pad.add_argument(f"--{flag}", type=_strict_bool, default=False, help="not supported; must stay False")
    pad.add_argument("--pruner-list", type=str, nargs="*", default=[], help="accepted, unused")
    pad.add_argument("--prune-epoch-list", type=int, nargs="*", default=[], help="accepted, unused")
    pad.add_argument("--compression-list", type=non_negative_float, nargs="*", default=[], help="accepted, unused")
    pad.add_argument("--level-list", type=int, nargs="*", default=[], help="accepted, unused")
    pad.add_argument("--compression-schedule", type=str, default="exponential", choices=["linear", "exponential"],
                     help="kappa per IMP round: kappa**(e/E) or 1-(1-kappa)e/E (default: %(default)s)")
    pad.add_argument("--mask-scope", type=str, default="global", choices=["global", "local"],
                     help="one threshold over all layers, or one per layer (default: %(default)s)")
    pad.add_argument("--prune-epochs", type=int, default=1, help="IMP rounds E (default: %(default)s)")
    pad.add_argument("--temp_epoch", type=int, default=15,
                     help="epochs over which the temperature falls from --temp_init to just above 1, where it "
                          "then stays (default: %(default)s)")
    pad.add_argument("--temp_init", type=positive_float, default=30.0,
                     help="initial temperature (default: %(default)s)")
    add("--skip-corrupt-images", action="store_true",
        help="imagenet: skip and count undecodable images instead of stopping at the first")
    add_distributed_args(parser)
    add_tracking_args(parser, "padnet")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line to a namespace; a bad value raises UserError. ``--seed`` None becomes 0 (the original always
    seeds 0)."""
    args = get_args_parser().parse_args(argv)
    if args.seed is None:
        args.seed = 0
    return args


def cli(argv: Sequence[str] | None = None) -> None:
    """Entry point: parse, run, and turn every UserError into one line on stderr with exit status 2."""
    run_cli(lambda: main(parse_args(argv)), prog=PROG)


if __name__ == "__main__":
    cli(sys.argv[1:])
