"""Train JEI-DNN's early-exit classifiers and gates on a frozen, fine-tuned T2T-ViT (paper Sec. 3; spec Sec. b, d).

    python jeidnn/transfer_learning.py --dataset cifar10 ...              # 1. fine-tune the backbone (best.pth)
    python jeidnn/train_dynn.py --ce_ic_tradeoff 0.15 --dataset cifar10 --arch t2t_vit_7 --num_epoch 15
    python jeidnn/transfer_learning.py --dataset digits --transfer-learning False --epochs 3   # quick mode
    python jeidnn/train_dynn.py --dataset digits --num_epoch 4 --max_warmup_epoch 2
    torchrun --nproc_per_node=4 jeidnn/train_dynn.py ...

Stages: the op count (Mul-Add per exit, :mod:`jeidnn.cost`), the dynamic warm-up of the ICs
(:func:`jeidnn.engine.warmup_epoch`), then bi-level GATE / CLASSIFIER training with, after every epoch, an
evaluation on val and on the 10 test sub-splits, and the pos-weights and conformal thresholds taken from val.
Flags and defaults are the original ``train_dynn.py``'s; the additions and fixes are listed in
``jeidnn/README.md`` ("Differences from the original"). Mistakes the user can fix (missing data or checkpoint,
a bad flag value) print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from common.checkpoint import CheckpointError, resume, save_checkpoint, training_state
from common.config import non_negative_float, parse_args_with_config, positive_float
from common.data import build_loader, set_epoch
from common.distributed import add_distributed_args, is_main_process, print_main, run_distributed, seed_everything
from common.errors import ArgumentParser, UserError, run_cli
from common.tracking import add_tracking_args, start_tracking
from jeidnn import engine
from jeidnn.common_cli import (
    add_shared_flags,
    check_common,
    default_backbone_checkpoint,
    resolve_sizes,
    str_bool,
)
from jeidnn.cost import executed_macs_per_exit, normalized_costs, original_mul_add_per_exit
from jeidnn.data import DATASETS, build_jeidnn_datasets, test_splits
from jeidnn.dynn import GATE_OBJECTIVES, IC_LOSSES
from jeidnn.metrics import ConformalThresholds
from jeidnn.models import MODELS, create_model
from jeidnn.weights import load_transfer_checkpoint

__all__ = ["get_args_parser", "main", "parse_args"]

PROG = "train_dynn.py"
SEED = 322
CLASSIFIER_LOSSES = ("boosted", "weighted", "single")
LAST, BEST = "checkpoint.pth", "best.pth"
NUM_TEST_SPLITS = 10


def run_folder(args: argparse.Namespace) -> Path:
    """``{output_dir}/checkpoint/checkpoint_{dataset}_{arch}_confEE/{lambda}``: this run's checkpoints."""
    return Path(args.output_dir) / "checkpoint" / f"checkpoint_{args.dataset}_{args.arch}_confEE" / \
        str(args.ce_ic_tradeoff)


def warmup_folder(args: argparse.Namespace, img_size: int) -> Path:
    """The original's per-IC warm-up checkpoints: ``checkpoint/jeidnn_dynamic_warmup/{ds}_{arch}_{img}_{max}``."""
    return Path(args.output_dir) / "checkpoint" / "jeidnn_dynamic_warmup" / \
        f"{args.dataset}_{args.arch}_{img_size}_{args.max_warmup_epoch}"


# ------------------------------------------------------------------------------------------------- checks
def check_args(args: argparse.Namespace) -> None:
    check_common(args)
    if args.classifier_loss == "single":
        raise UserError("--classifier_loss single is not implemented; use boosted or weighted (the original's "
                        "default boosted is weighted), and --ic_loss to choose the IC weighting")
    if args.gate != "unc":
        raise UserError("--gate identity has no parameters to train (it only marks exits for cost bookkeeping); "
                        "train with --gate unc")
    if args.num_epoch < 1 or args.max_warmup_epoch < 1:
        raise UserError("--num_epoch and --max_warmup_epoch must be at least 1")
    if args.bilevel_batch_count < 1:
        raise UserError(f"--bilevel_batch_count must be at least 1, got {args.bilevel_batch_count}")
    if args.ce_ic_tradeoff < 0:
        raise UserError(f"--ce_ic_tradeoff must be 0 or more, got {args.ce_ic_tradeoff}")
    if args.resume and args.resume != "auto" and not Path(args.resume).is_file():
        raise UserError(f"--resume {args.resume} does not exist; give a {LAST} written by this script, or "
                        "--resume alone for this run's last one")


