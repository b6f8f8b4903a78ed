"""DS-Net (Li et al., CVPR 2021): the README's 14 sub-networks, the abstract's claims, CPU speed and a proxy run.

Part 1 (the table; spec ``dsnet.md`` Sec. 9 and 11). For every row of ``benchmarks/paper_tables/dsnet.yaml`` (the
README's 14 sub-networks of the pretrained supernet, plus ``smallest`` and ``largest``) build
``slimmable_mbnet_v1_bn_uniform`` and count, per 224x224 image:

* the MAdds with the original's convention (:func:`dsnet.madds.madds`: convolutions + classifier + the input
  elements of every average pool), which must equal the original counter's value exactly and round to the
  README's printed millions;
* the conv + linear MACs that really execute in a sliced forward, measured with ``common.flops``
  (:func:`dsnet.madds.executed_macs`), and the pool elements, which together must give the same figure;
* the active parameters (the slices of the weights a sub-network uses).

Exit code 1 when any of the 16 rows is off. ``--checkpoint FILE --data-path DIR`` evaluates a supernet checkpoint
(the original's ``state_dict`` / ``state_dict_ema`` format) on ImageNet val to fill "our Top-1/Top-5".

Part 2 (``--speed``, on by default). Images/s of sub-network 0, sub-network 13, ``largest`` and the dynamic mode
(without gradients it runs the sliced sub-network of each route; Sec. 3) on this CPU at 224x224, for batch 1 and a
small batch: the median of interleaved repeats after warm-up. The abstract's claims (Sec. 11) are then listed with
what this repository can check of each.

Part 3 (``--proxy``, on by default). All three stages on the embedded ``digits`` data (32x32) with the
reduced-width supernet ``slimmable_mbnet_v1_bn_uniform_tiny``, using ``dsnet.engine`` directly:

* Stage I (spec Sec. 4): the sandwich rule with in-place bootstrapping from an EMA teacher (``ModelEmaV2``),
  timm's SGD (nesterov, weight decay on >= 2-D tensors only), label smoothing, a cosine schedule per step, and a
  random affine warp of the training images (see :func:`proxy_train_transform`);
* BN recalibration of all 14 widths (Sec. 5), then top-1/5 of the 14 sub-networks;
* Stage II (Sec. 6) once per routing space: only the gate learns (SGS + CE + MAdds loss, BN frozen), then the gated
  model is evaluated with the original's Gumbel noise and without it (argmax): top-1, MAdds averaged over the val
  set, the route histogram, and where it lands against the static curve. The default routing spaces are the
  released one, sub-networks 0-3 (``start_chn_idx`` 0), and the wider 0, 4, 9, 13 (on which the original crashes).

Mean ± std over ``--seeds``. Writes ``dsnet.md``, ``dsnet_madds.csv``, ``dsnet_speed.csv``, ``dsnet.csv`` (the
proxy's top-1 vs MAdds, like ``adn.csv``) and ``dsnet_proxy.png`` to ``--output-dir`` (default ``results``,
beside the other papers' reports).

    python -m benchmarks.dsnet_table                 # all parts, 3 seeds (about 10 minutes on 2 CPU cores)
    python -m benchmarks.dsnet_table --quick         # CI-sized: 1 seed, 1 epoch per stage on a subset
    python -m benchmarks.dsnet_table --no-proxy --no-speed --checkpoint DS_MBNet-70_1.pth.tar --data-path IMAGENET
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmarks.tables import markdown_table, write_csv
from common.config import load_yaml
from common.errors import UserError, run_cli
from dsnet.madds import dynamic_madds, executed_macs, madds, mode_widths
from dsnet.models import MODELS, DSNet, create_model

PAPER_TABLE = Path(__file__).resolve().parent / "paper_tables" / "dsnet.yaml"
PROXY_MODEL = "slimmable_mbnet_v1_bn_uniform_tiny"
ROW_KEYS = ("subnet", "mode", "choice", "widths", "madds", "conv_linear_macs", "avgpool_elements",
            "readme_madds_M", "top1", "top5")
CLAIM_KEYS = ("id", "claim", "value", "checkable")


class DsnetTableError(UserError):
    """A bad flag, a missing file, or a malformed paper table."""


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _plain(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body])


def _table(head: Sequence[str], body: Sequence[Sequence[str]], markdown: bool) -> str:
    return markdown_table(head, body) if markdown else _plain(head, body)


# --------------------------------------------------------------------------------------------------------------
# Part 1: the README's sub-networks (spec Sec. 9)
# --------------------------------------------------------------------------------------------------------------

def load_paper_table(path: str | Path) -> dict[str, Any]:
    """Read and check the paper-table YAML: ``model``, ``img_size``, ``rows`` (ROW_KEYS each) and ``claims``."""
    path = Path(path)
    if not path.is_file():
        raise DsnetTableError(f"paper table {path} does not exist (the default is {PAPER_TABLE})")
    table = load_yaml(path)
    if table.get("model") not in MODELS or not isinstance(table.get("img_size"), int):
        raise DsnetTableError(f"paper table {path} needs 'model' (one of: {', '.join(MODELS)}) and an integer "
                              "'img_size'")
    if not isinstance(table.get("rows"), list) or not table["rows"]:
        raise DsnetTableError(f"paper table {path} needs a non-empty 'rows' list")
    for i, row in enumerate(table["rows"]):
        missing = [key for key in ROW_KEYS if not isinstance(row, dict) or key not in row]
        if missing:
            raise DsnetTableError(f"paper table {path}: row {i + 1} lacks {', '.join(missing)}")
        if row["mode"] not in ("uniform", "smallest", "largest") or (row["mode"] == "uniform") != isinstance(
                row["choice"], int):
            raise DsnetTableError(f"paper table {path}: row {i + 1} needs mode uniform with an integer choice, "
                                  "or mode smallest / largest with choice null")
        for key in ("madds", "conv_linear_macs", "avgpool_elements"):
            if not isinstance(row[key], int):
                raise DsnetTableError(f"paper table {path}: row {i + 1} ({row['subnet']}): '{key}' must be an "
                                      f"integer, got {row[key]!r}")
        row["subnet"] = str(row["subnet"])
    for i, claim in enumerate(table.get("claims") or []):
        missing = [key for key in CLAIM_KEYS if not isinstance(claim, dict) or key not in claim]
        if missing:
            raise DsnetTableError(f"paper table {path}: claim {i + 1} lacks {', '.join(missing)}")
    table.setdefault("claims", [])
    table.setdefault("third_party", [])
    table.setdefault("context", {})
    return table


def active_params(model: DSNet, widths: Sequence[int]) -> int:
    """Parameters a static sub-network uses: the slices ``weight[:out, :in]`` of every layer at ``widths``
    (stem, blocks.0 ... blocks.N), the shared BN affine at the active width, the SE convolutions and the classifier
    (spec Sec. 1-2). The gate's slimming head is not part of a static sub-network; running statistics are buffers."""
    k = model.conv_stem.kernel_size[0]
    total = model.conv_stem.in_channels * widths[0] * k * k + 2 * widths[0]
    c_in = widths[0]
    for s, stage in enumerate(model.blocks):
        c_out = widths[s + 1]
        for block in [stage.first_block, *stage.residual_blocks]:
            k = block.conv_dw.kernel_size[0]
            reduced = block.gate.conv_reduce.out_channels
            total += c_in * k * k + 2 * c_in                    # conv_dw, bn1
            total += (c_in * reduced + reduced) + (reduced * c_in + c_in)  # SE conv_reduce, conv_expand (biases)
            total += c_in * c_out + 2 * c_out                   # conv_pw, bn2
            c_in = c_out
    return total + c_in * model.num_classes + model.num_classes


