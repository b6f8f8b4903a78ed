"""JEI-DNN (Regol, Chataoui, Coates, ICLR 2024): the cost of every exit, reproduced, and a CPU proxy experiment.

Part 1 (the cost table, spec ``jeidnn.md`` Sec. e). For every backbone configuration of
``benchmarks/paper_tables/jeidnn.yaml`` build the model and count the cost of each exit in the original repository's
Mul-Add convention (:func:`jeidnn.cost.original_mul_add_per_exit`, the x-axis of the paper's figures) and in
executed MACs (:func:`jeidnn.cost.executed_macs_per_exit`, ``torch.utils.flop_counter``). Exit code 1 when a count
differs from the table.

Part 2 (``--proxy``, on by default; spec Sec. g). On the embedded ``digits`` at 32x32: a T2T-ViT-7 backbone trained
briefly and frozen, ICs warmed up, then JEI-DNN's bi-level training for every ``--lambdas`` value, against the
confidence-threshold baseline on the warmed-up ICs (thresholds chosen on val). Reports the gated accuracy against
the cost (both counters), the executed MACs and wall-clock of truly early-exiting inference, the dataset-level ECE of
the predictions (proper probabilities) at matched cost, and the conformal set size at alpha 0.05. Writes
``jeidnn.md``, ``jeidnn_costs.csv``, ``jeidnn.csv`` (the proxy's accuracy vs cost per lambda, like ``adn.csv``)
and ``jeidnn_proxy.png`` to ``--output-dir`` (default ``results``).

    python -m benchmarks.jeidnn_table                 # both parts (about 3 minutes on one CPU thread)
    python -m benchmarks.jeidnn_table --quick         # CI-sized proxy
    python -m benchmarks.jeidnn_table --no-proxy      # the cost table only
"""

from __future__ import annotations

import argparse
import copy
import csv
import platform
import random
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from benchmarks.tables import markdown_table
from common.config import load_yaml
from common.errors import ArgumentParser, UserError, run_cli
from common.flops import count_macs
from jeidnn import engine, metrics
from jeidnn.baseline import threshold_baseline
from jeidnn.cost import executed_macs_per_exit, normalized_costs, original_mul_add_per_exit
from jeidnn.data import build_jeidnn_datasets
from jeidnn.dynn import early_exit_forward
from jeidnn.models import create_model

PAPER_TABLE = Path(__file__).resolve().parent / "paper_tables" / "jeidnn.yaml"
ALPHA = 0.05


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------- Part 1: costs
CONFIG_KEYS = ("arch", "num_classes", "img_size", "num_params", "mul_add_per_exit", "macs_per_exit")


def check_paper_table(table: Any, path: str) -> None:
    """A non-empty ``configurations`` list whose entries have every key of ``CONFIG_KEYS``, else a UserError."""
    configs = table.get("configurations") if isinstance(table, dict) else None
    if not isinstance(configs, list) or not configs:
        raise UserError(f"paper table {path} needs a non-empty 'configurations' list")
    for i, cfg in enumerate(configs):
        missing = [k for k in CONFIG_KEYS if not isinstance(cfg, dict) or k not in cfg]
        if missing:
            raise UserError(f"paper table {path}: configuration {i} lacks {', '.join(missing)}")


def cost_rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Ours against the table for every configuration and exit; ``ok`` is False on any difference."""
    rows = []
    for cfg in table["configurations"]:
        model = create_model(cfg["arch"], num_classes=cfg["num_classes"], img_size=cfg["img_size"]).eval()
        mul_add = [int(round(x)) for x in original_mul_add_per_exit(model, cfg["img_size"])]
        macs = executed_macs_per_exit(model, cfg["img_size"])
        params = sum(t.numel() for t in model.state_dict().values())
        rows.append({**cfg, "ours_mul_add": mul_add, "ours_macs": macs, "ours_params": params,
                     "ok": mul_add == cfg["mul_add_per_exit"] and macs == cfg["macs_per_exit"]
                     and params == cfg["num_params"]})
    return rows


def format_cost_table(rows: Sequence[dict[str, Any]]) -> str:
    body = []
    for row in rows:
        exits = len(row["ours_mul_add"])
        for level in range(exits):
            name = "final" if level == exits - 1 else str(level)
            body.append([f"{row['arch']} C={row['num_classes']} {row['img_size']}px", name,
                         f"{row['ours_mul_add'][level] / 1e6:.3f}", f"{row['mul_add_per_exit'][level] / 1e6:.3f}",
                         f"{row['ours_mul_add'][level] / row['ours_mul_add'][-1]:.3f}",
                         f"{row['ours_macs'][level] / 1e6:.1f}", f"{row['macs_per_exit'][level] / 1e6:.1f}",
                         "ok" if row["ok"] else "DIFFERS"])
    return markdown_table(["configuration", "exit", "Mul-Add ours (M)", "Mul-Add original (M)", "normalised",
                      "MACs ours (M)", "MACs original counter (M)", "status"], body)


# ----------------------------------------------------------------------------------------------- Part 2: proxy
def _loader(dataset, batch: int, train: bool, seed: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch, shuffle=train, drop_last=train, generator=generator)


def train_backbone(model, loader, epochs: int, lr: float, device) -> None:
    """Brief supervised training of the backbone and its final head (the stand-in for transfer learning)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for images, targets in loader:
            optimizer.zero_grad()
            final, _ = model(images.to(device))
            torch.nn.functional.cross_entropy(final, targets.to(device)).backward()
            optimizer.step()
            schedule.step()