def backbone_checkpoint(args: argparse.Namespace) -> Path:
    """``--checkpoint``, else the default path that transfer_learning.py writes; missing: say which command."""
    path = Path(args.checkpoint) if args.checkpoint else default_backbone_checkpoint(args.output_dir, args.dataset,
                                                                                       args.arch)
    if not path.is_file():
        extra = " --transfer-learning False" if args.dataset == "digits" else ""
        img = f" --img-size {args.img_size}" if args.img_size else ""
        raise CheckpointError(
            f"the fine-tuned backbone {path} does not exist; create it with `python jeidnn/transfer_learning.py "
            f"--dataset {args.dataset} --arch {args.arch}{img}{extra} --output-dir {args.output_dir}`, or pass "
            "--checkpoint with a transfer-learning checkpoint (ckpt_{lr}_{wd}_{acc}.pth)")
    return path



def _barely(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """Batch limits of a pass: ``--max-batches``, else the original's --barely_train (22 train, 52 eval)."""
    if args.max_batches is not None:
        return args.max_batches, args.max_batches
    if args.barely_train:
        return 22, 52
    return None, None


# --------------------------------------------------------------------------------------------------- main
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Warm-up then bi-level training, as the flags say; returns the last epoch's results."""
    check_args(args)
    return run_distributed(lambda info: _run(args, info), args.device, args.dist_timeout,
                           output_dir=args.output_dir)


def _run(args: argparse.Namespace, info) -> dict[str, Any]:
    device = info.device
    seed_everything(args.seed)
    if args.barely_train:
        print_main("++++++++++++++WARNING++++++++++++++ you are barely training to test some things")
    num_classes, img_size = resolve_sizes(args)
    checkpoint_path = backbone_checkpoint(args)
    train_set, val_set, test_set, _ = build_jeidnn_datasets(args.dataset, args.data_root, img_size,
                                                            download=args.download)
    eval_batch = args.batch if args.dataset in ("cifar10", "digits") else 100
    train_loader = build_loader(train_set, args.batch, train=True, num_workers=args.workers, seed=args.seed,
                                pin_memory=device.type == "cuda")
    if len(train_loader) == 0:
        raise UserError(f"the training set has {len(train_set)} images per process, fewer than one batch of "
                        f"--batch {args.batch}; lower --batch")
    val_loader = DataLoader(val_set, batch_size=args.batch, shuffle=False, num_workers=args.workers)
    test_loader = DataLoader(test_set, batch_size=eval_batch, shuffle=False, num_workers=args.workers)

    model = create_model(args.arch, num_classes=num_classes, img_size=img_size, drop_path_rate=args.drop_path,
                         gate=args.gate)
    mul_add = original_mul_add_per_exit(model, img_size)
    costs = engine.CostTables(mul_add=[c / 1e6 for c in mul_add],
                              macs=[c / 1e6 for c in executed_macs_per_exit(model, img_size)],
                              normalized=normalized_costs(mul_add))
    print_main(f"Mul-Add per exit (M, the original's counter): {', '.join(f'{c:.3f}' for c in costs.mul_add)}")
    print_main(f"Executed MACs per exit (M): {', '.join(f'{c:.1f}' for c in costs.macs)}")
    report = load_transfer_checkpoint(model, checkpoint_path)
    print_main(f"Loaded the fine-tuned backbone {checkpoint_path} (the ICs and gates start fresh: "
               f"{len(report.missing)} keys)")
    model.to(device)
    trainable = engine.freeze_backbone(model)
    print_main(f"Froze the backbone: {trainable} trainable parameters (ICs and gates)")
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.wd)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.num_epoch, eta_min=args.min_lr)
    settings = engine.BilevelSettings(args.ce_ic_tradeoff, costs.normalized, args.gate_objective, args.ic_loss,
                                      args.bilevel_batch_count, [1.0] * model.num_exits)
    state = {"warmup": engine.WarmupState.fresh(model.num_exits), "stage": "warmup", "epoch": -1,
             "best_acc": 0.0, "thresholds": None}
    folder = run_folder(args)
    if args.resume:
        state = _resume(args, folder, model, optimizer, scheduler, settings, state, info)
    splits = test_splits(len(test_set), NUM_TEST_SPLITS, seed=0)
    with start_tracking(args, run_name=f"{args.ce_ic_tradeoff}_{args.classifier_loss}") as tracker:
        tracker.log_params(vars(args))
        tracker.log_metrics({f"cost/mul_add{level}": c for level, c in enumerate(costs.mul_add)})
        context = (args, model, optimizer, scheduler, settings, costs, device, tracker, folder)
        _warmup(context, state, train_loader, val_loader, img_size)
        last = _bilevel(context, state, train_loader, val_loader, test_loader, eval_batch, splits)
        if is_main_process() and (folder / LAST).is_file():
            tracker.set_tags({"final_checkpoint": str((folder / LAST).resolve())})
    return last


