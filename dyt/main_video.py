"""Fine-tune DyT on video recognition (the original ``main_video.py`` / ``train_video.sh``; paper Sec. 4, video).

    torchrun --nproc_per_node=8 dyt/main_video.py --dataset K400 --data_path /data/k400 \\
        --finetune /weights/jx_vit_base_patch16_224_in21k-e5005f0a.pth --batch_size 16 --blr 1e-3 --epochs 12 \\
        --warmup_epochs 2 --weight_decay 0.01 --token_target_ratio 0.5                          (train_video.sh)
    ... --dataset SSV2 --data_path /data/ssv2 ... --epochs 50 --eval_freq 5                     (train_video.sh)
    python dyt/main_video.py --dataset digits --model vit_digits_tiny --device cpu ...          (no download)

The IN21K image ViT with DyT's adapters and dispatchers runs on every frame of a clip and an attentive-pooling
head (``query_token``, ``attentive_blocks``; trained, since the checkpoint lacks it) classifies the clip
(:class:`dyt.models.video_vision_transformer.VideoVisionTransformer`). Training is ``main_image``'s step
(:func:`dyt.engine.train_one_epoch`: dynamic and complete pass, CE + rate loss + complete CE + KL); evaluation
averages the logits of several views per video (K400 1 spatial x 3 temporal, SSv2 3 spatial x 1 temporal;
:func:`dyt.video_engine.evaluate_video`) and logs the original's FLOPs per frame, "Rate = flops / 17.6", the
per-clip and per-video cost and the per-layer activation rates. Flags and defaults are the original's; the flags
it parsed but never used are accepted (their help says so), and the additions are listed in ``dyt/README.md``
("Differences from the original"). Mistakes the user can fix print one line and exit with status 2, before
anything is written (a corrupt video file, met when it is read, stops the run the same way).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from common.checkpoint import save_checkpoint
from common.config import add_config_argument, finite_float, non_negative_float, parse_args_with_config
from common.data import build_loader, set_epoch
from common.distributed import DistInfo, is_main_process, print_main, run_distributed, seed_everything, wrap_ddp
from common.errors import ArgumentParser, UserError, run_cli
from common.tracking import Tracker, start_tracking
from dyt.data import canonical_name
from dyt.engine import train_one_epoch
from dyt.losses import DyTLoss
from dyt.main_image import (
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    _remove_older,
    _state,
    add_dyt_args,
    check_args,
    eval_loader,
    load_eval_checkpoint,
    model_img_size,
    model_name,
    output_folder,
    prepare_weights,
    training_state_from,
)
from dyt.models.video_vision_transformer import build_video_model
from dyt.video_data import VIDEO_CHOICES, VIDEO_DATASETS, ClipSettings, build_video_dataset
from dyt.video_engine import VIT_B_GFLOPS, complete_clip_flops, evaluate_video

__all__ = ["get_args_parser", "main", "video_param_count"]

PROG = "main_video.py"


# ----------------------------------------------------------------------------------------------------- model
def create_model(args: argparse.Namespace, nb_classes: int) -> nn.Module:
    """The DyT video ViT of ``--model`` for ``--num_frames``-frame clips, with the adapter / dispatcher flags."""
    model = build_video_model(model_name(args), num_frames=args.num_frames, num_classes=nb_classes,
                              ffn_num=args.ffn_num, adapter_scale=args.scale, dispatch=args.dispatch,
                              moe_experts=args.moe_experts, moe_router=args.moe_router, moe_merge=args.moe_merge,
                              drop_path_rate=args.drop_path, img_size=args.input_size)
    model.set_token_mask(args.token_mask, args.token_target_ratio)
    return model


def video_param_count(model: nn.Module) -> int:
    """What the original ``main_video.py`` logs as "number of params": trainable tensors other than the attentive
    pooling (``query_token``, ``attentive_blocks``), head and dispatchers included (1,506,460 for ViT-B, K400)."""
    return sum(p.numel() for n, p in model.named_parameters()
               if p.requires_grad and "attentive_blocks" not in n and "query_token" not in n)


# ------------------------------------------------------------------------------------------------------ data
def clip_settings(args: argparse.Namespace, dataset: str, img_size: int) -> ClipSettings:
    """Frames, spacing and test views: the flags where given, else the protocol the original used for the
    dataset (K400: rate 16, 3 temporal x 1 spatial; SSv2: segments, 1 x 3)."""
    spec = VIDEO_DATASETS[dataset]
    pick = lambda value, default: default if value is None else value  # noqa: E731
    return ClipSettings(size=img_size, num_frames=args.num_frames,
                        sampling_rate=pick(args.sampling_rate, spec.sampling_rate),
                        temporal_views=pick(args.test_num_segment, spec.temporal_views),
                        spatial_views=pick(args.test_num_crop, spec.spatial_views), augment=spec.augment)


# --------------------------------------------------------------------------------------------------- checks
def check_video_args(args: argparse.Namespace) -> None:
    """``main_image``'s checks (data, weights, numbers) plus the clip flags; nothing is read or written yet."""
    check_args(args, VIDEO_CHOICES)
    for flag in ("num_frames", "test_num_segment", "test_num_crop"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag} must be at least 1, got {value}")
    if args.sampling_rate is not None and args.sampling_rate < 0:
        raise UserError(f"--sampling_rate must be 0 (one frame per segment) or more, got {args.sampling_rate}")
    dataset = canonical_name(args.dataset, VIDEO_CHOICES)
    spec = VIDEO_DATASETS[dataset]
    rate = spec.sampling_rate if args.sampling_rate is None else args.sampling_rate
    temporal = spec.temporal_views if args.test_num_segment is None else args.test_num_segment
    if rate == 0 and temporal > 1:
        raise UserError(f"--test_num_segment {temporal} needs windows of frames: with segment sampling (sampling "
                        f"rate 0, the {dataset} default) there is one temporal view; pass --test_num_segment 1 or "
                        "--sampling_rate N > 0")
    if args.digits_shift != "none":
        raise UserError("--digits_shift applies to main_image.py / main_vtab.py; the moving digits of main_video.py "
                        "are drawn on a canvas already")