def measure_early_exit(model, dataset, device, max_samples: int) -> dict[str, float]:
    """Truly early-exiting inference on the first ``max_samples`` test images: executed MACs per image (batch of
    all of them) and wall-clock per image at batch 1, against the full forward."""
    images = torch.stack([dataset[i][0] for i in range(min(max_samples, len(dataset)))]).to(device)
    model.eval()
    with torch.no_grad():
        exit_macs = count_macs(lambda x: early_exit_forward(model, x), images).total / len(images)
        full_macs = count_macs(lambda x: model(x), images).total / len(images)
        times = {}
        for name, fn in (("early_exit", lambda x: early_exit_forward(model, x)), ("full", lambda x: model(x))):
            for x in images[:5]:
                fn(x[None])
            start = time.perf_counter()
            for x in images:
                fn(x[None])
            times[name] = (time.perf_counter() - start) / len(images) * 1e3
    return {"exit_macs": exit_macs, "full_macs": full_macs, "exit_ms": times["early_exit"], "full_ms": times["full"]}


def run_proxy(args: argparse.Namespace) -> dict[str, Any]:
    """Spec Sec. g: backbone, warm-up, one bi-level run per lambda, and the threshold baseline."""
    device = torch.device("cpu")
    _seed_all(args.seed)
    train, val, test, num_classes = build_jeidnn_datasets("digits", None, img_size=32)
    if args.quick:
        train, val, test = Subset(train, range(256)), Subset(val, range(128)), Subset(test, range(128))
    train_loader = _loader(train, 64, True, args.seed)
    val_loader, test_loader = _loader(val, 128, False, args.seed), _loader(test, 128, False, args.seed)
    model = create_model("t2t_vit_7", num_classes=num_classes, img_size=32).to(device)
    started = time.time()
    train_backbone(model, train_loader, args.backbone_epochs, 0.05, device)
    engine.freeze_backbone(model)
    mul_add = original_mul_add_per_exit(model, 32)
    macs = executed_macs_per_exit(model, 32)
    costs = engine.CostTables(mul_add=[c / 1e6 for c in mul_add], macs=[c / 1e6 for c in macs],
                              normalized=normalized_costs(mul_add))
    settings = engine.BilevelSettings(ce_ic_tradeoff=0.0, costs=costs.normalized, bilevel_batch_count=args.bilevel)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9,
                                weight_decay=5e-4)
    state = engine.WarmupState.fresh(model.num_exits)
    for epoch in range(args.warmup_epochs):
        engine.warmup_epoch(model, optimizer, train_loader, device, costs.normalized, epoch)
        out = engine.collect_outputs(model, val_loader, device, settings)
        engine.update_warmup(model, state, [100 * float((p.argmax(1) == out.labels).mean()) for p in out.probs[:-1]],
                             epoch, None)
    engine.finish_warmup(model, state)
    backbone_seconds = time.time() - started

    val_out = engine.collect_outputs(model, val_loader, device, settings)
    test_out = engine.collect_outputs(model, test_loader, device, settings)
    per_exit_acc = [100 * float((p.argmax(1) == test_out.labels).mean()) for p in test_out.probs]
    baseline = threshold_baseline(val_out.probs, test_out.probs, test_out.labels, costs.mul_add,
                                  val_labels=val_out.labels)

    runs = []
    for lam in args.lambdas:
        _seed_all(args.seed)
        net = copy.deepcopy(model)
        opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=args.lr, momentum=0.9,
                              weight_decay=5e-4)
        run_settings = engine.BilevelSettings(ce_ic_tradeoff=lam, costs=costs.normalized,
                                              bilevel_batch_count=args.bilevel)
        thresholds = None
        for epoch in range(args.bilevel_epochs):
            engine.train_bilevel_epoch(net, opt, train_loader, device, run_settings, epoch)
            val_res = engine.collect_outputs(net, val_loader, device, run_settings)
            run_settings.pos_weights, thresholds = engine.set_from_validation(val_res, net.num_exits)
        out = engine.collect_outputs(net, test_loader, device, run_settings)
        result = engine.evaluate_split(out, costs, 128, thresholds)
        speed = measure_early_exit(net, test, device, args.timing_samples)
        runs.append({"lambda": lam, "acc": result["gated_acc"], "mul_add": result["total_cost"],
                     "normalized": result["normalized_cost"], "macs": result["total_macs"],
                     "ece": 100 * metrics.ece(metrics.gated_probs(out.probs, out.exit_levels), out.labels),
                     "set_size": result.get(f"sets_gated_C_{ALPHA}"),
                     "emp_alpha": result.get(f"sets_gated_emp_alpha_{ALPHA}"),
                     "exits": metrics.exit_statistics(out.exit_levels, net.num_exits + 1).tolist(), **speed})
    return {"costs": costs, "per_exit_acc": per_exit_acc, "runs": runs, "baseline": baseline,
            "backbone_seconds": backbone_seconds, "test_labels": test_out.labels}