def _resume(args, folder, model, optimizer, scheduler, settings, state, info) -> dict[str, Any]:
    path = folder / LAST if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        raise UserError(f"nothing to resume: {path} does not exist (a run with these --output-dir, --dataset, "
                        "--arch and --ce_ic_tradeoff has not saved a checkpoint yet)")
    ckpt = resume(path, model, optimizer, scheduler, restore_rng=not info.distributed)
    extra = ckpt.get("jeidnn")
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path} is not a train_dynn.py checkpoint (no 'jeidnn' state)")
    warm = engine.WarmupState.from_state_dict(extra["warmup"])
    for level, frozen in enumerate(warm.frozen):
        engine.set_ic_frozen(model, level, frozen and not warm.finished)
    settings.pos_weights = list(extra["pos_weights"])
    thresholds = extra.get("thresholds")
    if thresholds:
        thresholds = {k: {float(a): v for a, v in by_alpha.items()} for k, by_alpha in thresholds.items()}
    print_main(f"Resumed from {path} ({extra['stage']} epoch {ckpt['epoch']})")
    return {"warmup": warm, "stage": extra["stage"], "epoch": ckpt["epoch"], "best_acc": extra["best_acc"],
            "thresholds": ConformalThresholds(**thresholds) if thresholds else None,
            "warmup_epoch": extra.get("warmup_epoch")}


def _save(context, state: dict[str, Any], epoch: int, best: bool) -> None:
    args, model, optimizer, scheduler, settings, _, _, _, folder = context
    thresholds = state.get("thresholds")
    extra = {"stage": state["stage"], "warmup": state["warmup"].state_dict(), "pos_weights": settings.pos_weights,
             "best_acc": state["best_acc"], "warmup_epoch": state.get("warmup_epoch"),
             "thresholds": None if thresholds is None else {k: {str(a): v for a, v in getattr(thresholds, k).items()}
                                                              for k in ("general", "gated", "gated_all",
                                                                        "gated_strict")}}
    payload = training_state(model, optimizer, scheduler, epoch=epoch, args=args, jeidnn=extra)
    save_checkpoint(payload, folder / LAST)
    if best:
        save_checkpoint({"net": model.state_dict(), "acc": state["best_acc"], "epoch": epoch}, folder / BEST)


def _log_step(tracker):
    def log(values: dict[str, float], step: int) -> None:
        tracker.log_metrics(values, step=step)
    return log