# ------------------------------------------------------------------------------------------------------ main
def main(args: argparse.Namespace) -> dict[str, Any]:
    """Fine-tune (or, with ``--eval``, evaluate) as the flags say; returns the last results."""
    check_video_args(args)
    return run_distributed(lambda info: run(args, info), args.device, args.dist_timeout,
                           output_dir=output_folder(args), output_flag="--output_dir")


def run(args: argparse.Namespace, info: DistInfo) -> dict[str, Any]:
    """Data, model, optimiser, resume, then train with periodic multi-view evaluation (or only evaluate)."""
    dataset = canonical_name(args.dataset, VIDEO_CHOICES)
    seed_everything(args.seed)
    classes = tuple(args.digits_classes or ()) if dataset == "digits" else ()
    model = create_model(args, len(classes) or VIDEO_DATASETS[dataset].num_classes)
    n_trainable = 0 if args.eval else prepare_weights(model, args, dataset)
    settings = clip_settings(args, dataset, model_img_size(model))
    train_set, val_set, args.nb_classes = build_video_dataset(dataset, args.data_path, settings, classes,
                                                              args.skip_corrupt_videos)
    print_main(f"{dataset}: {len(train_set)} training / {len(val_set)} validation videos; clips of "
               f"{settings.num_frames} frames at {settings.size} px, sampling rate {settings.sampling_rate} "
               f"({'one per segment' if settings.sampling_rate == 0 else 'frames apart'}); test views "
               f"{settings.temporal_views} temporal x {settings.spatial_views} spatial")
    model.to(info.device)
    eff_batch_size = args.batch_size * args.accum_iter * info.world_size
    if args.lr is None:
        args.lr = args.blr * eff_batch_size / 256
    criterion = DyTLoss(token_target_ratio=args.token_target_ratio, token_ratio=args.token_ratio,
                        distill=args.distill)
    with start_tracking(args, run_name=f"{dataset}-{args.model}-video{'-eval' if args.eval else ''}") as tracker:
        tracker.log_params(vars(args))
        val_loader = eval_loader(val_set, args, info)
        if args.eval:
            load_eval_checkpoint(model, args.eval_ckpt or args.resume)
            stats = evaluate_video(model, val_loader, info.device)
            _report(stats, model, settings)
            print_main(f"Accuracy of the network on the {stats['samples']} test videos: {stats['acc1']:.1f}%")
            tracker.log_metrics(_metrics(stats))
            return {"test": stats}
        print_main(f"number of params (M): {video_param_count(model) / 1e6:.2f} (trainable in all: "
                   f"{n_trainable:,})")
        print_main(f"actual lr: {args.lr:.2e}, weight decay {args.weight_decay:g}, effective batch size "
                   f"{eff_batch_size}")
        optimizer, scaler, state = training_state_from(model, args, info)
        train_loader = build_loader(train_set, args.batch_size, train=True, num_workers=args.num_workers,
                                    seed=args.seed, drop_last=False,
                                    pin_memory=args.pin_mem and info.device.type == "cuda")
        return _train(wrap_ddp(model, info), model, criterion, optimizer, scaler, train_loader, val_loader, settings,
                      state, args, info, tracker)