def _nearest(points: Sequence[Any], cost: float):
    return min(points, key=lambda p: abs(p.average_cost - cost))


def format_proxy(proxy: dict[str, Any]) -> str:
    body = []
    for run in proxy["runs"]:
        base = _nearest(proxy["baseline"], run["mul_add"])
        base_ece = 100 * metrics.ece(base.exited_probs, proxy["test_labels"])
        size = "-" if run["set_size"] is None else f"{run['set_size']:.2f} ({run['emp_alpha']:.3f})"
        body.append([run["lambda"], f"{run['acc']:.2f}", f"{run['mul_add']:.3f}", f"{run['normalized']:.3f}",
                     f"{run['macs']:.2f}", f"{run['exit_macs'] / 1e6:.2f}",
                     f"{run['exit_ms']:.2f} / {run['full_ms']:.2f}",
                     f"{run['ece']:.2f}", size, f"{base.accuracy:.2f} @ {base.average_cost:.3f}", f"{base_ece:.2f}",
                     " / ".join(f"{e:.2f}" for e in run["exits"])])
    return markdown_table(["lambda", "acc", "Mul-Add (M, original)", "normalised", "MACs (M, from exits)",
                      "MACs (M, measured early exit)", "ms / image early exit / full", "ECE",
                      f"conformal C at {ALPHA} (emp alpha)", "threshold baseline acc @ nearest Mul-Add",
                      "baseline ECE", "exit fractions"], body)


