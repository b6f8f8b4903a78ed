"""Fine-tune DyT on an image dataset (the original ``main_image.py``; spec Sec. b.4, d, e).

    torchrun --nproc_per_node=8 dyt/main_image.py --dataset cifar100_full --data_path /data/cifar100 \\
        --finetune /weights/jx_vit_base_patch16_224_in21k-e5005f0a.pth --batch_size 128 --blr 1e-3 ...
    python dyt/main_image.py --dataset digits --model vit_digits --device cpu --epochs 3 ...   (no download)
    python dyt/main_image.py --eval --eval_ckpt output_dir/checkpoint-99.pth --dataset cifar100 ...

A frozen pretrained ViT with a bottleneck adapter and a token dispatcher per block; every step runs the dynamic
and the complete pass and minimises CE + rate loss + complete-model CE + KL (:mod:`dyt.engine`). The test set is
evaluated every ``--eval_freq`` epochs; ``checkpoint-{epoch}.pth`` is written when the metric reaches its best.
Flags and defaults are the original's; the additions and fixes are listed in ``dyt/README.md`` ("Differences
from the original"). Mistakes the user can fix print one line and exit with status 2 before anything is written.
This module also holds the machinery ``dyt/main_vtab.py`` shares.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler, Subset

from common.checkpoint import (
    load_checkpoint_file,
    load_state_dict,
    resume,
    save_checkpoint,
    select_state_dict,
    training_state,
)
from common.config import add_config_argument, finite_float, non_negative_float, parse_args_with_config, positive_float
from common.data import build_loader, set_epoch
from common.distributed import (
    DistInfo,
    add_distributed_args,
    get_rank,
    get_world_size,
    is_main_process,
    print_main,
    run_distributed,
    seed_everything,
    wrap_ddp,
)
from common.errors import ArgumentParser, UserError, run_cli
from common.tracking import Tracker, add_tracking_args, start_tracking
from dyt.data import (
    DIGITS_SHIFTS,
    EMBEDDED,
    IMAGE_CHOICES,
    VTAB_CHOICES,
    DigitsVariant,
    build_image_dataset,
    canonical_name,
    digit_classes,
    num_classes_of,
)
from dyt.engine import evaluate, flops_counter, make_scaler, train_one_epoch
from dyt.losses import DyTLoss
from dyt.models import MODELS, TOKEN_MASKS, build_model
from dyt.weights import load_pretrained_vit, logged_param_count, resolve_finetune, set_trainable

__all__ = ["get_args_parser", "load_data", "main", "train_one_epoch", "evaluate"]

PROG = "main_image.py"
# The original's --model only named the log; its model was always ViT-B/16 IN21K.
MODEL_ALIASES = {"vit_base_patch16": "vit_base_patch16_224_in21k"}
DISPATCH = ("mlp", "attn", "attn_mlp", "layer", "none")
FINAL_CHECKPOINT, LAST_CHECKPOINT = "final_checkpoint.pth", "checkpoint.pth"


@dataclass
class Splits:
    """What a run trains on, chooses the best epoch on, and reports."""

    train: Dataset | None
    select: Dataset
    test: Dataset
    nb_classes: int
    metric: str

    @property
    def select_is_test(self) -> bool:
        return self.select is self.test


# ------------------------------------------------------------------------------------------------------ data
def load_data(args: argparse.Namespace, img_size: int) -> Splits:
    """The training and test sets of ``--dataset`` (``main_image``'s ``build_image_dataset``)."""
    train, test, nb_classes, metric = build_image_dataset(args.dataset, args.data_path, img_size,
                                                          digits=digits_variant(args),
                                                          skip_corrupt=args.skip_corrupt_images)
    return Splits(None if args.eval else train, test, test, nb_classes, metric)


def digits_variant(args: argparse.Namespace) -> DigitsVariant:
    """The class subset and shift of ``digits`` (``--digits_classes``, ``--digits_shift``)."""
    return DigitsVariant(tuple(args.digits_classes or ()), args.digits_shift)


def eval_loader(dataset: Dataset, args: argparse.Namespace, info: DistInfo) -> DataLoader:
    """Sequential loader over this rank's shard ``range(rank, n, world)`` (no padding, so no sample counts twice)."""
    shard = Subset(dataset, range(get_rank(), len(dataset), get_world_size())) if info.distributed else dataset
    return DataLoader(shard, batch_size=args.batch_size, sampler=SequentialSampler(shard),
                      num_workers=args.num_workers, pin_memory=args.pin_mem and info.device.type == "cuda")


# ----------------------------------------------------------------------------------------------------- model
def model_name(args: argparse.Namespace) -> str:
    """The registered model of ``--model`` (``vit_base_patch16`` is the original's name for ViT-B/16 IN21K)."""
    name = MODEL_ALIASES.get(args.model, args.model)
    if name not in MODELS:
        raise UserError(f"--model {args.model} is not a DyT model; choose one of: "
                        f"{', '.join([*MODEL_ALIASES, *MODELS])}")
    return name


def model_img_size(model: nn.Module) -> int:
    """The input side the model was built for (``pretrained_cfg["input_size"]``)."""
    return int(model.pretrained_cfg["input_size"][-1])


def create_model(args: argparse.Namespace, nb_classes: int) -> nn.Module:
    """The DyT ViT of ``--model`` with the paper's adapter and token-dispatcher flags, and the
    ``--token_mask`` control (not in the original) at rate ``--token_target_ratio``."""
    model = build_model(model_name(args), num_classes=nb_classes, ffn_num=args.ffn_num, adapter_scale=args.scale,
                        dispatch=args.dispatch, moe_experts=args.moe_experts, moe_router=args.moe_router,
                        moe_merge=args.moe_merge, drop_path_rate=args.drop_path, img_size=args.input_size)
    model.set_token_mask(args.token_mask, args.token_target_ratio)
    return model


def prepare_weights(model: nn.Module, args: argparse.Namespace, dataset: str) -> int:
    """Load ``--finetune`` and freeze all but what it lacks (adapters, dispatchers, head); returns #trainable.

    Without ``--finetune`` (embedded data only, see :func:`check_args`) the whole model trains from scratch,
    which the log says.
    """
    if args.finetune:
        report = load_pretrained_vit(model, args.finetune)
        print_main(f"Loaded pre-trained weights from {args.finetune}")
        return set_trainable(model, report, fulltune=args.fulltune)
    print_main(f"No --finetune: training every parameter of {model_name(args)} from scratch on {dataset}")
    for p in model.parameters():
        p.requires_grad = True
    return sum(p.numel() for p in model.parameters())


def load_eval_checkpoint(model: nn.Module, path: str) -> None:
    """A fine-tuned checkpoint of this script (``{'model': ...}``), strictly: another model is a UserError."""
    state = select_state_dict(load_checkpoint_file(path), entry=None)
    load_state_dict(model, state, strict=True, source=path)


# --------------------------------------------------------------------------------------------------- checks
def check_args(args: argparse.Namespace, choices: tuple[str, ...]) -> None:
    """Reject flag values that cannot work, before anything is loaded or written; resolves ``--finetune``."""
    dataset = canonical_name(args.dataset, choices)
    model_name(args)
    if dataset not in EMBEDDED:
        if not args.data_path:
            raise UserError(f"--dataset {args.dataset} needs --data_path, the folder that holds it; or run on the "
                            "embedded data with --dataset digits or --dataset synthetic")
        if not Path(args.data_path).is_dir():
            raise UserError(f"--data_path {args.data_path} does not exist; point it at the folder that holds "
                            f"{args.dataset}")
    if args.finetune and not args.eval:
        args.finetune = str(resolve_finetune(args.finetune))
    elif not args.eval and dataset not in EMBEDDED:
        raise UserError(f"--finetune is needed for --dataset {args.dataset}: the path to the IN21K ViT-B/16 weights "
                        "(jx_vit_base_patch16_224_in21k-e5005f0a.pth), or VIT_BASE_IN21K with $DYT_VIT_BASE_IN21K "
                        "set; only the embedded digits / synthetic sets train from scratch")
    positive = {"--batch_size": args.batch_size, "--epochs": args.epochs, "--accum_iter": args.accum_iter,
                "--eval_freq": args.eval_freq}
    for flag, value in positive.items():
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if args.num_workers < 0:
        raise UserError(f"--num_workers must be 0 or more, got {args.num_workers}")
    if not 0.0 <= args.token_target_ratio <= 1.0:
        raise UserError(f"--token_target_ratio must lie in [0, 1], got {args.token_target_ratio}")
    if args.warmup_epochs < 0 or args.warmup_epochs > args.epochs:
        raise UserError(f"--warmup_epochs must lie in [0, --epochs={args.epochs}], got {args.warmup_epochs}")
    if args.ffn_num < 0:
        raise UserError(f"--ffn_num must be 0 (no adapter) or more, got {args.ffn_num}")
    if args.token_mask != "learned" and args.dispatch == "none":
        raise UserError(f"--token_mask {args.token_mask} replaces the dispatchers' masks; it needs --dispatch mlp "
                        "(or another dispatch), not none")
    if (args.digits_classes or args.digits_shift != "none") and dataset != "digits":
        raise UserError(f"--digits_classes / --digits_shift apply to --dataset digits only, not {args.dataset}")
    if args.eval and not (args.eval_ckpt or args.resume):
        raise UserError("--eval needs the fine-tuned checkpoint to evaluate: pass --eval_ckpt PATH (or --resume PATH)")
    for flag in ("eval_ckpt", "resume"):
        value = getattr(args, flag, None)
        if value and not Path(value).is_file():
            raise UserError(f"--{flag} {value} does not exist; give a checkpoint written by this script")


# ------------------------------------------------------------------------------------------------------ main
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune (or, with ``--eval``, evaluate) as the flags say; returns the last results."""
    check_args(args, IMAGE_CHOICES)
    return run_distributed(lambda info: run(args, info, load_data), args.device, args.dist_timeout,
                           output_dir=output_folder(args), output_flag="--output_dir")


def output_folder(args: argparse.Namespace) -> str | None:
    """The folder a run writes into (checked and locked before it starts), or None: ``--eval`` or an empty
    ``--output_dir`` writes nothing."""
    return None if args.eval or not args.output_dir else args.output_dir


def run(args: argparse.Namespace, info: DistInfo, data_fn, vtab: bool = False) -> dict[str, Any]:
    """The body shared by ``main_image`` and ``main_vtab``: data, model, optimiser, resume, train / evaluate.

    ``data_fn(args, img_size)`` returns the :class:`Splits`; ``vtab`` selects the task names and the parameter
    count the script logs.
    """
    dataset = canonical_name(args.dataset, VTAB_CHOICES if vtab else IMAGE_CHOICES)
    seed_everything(args.seed)
    model = create_model(args, num_classes_of(dataset, vtab=vtab, digits=digits_variant(args)))
    n_trainable = 0 if args.eval else prepare_weights(model, args, dataset)
    splits = data_fn(args, model_img_size(model))
    args.nb_classes = splits.nb_classes
    model.to(info.device)
    eff_batch_size = args.batch_size * args.accum_iter * info.world_size
    if args.lr is None:
        args.lr = args.blr * eff_batch_size / 256
    criterion = DyTLoss(token_target_ratio=args.token_target_ratio, token_ratio=args.token_ratio,
                        distill=args.distill)
    flops_fn = flops_counter(model)
    with start_tracking(args, run_name=f"{dataset}-{args.model}{'-eval' if args.eval else ''}") as tracker:
        tracker.log_params(vars(args))
        if args.eval:
            return _evaluate_only(model, splits, flops_fn, args, info, tracker)
        # main_image logs the adapters only ('head' also drops the dispatchers' mlp_head); main_vtab every tensor
        logged = n_trainable if vtab else logged_param_count(model)
        print_main(f"number of params (M): {logged / 1e6:.2f} (trainable in all: {n_trainable:,})")
        print_main(f"actual lr: {args.lr:.2e}, weight decay {args.weight_decay:g}, effective batch size "
                   f"{eff_batch_size}")
        optimizer, scaler, state = training_state_from(model, args, info)
        net = wrap_ddp(model, info)
        return _train(net, model, criterion, optimizer, scaler, splits, flops_fn, state, args, info, tracker)


def training_state_from(model: nn.Module, args: argparse.Namespace, info: DistInfo
                        ) -> tuple[torch.optim.Optimizer, Any, dict[str, Any]]:
    """AdamW over the trainable tensors, the AMP scaler and the best-so-far state, resumed from ``--resume`` when
    given (``args.start_epoch`` set to the next epoch)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=args.weight_decay)
    scaler = make_scaler(info.device)
    state = {"max_metric": 0.0, "best": {}}
    if args.resume:
        checkpoint = resume(args.resume, model, optimizer=optimizer, scaler=scaler, restore_rng=not info.distributed)
        args.start_epoch = checkpoint["epoch"] + 1
        state = {"max_metric": float(checkpoint.get("max_metric", 0.0)), "best": checkpoint.get("best", {})}
        if info.distributed:  # every rank gets its own stream again (the file holds rank 0's RNG state)
            seed_everything(args.seed + args.start_epoch)
        print_main(f"Resumed from {args.resume} (epoch {checkpoint['epoch']}); continuing at epoch "
                   f"{args.start_epoch}")
    return optimizer, scaler, state


