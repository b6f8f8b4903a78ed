"""ADN (Kang & Lee, NeurIPS 2024): the README model zoo's GFLOPs, reproduced, and a small CPU proxy experiment.

Part 1 (the table). For every row of ``benchmarks/paper_tables/adn.yaml`` (the ``wchkang/depth`` README model zoo)
build the model, count its GFLOPs for the row's skip configuration under the counter the README used
(:func:`adn.flops.count_readme_flops`) and the MACs that really execute (:func:`adn.flops.count_executed_macs`),
and compare with the paper. Exit code 1 when a row is off by more than the table's tolerance (its known
discrepancies are reported instead). ``--weights FILE --model NAME --data-path DIR`` also evaluates a checkpoint
on ImageNet val to fill the "our Acc@1" column.

Part 2 (``--proxy``, on by default). The proxy experiment of spec ``adn.md`` Sec. g on the embedded ``digits``
data at 32x32 with ``resnet_adn_cifar``:

* A: ADN training (super-net CE + base-net self-distillation, skip-aware norms), ``adn.engine.train_one_epoch``;
* B: the super-net trained alone with CE (shared norms), then evaluated with sub-paths skipped;
* C: ADN training without skip-aware norms (``skip_aware_norms=False``);
* D: individually trained networks: a base-net trained only as TTTT, and a super-net trained only as FFFF. The
  latter is exactly B's training (CE on FFFF, same initialisation), so B's FFFF column is D's super-net.

All 16 configurations of A, B and C and the two networks of D are evaluated: accuracy against executed MACs per
image, mean ± std over ``--seeds``. A diagnostic column A* (not in the spec) evaluates A's weights after
re-estimating the BatchNorm running statistics of each configuration on ``--recalibration-samples`` training
images. A's running statistics come from the super-net and base-net passes only: the never-switched ``downsample``
norms average the two, and in an intermediate configuration a stage's norms see inputs that neither pass produced.
A* shows how much of A's accuracy that costs.

Writes ``adn.md``, ``adn.csv``, ``adn_flops.csv`` and ``adn_proxy.png`` to ``--output-dir``.

    python -m benchmarks.adn_table                    # both parts, 3 seeds (about 10 minutes on 2 CPU cores)
    python -m benchmarks.adn_table --quick            # CI-sized: 1 seed, 1 epoch on a subset
    python -m benchmarks.adn_table --no-proxy --models resnet50 mobilenet_v2
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from adn.engine import evaluate, evaluate_all_skip_cfgs, train_one_epoch
from adn.flops import count_executed_macs, count_readme_flops, readme_convention
from adn.models import MODELS, create_model
from common.config import load_yaml
from common.errors import UserError, run_cli

PAPER_TABLE = Path(__file__).resolve().parent / "paper_tables" / "adn.yaml"
ROW_KEYS = ("model", "arch", "variant", "skip_cfg", "gflops", "acc1", "source")
METHODS = {
    "A": "A: ADN (self-distillation, skip-aware norms)",
    "B": "B: super-net only (CE on FFFF), blocks skipped at test",
    "C": "C: ADN without skip-aware norms (shared norms)",
    "D": "D: individually trained base-net (TTTT) / super-net (FFFF)",
    "A*": "A*: A with BN statistics re-estimated per configuration (diagnostic)",
}


class AdnTableError(UserError):
    """A bad flag, a missing file, or a malformed paper table."""


# --------------------------------------------------------------------------------------------------------------
# Part 1: the README model zoo
# --------------------------------------------------------------------------------------------------------------

def load_paper_table(path: str | Path) -> dict[str, Any]:
    """Read and check the paper-table YAML: ``rows``, ``tolerance.gflops_abs``, optional ``known_discrepancies``."""
    path = Path(path)
    if not path.is_file():
        raise AdnTableError(f"paper table {path} does not exist (the default is {PAPER_TABLE})")
    table = load_yaml(path)
    if not isinstance(table.get("rows"), list) or not table["rows"]:
        raise AdnTableError(f"paper table {path} needs a non-empty 'rows' list")
    try:
        table["tolerance"] = {"gflops_abs": float(table["tolerance"]["gflops_abs"])}
    except (KeyError, TypeError, ValueError):
        raise AdnTableError(f"paper table {path} needs 'tolerance: {{gflops_abs: <number>}}'") from None
    for i, row in enumerate(table["rows"]):
        missing = [key for key in ROW_KEYS if not isinstance(row, dict) or key not in row]
        if missing:
            raise AdnTableError(f"paper table {path}: row {i + 1} lacks {', '.join(missing)}")
        if row["arch"] not in MODELS:
            raise AdnTableError(f"paper table {path}: row {i + 1} has unknown arch '{row['arch']}'; "
                                f"choose one of: {', '.join(MODELS)}")
    known = {}
    for item in table.get("known_discrepancies") or []:
        try:
            known[(item["arch"], item["skip_cfg"])] = item
            float(item["counter_gflops"])
        except (KeyError, TypeError, ValueError):
            raise AdnTableError(f"paper table {path}: a known discrepancy needs arch, skip_cfg, counter_gflops "
                                "and reason") from None
    table["known"] = known
    return table


def _table_archs(table: dict[str, Any], models: Sequence[str] | None) -> list[str]:
    archs = list(dict.fromkeys(row["arch"] for row in table["rows"]))
    if not models:
        return archs
    unknown = [m for m in models if m not in archs]
    if unknown:
        raise AdnTableError(f"--models {' '.join(unknown)}: not in the paper table; choose from: {', '.join(archs)}")
    return [a for a in archs if a in models]


def count_table_flops(table: dict[str, Any], archs: Sequence[str]) -> dict[tuple[str, str], tuple[int, int]]:
    """``(arch, skip_cfg) -> (README-convention FLOPs, executed MACs)`` for every row of the chosen archs."""
    todo = [(arch, cfg) for arch in archs
            for cfg in dict.fromkeys(r["skip_cfg"] for r in table["rows"] if r["arch"] == arch)]
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    model, built = None, None
    for arch, cfg in tqdm(todo, desc="FLOPs", dynamic_ncols=True):
        if built != arch:
            torch.manual_seed(0)
            model, built = create_model(arch).eval(), arch
        try:
            counts[arch, cfg] = (count_readme_flops(model, arch, cfg), count_executed_macs(model, cfg))
        except ValueError as err:  # a malformed skip configuration in the table
            raise AdnTableError(f"{arch} {cfg}: {err}") from None
    return counts


def compare_rows(table: dict[str, Any], counts: dict[tuple[str, str], tuple[int, int]],
                 accuracies: dict[tuple[str, str, str], float] | None = None) -> list[dict[str, Any]]:
    """One result per paper row: ours vs the paper, and the status ``ok``, ``known`` (a listed discrepancy whose
    counter value we reproduce) or ``FAIL``."""
    tol = table["tolerance"]["gflops_abs"]
    accuracies = accuracies or {}
    results = []
    for row in table["rows"]:
        key = (row["arch"], row["skip_cfg"])
        if key not in counts:
            continue
        readme, executed = counts[key]
        ours = readme / 1e9
        paper = float(row["gflops"])
        known = table["known"].get(key)
        if known is not None:
            status = "known" if abs(ours - float(known["counter_gflops"])) <= tol + 1e-9 else "FAIL"
        else:
            status = "ok" if abs(ours - paper) <= tol + 1e-9 else "FAIL"
        results.append({
            "model": row["model"], "arch": row["arch"], "variant": row["variant"], "skip_cfg": row["skip_cfg"],
            "counter": readme_convention(row["arch"]).counter, "paper_gflops": paper, "our_gflops": ours,
            "rel_diff": (ours - paper) / paper, "executed_gmacs": executed / 1e9, "paper_acc1": row["acc1"],
            "our_acc1": accuracies.get((row["arch"], row["variant"], row["skip_cfg"])), "status": status,
            "note": known["reason"] if known is not None else "",
        })
    return results


def format_flops_table(results: Sequence[dict[str, Any]], markdown: bool = False) -> str:
    """The table "model | skip-cfg | paper GFLOPs | ours | rel. diff | executed GMACs | paper Acc@1 | our Acc@1"."""
    head = ["model", "skip-cfg", "paper GFLOPs", "ours", "rel. diff", "executed GMACs", "paper Acc@1", "our Acc@1",
            "counter", "status"]
    body = []
    for r in results:
        body.append([r["model"], r["skip_cfg"], f"{r['paper_gflops']:.2f}", f"{r['our_gflops']:.4f}",
                     f"{100 * r['rel_diff']:+.2f}%", f"{r['executed_gmacs']:.4f}", f"{r['paper_acc1']}",
                     "-" if r["our_acc1"] is None else f"{r['our_acc1']:.2f}", r["counter"], r["status"]])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body])


def evaluate_weights(args: argparse.Namespace, table: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """Top-1 of ``--weights`` on ImageNet val for every row of ``--model`` / ``--variant`` (spec Sec. e protocol)."""
    from adn.presets import eval_preset, interpolation_mode
    from adn.weights import load_weights
    from common.data import build_dataset, build_loader

    rows = [r for r in table["rows"] if r["arch"] == args.model and r["variant"] == args.variant]
    if not rows:
        raise AdnTableError(f"the paper table has no rows for --model {args.model} --variant {args.variant}")
    interpolation = interpolation_mode("bicubic" if args.model == "swin_t" else "bilinear")
    transform = eval_preset(224, args.val_resize_size, interpolation)
    dataset = build_dataset("imagenet", args.data_path, "val", transform=transform)
    loader = build_loader(dataset, args.batch_size, train=False, num_workers=args.workers)
    model = create_model(args.model, num_classes=dataset.num_classes)
    load_weights(model, args.weights, use_ema=args.model_ema)
    model.to(args.device)
    criterion = nn.CrossEntropyLoss()
    return {(args.model, args.variant, r["skip_cfg"]): evaluate(model, criterion, loader, args.device,
                                                                r["skip_cfg"])["acc1"] for r in rows}


def write_flops_csv(results: Sequence[dict[str, Any]], path: Path) -> None:
    fields = ["model", "arch", "variant", "skip_cfg", "counter", "paper_gflops", "our_gflops", "rel_diff",
              "executed_gmacs", "paper_acc1", "our_acc1", "status", "note"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        for r in results:
            writer.writerow({k: r[k] for k in fields})


# --------------------------------------------------------------------------------------------------------------
# Part 2: the proxy experiment (spec Sec. g)
# --------------------------------------------------------------------------------------------------------------

def proxy_settings(args: argparse.Namespace) -> SimpleNamespace:
    """The proxy's hyper-parameters: the flags, with the ``--quick`` or full-run defaults filled in."""
    def pick(value, quick, full):
        return value if value is not None else (quick if args.quick else full)

    return SimpleNamespace(
        seeds=pick(args.seeds, 1, 3), epochs=pick(args.proxy_epochs, 1, 6),
        recalibration_samples=pick(args.recalibration_samples, 64, 256),
        train_samples=pick(args.proxy_train_samples, 256, 0), val_samples=pick(args.proxy_val_samples, 128, 0),
        width=args.proxy_width, lr=args.proxy_lr, batch_size=args.proxy_batch_size, img_size=32)


