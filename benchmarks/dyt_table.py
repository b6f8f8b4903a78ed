"""DyT (Zhao et al., NeurIPS 2024): the parameter and FLOPs columns reproduced, and a CPU proxy experiment.

Part 1 (spec ``dyt.md`` Sec. a, e). For every row of ``benchmarks/paper_tables/dyt.yaml`` build the real ViT-B/16
(shapes only, on the meta device) and count its parameters and its FLOPs with the original accounting
(:mod:`dyt.flops`: complete model and uniform activation rates). Exit code 1 when a number drifts from the table.

Part 2 (``--proxy``, on by default; spec Sec. g). A ViT with the ``vit_digits`` layout (32 px, patch 4: 64 patch
tokens + CLS; width ``--embed-dim`` 96, depth ``--depth`` 4 by default, for time) is "pretrained" on sklearn digits
0-4 drawn at 20 px at random places on a dark noisy 32 px canvas, frozen, and adapted to digits 5-9 drawn the same
way with inverted contrast (dark strokes on a light canvas; most patch tokens are background): linear probe,
AdaptFormer, DyT at
every ``--rates`` value with and without the complete-model CE + KL terms, and two controls at the same rate, a
random mask and a fixed centre mask. Reports accuracy against FLOPs (original accounting and executed MACs of the
gather path), the realised activation rate per layer, the overlap of the learned masks with the digit's patches,
and the wall-clock of the gather/scatter path against the masked path at batch 64. Writes ``dyt.md``,
``dyt_params_flops.csv``, ``dyt.csv`` and ``dyt_proxy.png`` to ``--output-dir``.

    python -m benchmarks.dyt_table                 # both parts (several minutes on one CPU thread)
    python -m benchmarks.dyt_table --quick         # CI-sized proxy (about 2 minutes)
    python -m benchmarks.dyt_table --no-proxy      # the parameter/FLOPs table only
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.tables import markdown_table, write_csv
from common.config import load_yaml
from common.data import build_dataset
from common.distributed import seed_everything
from common.errors import ArgumentParser, UserError, run_cli
from dyt import engine
from dyt.flops import (
    base_flops,
    block_flops_table,
    complete_flops,
    executed_macs_per_sample,
    uniform_rate_flops,
)
from dyt.losses import DyTLoss
from dyt.models import MODELS, build_model
from dyt.weights import load_pretrained_vit, set_trainable

PAPER_TABLE = Path(__file__).resolve().parent / "paper_tables" / "dyt.yaml"
MODEL_KEYS = ("name", "ffn_num", "dispatch", "num_classes", "gflops")
COUNT_KEYS = ("num_params", "adapter_params", "dispatcher_params", "trainable_params")


# ---------------------------------------------------------------------------------------- Part 1: the table
def check_paper_table(table: Any, path: str) -> None:
    """A ``tolerance`` mapping and a non-empty ``models`` list whose entries have ``MODEL_KEYS``, else a UserError."""
    models = table.get("models") if isinstance(table, dict) else None
    if not isinstance(models, list) or not models or not isinstance(table.get("tolerance"), dict):
        raise UserError(f"paper table {path} needs a 'tolerance' mapping and a non-empty 'models' list")
    for i, row in enumerate(models):
        missing = [k for k in MODEL_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise UserError(f"paper table {path}: model {i} lacks {', '.join(missing)}")


def count_params(model: nn.Module) -> dict[str, int]:
    """All parameters, the adapters, the dispatchers, and what the original trains (adapters + dispatchers + head)."""
    named = dict(model.named_parameters())
    adapters = sum(p.numel() for n, p in named.items() if ".adaptmlp." in n)
    dispatchers = sum(p.numel() for n, p in named.items() if "token_select" in n)
    head = sum(p.numel() for n, p in named.items() if n.startswith("head."))
    return {"num_params": sum(p.numel() for p in named.values()), "adapter_params": adapters,
            "dispatcher_params": dispatchers, "trainable_params": adapters + dispatchers + head}


def table_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Ours against the table: one row per (model, column); ``ok`` False beyond the tolerance."""
    tol = table["tolerance"]
    rows = []
    for spec in table["models"]:
        with torch.device("meta"):
            model = build_model("vit_base_patch16_224_in21k", num_classes=spec["num_classes"],
                                ffn_num=spec["ffn_num"], dispatch=spec["dispatch"])
        counts = count_params(model)
        for key in COUNT_KEYS:
            if key in spec:
                rows.append({"model": spec["name"], "column": key, "ours": counts[key], "paper": spec[key],
                             "ok": abs(counts[key] - spec[key]) <= tol.get("params_abs", 0)})
        for rate, expected in spec["gflops"].items():
            rate = float(rate)
            ours = complete_flops(model) if rate == 1.0 else uniform_rate_flops(model, rate)
            rows.append({"model": spec["name"], "column": f"GFLOPs r={rate:g}", "ours": round(ours, 4),
                         "paper": expected, "ok": abs(ours - expected) <= tol.get("gflops_abs", 0.005)})
    return rows


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    body = [[r["model"], r["column"], f"{r['ours']:,}" if isinstance(r["ours"], int) else r["ours"], r["paper"],
             "ok" if r["ok"] else "DIFFERS"] for r in rows]
    return markdown_table(["model (ViT-B/16, 100 classes)", "column", "ours", "paper / spec", "status"], body)