def _warmup(context, state, train_loader, val_loader, img_size) -> None:
    args, model, optimizer, _, settings, costs, device, tracker, _ = context
    warm: engine.WarmupState = state["warmup"]
    if state["stage"] != "warmup":
        return
    train_max, eval_max = _barely(args)
    for epoch in range(warm.epochs_done, args.max_warmup_epoch):
        start = time.time()
        set_epoch(train_loader, epoch, args.seed)
        train = engine.warmup_epoch(model, optimizer, train_loader, device, costs.normalized, epoch, train_max,
                                    args.backbone_eval, _log_step(tracker))
        out = engine.collect_outputs(model, val_loader, device, settings, eval_max, "warm-up val")
        val = engine.evaluate_split(out, costs, args.batch, None)
        val = engine.broadcast(val)
        tracker.log_metrics(engine.prefixed(val, "val"), step=epoch)
        ic_accs = [val[f"acc{level}"] for level in range(model.num_exits)]
        notes = engine.update_warmup(model, warm, ic_accs, epoch,
                                     warmup_folder(args, img_size) if is_main_process() else None)
        print_main(f"Warm-up {epoch}/{args.max_warmup_epoch - 1} | train loss {train['train/loss']:.4f} | val IC acc "
                   f"{' '.join(f'{a:.1f}' for a in ic_accs)} final {val['acc_final']:.1f} | {engine.elapsed(start)}")
        for note in notes:
            print_main(note)
        state["epoch"] = epoch
        _save(context, state, epoch, best=False)
        if all(warm.frozen):
            print_main(f"All ICs converged: warm-up stops after epoch {epoch}")
            break
    for note in engine.finish_warmup(model, warm):
        print_main(note)
    state["stage"], state["warmup_epoch"] = "bilevel", warm.epochs_done - 1
    _save(context, state, state["warmup_epoch"], best=False)


def _bilevel(context, state, train_loader, val_loader, test_loader, eval_batch, splits) -> dict[str, Any]:
    args, model, optimizer, scheduler, settings, costs, device, tracker, folder = context
    train_max, eval_max = _barely(args)
    first = max(state["warmup_epoch"], state["epoch"]) + 1
    last: dict[str, Any] = {}
    if first >= args.num_epoch:
        print_main(f"Nothing to train after the warm-up: it ended at epoch {state['warmup_epoch']} and --num_epoch is "
                   f"{args.num_epoch}")
    for epoch in range(first, args.num_epoch):
        start = time.time()
        set_epoch(train_loader, epoch, args.seed)
        train = engine.train_bilevel_epoch(model, optimizer, train_loader, device, settings, epoch, train_max,
                                           args.backbone_eval, _log_step(tracker))
        val_out = engine.collect_outputs(model, val_loader, device, settings, eval_max, "val")
        pos_weights, thresholds = engine.broadcast(engine.set_from_validation(val_out, model.num_exits))
        val = engine.broadcast(engine.evaluate_split(val_out, costs, args.batch, thresholds))
        test_out = engine.collect_outputs(model, test_loader, device, settings, eval_max, "test")
        index = [s[s < len(test_out.labels)] for s in splits]
        test_mean, test_std, per_split = engine.evaluate_test(test_out, costs, eval_batch, thresholds,
                                                              [i for i in index if len(i)])
        settings.pos_weights, state["thresholds"] = pos_weights, thresholds
        improved = val["gated_acc"] > state["best_acc"]
        if improved:
            state["best_acc"] = val["gated_acc"]
        state["epoch"] = epoch
        tracker.log_metrics({**engine.prefixed(val, "val"), **engine.prefixed(test_mean, "test"),
                             **engine.prefixed(test_std, "test_std"), "lr": optimizer.param_groups[0]["lr"]},
                            step=epoch)
        scheduler.step()
        _save(context, state, epoch, best=improved)
        if improved and is_main_process():
            results = folder / f"{args.dataset}_{args.arch}_{args.ce_ic_tradeoff}_results.json"
            results.write_text(json.dumps({"epoch": epoch, "val": val, "test_mean": test_mean, "test_std": test_std,
                                           "test_per_split": per_split}, indent=1))
            tracker.log_artifact(results)
        exits = " ".join(f"{val[k]:.2f}" for k in val if k.startswith("percent_exit"))
        print_main(f"Epoch {epoch}/{args.num_epoch - 1} | train loss {train['train/loss']:.4f} | val gated acc "
                   f"{val['gated_acc']:.2f} cost {val['total_cost']:.3f} M | test gated acc "
                   f"{test_mean['gated_acc']:.2f} cost {test_mean['total_cost']:.3f} M "
                   f"({test_mean['total_macs']:.1f} M MACs) ECE "
                   f"{test_mean['gated_ece']:.2f} | val exits {exits}"
                   f"{' (best)' if improved else ''} | {engine.elapsed(start)}")
        last = {"epoch": epoch, "train": train, "val": val, "test": test_mean, "test_std": test_std}
    return last