def _eval_metrics(stats: dict[str, Any], prefix: str = "") -> dict[str, float]:
    metrics = {f"{prefix}{k}": stats[k] for k in ("acc1", "acc5", "metric", "activation_rate", "flops") if k in stats}
    metrics[f"{prefix}eval_loss"] = stats["loss"]
    for i, rate in enumerate(stats.get("layer_rates", [])):
        metrics[f"{prefix}layer_rate_{i}"] = rate
    return metrics


def _describe(stats: dict[str, Any], metric: str) -> str:
    text = f"Acc@1 {stats['acc1']:.2f} Acc@5 {stats['acc5']:.2f}"
    if metric != "accuracy":
        text += f" mean-per-class {stats['mean_per_class_acc']:.2f}"
    if "activation_rate" in stats:
        text += f" rate {stats['activation_rate']:.3f}"
    if "flops" in stats:
        text += f" {stats['flops']:.3f} GFLOPs"
    return text


def _evaluate_only(model, splits: Splits, flops_fn, args, info: DistInfo, tracker: Tracker) -> dict[str, Any]:
    path = args.eval_ckpt or args.resume
    load_eval_checkpoint(model, path)
    stats = evaluate(model, eval_loader(splits.test, args, info), info.device, splits.nb_classes, splits.metric,
                     flops_fn)
    print_main(f"* {_describe(stats, splits.metric)}")
    print_main(f"Accuracy of the network on the {stats['samples']} test images: {stats['metric']:.1f}%")
    if "layer_rates" in stats:
        print_main("Select rate per layer: " + " ".join(f"{r:.3f}" for r in stats["layer_rates"]))
    tracker.log_metrics(_eval_metrics(stats))
    return {"test": stats}


