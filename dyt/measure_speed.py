"""Inference throughput of a fine-tuned DyT model (the original ``speed.py`` / ``measure_speed.sh``; spec Sec. e).

    python dyt/measure_speed.py --batch_size 128 --dataset cifar100_full --data_path /data/cifar100 \\
        --eval --eval_ckpt output_dir/checkpoint-99.pth                                     (measure_speed.sh)
    python dyt/measure_speed.py --dataset synthetic --model vit_digits --device cpu --batch_size 64 \\
        --eval_ckpt out/final_checkpoint.pth --csv speed.csv                                  (no download)

Four ways to run the same weights on the same batches of the test set, each timed after a warm-up (the original
skips 6 batches and times the next 15; ``torch.cuda.synchronize()`` around every forward on CUDA, fp16 autocast on
CUDA only):

* ``dyt_gather``: skipped tokens are gathered out of the dispatched sub-block and scattered back (the real path);
* ``dyt_masked``: the same masks, applied by multiplication (every token computed);
* ``complete``: nothing skipped (``complete_model=True``), the full model;
* ``adaptformer``: the same backbone and adapters without dispatchers (``--dispatch none``).

Unlike the original, which loaded the IN21K backbone and ignored ``--eval_ckpt`` (so its dispatchers kept their
random init and kept about half of the tokens by chance), the fine-tuned checkpoint of ``--eval_ckpt`` is loaded,
strictly: a checkpoint of another model is an error.
"""

from __future__ import annotations

import argparse
import copy
import csv
import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.checkpoint import load_state_dict
from common.config import parse_args_with_config
from common.distributed import resolve_device, seed_everything
from common.errors import UserError, run_cli
from dyt.data import IMAGE_CHOICES, canonical_name, num_classes_of
from dyt.engine import autocast
from dyt.main_image import (
    create_model,
    digits_variant,
    eval_loader,
    load_data,
    load_eval_checkpoint,
    model_img_size,
    model_name,
)
from dyt.main_image import get_args_parser as image_args_parser
from dyt.weights import load_pretrained_vit, resolve_finetune

PROG = "measure_speed.py"
VARIANTS = ("dyt_gather", "dyt_masked", "complete", "adaptformer")
CSV_FIELDS = ("variant", "batch_size", "img_per_s", "ms_per_batch", "activation_rate", "speedup_vs_complete")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def throughput(forward, batches: Sequence[torch.Tensor], device: torch.device, warmup_iters: int,
               skips: bool = True) -> dict[str, float]:
    """Images per second of ``forward`` over ``batches[warmup_iters:]`` (the first ``warmup_iters`` are untimed).

    ``forward(x)`` returns ``(logits, aux)``; the activation rate is the mean of ``aux["token_select"]`` over the
    timed batches, or 1.0 when the forward does not skip (``skips=False``: every token is computed).
    """
    seconds, images, rates = 0.0, 0, []
    for i, x in enumerate(batches):
        _synchronize(device)
        start = time.perf_counter()
        with autocast(device):
            _, aux = forward(x)
        _synchronize(device)
        if i < warmup_iters:
            continue
        seconds += time.perf_counter() - start
        images += x.shape[0]
        rates.append(aux["token_select"].float().mean().item() if skips else 1.0)
    return {"img_per_s": images / seconds, "ms_per_batch": 1000.0 * seconds / (len(batches) - warmup_iters),
            "activation_rate": sum(rates) / len(rates)}


def collect_batches(loader, count: int, batch_size: int, device: torch.device) -> list[torch.Tensor]:
    """``count`` full batches of the loader (cycled as the original repeated its test set), on ``device``."""
    batches: list[torch.Tensor] = []
    for images, _ in itertools.cycle(loader):
        if images.shape[0] == batch_size:
            batches.append(images.to(device))
        if len(batches) == count:
            return batches
    return batches