# ------------------------------------------------------------------------------------------ Part 2: proxy
CANVAS, DIGIT, TEST_PLACEMENTS = 32, 20, 4


def _digits(split: str, classes: range, limit: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    data = build_dataset("digits", split=split, img_size=CANVAS)
    images, targets = data.images, torch.as_tensor(data.targets_tensor)
    keep = (targets >= classes.start) & (targets < classes.stop)
    images, targets = images[keep], targets[keep] - classes.start
    return (images[:limit], targets[:limit]) if limit else (images, targets)


def place_on_canvas(images: torch.Tensor, seed: int, invert: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Each digit (pixels in [0, 1]) shrunk to ``DIGIT`` px at a random position of a noisy ``CANVAS`` px canvas:
    bright strokes on a dark background (source domain) or, with ``invert``, dark strokes on a light one (target
    domain). Returns the images (normalised, mean = std = 0.5) and each 4x4 patch's foreground flag [B, 64] (the
    patch holds a stroke pixel)."""
    gen = torch.Generator().manual_seed(seed)
    strokes = F.interpolate(images[:, :1] * 0.5 + 0.5, size=(DIGIT, DIGIT), mode="bilinear", align_corners=False)
    noise = 0.12 * torch.randn(len(images), 1, CANVAS, CANVAS, generator=gen)
    ink = torch.zeros_like(noise)
    offsets = torch.randint(0, CANVAS - DIGIT + 1, (len(images), 2), generator=gen)
    for i, (dy, dx) in enumerate(offsets.tolist()):
        ink[i, :, dy:dy + DIGIT, dx:dx + DIGIT] = strokes[i].clamp(0, 1)
    if invert:
        canvas = (0.75 + noise).clamp(0, 1) * (1 - ink)
    else:
        canvas = torch.maximum((0.25 + noise).clamp(0, 1), ink)
    foreground = F.max_pool2d((ink > 0.5).float(), kernel_size=4).flatten(1) > 0
    return ((canvas.expand(-1, 3, -1, -1) - 0.5) / 0.5).contiguous(), foreground


class FixedPolicy(nn.Module):
    """A control dispatcher with the ``TokenSelect`` interface: a random mask at rate r (``"random"``, redrawn every
    call) or the ``round(r (N-1))`` patches nearest the image centre (``"centre"``); CLS always kept."""

    def __init__(self, kind: str, rate: float, grid: int, seed: int):
        super().__init__()
        self.kind, self.rate, self.grid = kind, rate, grid
        self.generator = torch.Generator().manual_seed(seed)
        centre = (torch.arange(grid) - (grid - 1) / 2).square()
        distance = (centre[:, None] + centre[None, :]).flatten()
        keep = torch.zeros(grid * grid)
        keep[distance.argsort(stable=True)[:round(rate * grid * grid)]] = 1
        self.register_buffer("centre_mask", keep, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n = x.shape[0], x.shape[1] - 1
        if self.kind == "random":
            mask = (torch.rand(b, n, generator=self.generator) < self.rate).to(x)
        else:
            mask = self.centre_mask.to(x).expand(b, n)
        select = torch.cat([mask.new_ones(b, 1), mask], dim=1)[..., None]
        return select, torch.zeros(b, n, 1, dtype=x.dtype, device=x.device)


def _loader(x: torch.Tensor, y: torch.Tensor, batch: int, train: bool, seed: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=train, drop_last=False,
                      generator=torch.Generator().manual_seed(seed))


def _fit(model: nn.Module, criterion: DyTLoss, loaders: Callable[[int], DataLoader], epochs: int, lr: float,
         weight_decay: float) -> None:
    """``dyt.engine.train_one_epoch`` for ``epochs`` epochs (``loaders(epoch)`` gives each epoch's data, freshly
    placed on the canvas): AdamW on the trainable parameters, one warm-up epoch, then cosine."""
    args = argparse.Namespace(lr=lr, min_lr=lr / 100, warmup_epochs=min(1, epochs - 1), epochs=epochs, accum_iter=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    device = torch.device("cpu")
    scaler = engine.make_scaler(device)
    for epoch in range(epochs):
        engine.train_one_epoch(model, criterion, loaders(epoch), optimizer, device, epoch, scaler, args)


@torch.no_grad()
def mask_statistics(model: nn.Module, images: torch.Tensor, foreground: torch.Tensor) -> dict[str, float]:
    """Foreground overlap of the eval masks (precision: kept tokens on the digit; recall: digit tokens kept) and
    the gap between the dynamic and complete outputs (accuracy-free: mean KL(complete || dynamic))."""
    model.eval()
    logits, aux = model(images)
    complete, _ = model(images, complete_model=True)
    kept = aux["token_select"][..., 0]  # [B, L, 64]
    fg = foreground[:, None, :].float().expand_as(kept)
    kl = F.kl_div(logits.log_softmax(-1), complete.log_softmax(-1), reduction="batchmean", log_target=True)
    return {"fg_precision": float((kept * fg).sum() / kept.sum().clamp(min=1)),
            "fg_recall": float((kept * fg).sum() / fg.sum()), "kl_complete": float(kl)}


@torch.no_grad()
def time_paths(model: nn.Module, images: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Milliseconds per batch of the masked path and of the gather/scatter path (eval; median of ``repeats``)."""
    model.eval()
    samples: dict[str, list[float]] = {"masked": [], "gather": []}
    for i in range(repeats + 1):  # alternate the two paths; the first round warms up
        for mode in samples:
            model.execution = mode
            start = time.perf_counter()
            model(images)
            if i:
                samples[mode].append(time.perf_counter() - start)
    times = {mode: 1e3 * float(np.median(values)) for mode, values in samples.items()}
    model.execution = "gather"
    return times["masked"], times["gather"]


def proxy_model(args: argparse.Namespace, **kwargs: Any) -> nn.Module:
    """The ``vit_digits`` layout (32 px, patch 4, 64 patch tokens + CLS) at ``--embed-dim`` / ``--depth``."""
    return MODELS["vit_digits"](num_classes=5, embed_dim=args.embed_dim, depth=args.depth, num_heads=3, **kwargs)


def run_proxy(args: argparse.Namespace) -> dict[str, Any]:
    """Spec Sec. g: pretrain on digits 0-4, freeze, adapt to the shifted digits 5-9 with every method."""
    seed_everything(args.seed)
    limit = args.train_samples or None
    src_x, src_y = _digits("train", range(0, 5), limit)
    tgt_x, tgt_y = _digits("train", range(5, 10), limit)
    val_x, val_y = _digits("val", range(0, 5), None)
    test_x, test_y = _digits("val", range(5, 10), None)
    val_x, _ = place_on_canvas(val_x, args.seed + 1, invert=False)
    # every test digit at TEST_PLACEMENTS random places: more test images, less noise in the comparison
    test_x, test_fg = place_on_canvas(test_x.repeat(TEST_PLACEMENTS, 1, 1, 1), args.seed + 2, invert=True)
    test_y = test_y.repeat(TEST_PLACEMENTS)
    started = time.time()

    def source(epoch: int) -> DataLoader:
        return _loader(place_on_canvas(src_x, 1000 + epoch, invert=False)[0], src_y, 32, True, epoch)

    def target(epoch: int) -> DataLoader:
        return _loader(place_on_canvas(tgt_x, 2000 + epoch, invert=True)[0], tgt_y, 32, True, epoch)

    backbone = proxy_model(args, ffn_num=0, dispatch="none")
    _fit(backbone, DyTLoss(distill=False), source, args.pretrain_epochs, 2e-3, 0.05)
    source_acc = engine.evaluate(backbone, _loader(val_x, val_y, 256, False, 0), torch.device("cpu"), 5)["acc1"]
    pretrain_seconds = time.time() - started
    checkpoint = Path(tempfile.mkdtemp(prefix="dyt_proxy_")) / "backbone.pth"
    torch.save(backbone.state_dict(), checkpoint)

    methods: list[dict[str, Any]] = [{"method": "linear probe", "ffn_num": 0, "dispatch": "none", "rate": 1.0},
                                     {"method": f"AdaptFormer-{args.ffn}", "ffn_num": args.ffn, "dispatch": "none",
                                      "rate": 1.0}]
    for rate in args.rates:
        for distill in (True, False):
            methods.append({"method": "DyT" + ("" if distill else " (no complete-model terms)"), "ffn_num": args.ffn,
                            "dispatch": "mlp", "rate": rate, "distill": distill})
    for rate in args.control_rates:
        for kind in ("random", "centre"):
            methods.append({"method": f"{kind} mask", "ffn_num": args.ffn, "dispatch": "mlp", "rate": rate,
                            "distill": True, "control": kind})

    test_loader = _loader(test_x, test_y, 256, False, 0)
    runs = []
    for spec in methods:
        seed_everything(args.seed)
        model = proxy_model(args, ffn_num=spec["ffn_num"], dispatch=spec["dispatch"], adapter_scale=1.0)
        set_trainable(model, load_pretrained_vit(model, checkpoint))
        if "control" in spec:
            for i, blk in enumerate(model.blocks):
                blk.mlp_token_select = FixedPolicy(spec["control"], spec["rate"], 8, args.seed + i)
        dynamic = spec["dispatch"] != "none"
        criterion = DyTLoss(token_target_ratio=spec["rate"], distill=spec.get("distill", False))
        start = time.time()
        _fit(model, criterion, target, args.adapt_epochs, args.lr, 1e-4)
        seconds = time.time() - start
        stats = engine.evaluate(model, test_loader, torch.device("cpu"), 5, flops_fn=engine.flops_counter(model))
        run = {**spec, "acc": stats["acc1"], "gflops": stats.get("flops", complete_flops(model)),
               "macs_m": executed_macs_per_sample(model, test_loader) / 1e6,
               "activation_rate": stats.get("activation_rate", 1.0),
               "layer_rates": stats.get("layer_rates", [1.0] * model.num_layers), "train_s": seconds,
               "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}
        if dynamic:
            run.update(mask_statistics(model, test_x, test_fg))
            with torch.no_grad():
                complete_logits, _ = model.eval()(test_x, complete_model=True)
            run["complete_acc"] = 100.0 * float((complete_logits.argmax(1) == test_y).float().mean())
        if spec["method"] == "DyT" and spec["rate"] == 0.5:
            run["masked_ms"], run["gather_ms"] = time_paths(model, test_x[:64], args.repeats)
        runs.append(run)
    return {"runs": runs, "source_acc": source_acc, "pretrain_seconds": pretrain_seconds,
            "foreground_fraction": float(test_fg.float().mean()), "table_gflops": block_flops_table(backbone)[-1],
            "base_gflops": base_flops(backbone), "test_samples": len(test_y)}


def reference_model_speed(shared_dir: Path, repeats: int) -> dict[str, float] | None:
    """Masked vs gather wall-clock at batch 64 on the reduced reference model (224 px, 197 tokens, ~50% kept)."""
    path = shared_dir / "reference" / "dyt" / "ref_dyt_tiny_d4_e192.pt"
    if not path.is_file():
        return None
    reference = torch.load(path, weights_only=True)
    model = build_model("vit_tiny_d4_e192", num_classes=10, ffn_num=16)
    model.load_state_dict(reference["state_dict"])
    images = torch.randn(64, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        rate = float(model.eval()(images)[1]["token_select"].mean())
    masked, gather = time_paths(model, images, repeats)
    return {"masked_ms": masked, "gather_ms": gather, "rate": rate}


def format_proxy(proxy: dict[str, Any]) -> str:
    body = []
    for run in proxy["runs"]:
        dynamic = run["dispatch"] != "none"
        rates = " / ".join(f"{r:.2f}" for r in run["layer_rates"]) if dynamic else "-"
        overlap = f"{run['fg_precision']:.2f} / {run['fg_recall']:.2f}" if dynamic else "-"
        gap = f"{run['complete_acc']:.1f} / {run['kl_complete']:.3f}" if dynamic else "-"
        body.append([run["method"], f"{run['rate']:g}" if dynamic else "-", f"{run['acc']:.1f}",
                     f"{run['gflops'] * 1e3:.1f}", f"{run['macs_m']:.1f}", f"{run['activation_rate']:.3f}", rates,
                     overlap, gap, f"{run['trainable']:,}", f"{run['train_s']:.0f}"])
    return markdown_table(["method", "target r", "top-1 (%)", "MFLOPs (original accounting)", "executed MMACs (gather)",
                      "realised rate", "per-layer rate (first to last)", "foreground precision / recall",
                      "complete-model acc / KL(complete||dynamic)", "trainable params", "train s"], body)


def plot_proxy(proxy: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4.2))
    markers = {"linear probe": "v", "DyT": "o", "DyT (no complete-model terms)": "s", "random mask": "x",
               "centre mask": "+"}
    for ax, key, label in ((left, "gflops", "MFLOPs per image (original accounting)"),
                           (middle, "macs_m", "executed MMACs per image (gather path)")):
        for method in dict.fromkeys(r["method"] for r in proxy["runs"]):
            runs = sorted((r for r in proxy["runs"] if r["method"] == method), key=lambda r: r[key])
            scale = 1e3 if key == "gflops" else 1.0
            ax.plot([r[key] * scale for r in runs], [r["acc"] for r in runs], marker=markers.get(method, "D"),
                    label=method)
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 on shifted digits 5-9 (%)")
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    for run in proxy["runs"]:
        if run["method"] == "DyT":
            right.plot(range(1, len(run["layer_rates"]) + 1), run["layer_rates"], "o-", label=f"r={run['rate']:g}")
    right.set_xlabel("layer")
    right.set_ylabel("eval activation rate")
    right.set_ylim(0, 1.05)
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    fig.suptitle("DyT proxy: ViT (32 px, patch 4), digits 0-4 -> inverted digits 5-9 on a noisy canvas")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _speed_lines(proxy: dict[str, Any] | None, reference: dict[str, float] | None) -> list[str]:
    lines = []
    run = next((r for r in (proxy or {}).get("runs", []) if "gather_ms" in r), None)
    if run is not None:
        lines.append(f"- proxy ViT (65 tokens), trained DyT r=0.5 (realised {run['activation_rate']:.2f}), batch 64: "
                     f"masked {run['masked_ms']:.1f} ms, gather {run['gather_ms']:.1f} ms, speed-up "
                     f"{run['masked_ms'] / run['gather_ms']:.2f}x")
    if reference is not None:
        lines.append(f"- vit_tiny_d4_e192 (224 px, 197 tokens) with the reference weights (realised rate "
                     f"{reference['rate']:.2f}), batch 64: masked {reference['masked_ms']:.0f} ms, gather "
                     f"{reference['gather_ms']:.0f} ms, speed-up "
                     f"{reference['masked_ms'] / reference['gather_ms']:.2f}x")
    return lines


# ------------------------------------------------------------------------------------------------------ main
def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if not Path(args.paper_table).is_file():
        raise UserError(f"--paper-table {args.paper_table} does not exist (the default is {PAPER_TABLE})")
    table = load_yaml(args.paper_table)
    check_paper_table(table, args.paper_table)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.dyt_table " + shlex.join(sys.argv[1:])
    machine = f"{platform.platform()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    start = time.time()
    rows = table_rows(table)
    table_md = format_table(rows)
    print(table_md)
    ok = all(row["ok"] for row in rows)
    print("params/FLOPs table: " + ("every number reproduced" if ok else "DIFFERENCES above"))
    write_csv(out_dir / "dyt_params_flops.csv", rows)
    sections = [f"# DyT: parameters, FLOPs and proxy\n\nCommand: `{command}`\n\nMachine: {machine}\n",
                "## Parameters and FLOPs of ViT-B/16 (spec Sec. a, e)\n",
                "FLOPs = multiply-adds as the original counts them (fvcore: Linear, Conv, attention matmuls, "
                "LayerNorm 5/element), DyT at a uniform activation rate r = base + 12 table[round(196 r) + 1].\n",
                table_md]
    proxy = None
    if args.proxy:
        proxy = run_proxy(args)
        proxy_md = format_proxy(proxy)
        print(proxy_md)
        sections += ["\n## Proxy on digits (spec Sec. g)\n",
                     f"ViT (32 px, patch 4, width {args.embed_dim}, depth {args.depth}) pretrained "
                     f"{args.pretrain_epochs} epochs on digits 0-4 on a dark noisy canvas (val top-1 "
                     f"{proxy['source_acc']:.1f}%, {proxy['pretrain_seconds']:.0f} s), frozen; adapted "
                     f"{args.adapt_epochs} epochs (AdamW lr {args.lr}, adapter bottleneck {args.ffn}, scale 1) to "
                     f"digits 5-9 inverted, 20 px on a noisy 32 px canvas; {proxy['test_samples']} test images, "
                     f"{100 * proxy['foreground_fraction']:.0f}% of the patch tokens hold a stroke. Seed {args.seed}."
                     " Executed MACs (common.flops, gather path) count no LayerNorm and the dispatchers at their "
                     "real cost; the original accounting counts LayerNorm and gives the dispatchers none.\n",
                     proxy_md, "\n![proxy](dyt_proxy.png)"]
        write_csv(out_dir / "dyt.csv", proxy["runs"])
        plot_proxy(proxy, out_dir / "dyt_proxy.png")
    reference = reference_model_speed(Path(args.shared_dir), args.repeats) if args.speed else None
    speed = _speed_lines(proxy, reference)
    if speed:
        print("\n".join(speed))
        sections += ["\n## Wall-clock: gather/scatter vs masked (eval, CPU)\n", *speed]
    sections.append(f"\nWall time: {time.time() - start:.0f} s.")
    (out_dir / "dyt.md").write_text("\n".join(sections) + "\n")
    print(f"wrote {out_dir / 'dyt.md'} ({time.time() - start:.0f} s)")
    return 0 if ok else 1


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="dyt_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper-table", default=str(PAPER_TABLE), help="the parameter/FLOPs table (default: "
                        "%(default)s)")
    parser.add_argument("--output-dir", default="results", help="where the report goes (default: %(default)s)")
    parser.add_argument("--proxy", action=argparse.BooleanOptionalAction, default=True,
                        help="run the proxy experiment on digits (default: on)")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                        help="time gather vs masked on the reduced reference model too (default: on)")
    parser.add_argument("--quick", action="store_true", help="CI-sized proxy: fewer epochs and runs")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.3, 0.5, 0.7],
                        help="DyT target activation rates (default: %(default)s)")
    parser.add_argument("--control-rates", type=float, nargs="+", default=[0.5],
                        help="rates of the random-mask and centre-mask controls (default: %(default)s)")
    parser.add_argument("--ffn", type=int, default=8, help="adapter bottleneck (default: 8, the VTAB default)")
    parser.add_argument("--embed-dim", type=int, default=96,
                        help="proxy ViT width (default: 96; vit_digits has 192, which takes about 5x longer)")
    parser.add_argument("--depth", type=int, default=4, help="proxy ViT depth (default: 4; vit_digits has 6)")
    parser.add_argument("--pretrain-epochs", type=int, default=30, help="source pretraining epochs (default: 30)")
    parser.add_argument("--adapt-epochs", type=int, default=10, help="adaptation epochs per method (default: 10)")
    parser.add_argument("--lr", type=float, default=3e-3, help="adaptation AdamW lr (default: %(default)s)")
    parser.add_argument("--train-samples", type=int, default=0,
                        help="cap on the training images per task (default: 0 = all, about 720)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per path (default: 3)")
    parser.add_argument("--shared-dir", default=str(Path(__file__).resolve().parents[2] / "shared"),
                        help="the shared folder holding reference/dyt (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: 0 = torch's default)")
    return parser


def cli(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        args.pretrain_epochs, args.adapt_epochs = min(args.pretrain_epochs, 8), min(args.adapt_epochs, 3)
        args.rates, args.control_rates, args.repeats = [0.5], [0.5], 2
    return main(args)


if __name__ == "__main__":
    sys.exit(run_cli(cli, prog="dyt_table"))