def plot_proxy(proxy: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    base = sorted(proxy["baseline"], key=lambda p: p.average_cost)
    left.plot([p.average_cost for p in base], [p.accuracy for p in base], "o-", ms=3, label="confidence thresholds")
    left.plot([r["mul_add"] for r in proxy["runs"]], [r["acc"] for r in proxy["runs"]], "s-", label="JEI-DNN")
    for run in proxy["runs"]:
        left.annotate(f"{run['lambda']}", (run["mul_add"], run["acc"]), fontsize=7)
    left.set_xlabel("Mul-Add per image (M, the original's counter)")
    left.set_ylabel("top-1 on digits test (%)")
    right.plot([p.average_cost for p in base], [100 * metrics.ece(p.exited_probs, proxy["test_labels"]) for p in base],
               "o-", ms=3, label="confidence thresholds")
    right.plot([r["mul_add"] for r in proxy["runs"]], [r["ece"] for r in proxy["runs"]], "s-", label="JEI-DNN")
    right.set_xlabel("Mul-Add per image (M)")
    right.set_ylabel("ECE x100 (15 bins, whole test set)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("JEI-DNN proxy: T2T-ViT-7 on digits 32x32")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ main
def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    if not Path(args.paper_table).is_file():
        raise UserError(f"--paper-table {args.paper_table} does not exist (the default is {PAPER_TABLE})")
    table = load_yaml(args.paper_table)
    check_paper_table(table, args.paper_table)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.jeidnn_table " + shlex.join(sys.argv[1:])
    machine = (f"{platform.platform()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}")
    start = time.time()
    rows = cost_rows(table)
    cost_md = format_cost_table(rows)
    print(cost_md)
    ok = all(row["ok"] for row in rows)
    print("cost table: " + ("every exit of every configuration reproduced exactly" if ok else "DIFFERENCES above"))
    with (out_dir / "jeidnn_costs.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["arch", "num_classes", "img_size", "exit", "mul_add_ours", "mul_add_original", "macs_ours",
                         "macs_original"])
        for row in rows:
            for level, values in enumerate(zip(row["ours_mul_add"], row["mul_add_per_exit"], row["ours_macs"],
                                               row["macs_per_exit"], strict=True)):
                writer.writerow([row["arch"], row["num_classes"], row["img_size"], level, *values])
    sections = [f"# JEI-DNN: cost per exit and proxy\n\nCommand: `{command}`\n\nMachine: {machine}\n",
                "## Cost of every exit (spec Sec. e)\n", cost_md]
    if args.proxy:
        proxy = run_proxy(args)
        proxy_md = format_proxy(proxy)
        print(proxy_md)
        per_exit = ", ".join(f"{a:.1f}" for a in proxy["per_exit_acc"])
        sections += ["\n## Proxy on digits (spec Sec. g)\n",
                     f"T2T-ViT-7 at 32x32, backbone trained {args.backbone_epochs} epochs then frozen; ICs warmed up "
                     f"{args.warmup_epochs} epochs; bi-level {args.bilevel_epochs} epochs per lambda (phase switch "
                     f"every {args.bilevel} batches); seed {args.seed}. Per-exit test accuracy after warm-up "
                     f"(exits 0..5, final): {per_exit}.\n", proxy_md, "\n![proxy](jeidnn_proxy.png)"]
        with (out_dir / "jeidnn.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[k for k in proxy["runs"][0] if k != "exits"] + ["exits"])
            writer.writeheader()
            for run in proxy["runs"]:
                writer.writerow({**run, "exits": " ".join(f"{e:.4f}" for e in run["exits"])})
        plot_proxy(proxy, out_dir / "jeidnn_proxy.png")
    sections.append(f"\nWall time: {time.time() - start:.0f} s.")
    (out_dir / "jeidnn.md").write_text("\n".join(sections) + "\n")
    print(f"wrote {out_dir / 'jeidnn.md'} ({time.time() - start:.0f} s)")
    return 0 if ok else 1


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="jeidnn_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper-table", default=str(PAPER_TABLE), help="the cost table (default: %(default)s)")
    parser.add_argument("--output-dir", default="results", help="where the report goes (default: %(default)s)")
    parser.add_argument("--proxy", action=argparse.BooleanOptionalAction, default=True,
                        help="run the proxy experiment on digits (default: on)")
    parser.add_argument("--quick", action="store_true", help="CI-sized proxy: subsets, one epoch per stage")
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.01, 0.1, 0.5, 1.0, 2.0],
                        help="ce_ic_tradeoff values of the sweep (default: %(default)s)")
    parser.add_argument("--backbone-epochs", type=int, default=4,
                        help="backbone training epochs (default: 4: a weaker backbone keeps some samples from "
                             "exiting at the first IC, so lambda has something to trade)")
    parser.add_argument("--warmup-epochs", type=int, default=2, help="IC warm-up epochs (default: 2, the spec's)")
    parser.add_argument("--bilevel-epochs", type=int, default=10,
                        help="bi-level epochs per lambda (default: 10; the spec's 3 leave the gates near their init)")
    parser.add_argument("--bilevel", type=int, default=9,
                        help="batches per phase before GATE/CLASSIFIER switch (default: 6; 200 in the original, "
                             "whose epochs have 780 batches)")
    parser.add_argument("--lr", type=float, default=0.1,
                        help="SGD learning rate of the bi-level stage (default: %(default)s; the original's 0.01 "
                             "is sized for about 100 times more gate updates)")
    parser.add_argument("--timing-samples", type=int, default=100, help="test images timed at batch 1 (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: 0 = torch's default)")
    return parser


def cli(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.quick:
        args.backbone_epochs, args.warmup_epochs, args.bilevel_epochs = 1, 1, 1
        args.lambdas, args.timing_samples = [0.1, 1.0], 10
    return main(args)


if __name__ == "__main__":
    sys.exit(run_cli(cli, prog="jeidnn_table"))