def _subset(dataset, n: int):
    if not n or n >= len(dataset):
        return dataset
    index = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:n].sort().values
    return torch.utils.data.Subset(dataset, index.tolist())


def proxy_data(cfg: SimpleNamespace):
    from common.data import build_dataset

    train = _subset(build_dataset("digits", split="train", img_size=cfg.img_size), cfg.train_samples)
    val = _subset(build_dataset("digits", split="val", img_size=cfg.img_size), cfg.val_samples)
    return train, val


def _optimizer(model: nn.Module, cfg: SimpleNamespace):
    """SGD (nesterov, wd 5e-4) for every method alike; per epoch: one warm-up epoch at lr / 5, then a cosine decay
    from lr over the remaining epochs (the warm-up keeps plain CE training of this deep, narrow net stable)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)

    def factor(epoch: int) -> float:
        if epoch == 0:
            return 0.2
        return 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / max(1, cfg.epochs - 1)))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def train_adn(model: nn.Module, loader, cfg: SimpleNamespace) -> None:
    """Methods A and C: ADN's two-pass self-distillation step (``adn.engine.train_one_epoch``), alpha 0.5, T 1."""
    optimizer, scheduler = _optimizer(model, cfg)
    criterion = nn.CrossEntropyLoss()
    hp = SimpleNamespace(subpath_alpha=0.5, subpath_temp=1.0, print_freq=5)
    for epoch in range(cfg.epochs):
        train_one_epoch(model, criterion, optimizer, loader, "cpu", epoch, hp)
        scheduler.step()