def _remove_older(output_dir: Path, epoch: int) -> None:
    """``--auto_remove``: delete every ``checkpoint-{e}.pth`` with e < epoch (the original's rule)."""
    for path in output_dir.glob("checkpoint-*.pth"):
        stem = path.stem.removeprefix("checkpoint-")
        if stem.isdigit() and int(stem) < epoch:
            path.unlink(missing_ok=True)


def _train(net, model, criterion, optimizer, scaler, splits: Splits, flops_fn, state, args, info: DistInfo,
           tracker: Tracker) -> dict[str, Any]:
    output_dir = Path(args.output_dir) if args.output_dir else None
    train_loader = build_loader(splits.train, args.batch_size, train=True, num_workers=args.num_workers,
                                seed=args.seed, drop_last=False, pin_memory=args.pin_mem and info.device.type == "cuda")
    select_loader = eval_loader(splits.select, args, info)
    test_loader = select_loader if splits.select_is_test else eval_loader(splits.test, args, info)
    select_name = "test" if splits.select_is_test else "val"
    last: dict[str, Any] = {}
    print_main(f"Start training for {args.epochs} epochs" if args.start_epoch < args.epochs else
               f"Nothing to train: the run starts at epoch {args.start_epoch} and --epochs is {args.epochs}")
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        epoch_start = time.time()
        set_epoch(train_loader, epoch, args.seed)
        train_stats = train_one_epoch(net, criterion, train_loader, optimizer, info.device, epoch, scaler, args)
        metrics = {k: v for k, v in train_stats.items() if k != "img/s"}
        line = (f"Epoch {epoch}/{args.epochs - 1} | lr {train_stats['lr']:.3g} | loss {train_stats['loss']:.4f} "
                f"(base {train_stats['base_loss']:.4f} token {train_stats['token_loss']:.4f} teacher "
                f"{train_stats['teacher_loss']:.4f} distill {train_stats['distillation_loss']:.4f})")
        if (epoch + 1) % args.eval_freq == 0 or epoch + 1 == args.epochs:
            stats = evaluate(model, select_loader, info.device, splits.nb_classes, splits.metric, flops_fn,
                             desc=select_name)
            improved = stats["metric"] >= state["max_metric"]
            state["max_metric"] = max(state["max_metric"], stats["metric"])
            metrics.update(_eval_metrics(stats))
            metrics["max_metric"] = state["max_metric"]
            line += f" | {select_name} {_describe(stats, splits.metric)} | Max metric {state['max_metric']:.2f}"
            if improved:
                test = stats if splits.select_is_test else evaluate(model, test_loader, info.device,
                                                                    splits.nb_classes, splits.metric, flops_fn)
                state["best"] = {"epoch": epoch, "select_metric": stats["metric"], "test_metric": test["metric"],
                                 "test_acc1": test["acc1"], "test_acc5": test["acc5"]}
                if not splits.select_is_test:
                    metrics.update(_eval_metrics(test, prefix="test_"))
                    line += f" | test at this epoch {test['metric']:.2f}"
                if output_dir is not None:
                    save_checkpoint(_state(model, optimizer, scaler, epoch, args, state),
                                    output_dir / f"checkpoint-{epoch}.pth")
                    if args.auto_remove and is_main_process():
                        _remove_older(output_dir, epoch)
            last = {"epoch": epoch, "train": train_stats, select_name: stats}
        if output_dir is not None:
            save_checkpoint(_state(model, optimizer, scaler, epoch, args, state), output_dir / LAST_CHECKPOINT)
        print_main(f"{line} | {train_stats['img/s']:.0f} img/s, {time.time() - epoch_start:.1f} s")
        tracker.log_metrics(metrics, step=epoch)
    print_main(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")
    if state["best"]:
        best = state["best"]
        if not splits.select_is_test:
            print_main(f"Selected epoch {best['epoch']} on val: val metric {best['select_metric']:.2f}, test metric "
                       f"at that epoch {best['test_metric']:.2f}")
        tracker.log_metrics({"selected_test_metric": best["test_metric"], "selected_epoch": best["epoch"]})
    if output_dir is not None:
        final = save_checkpoint({"model": model.state_dict()}, output_dir / FINAL_CHECKPOINT)
        if final is not None:
            tracker.set_tags({"final_checkpoint": str(final.resolve())})
    return {**last, "max_metric": state["max_metric"], "best": state["best"]}


def _state(model, optimizer, scaler, epoch: int, args, state) -> dict[str, Any]:
    """The original checkpoint dict ``{'model', 'optimizer', 'epoch', 'scaler', 'args'}`` plus RNG and best."""
    return training_state(model, optimizer, scaler=scaler, epoch=epoch, args=args, max_metric=state["max_metric"],
                          best=state["best"])


# ------------------------------------------------------------------------------------------------- arguments
def add_dyt_args(parser: argparse.ArgumentParser, defaults: dict[str, Any]) -> None:
    """The flags ``main_image.py`` and ``main_vtab.py`` share, with the script's ``defaults`` (spec Sec. d)."""
    add = parser.add_argument
    add("--batch_size", default=512, type=int, help="batch size per process (default: %(default)s)")
    add("--epochs", default=100, type=int, help="(default: %(default)s)")
    add("--accum_iter", default=1, type=int, help="gradient accumulation steps (default: %(default)s)")
    add("--model", default="vit_base_patch16", type=str, metavar="MODEL",
        help=f"vit_base_patch16 (= vit_base_patch16_224_in21k, the paper's ViT-B/16) or one of: {', '.join(MODELS)}"
             " (vit_digits: a small ViT for the embedded 32x32 data) (default: %(default)s)")
    add("--weight_decay", type=non_negative_float, default=defaults["weight_decay"],
        help="AdamW weight decay (default: %(default)s)")
    add("--lr", type=positive_float, default=defaults["lr"], metavar="LR",
        help="absolute learning rate (default: %(default)s)")
    add("--blr", type=positive_float, default=0.1, metavar="LR",
        help="base learning rate, used when --lr is not given: lr = blr * total batch size / 256 (default: "
             "%(default)s)")
    add("--min_lr", type=non_negative_float, default=defaults["min_lr"],
        help="end of the cosine schedule (default: %(default)s)")
    add("--warmup_epochs", type=int, default=defaults["warmup_epochs"], help="linear warm-up epochs "
        "(default: %(default)s)")
    add("--finetune", default="",
        help="IN21K ViT-B/16 weights: a path to jx_vit_base_patch16_224_in21k-e5005f0a.pth, or the original's name "
             "VIT_BASE_IN21K (read from $VIT_BASE_IN21K); optional for --dataset digits/synthetic (from scratch)")
    add("--global_pool", action="store_true", help="accepted for compatibility; the class token is always used")
    add("--cls_token", action="store_false", dest="global_pool", help="classify the class token (always the case)")
    add("--nb_classes", default=1000, type=int, help="accepted for compatibility; set by the dataset")
    add("--data_path", default="", type=str, help="dataset root (the original read it from configs.py)")
    add("--output_dir", default="./output_dir", help="checkpoints go here; empty for no saving (default: %(default)s)")
    add("--log_dir", default=None, help="accepted for compatibility (the original's TensorBoard folder); MLflow logs")
    add("--device", default="cuda", help="cuda or cpu (default: %(default)s)")
    add("--seed", default=0, type=int, help="random seed; process r uses seed + r (default: %(default)s)")
    add("--resume", default="", help="training checkpoint (checkpoint.pth / checkpoint-N.pth) to continue from")
    add("--start_epoch", default=0, type=int, metavar="N", help="first epoch (default: %(default)s)")
    add("--eval", action="store_true", help="only evaluate the fine-tuned checkpoint given by --eval_ckpt")
    add("--eval_ckpt", type=str, default=None, help="fine-tuned checkpoint evaluated by --eval")
    add("--dist_eval", action="store_true", help="accepted for compatibility; evaluation is always sharded")
    add("--num_workers", default=10, type=int, help="data loading workers (default: %(default)s)")
    add("--pin_mem", action="store_true", help="pin CPU memory in the loaders (default)")
    add("--no_pin_mem", action="store_false", dest="pin_mem")
    parser.set_defaults(pin_mem=True)
    add("--save_freq", default=1, type=int, help="accepted for compatibility; checkpoints follow the best metric")
    add("--auto_remove", action="store_true", help="delete older checkpoint-N.pth files when a new one is written")
    add("--eval_freq", default=1, type=int, help="evaluate every N epochs and at the last (default: %(default)s)")
    add("--world_size", default=1, type=int, help="accepted for compatibility; torchrun sets the processes")
    add("--local_rank", default=-1, type=int, help="accepted for compatibility; torchrun sets LOCAL_RANK")
    add("--dist_on_itp", action="store_true", help="accepted for compatibility; not used")
    add("--dist_url", default="env://", help="accepted for compatibility; torchrun's environment is used")
    add("--dataset", default=defaults["dataset"], help=defaults["dataset_help"])
    add("--drop_path", type=non_negative_float, default=0.0, metavar="PCT",
        help="drop path rate (default: %(default)s)")
    add("--inception", action="store_true", help="accepted for compatibility; mean = std = 0.5 is always used")
    add("--ffn_adapt", action="store_true", help="accepted for compatibility; the adapter is always built")
    add("--ffn_num", default=defaults["ffn_num"], type=int, help="adapter bottleneck (default: %(default)s)")
    add("--vpt", action="store_true", help="accepted for compatibility; not used")
    add("--vpt_num", default=1, type=int, help="accepted for compatibility; not used")
    add("--fulltune", action="store_true", help="train every parameter, not only adapters, dispatchers and head")
    add("--token_target_ratio", type=non_negative_float, default=0.5,
        help="target activation rate r (default: %(default)s)")
    # additions (dyt/README.md, "Differences from the original")
    add("--scale", type=finite_float, default=defaults["scale"],
        help="adapter scale s (the original hard-coded %(default)s in this script)")
    add("--token_ratio", type=non_negative_float, default=2.0,
        help="weight lambda of the rate loss (default: %(default)s)")
    add("--no_distill", action="store_false", dest="distill",
        help="drop the complete-model pass, its CE and the KL term (the v1 loss: CE + rate only)")
    add("--dispatch", default="mlp", choices=DISPATCH,
        help="where the dispatcher acts: mlp (the paper's choice), attn, attn_mlp, layer, none (AdaptFormer)")
    add("--moe_experts", default=0, type=int, help="adapter experts of the MoE-adapter; 0 = plain adapter")
    add("--moe_router", default="sample", choices=("sample", "token"), help="MoE router input: per sample or token")
    add("--moe_merge", action="store_true", help="merge the experts' weights per sample instead of mixing outputs")
    add("--input_size", default=None, type=int, help="image side (default: the model's, 224 or 32 for vit_digits)")
    add("--token_mask", default="learned", choices=TOKEN_MASKS,
        help="learned: DyT's dispatchers (default); random / centre: a control that is not in the original, every "
             "dispatcher's mask replaced by a random mask at rate --token_target_ratio or by the fixed mask of the "
             "patches nearest the image centre at that rate")
    add("--digits_classes", default=None, type=digit_classes, metavar="LIST",
        help="--dataset digits only: keep these digits, relabelled 0..k-1, e.g. 0-4 or 5,6,7,8,9 (default: all)")
    add("--digits_shift", default="none", choices=DIGITS_SHIFTS,
        help="--dataset digits only: none (default); canvas: the digit at half size in a random quadrant of a noisy "
             "canvas; canvas_inverted: the same with dark strokes on a light canvas")
    add_distributed_args(parser)
    add_tracking_args(parser, "dyt")


IMAGE_DEFAULTS = {"weight_decay": 0.01, "lr": None, "min_lr": 0.0, "warmup_epochs": 20, "ffn_num": 64,
                  "scale": 0.1, "dataset": "imagenet",
                  "dataset_help": f"one of {', '.join(IMAGE_CHOICES)}; the original's *_full names are accepted "
                                  "(default: %(default)s)"}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The original ``main_image.py`` flags and defaults, plus the additions listed in dyt/README.md."""
    parser = ArgumentParser(prog=PROG, add_help=add_help,
                            description="DyT fine-tuning of an IN21K ViT on an image classification dataset.")
    add_config_argument(parser)
    add_dyt_args(parser, IMAGE_DEFAULTS)
    parser.add_argument("--skip-corrupt-images", action="store_true",
                        help="skip and count undecodable images of an ImageFolder tree instead of stopping at the "
                             "first")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line (and ``-c/--config`` YAML defaults) to a namespace; bad values raise UserError."""
    return parse_args_with_config(get_args_parser(), argv)


def cli(argv: Sequence[str] | None = None) -> None:
    """Entry point: parse, run, and turn every UserError into one line on stderr with exit status 2."""
    run_cli(lambda: main(parse_args(argv)), prog=PROG)


if __name__ == "__main__":
    cli(sys.argv[1:])