# ------------------------------------------------------------------------------------------------ arguments
def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The original ``train_dynn.py`` flags with their defaults, plus ours (see jeidnn/README.md)."""
    parser = ArgumentParser(prog=PROG, add_help=add_help,
                            description="JEI-DNN: train early-exit classifiers and gates on a frozen, fine-tuned "
                                        "T2T-ViT (warm-up, then bi-level GATE/CLASSIFIER training).")
    add = parser.add_argument
    add("--lr", default=0.01, type=positive_float, help="learning rate (default: %(default)s)")
    add("--arch", default="t2t_vit_7", choices=list(MODELS), help="backbone (default: %(default)s)")
    add("--wd", default=5e-4, type=non_negative_float, help="weight decay (default: %(default)s)")
    add("--min-lr", default=2e-4, type=non_negative_float, help="eta_min of the cosine schedule (default: %(default)s)")
    add("--dataset", default="cifar10", choices=list(DATASETS),
        help="dataset; digits is built in (quick mode, 32 px) (default: %(default)s)")
    add("--batch", "--b", default=64, type=int, help="batch size per process (default: %(default)s)")
    add("--ce_ic_tradeoff", default=0.7, type=non_negative_float,
        help="lambda, the accuracy/cost trade-off of the oracle exit (default: %(default)s)")
    add("--num_epoch", default=10, type=int,
        help="epochs in all, warm-up included; bi-level training runs after the warm-up up to this "
             "(default: %(default)s)")
    add("--max_warmup_epoch", default=6, type=int, help="most warm-up epochs (default: %(default)s)")
    add("--bilevel_batch_count", default=200, type=int,
        help="batches between GATE/CLASSIFIER switches (default: %(default)s)")
    add("--barely_train", action="store_true", help="a smoke run: 22 training and 52 evaluation batches per pass")
    add("--resume", "-r", nargs="?", const="auto", default="",
        help="continue from this run's last checkpoint (alone) or from the given checkpoint.pth")
    add("--gate", default="unc", choices=["unc", "identity"], help="gate type (default: %(default)s)")
    add("--drop-path", default=0.1, type=non_negative_float,
        help="drop-path rate of the backbone (default: %(default)s)")
    add("--gate_objective", default="ce", choices=list(GATE_OBJECTIVES),
        help="per-exit loss of the oracle exit (default: %(default)s)")
    add("--transfer-ratio", default=0.01, type=non_negative_float,
        help="accepted for compatibility; unused (as originally)")
    add("--proj_dim", default=32, help="accepted for compatibility; unused (as originally)")
    add("--num_proj", default=16, help="accepted for compatibility; unused (as originally)")
    add("--use_mlflow", default=True, type=str_bool, help="log to MLflow: True or False (default: %(default)s)")
    add("--classifier_loss", default="boosted", choices=list(CLASSIFIER_LOSSES),
        help="IC loss mode; boosted is weighted (default: %(default)s); single is not implemented")
    add("--early_exit_warmup", default=True, type=str_bool, help="accepted for compatibility; unused (as originally)")
    # ours
    add("--ic_loss", default="mean", choices=list(IC_LOSSES),
        help="mean: the original's effective IC loss (mean CE; its exit weights cancel); pi_weighted: the paper's "
             "exit-probability-weighted CE (default: %(default)s)")
    add("--checkpoint", default=None,
        help="fine-tuned backbone written by transfer_learning.py (default: "
             "<output-dir>/checkpoint/checkpoint_<dataset>_<arch>/best.pth)")
    add("--backbone-eval", action="store_true",
        help="keep the frozen backbone in eval mode (no DropPath/dropout) while training; the original trains "
             "with them active")
    add("--seed", default=SEED, type=int, help="random seed (default: %(default)s, the original's)")
    add_shared_flags(add, {})
    add_distributed_args(parser)
    add_tracking_args(parser, "jeidnn")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    args = parse_args_with_config(get_args_parser(), argv)
    if not args.use_mlflow:
        args.no_mlflow = True
    return args


def cli(argv: Sequence[str] | None = None) -> None:
    run_cli(lambda: main(parse_args(argv)), prog=PROG)


if __name__ == "__main__":
    cli(sys.argv[1:])

