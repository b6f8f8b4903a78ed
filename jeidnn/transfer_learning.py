"""Fine-tune an ImageNet T2T-ViT on a downstream dataset: JEI-DNN's backbone (spec Sec. d "transfer_learning.py").

    python jeidnn/transfer_learning.py --lr 0.05 --b 64 --num-classes 10 --img-size 224 \\
        --transfer-learning True --weights-path model_weights/71.7_T2T_ViT_7.pth.tar
    python jeidnn/transfer_learning.py --dataset digits --transfer-learning False --epochs 3   # quick mode
    torchrun --nproc_per_node=4 jeidnn/transfer_learning.py ...

SGD with two learning rates: the T2T module, the blocks, the class token and the final norm at
``lr * transfer_ratio``, the new head at ``lr``; cosine schedule over 60 epochs; cross-entropy. After every epoch
the model is evaluated on val (carved out of the training set as in train_dynn.py) and on test; the checkpoint
with the best *val* accuracy is written in the original's format ``{'net', 'acc', 'epoch'}`` to
``<output-dir>/checkpoint/checkpoint_<dataset>_<arch>/ckpt_<lr>_<wd>_<acc>.pth`` and copied to ``best.pth`` in
the same folder, where ``train_dynn.py`` finds it. The differences from the original are listed in
``jeidnn/README.md``.
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
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.checkpoint import CheckpointError, resume, save_checkpoint, training_state
from common.config import non_negative_float, parse_args_with_config, positive_float
from common.data import build_loader, set_epoch
from common.distributed import (
    add_distributed_args,
    is_main_process,
    print_main,
    reduce_weighted_mean,
    run_distributed,
    seed_everything,
    wrap_ddp,
)
from common.errors import ArgumentParser, UserError, run_cli
from common.tracking import add_tracking_args, start_tracking
from jeidnn.common_cli import (
    BEST_BACKBONE,
    IMAGENET_WEIGHTS,
    add_shared_flags,
    backbone_folder,
    check_common,
    resolve_sizes,
    str_bool,
)
from jeidnn.data import DATASETS, IMG_SIZE, NUM_CLASSES, build_jeidnn_datasets
from jeidnn.models import MODELS, create_model
from jeidnn.weights import load_imagenet_pretrained

__all__ = ["get_args_parser", "main", "parameter_groups", "parse_args"]

PROG = "transfer_learning.py"
LAST = "last.pth"
T_MAX = 60


def parameter_groups(model: nn.Module, lr: float, transfer_ratio: float) -> list[dict[str, Any]]:
    """The backbone (T2T module, blocks, class token, final norm) at ``lr * transfer_ratio`` and the head at ``lr``.

    The original left ``cls_token`` and ``norm`` out of every group, so they were never trained; ``pos_embed`` is
    a fixed sinusoid (``requires_grad=False``) and the ICs and gates are not part of the fine-tuned backbone.
    """
    backbone = [p for name, p in model.named_parameters()
                if name.split(".", 1)[0] in ("tokens_to_token", "blocks", "cls_token", "norm") and p.requires_grad]
    return [{"params": backbone, "lr": lr * transfer_ratio}, {"params": list(model.head.parameters()), "lr": lr}]


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The fine-tuned backbone and head with the original's DataParallel ``module.`` prefix; no ICs or gates."""
    return {f"module.{k}": v for k, v in model.state_dict().items()
            if not k.startswith(("intermediate_heads.", "gates."))}


def check_args(args: argparse.Namespace) -> None:
    check_common(args)
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {args.epochs}")
    if not 0 < args.transfer_ratio <= 1:
        raise UserError(f"--transfer-ratio must lie in (0, 1], got {args.transfer_ratio}")
    if args.transfer_learning and not Path(args.weights_path).is_file():
        hint = " (or train from random initialisation with --transfer-learning False, e.g. for --dataset digits)"
        raise CheckpointError(
            f"the ImageNet weights --weights-path {args.weights_path} do not exist: download "
            f"{Path(IMAGENET_WEIGHTS[args.arch]).name} from the releases of github.com/yitu-opensource/T2T-ViT and "
            f"pass its path{hint}")
    if args.resume and args.resume != "auto" and not Path(args.resume).is_file():
        raise UserError(f"--resume {args.resume} does not exist; give a {LAST} written by this script, or --resume "
                        "alone for the last one of --output-dir")