def train_single_cfg(model: nn.Module, loader, cfg: SimpleNamespace, skip_cfg: str) -> None:
    """Methods B and D: ordinary supervised training (CE) of the one sub-network ``skip_cfg``, nothing else."""
    optimizer, scheduler = _optimizer(model, cfg)
    criterion = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(cfg.epochs):
        for images, targets in tqdm(loader, desc=f"Epoch [{epoch}] {skip_cfg}", leave=False, dynamic_ncols=True):
            optimizer.zero_grad(set_to_none=True)
            criterion(model(images, skip_cfg), targets).backward()
            optimizer.step()
        scheduler.step()


def recalibrated(model: nn.Module, skip_cfg: str, images: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated (a cumulative average) from
    ``images`` run through ``skip_cfg`` in train mode; the norms that configuration does not use keep defaults."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for batch in images.split(batch_size):
            model(batch, skip_cfg)
    return model.eval()


def run_proxy(cfg: SimpleNamespace) -> dict[str, Any]:
    """Train and evaluate A, B, C, D for every seed; ``acc[method][skip_cfg]`` is the list of per-seed top-1."""
    from common.data import build_loader

    train_set, val_set = proxy_data(cfg)
    criterion = nn.CrossEntropyLoss()
    acc: dict[str, dict[str, list[float]]] = {m: {} for m in METHODS}
    macs: dict[str, int] = {}
    runs = [(seed, method) for seed in range(cfg.seeds) for method in ("A", "B", "C", "D")]  # A also gives A*
    progress = tqdm(runs, desc="proxy", dynamic_ncols=True)
    for seed, method in progress:
        progress.set_postfix(seed=seed, method=method)
        torch.manual_seed(seed)  # the same initial weights for every method of a seed (norms take no random draws)
        model = create_model("resnet_adn_cifar", num_classes=10, width=cfg.width, skip_aware_norms=method in "AD")
        train_loader = build_loader(train_set, cfg.batch_size, train=True, seed=seed)
        val_loader = build_loader(val_set, 256, train=False)
        if method in "AC":
            train_adn(model, train_loader, cfg)
        else:
            train_single_cfg(model, train_loader, cfg, "FFFF" if method == "B" else "TTTT")
        if method == "D":  # the base-net; D's super-net is B's training (see the module docstring)
            result = evaluate(model, criterion, val_loader, "cpu", "TTTT")
            acc["D"].setdefault("TTTT", []).append(result["acc1"])
            acc["D"].setdefault("FFFF", []).append(acc["B"]["FFFF"][-1])
            continue
        for row in evaluate_all_skip_cfgs(model, criterion, val_loader, "cpu"):
            acc[method].setdefault(row["skip_cfg"], []).append(row["acc1"])
            macs[row["skip_cfg"]] = row["macs"]
        if method == "A":
            images = torch.stack([train_set[i][0] for i in range(min(cfg.recalibration_samples, len(train_set)))])
            for name in model.configurations():
                result = evaluate(recalibrated(model, name, images), criterion, val_loader, "cpu", name)
                acc["A*"].setdefault(name, []).append(result["acc1"])
    return {"acc": acc, "macs": macs, "settings": cfg, "train_size": len(train_set), "val_size": len(val_set)}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")  # undefined for a constant series (e.g. a --quick run at chance level)
    return float(spearmanr(x, y).statistic)


def proxy_findings(result: dict[str, Any]) -> list[str]:
    """The checks of spec Sec. g's "expected signature", as measured (means over seeds)."""
    acc, macs = result["acc"], result["macs"]
    cfgs = list(macs)
    mean = {m: {c: _mean_std(v)[0] for c, v in acc[m].items()} for m in acc}
    sup, base = cfgs[0], cfgs[-1]
    pairs = [(a, b) for a in cfgs for b in cfgs
             if a != b and all(fa <= fb for fa, fb in zip(a.replace("F", "0").replace("T", "1"),
                                                          b.replace("F", "0").replace("T", "1"), strict=True))]
    monotone = sum(mean["A"][a] >= mean["A"][b] for a, b in pairs)
    return [
        f"A base-net {mean['A'][base]:.2f} vs D base-net (trained alone) {mean['D'][base]:.2f}",
        f"A super-net {mean['A'][sup]:.2f} vs D super-net (trained alone) {mean['D'][sup]:.2f}",
        f"B (super-net only) at {base}: {mean['B'][base]:.2f} (its {sup}: {mean['B'][sup]:.2f})",
        f"C (shared norms) base-net {mean['C'][base]:.2f} vs A base-net {mean['A'][base]:.2f}",
        f"A, all {len(cfgs)} configurations: Spearman(acc, MACs) = "
        f"{_spearman([macs[c] for c in cfgs], [mean['A'][c] for c in cfgs]):.2f}; skipping more never helps in "
        f"{monotone}/{len(pairs)} nested pairs",
        f"A* (A with per-configuration BN statistics): base-net {mean['A*'][base]:.2f}, super-net "
        f"{mean['A*'][sup]:.2f}, worst configuration {min(mean['A*'].values()):.2f} (A: "
        f"{min(mean['A'].values()):.2f}); Spearman(acc, MACs) = "
        f"{_spearman([macs[c] for c in cfgs], [mean['A*'][c] for c in cfgs]):.2f}",
    ]


def format_proxy_table(result: dict[str, Any], markdown: bool = False) -> str:
    """One row per configuration: executed MMACs and top-1 (mean ± std over seeds) of A, B, C, D."""
    acc, macs = result["acc"], result["macs"]
    head = ["skip-cfg", "MMACs", "A: ADN", "B: super-net only", "C: ADN, shared norms", "D: individual",
            "A*: A, BN re-estimated"]
    body = []
    for cfg in macs:
        cells = [cfg, f"{macs[cfg] / 1e6:.2f}"]
        for method in METHODS:
            values = acc[method].get(cfg)
            cells.append("" if not values else "{:.2f} ± {:.2f}".format(*_mean_std(values)))
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in body])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head)] + [fmt.format(*b) for b in body])