def _round_m(value: int) -> int:
    """Round a count to the million as the README prints it (half up)."""
    return math.floor(value / 1e6 + 0.5)


def count_rows(table: dict[str, Any], accuracies: dict[str, tuple[float, float]] | None = None
               ) -> list[dict[str, Any]]:
    """Count every row of the table (module docstring, Part 1) and compare; ``status`` is ``ok`` or ``FAIL``."""
    _seed_all(0)
    model = create_model(table["model"]).eval()
    size = table["img_size"]
    accuracies = accuracies or {}
    results = []
    for row in tqdm(table["rows"], desc="MAdds", dynamic_ncols=True, leave=False):
        try:
            widths = mode_widths(model, row["mode"], row["choice"])
        except (ValueError, IndexError) as err:
            raise DsnetTableError(f"row {row['subnet']}: {err}") from None
        ours = int(madds(model, widths, size))
        pools = ours - int(madds(model, widths, size, include_pools=False))
        executed = executed_macs(model, row["mode"], row["choice"], size)
        problems = []
        if list(widths) != list(row["widths"]):
            problems.append(f"widths {widths} != table {row['widths']}")
        if ours != row["madds"]:
            problems.append(f"MAdds {ours:,} != original counter {row['madds']:,}")
        if executed != row["conv_linear_macs"]:
            problems.append(f"executed conv+linear MACs {executed:,} != {row['conv_linear_macs']:,}")
        if pools != row["avgpool_elements"]:
            problems.append(f"pool elements {pools:,} != {row['avgpool_elements']:,}")
        if executed + pools != ours:
            problems.append(f"executed MACs + pool elements {executed + pools:,} != MAdds {ours:,}")
        if row["readme_madds_M"] is not None and _round_m(ours) != row["readme_madds_M"]:
            problems.append(f"{ours / 1e6:.2f}M does not round to the README's {row['readme_madds_M']}M")
        top = accuracies.get(row["subnet"])
        results.append({
            "subnet": row["subnet"], "mode": row["mode"], "choice": row["choice"],
            "widths": " ".join(map(str, widths)), "our_madds": ours, "original_madds": row["madds"],
            "readme_madds_M": row["readme_madds_M"], "executed_conv_linear_macs": executed, "avgpool_elements": pools,
            "active_params": active_params(model, widths), "readme_top1": row["top1"], "readme_top5": row["top5"],
            "our_top1": None if top is None else round(top[0], 3),
            "our_top5": None if top is None else round(top[1], 3),
            "status": "FAIL" if problems else "ok", "problems": "; ".join(problems),
        })
    return results