def _epoch(model, loader: DataLoader, device, optimizer=None, max_batches: int | None = None,
           desc: str = "") -> dict[str, float]:
    """One pass: training when an optimizer is given, else evaluation; returns mean loss and accuracy (%)."""
    train = optimizer is not None
    model.train(train)
    criterion = nn.CrossEntropyLoss()
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    loss_sum = correct = count = 0.0
    bar = tqdm(loader, total=total, desc=desc, leave=False, disable=not is_main_process(), dynamic_ncols=True)
    with torch.set_grad_enabled(train):
        for index, (images, targets) in enumerate(bar):
            if index >= total:
                break
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            logits, _ = model(images)
            loss = criterion(logits, targets)
            if train:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            loss_sum += loss.item() * targets.size(0)
            correct += logits.argmax(1).eq(targets).sum().item()
            count += targets.size(0)
            bar.set_postfix(loss=f"{loss_sum / count:.3f}", acc=f"{100 * correct / count:.2f}")
    reduced = reduce_weighted_mean({"loss": loss_sum, "correct": correct}, count)
    return {"loss": reduced["loss"], "acc": 100.0 * reduced["correct"]}


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune as the flags say; returns the best-val result and the checkpoint paths."""
    check_args(args)
    return run_distributed(lambda info: _run(args, info), args.device, args.dist_timeout,
                           output_dir=args.output_dir)


def _run(args: argparse.Namespace, info) -> dict[str, Any]:
    device = info.device
    seed_everything(args.seed)
    num_classes, img_size = resolve_sizes(args)
    train_set, val_set, test_set, _ = build_jeidnn_datasets(args.dataset, args.data_root, img_size,
                                                            download=args.download)
    pin = device.type == "cuda"
    train_loader = build_loader(train_set, args.batch, train=True, num_workers=args.workers, seed=args.seed,
                                pin_memory=pin)
    if len(train_loader) == 0:
        raise UserError(f"the training set has {len(train_set)} images per process, fewer than one batch of "
                        f"--batch {args.batch}; lower --batch")
    val_loader = build_loader(val_set, args.batch, train=False, num_workers=args.workers, pin_memory=pin)
    test_loader = build_loader(test_set, args.batch, train=False, num_workers=args.workers, pin_memory=pin)

    model = create_model(args.arch, num_classes=num_classes, img_size=img_size, drop_path_rate=args.drop_path)
    if args.transfer_learning:
        load_imagenet_pretrained(model, args.weights_path, use_ema=True)
        print_main(f"Loaded the ImageNet weights {args.weights_path} (state_dict_ema when present; new head)")
    else:
        print_main("Training from random initialisation (--transfer-learning False)")
    model.to(device)
    optimizer = torch.optim.SGD(parameter_groups(model, args.lr, args.transfer_ratio), lr=args.lr, momentum=0.9,
                                weight_decay=args.wd)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=T_MAX, eta_min=args.min_lr)
    net = wrap_ddp(model, info, find_unused_parameters=True)
    folder = backbone_folder(args.output_dir, args.dataset, args.arch)
    start_epoch, best = 0, {"val_acc": -1.0, "test_acc": 0.0, "epoch": -1, "checkpoint": None}
    if args.resume:
        path = folder / LAST if args.resume == "auto" else Path(args.resume)
        if not path.is_file():
            raise UserError(f"nothing to resume: {path} does not exist")
        ckpt = resume(path, model, optimizer, scheduler, restore_rng=not info.distributed)
        start_epoch, best = ckpt["epoch"] + 1, dict(ckpt.get("best", best))
        print_main(f"Resumed from {path} (epoch {ckpt['epoch']}); continuing at epoch {start_epoch}")

    with start_tracking(args, run_name=f"{args.dataset}_{args.batch}") as tracker:
        tracker.log_params(vars(args))
        for epoch in range(start_epoch, args.epochs):
            start = time.time()
            set_epoch(train_loader, epoch, args.seed)
            train = _epoch(net, train_loader, device, optimizer, args.max_batches, f"train {epoch}")
            val = _epoch(net, val_loader, device, None, args.max_batches, "val")
            test = _epoch(net, test_loader, device, None, args.max_batches, "test")
            scheduler.step()
            improved = val["acc"] > best["val_acc"]
            if improved:
                ckpt_path = folder / f"ckpt_{args.lr}_{args.wd}_{test['acc']}.pth"
                state = {"net": backbone_state(model), "acc": test["acc"], "epoch": epoch}
                save_checkpoint(state, ckpt_path)
                save_checkpoint(state, folder / BEST_BACKBONE)
                best = {"val_acc": val["acc"], "test_acc": test["acc"], "epoch": epoch, "checkpoint": str(ckpt_path)}
            save_checkpoint(training_state(model, optimizer, scheduler, epoch=epoch, args=args, best=best),
                            folder / LAST)
            tracker.log_metrics({"train/loss": train["loss"], "train/acc": train["acc"], "val/loss": val["loss"],
                                 "val/acc": val["acc"], "test/loss": test["loss"], "test/acc": test["acc"],
                                 "best/val_acc": best["val_acc"], "best/test_acc": best["test_acc"]}, step=epoch)
            print_main(f"Epoch {epoch}/{args.epochs - 1} | train loss {train['loss']:.4f} acc {train['acc']:.2f} | val "
                       f"acc {val['acc']:.2f} | test acc {test['acc']:.2f}{' (best val: saved)' if improved else ''} "
                       f"| {time.time() - start:.1f} s")
        if is_main_process() and best["checkpoint"]:
            tracker.set_tags({"final_checkpoint": str((folder / BEST_BACKBONE).resolve())})
            print_main(f"Best val accuracy {best['val_acc']:.2f} at epoch {best['epoch']} "
                       f"(test {best['test_acc']:.2f}); backbone for train_dynn.py: {folder / BEST_BACKBONE}")
    return {**best, "best": str(folder / BEST_BACKBONE), "last": str(folder / LAST)}


def default_dataset(num_classes: int | None, img_size: int | None) -> str:
    """``--dataset`` left out: the original's cifar100LT, unless ``--num-classes`` names another class count (the
    README's command passes ``--num-classes 10 --img-size 224`` alone): then the dataset with that many classes
    whose image size is ``--img-size`` (cifar10 at 224, svhn at 32), else the first such dataset."""
    if num_classes is None or num_classes == NUM_CLASSES["cifar100LT"]:
        return "cifar100LT"
    fits = [name for name, count in NUM_CLASSES.items() if count == num_classes and name != "digits"]
    if not fits:
        return "cifar100LT"  # resolve_sizes then says which class counts exist
    sized = [name for name in fits if img_size is None or IMG_SIZE[name] == img_size]
    return (sized or fits)[0]


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The original ``transfer_learning.py`` flags with their defaults, the README's spellings, and ours."""
    parser = ArgumentParser(prog=PROG, add_help=add_help,
                            description="Fine-tune an ImageNet T2T-ViT on a downstream dataset (JEI-DNN's backbone).")
    add = parser.add_argument
    add("--lr", default=0.01, type=positive_float, help="learning rate of the head (default: %(default)s)")
    add("--wd", default=5e-4, type=non_negative_float, help="weight decay (default: %(default)s)")
    add("--min-lr", default=2e-4, type=non_negative_float, help="eta_min of the cosine schedule (default: %(default)s)")
    add("--dataset", default=None, choices=list(DATASETS),
        help="dataset (default: cifar100LT, the original's; when only --num-classes is given, the dataset with that "
             "many classes at --img-size: cifar10 at 224, svhn at 32)")
    add("--arch", default="t2t_vit_7", choices=list(MODELS), help="backbone (default: %(default)s)")
    add("--batch", "--b", default=64, type=int, help="batch size per process (default: %(default)s)")
    add("--resume", "-r", nargs="?", const="auto", default="",
        help="continue from <output-dir>/checkpoint/checkpoint_<dataset>_<arch>/last.pth (alone) or the given file")
    add("--drop-path", default=0.1, type=non_negative_float, help="drop-path rate (default: %(default)s)")
    add("--transfer-ratio", default=0.01, type=non_negative_float,
        help="learning-rate ratio of the backbone to the head (default: %(default)s)")
    add("--weights-path", default=IMAGENET_WEIGHTS["t2t_vit_7"],
        help="ImageNet T2T-ViT weights to start from (default: %(default)s)")
    add("--use_mlflow", default=True, type=str_bool, help="log to MLflow: True or False (default: %(default)s)")
    # the README's spellings
    add("--num-classes", default=None, type=int, help="classes; must match --dataset (default: the dataset's)")
    add("--transfer-learning", default=True, type=str_bool,
        help="start from --weights-path (True) or from random initialisation (False) (default: %(default)s)")
    # ours
    add("--epochs", default=60, type=int, help="epochs (default: %(default)s, the original's fixed count)")
    add("--seed", default=0, type=int, help="random seed (default: %(default)s)")
    add_shared_flags(add, {})
    add_distributed_args(parser)
    add_tracking_args(parser, "jeidnn_transfer")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = parse_args_with_config(get_args_parser(), argv)
    if args.dataset is None:
        args.dataset = default_dataset(args.num_classes, args.img_size)
    if not args.use_mlflow:
        args.no_mlflow = True
    return args


def cli(argv: Sequence[str] | None = None) -> None:
    run_cli(lambda: main(parse_args(argv)), prog=PROG)


if __name__ == "__main__":
    cli(sys.argv[1:])