def write_proxy_csv(result: dict[str, Any], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "skip_cfg", "macs", "acc1_mean", "acc1_std", "seeds", "acc1_per_seed"])
        for method, per_cfg in result["acc"].items():
            for cfg, values in per_cfg.items():
                mean, std = _mean_std(values)
                writer.writerow([method, cfg, result["macs"][cfg], f"{mean:.4f}", f"{std:.4f}", len(values),
                                 ";".join(f"{v:.4f}" for v in values)])


def plot_proxy(result: dict[str, Any], path: Path) -> None:
    """Accuracy against executed MACs per image, one series per method (error bars: std over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    macs = result["macs"]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = {"A": "o", "B": "s", "C": "^", "D": "*", "A*": "x"}
    for i, (method, label) in enumerate(METHODS.items()):
        cfgs = sorted(result["acc"][method], key=lambda c: macs[c])
        stats = [_mean_std(result["acc"][method][c]) for c in cfgs]
        # configurations with equal cost share an x value; shift each method a little so the series stay apart
        x = [macs[c] / 1e6 + 0.08 * (i - 2) for c in cfgs]
        ax.errorbar(x, [m for m, _ in stats], yerr=[sd for _, sd in stats], label=label, marker=markers[method],
                    linestyle="none", markersize=10 if method == "D" else 5, capsize=2, elinewidth=0.8)
    s = result["settings"]
    ax.set_xlabel("executed MMACs per image (32x32; methods shifted slightly apart)")
    ax.set_ylabel("top-1 accuracy on digits val (%)")
    ax.set_title(f"ADN proxy: resnet_adn_cifar (width {s.width}), {s.epochs} epochs, {s.seeds} seed(s)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------------

def write_markdown(path: Path, command: str, flops: list[dict[str, Any]] | None, table: dict[str, Any] | None,
                   proxy: dict[str, Any] | None, timings: dict[str, float]) -> None:
    lines = ["# ADN: README model zoo and proxy experiment", "", f"Command: `{command}`", "",
             f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
             f"torch {torch.__version__}, {torch.get_num_threads()} threads. Wall time: "
             + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) + ".", ""]
    if flops is not None:
        lines += ["## GFLOPs of the README model zoo", "",
                  f"Tolerance: {table['tolerance']['gflops_abs']} G absolute. `ours` uses the README's counter "
                  "per model (adn/flops.py); `executed GMACs` are the multiply-adds that actually run "
                  "(common.flops).", "", format_flops_table(flops, markdown=True), ""]
        notes = [f"- {r['model']} {r['skip_cfg']}: {r['note']}" for r in flops if r["note"]]
        if notes:
            lines += ["Known discrepancies (reported, not failed):", "", *notes, ""]
    if proxy is not None:
        s = proxy["settings"]
        lines += ["## Proxy experiment (spec Sec. g)", "",
                  f"digits 32x32 ({proxy['train_size']} train / {proxy['val_size']} val images), resnet_adn_cifar "
                  f"width {s.width}, {s.epochs} epochs, SGD lr {s.lr} (1 warm-up epoch at lr / 5, then cosine), batch "
                  f"{s.batch_size}, "
                  f"{s.seeds} seed(s); top-1 %, mean ± std over seeds. D's FFFF is B's FFFF (the same training). "
                  f"A* (a diagnostic, not in the spec): A's weights with the BN running statistics re-estimated "
                  f"per configuration on {s.recalibration_samples} training images.",
                  "", format_proxy_table(proxy, markdown=True), "", *[f"- {x}" for x in proxy_findings(proxy)], ""]
    path.write_text("\n".join(lines))


def main(args: argparse.Namespace) -> int:
    """Run the chosen parts, print and write the tables; return 1 when a paper row is out of tolerance."""
    if args.weights is not None:
        if args.model is None or args.data_path is None:
            raise AdnTableError("--weights needs --model NAME and --data-path DIR (ImageNet with a val/ folder)")
        if not Path(args.weights).is_file():
            raise AdnTableError(f"--weights {args.weights}: no such file")
    elif args.model is not None or args.data_path is not None:
        raise AdnTableError("--model and --data-path only make sense with --weights FILE")
    if not args.table and not args.proxy:
        raise AdnTableError("nothing to do: both --no-table and --no-proxy were given")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.adn_table " + shlex.join(sys.argv[1:])
    timings: dict[str, float] = {}
    failures = 0
    flops = table = proxy = None

    if args.table:
        start = time.time()
        table = load_paper_table(args.paper_table)
        archs = _table_archs(table, args.models)
        if args.weights is not None and args.model not in archs:
            raise AdnTableError(f"--model {args.model} is not among the table's models: {', '.join(archs)}")
        accuracies = evaluate_weights(args, table) if args.weights is not None else None
        flops = compare_rows(table, count_table_flops(table, archs), accuracies)
        timings["table"] = time.time() - start
        print(format_flops_table(flops))
        for r in flops:
            if r["status"] != "ok":
                print(f"{r['status']}: {r['model']} {r['skip_cfg']}: paper {r['paper_gflops']:.2f}, ours "
                      f"{r['our_gflops']:.4f}{' (' + r['note'] + ')' if r['note'] else ''}")
        failures = sum(r["status"] == "FAIL" for r in flops)
        write_flops_csv(flops, output_dir / "adn_flops.csv")

    if args.proxy:
        start = time.time()
        proxy = run_proxy(proxy_settings(args))
        timings["proxy"] = time.time() - start
        print(format_proxy_table(proxy))
        print("\n".join(proxy_findings(proxy)))
        write_proxy_csv(proxy, output_dir / "adn.csv")
        plot_proxy(proxy, output_dir / "adn_proxy.png")

    write_markdown(output_dir / "adn.md", command, flops, table, proxy, timings)
    print(f"wrote {output_dir / 'adn.md'} ({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
    if failures:
        tol = table["tolerance"]["gflops_abs"]
        print(f"{failures} row(s) differ from the paper by more than {tol} GFLOPs", file=sys.stderr)
        return 1
    return 0


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--paper-table", default=str(PAPER_TABLE), help="the paper-table YAML to compare with")
    parser.add_argument("--table", action=argparse.BooleanOptionalAction, default=True,
                        help="part 1: reproduce the GFLOPs of the README model zoo")
    parser.add_argument("--models", nargs="+", default=None, metavar="ARCH",
                        help="part 1 for these archs only (default: every model of the table)")
    parser.add_argument("--weights", default=None, help="a checkpoint to evaluate on ImageNet val (fills 'our Acc@1')")
    parser.add_argument("--model", default=None, choices=sorted(MODELS), help="the arch of --weights")
    parser.add_argument("--variant", default="v1", help="which table rows --weights belongs to (v1, or v2 for the "
                        "600-epoch ResNet50-ADN)")
    parser.add_argument("--data-path", default=None, help="ImageNet folder with val/<class>/*.JPEG (for --weights)")
    parser.add_argument("--model-ema", action="store_true", help="take the EMA weights of a training checkpoint")
    parser.add_argument("--val-resize-size", type=int, default=256, help="eval resize before the 224 centre crop")
    parser.add_argument("-b", "--batch-size", type=int, default=256, help="eval batch size for --weights")
    parser.add_argument("-j", "--workers", type=int, default=4, help="data-loading workers for --weights")
    parser.add_argument("--device", default="cpu", help="device for --weights evaluation")
    parser.add_argument("--proxy", action=argparse.BooleanOptionalAction, default=True,
                        help="part 2: the proxy experiment on digits (spec Sec. g)")
    parser.add_argument("--quick", action="store_true",
                        help="CI-sized proxy: 1 seed, 1 epoch, 256 train / 128 val images (under a minute)")
    parser.add_argument("--seeds", type=int, default=None, help="proxy seeds (default 3; 1 with --quick)")
    parser.add_argument("--proxy-epochs", type=int, default=None, help="proxy epochs (default 6; 1 with --quick)")
    parser.add_argument("--proxy-train-samples", type=int, default=None,
                        help="use this many training images (0 = all 1,437; default 256 with --quick)")
    parser.add_argument("--proxy-val-samples", type=int, default=None,
                        help="use this many val images (0 = all 360; default 128 with --quick)")
    parser.add_argument("--recalibration-samples", type=int, default=None,
                        help="training images for the A* BN re-estimation (default 256; 64 with --quick)")
    parser.add_argument("--proxy-width", type=int, default=8,
                        help="base width of resnet_adn_cifar (the spec suggests 16-32; 8 fits 3 seeds in ~10 min)")
    parser.add_argument("--proxy-lr", type=float, default=0.05,
                        help="proxy SGD learning rate (nesterov; 1 warm-up epoch at lr / 5, then cosine)")
    parser.add_argument("--proxy-batch-size", type=int, default=32, help="proxy training batch size")
    parser.add_argument("--output-dir", default="results", help="where adn.md, adn.csv, adn_flops.csv and "
                        "adn_proxy.png go")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, get_args_parser().parse_args(), prog="adn_table"))