def build_models(args: argparse.Namespace, nb_classes: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The DyT model (``--eval_ckpt`` loaded strictly, else ``--finetune`` or random init) and its AdaptFormer twin."""
    model = create_model(args, nb_classes)
    if args.eval_ckpt:
        load_eval_checkpoint(model, args.eval_ckpt)
        print(f"Loaded the fine-tuned checkpoint {args.eval_ckpt}")
    elif args.finetune:
        load_pretrained_vit(model, resolve_finetune(args.finetune))
        print("note: no --eval_ckpt; the dispatchers are untrained (as in the original speed.py)")
    else:
        print("note: no --eval_ckpt and no --finetune; measuring randomly initialised weights")
    twin_args = copy.copy(args)
    twin_args.dispatch, twin_args.token_mask = "none", "learned"
    adaptformer = create_model(twin_args, nb_classes)
    load_state_dict(adaptformer, model.state_dict(), strict=False, source="the DyT weights")
    return model.to(device).eval(), adaptformer.to(device).eval()


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Throughput of every variant of :data:`VARIANTS`; prints the table and writes ``--csv``; returns the rows."""
    check_args(args)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    dataset = canonical_name(args.dataset, IMAGE_CHOICES)
    model, adaptformer = build_models(args, num_classes_of(dataset, digits=digits_variant(args)), device)
    args.eval = True
    test_set = load_data(args, model_img_size(model)).test
    if len(test_set) < args.batch_size:
        raise UserError(f"--batch_size {args.batch_size} is larger than the {len(test_set)} test images of "
                        f"{dataset}; lower it")
    info = argparse.Namespace(distributed=False, device=device)
    batches = collect_batches(eval_loader(test_set, args, info), args.warmup_iters + args.timed_iters,
                              args.batch_size, device)

    def run_masked(x):
        model.execution = "masked"
        try:
            return model(x)
        finally:
            model.execution = "gather"

    forwards = {"dyt_gather": model, "dyt_masked": run_masked,
                "complete": lambda x: model(x, complete_model=True), "adaptformer": adaptformer}
    rows = []
    for name in VARIANTS:
        stats = throughput(forwards[name], batches, device, args.warmup_iters, skips=name.startswith("dyt"))
        rows.append({"variant": name, "batch_size": args.batch_size, **stats})
    complete = next(r["img_per_s"] for r in rows if r["variant"] == "complete")
    for row in rows:
        row["speedup_vs_complete"] = row["img_per_s"] / complete
    print(format_table(rows, device))
    if args.csv:
        write_csv(rows, args.csv)
        print(f"Wrote {args.csv}")
    return rows


def format_table(rows: list[dict[str, Any]], device: torch.device) -> str:
    lines = [f"Throughput on {device} ({rows[0]['batch_size']} images per batch)",
             f"{'variant':<12} {'img/s':>10} {'ms/batch':>10} {'rate':>6} {'vs complete':>12}"]
    lines += [f"{r['variant']:<12} {r['img_per_s']:>10.1f} {r['ms_per_batch']:>10.2f} {r['activation_rate']:>6.3f} "
              f"{r['speedup_vs_complete']:>11.2f}x" for r in rows]
    return "\n".join(lines)


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows({k: row[k] for k in CSV_FIELDS} for row in rows)


def check_args(args: argparse.Namespace) -> None:
    canonical_name(args.dataset, IMAGE_CHOICES)
    model_name(args)
    for flag in ("batch_size", "timed_iters"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.warmup_iters < 0:
        raise UserError(f"--warmup_iters must be 0 or more, got {args.warmup_iters}")
    if args.eval_ckpt and not Path(args.eval_ckpt).is_file():
        raise UserError(f"--eval_ckpt {args.eval_ckpt} does not exist; give a checkpoint written by main_image.py")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """``speed.py``'s flags (those of ``main_image.py``) plus the timing, CSV and warm-up settings."""
    parser = image_args_parser(add_help)
    parser.prog = PROG
    parser.description = "Throughput of DyT's gather/scatter inference vs masking, the full model and AdaptFormer."
    parser.add_argument("--warmup_iters", default=6, type=int, help="untimed batches first (default: %(default)s)")
    parser.add_argument("--timed_iters", default=15, type=int, help="timed batches (default: %(default)s)")
    parser.add_argument("--csv", default="", help="also write the table to this CSV file")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return parse_args_with_config(get_args_parser(), argv)


def cli(argv: Sequence[str] | None = None) -> None:
    """Entry point: parse, measure, and turn every UserError into one line on stderr with exit status 2."""
    run_cli(lambda: measure(parse_args(argv)), prog=PROG)


if __name__ == "__main__":
    cli(sys.argv[1:])