def _metrics(stats: dict[str, Any]) -> dict[str, float]:
    keys = ("acc1", "acc5", "metric", "activation_rate", "flops", "rate", "clip_flops", "video_flops")
    metrics = {k: stats[k] for k in keys}
    metrics["eval_loss"] = stats["loss"]
    metrics.update({f"layer_rate_{i}": r for i, r in enumerate(stats["layer_rates"])})
    return metrics


def _report(stats: dict[str, Any], model: nn.Module, settings: ClipSettings) -> None:
    """The original's evaluation log: accuracy, average GFLOPs per frame, Rate, per-layer selection rates; plus
    what a clip and a video (all views) cost and what the complete model would."""
    print_main(f"* Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} loss {stats['loss']:.4f} "
               f"({stats['samples']} videos x {stats['views']} views)")
    print_main(f"Average flops: {stats['flops']:.4g} GFLOPs per frame | Rate = flops / {VIT_B_GFLOPS}: "
               f"{stats['rate']:.4g} | {stats['clip_flops']:.4g} GFLOPs per clip of {settings.num_frames} frames "
               f"(complete model {complete_clip_flops(model, settings.num_frames):.4g}) | "
               f"{stats['video_flops']:.4g} GFLOPs per video ({settings.views} views)")
    print_main("Select rate per layer: " + " ".join(f"{r:.3f}" for r in stats["layer_rates"])
               + f" | overall {stats['activation_rate']:.3f}")


def _train(net, model, criterion, optimizer, scaler, train_loader, val_loader, settings: ClipSettings, state,
           args, info: DistInfo, tracker: Tracker) -> dict[str, Any]:
    output_dir = Path(args.output_dir) if args.output_dir else None
    last: dict[str, Any] = {}
    print_main(f"Start training for {args.epochs} epochs" if args.start_epoch < args.epochs else
               f"Nothing to train: the run starts at epoch {args.start_epoch} and --epochs is {args.epochs}")
    start = time.time()
    for epoch in range(args.start_epoch, args.epochs):
        epoch_start = time.time()
        set_epoch(train_loader, epoch, args.seed)
        train_stats = train_one_epoch(net, criterion, train_loader, optimizer, info.device, epoch, scaler, args)
        metrics = {k: v for k, v in train_stats.items() if k != "img/s"}
        print_main(f"Epoch {epoch}/{args.epochs - 1} | lr {train_stats['lr']:.3g} | loss {train_stats['loss']:.4f} "
                   f"(base {train_stats['base_loss']:.4f} token {train_stats['token_loss']:.4f} teacher "
                   f"{train_stats['teacher_loss']:.4f} distill {train_stats['distillation_loss']:.4f}) | "
                   f"{train_stats['img/s']:.1f} clips/s, {time.time() - epoch_start:.1f} s")
        if (epoch + 1) % args.eval_freq == 0 or epoch + 1 == args.epochs:
            stats = evaluate_video(model, val_loader, info.device)
            _report(stats, model, settings)
            improved = stats["metric"] >= state["max_metric"]
            state["max_metric"] = max(state["max_metric"], stats["metric"])
            print_main(f"Max metric: {state['max_metric']:.2f}%")
            metrics.update(_metrics(stats))
            metrics["max_metric"] = state["max_metric"]
            if improved:
                state["best"] = {"epoch": epoch, "test_metric": stats["metric"], "test_acc1": stats["acc1"],
                                 "test_acc5": stats["acc5"]}
                if output_dir is not None:
                    save_checkpoint(_state(model, optimizer, scaler, epoch, args, state),
                                    output_dir / f"checkpoint-{epoch}.pth")
                    if args.auto_remove and is_main_process():
                        _remove_older(output_dir, epoch)
            last = {"epoch": epoch, "train": train_stats, "test": stats}
        if output_dir is not None:
            save_checkpoint(_state(model, optimizer, scaler, epoch, args, state), output_dir / LAST_CHECKPOINT)
        tracker.log_metrics(metrics, step=epoch)
    print_main(f"Training time {datetime.timedelta(seconds=int(time.time() - start))}")
    if state["best"]:
        tracker.log_metrics({"selected_test_metric": state["best"]["test_metric"],
                             "selected_epoch": state["best"]["epoch"]})
    if output_dir is not None:
        final = save_checkpoint({"model": model.state_dict()}, output_dir / FINAL_CHECKPOINT)
        if final is not None:
            tracker.set_tags({"final_checkpoint": str(final.resolve())})
    return {**last, "max_metric": state["max_metric"], "best": state["best"]}