def format_madds_table(results: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """Sub-network | widths | MAdds ours / original / README | executed MACs + pools | params | Top-1/5 | status."""
    head = ["sub-net", "widths (stem,b0..b4)", "MAdds (ours)", "original counter", "README", "executed MACs",
            "+ pool elems", "active params", "README top-1/5", "our top-1/5", "status"]
    body = []
    for r in results:
        readme = "-" if r["readme_madds_M"] is None else f"{r['readme_madds_M']}M"
        paper = "-" if r["readme_top1"] is None else f"{r['readme_top1']} / {r['readme_top5']}"
        ours = "-" if r["our_top1"] is None else f"{r['our_top1']:.1f} / {r['our_top5']:.1f}"
        body.append([r["subnet"], r["widths"].replace(" ", ","), f"{r['our_madds']:,}", f"{r['original_madds']:,}",
                     readme, f"{r['executed_conv_linear_macs']:,}", f"{r['avgpool_elements']:,}",
                     f"{r['active_params'] / 1e6:.2f}M", paper, ours, r["status"]])
    return _table(head, body, markdown)


def evaluate_checkpoint(args: argparse.Namespace, table: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Top-1/5 of every ``uniform`` row of a supernet checkpoint on ImageNet val (spec Sec. 4-5 protocol: resize 256
    bicubic, centre crop 224); ``smallest`` has sub-network 0's widths and shares its result. ``largest`` is not
    evaluated: after the BN recalibration its trunk statistics are the reset ones (spec Sec. 5)."""
    from common.checkpoint import load_checkpoint_file, load_state_dict, select_state_dict
    from common.data import build_dataset, build_loader
    from common.data.transforms import imagenet_eval_transform
    from dsnet.engine import validate_slim

    transform = imagenet_eval_transform(table["img_size"], crop_pct=0.875, interpolation="bicubic")
    dataset = build_dataset("imagenet", args.data_path, "val", transform=transform)
    checkpoint = load_checkpoint_file(args.checkpoint)
    entry = "state_dict_ema" if args.model_ema else None
    if args.model_ema and (not isinstance(checkpoint, dict) or "state_dict_ema" not in checkpoint):
        raise DsnetTableError(f"--model-ema: {args.checkpoint} has no 'state_dict_ema' entry")
    state = select_state_dict(checkpoint, entry=entry)
    classifier = state.get("classifier.weight")
    if classifier is None:
        raise DsnetTableError(f"--checkpoint {args.checkpoint} holds no DS-Net supernet (no 'classifier.weight')")
    num_classes = classifier.shape[0]
    if len(dataset.classes) != num_classes:
        raise DsnetTableError(f"--data-path {args.data_path}: val/ has {len(dataset.classes)} classes, the "
                              f"checkpoint's classifier {num_classes}")
    model = create_model(table["model"], num_classes=num_classes)
    load_state_dict(model, state, strict=True, source=f"{args.checkpoint} ({entry or 'state_dict'})")
    device = torch.device(args.device)
    model.to(device)
    loader = build_loader(dataset, args.batch_size, train=False, num_workers=args.workers)
    criterion = nn.CrossEntropyLoss()
    accuracies = {}
    for row in table["rows"]:
        if row["mode"] == "uniform":
            result = validate_slim(model, loader, criterion, device=device, model_mode=row["choice"])
            accuracies[row["subnet"]] = (result["prec1"], result["prec5"])
    zero = [r["subnet"] for r in table["rows"] if r["mode"] == "uniform" and r["choice"] == 0]
    if zero:
        accuracies.setdefault("smallest", accuracies[zero[0]])
    return accuracies


# --------------------------------------------------------------------------------------------------------------
# Part 2: speed on this CPU, and the abstract's claims (spec Sec. 11)
# --------------------------------------------------------------------------------------------------------------

SPEED_CONFIGS = (
    ("sub-network 0", "uniform", 0),
    ("sub-network 13", "uniform", 13),
    ("largest", "largest", None),
    ("dynamic, all to route 0", "dynamic", "route0"),
    ("dynamic, Gumbel routes 0-3", "dynamic", "gumbel"),
)


def machine_info() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    return (f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s), load average {load}")


def measure_speed(model_name: str, batch_sizes: Sequence[int], warmup: int, repeats: int, img_size: int = 224
                  ) -> dict[str, Any]:
    """Seconds per forward (``no_grad``, eval mode) of every entry of SPEED_CONFIGS at each batch size.

    The configurations are timed round-robin (one call of each per round), so a change in the load of a shared
    machine affects all alike; the median of ``repeats`` rounds after ``warmup`` rounds is reported. The dynamic
    mode runs the sliced sub-network of each route (random-init gate): "all to route 0" zeroes the slimming head
    and turns the noise off (every sample takes route 0: the cost of the gate and the dispatch over sub-network 0),
    "Gumbel routes" keeps the random head with the original's noise (a mix of routes 0-3). Denormals are flushed
    (an untrained net's activations shrink towards them, which would time the CPU's slow path).
    """
    _seed_all(0)
    flush = torch.set_flush_denormal(True)
    model = create_model(model_name).eval()
    head = model.blocks[model.gate_stage].first_block.gate.gate[0].weight
    random_head = head.detach().clone()
    rows = []
    try:
        for batch_size in batch_sizes:
            x = torch.randn(batch_size, 3, img_size, img_size, generator=torch.Generator().manual_seed(batch_size))
            times: dict[str, list[float]] = {name: [] for name, _, _ in SPEED_CONFIGS}
            routed: dict[str, list[float]] = {name: [] for name, mode, _ in SPEED_CONFIGS if mode == "dynamic"}
            for r in tqdm(range(warmup + repeats), desc=f"speed, batch {batch_size}", leave=False, dynamic_ncols=True):
                for name, mode, choice in SPEED_CONFIGS:
                    with torch.no_grad():
                        if mode == "dynamic":
                            head.copy_(torch.zeros_like(head) if choice == "route0" else random_head)
                            model.gate_noise = choice != "route0"
                        model.set_mode(mode, None if mode == "dynamic" else choice)
                        start = time.perf_counter()
                        model(x)
                        elapsed = time.perf_counter() - start
                    if r >= warmup:
                        times[name].append(elapsed)
                        if mode == "dynamic":
                            routed[name].append(float(dynamic_madds(model, model.route, img_size).mean()))
            for name, mode, choice in SPEED_CONFIGS:
                cost = (statistics.fmean(routed[name]) if mode == "dynamic"
                        else float(madds(model, mode_widths(model, mode, choice), img_size)))
                rows.append({"config": name, "batch_size": batch_size, "median_s": statistics.median(times[name]),
                             "min_s": min(times[name]), "max_s": max(times[name]), "madds_per_image": cost})
    finally:
        torch.set_flush_denormal(False)
        with torch.no_grad():
            head.copy_(random_head)
    for row in rows:
        largest = next(r for r in rows if r["config"] == "largest" and r["batch_size"] == row["batch_size"])
        row["images_per_s"] = row["batch_size"] / row["median_s"]
        row["speedup_vs_largest"] = largest["median_s"] / row["median_s"]
        row["madds_ratio_vs_largest"] = largest["madds_per_image"] / row["madds_per_image"]
        sub13 = next(r for r in rows if r["config"] == "sub-network 13" and r["batch_size"] == row["batch_size"])
        row["speedup_vs_subnet13"] = sub13["median_s"] / row["median_s"]
    return {"rows": rows, "machine": machine_info(), "flush_denormal": flush, "warmup": warmup, "repeats": repeats,
            "img_size": img_size}


def format_speed_table(speed: dict[str, Any], markdown: bool = False) -> str:
    head = ["config", "batch", "MAdds/image", "median ms/batch", "min-max ms", "images/s", "speed-up vs largest",
            "MAdds ratio vs largest", "speed-up vs sub-net 13"]
    body = [[r["config"], str(r["batch_size"]), f"{r['madds_per_image'] / 1e6:.1f}M", f"{1e3 * r['median_s']:.1f}",
             f"{1e3 * r['min_s']:.1f}-{1e3 * r['max_s']:.1f}", f"{r['images_per_s']:.1f}",
             f"{r['speedup_vs_largest']:.2f}x", f"{r['madds_ratio_vs_largest']:.2f}x",
             f"{r['speedup_vs_subnet13']:.2f}x"] for r in speed["rows"]]
    return _table(head, body, markdown)


def claim_evidence(table: dict[str, Any], results: Sequence[dict[str, Any]] | None,
                   speed: dict[str, Any] | None) -> list[dict[str, str]]:
    """The abstract's claims (``claims`` in the YAML) with what was checked here, in words."""
    by_name = {r["subnet"]: r["our_madds"] for r in results or []}
    evidence = {}
    if {"0", "3", "13", "largest"} <= set(by_name):
        m = {k: by_name[k] for k in ("0", "3", "13", "largest")}
        text = (f"counted here: largest {m['largest'] / 1e6:.0f}M / sub-network 0 {m['0'] / 1e6:.0f}M = "
                f"{m['largest'] / m['0']:.2f}x; sub-network 13 {m['13'] / 1e6:.0f}M / sub-network 0 = "
                f"{m['13'] / m['0']:.2f}x; the released routing space (sub-networks 0-3, {m['0'] / 1e6:.0f}-"
                f"{m['3'] / 1e6:.0f}M) is {m['13'] / m['3']:.2f}-{m['13'] / m['0']:.2f}x below sub-network 13")
        mbnet = table["context"].get("mobilenet_v1_madds_M")
        if mbnet:
            text += (f" and {mbnet / (m['3'] / 1e6):.2f}-{mbnet / (m['0'] / 1e6):.2f}x below MobileNetV1 1.0 "
                     f"({mbnet}M, not a DS-Net number)")
        evidence["computation_reduction"] = text + ". The paper's dynamic S/M/L averages are not recovered."
    if speed is not None:
        parts = []
        for row in speed["rows"]:
            if row["config"] == "sub-network 0":
                parts.append(f"batch {row['batch_size']}: sub-network 0 runs {row['speedup_vs_largest']:.2f}x "
                             f"faster than largest and {row['speedup_vs_subnet13']:.2f}x faster than sub-network 13")
        evidence["real_acceleration"] = ("measured here on CPU (" + "; ".join(parts) + "); not the paper's hardware "
                                         "or comparison (against MobileNet / ResNet-50 baselines)")
    else:
        evidence["real_acceleration"] = "not measured (--no-speed)"
    if results is not None and any(r["our_top1"] is not None for r in results):
        evaluated = [r for r in results if r["our_top1"] is not None and r["readme_top1"] is not None]
        diffs = [r["our_top1"] - r["readme_top1"] for r in evaluated]
        evidence["accuracy_gain"] = (f"not checkable (the paper's baselines are not recovered); --checkpoint gives "
                                     f"the README's sub-network top-1 within {min(diffs):+.2f}..{max(diffs):+.2f}")
    return [{"id": c["id"], "claim": c["claim"], "value": c["value"], "checkable": c["checkable"],
             "checked_here": evidence.get(c["id"], "not checked here")} for c in table["claims"]]


def third_party_notes(table: dict[str, Any]) -> list[str]:
    """The third-party DS-MBNet rows, flagged, with where they would sit on the README's static curve."""
    readme = sorted((r["readme_madds_M"], r["top1"]) for r in table["rows"] if r["readme_madds_M"] is not None)
    notes = []
    for item in table["third_party"]:
        at = 1000 * float(item["gflops"])
        where = "outside the README's MAdds range"
        if readme and readme[0][0] <= at <= readme[-1][0]:
            curve = float(np.interp(at, [m for m, _ in readme], [t for _, t in readme]))
            where = f"the README's static curve at {at:.0f}M: {curve:.1f}"
        notes.append(f"{item['model']}: {item['gflops']} GFLOPs, top-1 {item['top1']} "
                     f"({'SUSPECT: ' if item.get('suspect') else ''}{item.get('note', '')}); {where}")
    return notes


# --------------------------------------------------------------------------------------------------------------
# Part 3: the proxy run of all three stages (spec Sec. 4-6)
# --------------------------------------------------------------------------------------------------------------

def proxy_settings(args: argparse.Namespace) -> SimpleNamespace:
    """The proxy's hyper-parameters: the flags, with the ``--quick`` or full-run defaults filled in."""
    def pick(value, quick, full):
        return value if value is not None else (quick if args.quick else full)

    return SimpleNamespace(
        seeds=pick(args.seeds, 1, 3), stage1_epochs=pick(args.stage1_epochs, 1, 10),
        stage2_epochs=pick(args.stage2_epochs, 1, 3), warmup_epochs=pick(args.warmup_epochs, 0, 1),
        train_samples=pick(args.proxy_train_samples, 256, 0), val_samples=pick(args.proxy_val_samples, 128, 0),
        bn_batches=pick(args.bn_batches, 8, 50), bn_batch_size=16, batch_size=args.proxy_batch_size,
        lr=args.proxy_lr, weight_decay=1e-4, ema_decay=args.ema_decay, smoothing=0.1, drop_rate=0.2,
        gate_lr=args.gate_lr, gate_weight_decay=0.01, min_lr=1e-5, warmup_lr=1e-5,
        routing_spaces=[tuple(rs) for rs in args.routing_spaces], augment=args.proxy_augment, img_size=32,
        model=PROXY_MODEL)


def proxy_train_transform(cfg: SimpleNamespace):
    """Training augmentation of the proxy: a random affine warp (rotation 15 deg, shift 1/8, scale 0.9-1.1) with the
    background value (-1 after the digits' normalisation). The original trains with RandomResizedCrop, RandAugment
    and random erasing (spec Sec. 4); without any augmentation every width of the tiny supernet fits digits alike
    (about 96% top-1 each in a trial run here) and the accuracy-vs-MAdds curve is flat."""
    if not cfg.augment:
        return None
    from torchvision import transforms as T

    return T.RandomAffine(15, translate=(0.125, 0.125), scale=(0.9, 1.1), fill=-1.0)


def _subset(dataset, n: int):
    if not n or n >= len(dataset):
        return dataset
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return torch.utils.data.Subset(dataset, index.tolist())


def _engine_args() -> SimpleNamespace:
    """The train-script flags ``dsnet.engine`` reads (the released configs' values)."""
    return SimpleNamespace(inplace_bootstrap=True, ensemble_ib=False, amp=False, log_interval=50, optimizer_step=1,
                           original_dynamic_madds=False, sgs_on_logits=False)


def _cosine(optimizer, cfg: SimpleNamespace, epochs: int, steps: int, warmup_epochs: int):
    """timm's cosine schedule, updated every step (the original steps it per epoch; too coarse for a few epochs)."""
    from timm.scheduler import CosineLRScheduler

    return CosineLRScheduler(optimizer, t_initial=epochs * steps, lr_min=cfg.min_lr, warmup_t=warmup_epochs * steps,
                             warmup_lr_init=cfg.warmup_lr, t_in_epochs=False)


def stage1(model: DSNet, loader, cfg: SimpleNamespace, device: torch.device) -> list[dict[str, float]]:
    """Stage I (spec Sec. 4): the sandwich rule with in-place bootstrapping from an EMA teacher."""
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV2

    from dsnet.engine import train_epoch_slim

    optimizer = create_optimizer_v2(model, opt="sgd", lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=0.9)
    scheduler = _cosine(optimizer, cfg, cfg.stage1_epochs, len(loader), cfg.warmup_epochs)
    model_ema = ModelEmaV2(model, decay=cfg.ema_decay)
    log = []
    for epoch in range(cfg.stage1_epochs):
        log.append(train_epoch_slim(epoch, model, loader, optimizer, LabelSmoothingCrossEntropy(cfg.smoothing),
                                    SoftTargetCrossEntropy(), _engine_args(), device=device, lr_scheduler=scheduler,
                                    model_ema=model_ema))
    return log


def stage2(model: DSNet, loader, cfg: SimpleNamespace, device: torch.device) -> list[dict[str, float]]:
    """Stage II (spec Sec. 6): only the slimming head learns; BN frozen; SGS + CE + 0.5 (MAdds / 1e9)^2.

    The other parameters are set to ``requires_grad=False``: the optimizer holds only the gate, as in the
    original, so this changes nothing but the time the backward pass spends on weight gradients nobody uses.
    """
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2

    from dsnet.engine import train_epoch_slim_gate

    gate = model.get_gate()
    gate_params = {id(p) for p in gate.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) in gate_params)
    optimizer = create_optimizer_v2(gate, opt="sgd", lr=cfg.gate_lr, weight_decay=cfg.gate_weight_decay, momentum=0.9)
    scheduler = _cosine(optimizer, cfg, cfg.stage2_epochs, len(loader), 0)
    log = []
    for epoch in range(cfg.stage2_epochs):
        log.append(train_epoch_slim_gate(epoch, model, loader, optimizer, LabelSmoothingCrossEntropy(cfg.smoothing),
                                         _engine_args(), device=device, lr_scheduler=scheduler))
    for p in model.parameters():
        p.requires_grad_(True)
    return log


def run_proxy(cfg: SimpleNamespace) -> dict[str, Any]:
    """Stage I, BN recalibration, the 14 sub-networks, then Stage II and the gated model per routing space, for
    every seed; a run is repeatable. The initial weights, the data order, the recalibration batches and the Gumbel
    noise follow the seed. The sandwich's widths and dropout masks, and through them the augmentation draws, follow
    the step index: like the original, ``train_epoch_slim`` reseeds the generators before every sub-network with
    the step count (spec Sec. 4), so these are the same for every seed."""
    from common.data import build_dataset, build_loader
    from dsnet.engine import reset_bn, validate_gate, validate_slim

    device = torch.device("cpu")
    train_set = _subset(build_dataset("digits", split="train", img_size=cfg.img_size,
                                      transform=proxy_train_transform(cfg)), cfg.train_samples)
    val_set = _subset(build_dataset("digits", split="val", img_size=cfg.img_size), cfg.val_samples)
    criterion = nn.CrossEntropyLoss()
    probe = create_model(cfg.model, num_classes=10)
    num_choices = probe.num_choices
    static_madds = [int(madds(probe, mode_widths(probe, "uniform", c), cfg.img_size)) for c in range(num_choices)]
    largest_madds = int(madds(probe, mode_widths(probe, "largest"), cfg.img_size))
    static: dict[int, list[tuple[float, float]]] = {c: [] for c in range(num_choices)}
    largest: list[float] = []
    dynamic: dict[tuple[tuple[int, ...], bool], list[dict[str, Any]]] = {}
    logs: list[dict[str, Any]] = []
    for seed in range(cfg.seeds):
        start = time.time()
        _seed_all(seed)
        model = create_model(cfg.model, num_classes=10, drop_rate=cfg.drop_rate)
        train_loader = build_loader(train_set, cfg.batch_size, train=True, seed=seed)
        val_loader = build_loader(val_set, 256, train=False)
        log1 = stage1(model, train_loader, cfg, device)
        largest.append(validate_slim(model, val_loader, criterion, device=device, model_mode="largest")["prec1"])
        _seed_all(1000 + seed)
        bn_loader = build_loader(train_set, cfg.bn_batch_size, train=True, seed=1000 + seed)
        reset_bn(model, bn_loader, num_choices, device=device, max_batches=cfg.bn_batches)
        for c in range(num_choices):
            result = validate_slim(model, val_loader, criterion, device=device, model_mode=c)
            static[c].append((result["prec1"], result["prec5"]))
        log2 = {}
        for k, space in enumerate(cfg.routing_spaces):
            gated = copy.deepcopy(model)
            gated.set_routing_space(space)
            gated.gate_noise = True
            _seed_all(2000 + 100 * seed + k)
            log2[space] = stage2(gated, train_loader, cfg, device)
            for noise in (True, False):
                gated.gate_noise = noise
                _seed_all(3000 + 100 * seed + k)
                result = validate_gate(gated, val_loader, criterion, _engine_args(), device=device)
                dynamic.setdefault((space, noise), []).append(result)
        logs.append({"seed": seed, "stage1": log1, "stage2": log2, "seconds": time.time() - start})
        tqdm.write(f"proxy seed {seed}: Stage I loss largest {log1[-1]['loss_largest']:.3f} smallest "
                   f"{log1[-1]['loss_smallest']:.3f}; sub-networks 0 / 13: {static[0][-1][0]:.1f} / "
                   f"{static[num_choices - 1][-1][0]:.1f}; {time.time() - start:.0f} s")
    return {"static": static, "static_madds": static_madds, "largest": largest, "largest_madds": largest_madds,
            "dynamic": dynamic, "logs": logs, "settings": cfg, "train_size": len(train_set),
            "val_size": len(val_set), "routes": cfg.routing_spaces}


def _dynamic_summary(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    acc = _mean_std([r["prec1"] for r in results])
    cost = _mean_std([r["flops"] for r in results])
    counts = np.sum([r["route_counts"] for r in results], axis=0)
    return {"top1": acc, "top5": _mean_std([r["prec5"] for r in results]), "madds": cost,
            "gate_acc": _mean_std([r["gate_acc"] for r in results]), "route_counts": [int(c) for c in counts],
            "per_seed": [r["prec1"] for r in results]}


def _static_curve(proxy: dict[str, Any]) -> tuple[list[float], list[float]]:
    order = sorted(proxy["static"], key=lambda c: proxy["static_madds"][c])
    return ([proxy["static_madds"][c] for c in order],
            [_mean_std([a for a, _ in proxy["static"][c]])[0] for c in order])


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def proxy_findings(proxy: dict[str, Any]) -> list[str]:
    """The curve's shape and where every gated model lands against it (means over seeds)."""
    x, y = _static_curve(proxy)
    n = len(x)
    lines = [f"static curve: sub-network 0 {y[0]:.2f} at {x[0] / 1e6:.3f}M MAdds ... sub-network {n - 1} "
             f"{y[-1]:.2f} at {x[-1] / 1e6:.3f}M; Spearman(top-1, MAdds) over the 14 = {_spearman(x, y):.2f}; "
             f"best {max(y):.2f}, worst {min(y):.2f}",
             f"largest (Stage-I teacher widths, before BN recalibration): "
             f"{_mean_std(proxy['largest'])[0]:.2f} at {proxy['largest_madds'] / 1e6:.3f}M"]
    for (space, noise), results in proxy["dynamic"].items():
        s = _dynamic_summary(results)
        at = s["madds"][0]
        curve = float(np.interp(at, x, y))
        cheaper = [acc for cost, acc in zip(x, y, strict=True) if cost <= at]
        best_cheaper = max(cheaper) if cheaper else float("nan")
        lines.append(
            f"dynamic, routing space {list(space)}, {'Gumbel noise' if noise else 'argmax'}: top-1 {s['top1'][0]:.2f} "
            f"at {at / 1e6:.3f}M average MAdds; the static curve there {curve:.2f} ({s['top1'][0] - curve:+.2f}); "
            f"best static sub-network at <= that cost {best_cheaper:.2f}; routes {s['route_counts']}; the gate agrees "
            f"with the SGS target on {s['gate_acc'][0]:.1f}%")
    return lines


def format_proxy_table(proxy: dict[str, Any], markdown: bool = False) -> str:
    """One row per static sub-network and per gated model: MAdds at 32x32 and top-1 / top-5 (mean ± std)."""
    head = ["model", "MAdds (M)", "top-1", "top-5", "route histogram (val, all seeds)"]
    body = []
    for c, values in proxy["static"].items():
        top1, top5 = _mean_std([a for a, _ in values]), _mean_std([b for _, b in values])
        body.append([f"sub-network {c}", f"{proxy['static_madds'][c] / 1e6:.3f}", f"{top1[0]:.2f} ± {top1[1]:.2f}",
                     f"{top5[0]:.2f} ± {top5[1]:.2f}", ""])
    top1 = _mean_std(proxy["largest"])
    body.append(["largest (before BN recal.)", f"{proxy['largest_madds'] / 1e6:.3f}", f"{top1[0]:.2f} ± {top1[1]:.2f}",
                 "", ""])
    for (space, noise), results in proxy["dynamic"].items():
        s = _dynamic_summary(results)
        name = f"dynamic {','.join(map(str, space))} ({'Gumbel' if noise else 'argmax'})"
        body.append([name, f"{s['madds'][0] / 1e6:.3f} ± {s['madds'][1] / 1e6:.3f}",
                     f"{s['top1'][0]:.2f} ± {s['top1'][1]:.2f}", f"{s['top5'][0]:.2f} ± {s['top5'][1]:.2f}",
                     " / ".join(f"{c}: {n}" for c, n in zip(space, s["route_counts"], strict=True))])
    return _table(head, body, markdown)


def proxy_csv_rows(proxy: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for c, values in proxy["static"].items():
        top1, top5 = _mean_std([a for a, _ in values]), _mean_std([b for _, b in values])
        rows.append({"kind": "static", "name": f"subnet_{c}", "routing_space": "", "gate_noise": "",
                     "madds_mean": proxy["static_madds"][c], "madds_std": 0.0, "top1_mean": round(top1[0], 4),
                     "top1_std": round(top1[1], 4), "top5_mean": round(top5[0], 4), "seeds": len(values),
                     "top1_per_seed": ";".join(f"{a:.4f}" for a, _ in values), "route_counts": ""})
    top1 = _mean_std(proxy["largest"])
    rows.append({"kind": "static", "name": "largest", "routing_space": "", "gate_noise": "",
                 "madds_mean": proxy["largest_madds"], "madds_std": 0.0, "top1_mean": round(top1[0], 4),
                 "top1_std": round(top1[1], 4), "top5_mean": "", "seeds": len(proxy["largest"]),
                 "top1_per_seed": ";".join(f"{a:.4f}" for a in proxy["largest"]), "route_counts": ""})
    for (space, noise), results in proxy["dynamic"].items():
        s = _dynamic_summary(results)
        rows.append({"kind": "dynamic", "name": f"dynamic_{'_'.join(map(str, space))}",
                     "routing_space": " ".join(map(str, space)), "gate_noise": noise,
                     "madds_mean": round(s["madds"][0], 1), "madds_std": round(s["madds"][1], 1),
                     "top1_mean": round(s["top1"][0], 4), "top1_std": round(s["top1"][1], 4),
                     "top5_mean": round(s["top5"][0], 4), "seeds": len(results),
                     "top1_per_seed": ";".join(f"{a:.4f}" for a in s["per_seed"]),
                     "route_counts": " ".join(map(str, s["route_counts"]))})
    return rows


def plot_proxy(proxy: dict[str, Any], path: Path) -> None:
    """Top-1 against MAdds: the 14 sub-networks (error bars: std over seeds) and the gated models."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    choices = sorted(proxy["static"], key=lambda c: proxy["static_madds"][c])
    stats = [_mean_std([a for a, _ in proxy["static"][c]]) for c in choices]
    x = [proxy["static_madds"][c] / 1e6 for c in choices]
    ax.errorbar(x, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=2, color="tab:blue",
                label="static sub-networks 0-13 (after BN recalibration)")
    for c, xi, (m, _) in zip(choices, x, stats, strict=True):
        if c in (0, 3, 4, 9, 13):
            ax.annotate(str(c), (xi, m), textcoords="offset points", xytext=(0, 7), fontsize=8, ha="center")
    markers = ["*", "D", "P", "X"]
    colors = ["tab:red", "tab:green", "tab:purple", "tab:orange"]
    for (space, noise), results in proxy["dynamic"].items():
        s = _dynamic_summary(results)
        k = proxy["routes"].index(space)
        ax.errorbar([s["madds"][0] / 1e6], [s["top1"][0]], xerr=[s["madds"][1] / 1e6], yerr=[s["top1"][1]],
                    marker=markers[k % len(markers)], markersize=12 if noise else 9, color=colors[k % len(colors)],
                    mfc=colors[k % len(colors)] if noise else "none", capsize=3, linestyle="none",
                    label=f"gated, routing space {list(space)}, {'Gumbel noise' if noise else 'argmax'}")
    cfg = proxy["settings"]
    ax.set_xlabel("MAdds per 32x32 image (M, the original's convention)")
    ax.set_ylabel("top-1 on digits val (%)")
    ax.set_title(f"DS-Net proxy: {cfg.model}, Stage I {cfg.stage1_epochs} ep, Stage II {cfg.stage2_epochs} ep, "
                 f"{cfg.seeds} seed(s)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------

def write_markdown(path: Path, command: str, machine: str, timings: dict[str, float], table: dict[str, Any] | None,
                   results: list[dict[str, Any]] | None, speed: dict[str, Any] | None,
                   claims: list[dict[str, str]] | None, proxy: dict[str, Any] | None) -> None:
    lines = ["# DS-Net: README sub-networks, speed, claims and proxy run", "", f"Command: `{command}`", "",
             f"Machine: {machine}. Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".", ""]
    if results is not None:
        lines += ["## MAdds of the README's 14 sub-networks (spec Sec. 9)", "",
                  f"{table['model']}, 1x3x{table['img_size']}x{table['img_size']}. `MAdds (ours)`: dsnet.madds with "
                  "the original's convention; `original counter`: the value the original code gives; `README`: "
                  "as printed (ours must round to it); `executed MACs`: conv + linear multiply-adds counted by "
                  "common.flops on a sliced forward; `+ pool elems`: the average-pool inputs the original also "
                  "counts (executed + pools = MAdds). Top-1/5: ImageNet val, as published; ours only with "
                  "--checkpoint.", "", format_madds_table(results, markdown=True), ""]
        bad = [f"- {r['subnet']}: {r['problems']}" for r in results if r["status"] != "ok"]
        lines += (["Rows off:", "", *bad, ""] if bad else [f"All {len(results)} rows reproduced exactly.", ""])
    if speed is not None:
        lines += ["## Speed on this CPU (sliced execution)", "",
                  f"{speed['img_size']}x{speed['img_size']}, eval mode, no_grad, random-init weights (speed does "
                  f"not depend on them); median of {speed['repeats']} interleaved rounds after {speed['warmup']} "
                  f"warm-up round(s); denormals flushed: {speed['flush_denormal']}. {speed['machine']}.", "",
                  format_speed_table(speed, markdown=True), ""]
    if claims is not None:
        lines += ["## The abstract's claims", "", _table(["claim", "value", "checkable here", "what was checked"],
                                                         [[c["claim"], c["value"], c["checkable"], c["checked_here"]]
                                                          for c in claims], True), ""]
        notes = third_party_notes(table)
        if notes:
            lines += ["Third-party citation (not the paper; flagged as suspect):", "", *[f"- {n}" for n in notes], ""]
    if proxy is not None:
        cfg = proxy["settings"]
        steps = proxy["train_size"] // cfg.batch_size  # the training loader drops the last partial batch
        span = max(proxy["static_madds"]) / min(proxy["static_madds"])
        full = [r["madds"] for r in table["rows"] if r["mode"] == "uniform"]
        full_span = max(full) / min(full)
        lines += ["## Proxy run on digits (spec Sec. 4-6)", "",
                  f"digits 32x32 ({proxy['train_size']} train / {proxy['val_size']} val images; training images "
                  f"{'randomly warped (rotation 15 deg, shift 1/8, scale 0.9-1.1)' if cfg.augment else 'as they are'}"
                  f"), {cfg.model}, {cfg.seeds} seed(s), top-1/5 % mean ± std over seeds. Stage I: "
                  f"{cfg.stage1_epochs} epochs of {steps} steps, sandwich with in-place bootstrapping from an EMA "
                  f"teacher (decay {cfg.ema_decay}), SGD nesterov lr {cfg.lr} (wd {cfg.weight_decay} on >= 2-D "
                  f"tensors), {cfg.warmup_epochs} warm-up epoch(s), cosine per step, batch {cfg.batch_size}, label "
                  f"smoothing {cfg.smoothing}, dropout {cfg.drop_rate} (largest only). BN recalibration: "
                  f"{cfg.bn_batches} batches of {cfg.bn_batch_size} training images through all 14 widths; the 14 "
                  f"sub-networks are the trained model's (not its EMA). Stage II: {cfg.stage2_epochs} epochs per "
                  f"routing space ({cfg.stage2_epochs * steps} gate updates; the original makes about 100,000), "
                  f"gate only (lr {cfg.gate_lr}, wd {cfg.gate_weight_decay}), BN frozen. The gated model is "
                  "evaluated with the original's Gumbel noise (as its validate_gate) and with argmax routing. The "
                  f"tiny supernet's MAdds span only {span:.1f}x across the 14 widths at 32x32 (the slim trunk "
                  f"dominates), against {full_span:.1f}x for the full model at 224.", "",
                  format_proxy_table(proxy, markdown=True), "",
                  *[f"- {x}" for x in proxy_findings(proxy)], "", "![proxy](dsnet_proxy.png)", ""]
    path.write_text("\n".join(lines))


def check_args(args: argparse.Namespace) -> None:
    if args.checkpoint is not None:
        if args.data_path is None:
            raise DsnetTableError("--checkpoint needs --data-path DIR (ImageNet with a val/ folder)")
        if not Path(args.checkpoint).is_file():
            raise DsnetTableError(f"--checkpoint {args.checkpoint}: no such file")
        if not (Path(args.data_path) / "val").is_dir():
            raise DsnetTableError(f"--data-path {args.data_path}: no 'val' folder (expected "
                                  f"{args.data_path}/val/<class>/<image>.JPEG)")
        if not args.table:
            raise DsnetTableError("--checkpoint fills the table's columns; it cannot be combined with --no-table")
    elif args.data_path is not None or args.model_ema:
        raise DsnetTableError("--data-path and --model-ema only make sense with --checkpoint FILE")
    if not (args.table or args.speed or args.proxy):
        raise DsnetTableError("nothing to do: --no-table, --no-speed and --no-proxy were all given")
    for space in args.routing_spaces:
        if len(space) != 4 or any(not 0 <= c <= 13 for c in space):
            raise DsnetTableError(f"--routing-spaces: each space needs 4 sub-network indices in 0..13, got "
                                  f"{','.join(map(str, space))}")
    if args.speed_batch_sizes is not None and any(b < 1 for b in args.speed_batch_sizes):
        raise DsnetTableError("--speed-batch-sizes must be positive")


def main(args: argparse.Namespace) -> int:
    """Run the chosen parts, print and write the tables; return 1 when a MAdds row is off."""
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.dsnet_table " + shlex.join(sys.argv[1:])
    machine = machine_info()
    print(f"machine: {machine}")
    timings: dict[str, float] = {}
    table = results = speed = claims = proxy = None
    failures = 0
    table = load_paper_table(args.paper_table)

    if args.table:
        start = time.time()
        accuracies = evaluate_checkpoint(args, table) if args.checkpoint is not None else None
        results = count_rows(table, accuracies)
        timings["table"] = time.time() - start
        print(format_madds_table(results))
        for r in results:
            if r["status"] != "ok":
                print(f"FAIL: sub-network {r['subnet']}: {r['problems']}")
        failures = sum(r["status"] != "ok" for r in results)
        write_csv(output_dir / "dsnet_madds.csv", results)

    if args.speed:
        start = time.time()
        sizes = args.speed_batch_sizes or ([1, 4] if args.quick else [1, 16])
        speed = measure_speed(table["model"], sizes, warmup=1 if args.quick else 2,
                              repeats=args.speed_repeats or (3 if args.quick else 7), img_size=table["img_size"])
        timings["speed"] = time.time() - start
        print(f"\nspeed ({speed['machine']}):")
        print(format_speed_table(speed))
        write_csv(output_dir / "dsnet_speed.csv", speed["rows"])

    claims = claim_evidence(table, results, speed)
    print("\nthe abstract's claims:")
    for c in claims:
        print(f"- {c['value']} {c['claim']}: checkable here: {c['checkable']}. Checked: {c['checked_here']}")
    for note in third_party_notes(table):
        print(f"- third party: {note}")

    if args.proxy:
        start = time.time()
        proxy = run_proxy(proxy_settings(args))
        timings["proxy"] = time.time() - start
        print("\nproxy run on digits:")
        print(format_proxy_table(proxy))
        print("\n".join(proxy_findings(proxy)))
        write_csv(output_dir / "dsnet.csv", proxy_csv_rows(proxy))
        plot_proxy(proxy, output_dir / "dsnet_proxy.png")

    write_markdown(output_dir / "dsnet.md", command, machine, timings, table, results, speed, claims, proxy)
    print(f"wrote {output_dir / 'dsnet.md'} ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
    if failures:
        print(f"{failures} of {len(results)} MAdds row(s) differ from the original counter or the README",
              file=sys.stderr)
        return 1
    return 0


def _routing_space(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 4 comma-separated sub-network indices, got {text!r}") from None


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--paper-table", default=str(PAPER_TABLE), help="the paper-table YAML to compare with")
    parser.add_argument("--table", action=argparse.BooleanOptionalAction, default=True,
                        help="part 1: reproduce the MAdds of the README's 14 sub-networks (+ smallest, largest)")
    parser.add_argument("--checkpoint", default=None,
                        help="a supernet checkpoint (the original's format: state_dict / state_dict_ema) to evaluate "
                        "on ImageNet val; fills 'our top-1/5'")
    parser.add_argument("--data-path", default=None, help="ImageNet folder with val/<class>/*.JPEG (for --checkpoint)")
    parser.add_argument("--model-ema", action="store_true", help="evaluate the checkpoint's state_dict_ema")
    parser.add_argument("-b", "--batch-size", type=int, default=100, help="eval batch size for --checkpoint")
    parser.add_argument("-j", "--workers", type=int, default=4, help="data-loading workers for --checkpoint")
    parser.add_argument("--device", default="cpu", help="device for --checkpoint evaluation")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                        help="part 2: time sub-networks 0 and 13, largest and the dynamic mode on this CPU")
    parser.add_argument("--speed-batch-sizes", type=int, nargs="+", default=None,
                        help="batch sizes to time (default 1 16; 1 4 with --quick)")
    parser.add_argument("--speed-repeats", type=int, default=None,
                        help="timed rounds per batch size (default 7; 3 with --quick)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the whole run (0: torch's own "
                        "choice); one thread times steadier on a shared machine and suits the proxy's small tensors")
    parser.add_argument("--proxy", action=argparse.BooleanOptionalAction, default=True,
                        help="part 3: Stage I, BN recalibration and Stage II on digits with the tiny supernet")
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized run: 1 seed, 1 epoch per stage, 256 train / 128 val images, short timing")
    parser.add_argument("--seeds", type=int, default=None, help="proxy seeds (default 3; 1 with --quick)")
    parser.add_argument("--stage1-epochs", type=int, default=None, help="Stage I epochs (default 10; 1 with --quick)")
    parser.add_argument("--stage2-epochs", type=int, default=None,
                        help="Stage II epochs per routing space (default 3; 1 with --quick)")
    parser.add_argument("--warmup-epochs", type=int, default=None,
                        help="Stage I warm-up epochs from 1e-5 (default 1; 0 with --quick)")
    parser.add_argument("--proxy-train-samples", type=int, default=None,
                        help="use this many training images (0 = all 1,437; default 256 with --quick)")
    parser.add_argument("--proxy-val-samples", type=int, default=None,
                        help="use this many val images (0 = all 360; default 128 with --quick)")
    parser.add_argument("--bn-batches", type=int, default=None,
                        help="BN recalibration batches of 16 images (default 50; 8 with --quick)")
    parser.add_argument("--proxy-augment", action=argparse.BooleanOptionalAction, default=True,
                        help="random affine augmentation of the proxy's training images (see proxy_train_transform)")
    parser.add_argument("--proxy-lr", type=float, default=0.1, help="Stage I SGD learning rate")
    parser.add_argument("--proxy-batch-size", type=int, default=64, help="proxy training batch size")
    parser.add_argument("--ema-decay", type=float, default=0.9,
                        help="EMA teacher decay per step (the original's 0.997 is for 2,500 steps an epoch; digits "
                        "has 22)")
    parser.add_argument("--gate-lr", type=float, default=0.08, help="Stage II learning rate (the released config's)")
    parser.add_argument("--routing-spaces", type=_routing_space, nargs="+", default=[(0, 1, 2, 3), (0, 4, 9, 13)],
                        metavar="C0,C1,C2,C3", help="Stage II routing spaces, each 4 sub-network indices")
    parser.add_argument("--output-dir", default="results", help="where dsnet.md, dsnet_madds.csv, "
                        "dsnet_speed.csv, dsnet.csv and dsnet_proxy.png go")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args(), prog="dsnet_table"))