# ------------------------------------------------------------------------------------------------- arguments
VIDEO_DEFAULTS = {"weight_decay": 0.0, "lr": None, "min_lr": 0.0, "warmup_epochs": 10, "ffn_num": 64, "scale": 0.1,
                  "dataset": "SSV2",
                  "dataset_help": "K400 (400 classes) or SSV2 (174) read from --data_path, or the embedded videos "
                                  "digits (moving scikit-learn digits, 10 classes) or synthetic (default: "
                                  "%(default)s)"}


def add_video_args(parser: argparse.ArgumentParser) -> None:
    """The original ``main_video.py``'s own flags (its "custom" and "video data" groups)."""
    group = parser.add_argument_group("video")
    add = group.add_argument
    add("--num_frames", type=int, default=8, help="frames per clip, T (default: %(default)s)")
    add("--sampling_rate", type=int, default=None,
        help="frames between two sampled frames; 0: one frame from each of T equal segments (default: the "
             "original's per-dataset value, 16 for K400 and 0 for SSV2, 2 for the embedded videos; the original "
             "parsed a default of 4 that its dataset builder ignored)")
    add("--test_num_segment", type=int, default=None,
        help="temporal views per test video (default: 3 for K400 and the embedded videos, 1 for SSV2, what the "
             "original evaluated; its parsed default of 4 was ignored)")
    add("--test_num_crop", type=int, default=None,
        help="spatial views per test video (default: 1 for K400 and the embedded videos, 3 for SSV2, what the "
             "original evaluated; its parsed default of 3 was ignored)")
    add("--skip_corrupt_videos", action="store_true",
        help="skip and count undecodable video files instead of stopping at the first")
    add("--num_segments", type=int, default=1, help="accepted for compatibility; not used by the original")
    add("--num_sample", type=int, default=1, help="accepted for compatibility (repeated augmentation); not used")
    add("--short_side_size", type=int, default=224,
        help="accepted for compatibility; test frames are resized to the model's input side, as in the original")
    add("--crop_pct", type=non_negative_float, default=None, help="accepted for compatibility; not used")
    add("--linprob", default=True, help="accepted for compatibility; not used")
    add("--tubelet_size", type=int, default=2, help="accepted for compatibility; frames are embedded one by one")
    add("--drop", type=non_negative_float, default=0.0, help="accepted for compatibility; not used")
    add("--attn_drop_rate", type=non_negative_float, default=0.0, help="accepted for compatibility; not used")
    add("--use_mean_pooling", default=True, help="accepted for compatibility; attentive pooling is always used")
    add("--init_scale", type=finite_float, default=0.001, help="accepted for compatibility; not used")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The original ``main_video.py`` flags and defaults, plus the additions listed in dyt/README.md."""
    parser = ArgumentParser(prog=PROG, add_help=add_help,
                            description="DyT fine-tuning of an IN21K ViT on video recognition (K400, SSv2).")
    add_config_argument(parser)
    add_dyt_args(parser, VIDEO_DEFAULTS)
    add_video_args(parser)
    parser.set_defaults(epochs=90, nb_classes=174)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command line (and ``-c/--config`` YAML defaults) to a namespace; bad values raise UserError."""
    return parse_args_with_config(get_args_parser(), argv)


def cli(argv: Sequence[str] | None = None) -> None:
    """Entry point: parse, run, and turn every UserError into one line on stderr with exit status 2."""
    run_cli(lambda: main(parse_args(argv)), prog=PROG)


if __name__ == "__main__":
    cli(sys.argv[1:])
