"""PAD-Net (He et al., ACL 2023): parameter and MAC counts reproduced, and the small-scale proxy experiments.

Part 1 (the counts, spec ``padnet.md`` Sec. a, e). Every model of ``benchmarks/paper_tables/padnet.yaml`` (static,
DY-Conv and PAD ResNet-50/18/10 and MobileNetV2 x1.0/0.75/0.5/0.35 at 224 px, 1000 classes) is built from
``padnet.dyconv.models`` (on the meta device: no memory, no init) and counted: stored parameters, deployed
parameters at kappa in {0.1, 0.3, 0.5, 1} (``padnet.dyconv.counting.deployed_params``), dynamic parameters
kappa K N, MACs of convolutions + attention (``torch.utils.flop_counter``) and of the kernel aggregation (dense
K N, and kappa K N when only the dynamic positions are aggregated). Exit code 1 when a count differs from the table.

Part 2 (``--proxy``, on by default; spec Sec. g). On the embedded digits at 32 px, a ResNet-10 at 1/16 width trained
with :mod:`padnet.dyconv.engine` (SGD, cosine lr, label smoothing 0.1, temperature 30 -> 1 over the first sixth of
training): static vs fully dynamic DY-Conv (kappa = 1) vs PAD with SNIP-IMP at several kappa vs PAD with a random
partition (the ``rand`` scorer) at the same kappa; validation top-1 as mean +- std over seeds.

Part 3 (``--moe``, on by default; skipped when ``../shared/data/glue/SST-2`` is absent). MoE vs PAD-MoE (kappa 0.5,
SNIP-IMP) on a few hundred real SST-2 sentences with the packaged MiniLM encoder, through
``padnet.moe.run_glue_pad.main``; dev accuracy as mean +- std over seeds.

Writes ``padnet.md``, ``padnet_counts.csv``, ``padnet.csv``, ``padnet_moe.csv`` and ``padnet_proxy.png`` to
``--output-dir``::

    python -m benchmarks.padnet_table                 # everything (about 10 minutes on one CPU thread)
    python -m benchmarks.padnet_table --quick         # CI-sized: x1.0 / ResNet-50 counts, short proxy, no MoE
    python -m benchmarks.padnet_table --no-proxy --no-moe   # the counts only
"""

from __future__ import annotations

import argparse
import csv
import platform
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from benchmarks.tables import markdown_table, write_csv
from common.config import load_yaml
from common.data import build_dataset, build_loader
from common.distributed import seed_everything
from common.errors import ArgumentParser, UserError, run_cli
from padnet.dyconv.counting import count_model_macs, deployed_params, param_breakdown, stored_params
from padnet.dyconv.engine import label_smoothing_loss, train_one_epoch, validate
from padnet.dyconv.main import dynamic_ratios, prune_loader, run_mode_partition
from padnet.dyconv.models import build_model

PROG = "padnet_table"
PAPER_TABLE = Path(__file__).resolve().parent / "paper_tables" / "padnet.yaml"
SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "SST-2"
QUICK_VARIANTS = ("static_resnet50", "dy_resnet50", "pad_resnet50", "static_mobilenetv2_w1.0", "dy_mobilenetv2_w1.0",
                  "pad_mobilenetv2_w1.0")
MODEL_KEYS = ("variant", "type", "kwargs", "stored_params", "macs", "aggregation")


def _mean_std(values: Sequence[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {std:.2f}"


# ---------------------------------------------------------------------------------------------- Part 1: counts
def check_paper_table(table: Any, path: str) -> None:
    """A ``models`` list whose entries have every key of ``MODEL_KEYS`` and a ``kappas`` list, else a UserError."""
    models = table.get("models") if isinstance(table, dict) else None
    if not isinstance(models, list) or not models or not isinstance(table.get("kappas"), list):
        raise UserError(f"paper table {path} needs a non-empty 'models' list and a 'kappas' list")
    for i, row in enumerate(models):
        missing = [k for k in MODEL_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            raise UserError(f"paper table {path}: model {i} lacks {', '.join(missing)}")


def count_row(row: dict[str, Any], kappas: Sequence[float]) -> dict[str, Any]:
    """Our counts of one table row; ``ok`` is False when any differs from the row."""
    with torch.device("meta"):
        model = build_model(row["type"], **row["kwargs"])
    macs = count_model_macs(model)
    dynamic_kernels = param_breakdown(model).dynamic_kernels  # K N
    is_pad = "deployed" in row
    ours = {"stored_params": stored_params(model), "macs": macs.conv_and_attention, "aggregation": macs.aggregation,
            "deployed": {k: deployed_params(model, k) for k in kappas} if is_pad else None,
            "dynamic_params": {k: round(k * dynamic_kernels) for k in kappas} if is_pad else None,
            "sparse_aggregation": {k: round(k * macs.aggregation) for k in kappas} if is_pad else None}
    ok = all(ours[k] == row[k] for k in ("stored_params", "macs", "aggregation"))
    if is_pad:
        ok = ok and all(ours["deployed"][k] == row["deployed"][k] for k in row["deployed"])
    return {"variant": row["variant"], "type": row["type"], "kwargs": row["kwargs"], "table": row, "ours": ours,
            "ok": ok}


def format_counts(rows: Sequence[dict[str, Any]], kappas: Sequence[float]) -> str:
    body = []
    for r in rows:
        ours, table = r["ours"], r["table"]
        deployed = " / ".join(f"{ours['deployed'][k] / 1e6:.2f}" for k in kappas) if ours["deployed"] else "–"
        dynamic = " / ".join(f"{ours['dynamic_params'][k] / 1e6:.2f}" for k in kappas) if ours["dynamic_params"] \
            else (f"{ours['aggregation'] / 1e6:.2f}" if ours["aggregation"] else "0")
        aggregation = f"{ours['aggregation'] / 1e6:.2f}"
        if ours["sparse_aggregation"]:
            aggregation += " dense; " + " / ".join(f"{ours['sparse_aggregation'][k] / 1e6:.2f}" for k in kappas)
        body.append([r["variant"], f"{ours['stored_params']:,}", f"{table['stored_params']:,}", deployed, dynamic,
                     f"{ours['macs'] / 1e6:.1f}", f"{table['macs'] / 1e6:.1f}", aggregation,
                     "ok" if r["ok"] else "DIFFERS"])
    ks = "/".join(f"{k:g}" for k in kappas)
    return markdown_table(["model", "stored params (ours)", "stored params (original code)",
                      f"deployed params (M) kappa {ks}", f"dynamic params (M) kappa {ks}",
                      "conv+attention MACs (M, ours)", "MACs (M, original code)",
                      f"+ aggregation MACs (M; PAD sparse at kappa {ks})", "status"], body)


def write_counts_csv(rows: Sequence[dict[str, Any]], kappas: Sequence[float], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant", "type", "kappa", "stored_params", "stored_params_original", "deployed_params",
                         "deployed_params_original", "dynamic_params", "macs", "macs_original", "aggregation_macs",
                         "sparse_aggregation_macs"])
        for r in rows:
            ours, table = r["ours"], r["table"]
            for k in kappas if ours["deployed"] else [None]:
                def pick(values: dict | None, k: float | None = k) -> Any:
                    return values[k] if values and k is not None else ""
                writer.writerow([r["variant"], r["type"], "" if k is None else k, ours["stored_params"],
                                 table["stored_params"], pick(ours["deployed"]), pick(table.get("deployed")),
                                 pick(ours["dynamic_params"]), ours["macs"], table["macs"], ours["aggregation"],
                                 pick(ours["sparse_aggregation"])])


# ----------------------------------------------------------------------------------------------- Part 2: proxy
def proxy_arms(kappas: Sequence[float]) -> list[dict[str, Any]]:
    """Static, fully dynamic, PAD (SNIP-IMP) and PAD (random partition) at each kappa (spec Sec. g)."""
    arms = [{"arm": "static", "type": "resnet10", "kappa": None, "pruner": None},
            {"arm": "DY-Conv (kappa=1)", "type": "DyResNet10", "kappa": 1.0, "pruner": None}]
    for pruner, name in (("snip", "PAD SNIP-IMP"), ("rand", "PAD random")):
        arms += [{"arm": f"{name} kappa={k:g}", "type": "DyResNet10_PAD", "kappa": k, "pruner": pruner}
                 for k in kappas]
    return arms


def _proxy_args(args: argparse.Namespace, arm: dict[str, Any], seed: int) -> SimpleNamespace:
    """The training flags of padnet/dyconv/main.py for one proxy run."""
    return SimpleNamespace(epochs=args.epochs, temp_epoch=max(1, args.epochs // 6), temp_init=30.0, lr=args.lr,
                           lr_decay="cos", step=30, schedule=[30, 60, 90], gamma=0.1, warmup=False, mixup=0.0,
                           seed=seed, pruner=arm["pruner"], sparsity=arm["kappa"], prune_epochs=1,
                           compression_schedule="exponential", mask_scope="global", prune_train_mode=False,
                           prune_dataset_ratio=args.prune_batches, batch_size=args.batch_size, workers=0)


def run_proxy_arm(arm: dict[str, Any], seed: int, data: tuple, args: argparse.Namespace) -> dict[str, Any]:
    """Train one arm for one seed; returns the final validation metrics and the model's parameter counts."""
    train_set, val_set = data
    device = torch.device("cpu")
    run_args = _proxy_args(args, arm, seed)
    seed_everything(seed, per_rank=False)
    kwargs = {"num_classes": 10, "scale": args.scale}
    if arm["type"] == "DyResNet10_PAD":
        kwargs["Lambda"] = "both"
    model = build_model(arm["type"], **kwargs)
    criterion = label_smoothing_loss(0.1, 10)
    realised = None
    if arm["pruner"] is not None:
        run_mode_partition(model, criterion, prune_loader(train_set, run_args), run_args)
        realised = dynamic_ratios(model)["overall"]
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=0.9, weight_decay=1e-4)
    train_loader = build_loader(train_set, args.batch_size, train=True, seed=seed)
    val_loader = build_loader(val_set, 256, train=False)
    start = time.time()
    for epoch in range(args.epochs):
        seed_everything(seed + epoch, per_rank=False)
        train_loader.generator.manual_seed(seed + epoch)
        train_one_epoch(model, criterion, optimizer, train_loader, device, epoch, run_args)
    val = validate(model, criterion, val_loader, device)
    return {"arm": arm["arm"], "seed": seed, "acc1": val["acc1"], "loss": val["loss"], "kappa_realised": realised,
            "stored_params": stored_params(model), "deployed_params": deployed_params(model),
            "seconds": time.time() - start}


def run_proxy(args: argparse.Namespace) -> list[dict[str, Any]]:
    data = (build_dataset("digits", split="train", img_size=32, transform=None),
            build_dataset("digits", split="val", img_size=32, transform=None))
    runs = []
    for arm in proxy_arms(args.kappas):
        for seed in range(args.seeds):
            run = run_proxy_arm(arm, seed, data, args)
            print(f"  {run['arm']:<26} seed {seed}: top-1 {run['acc1']:.2f}  ({run['seconds']:.0f} s)", flush=True)
            runs.append(run)
    return runs


def format_proxy(runs: Sequence[dict[str, Any]]) -> str:
    body = []
    for arm in dict.fromkeys(r["arm"] for r in runs):
        group = [r for r in runs if r["arm"] == arm]
        kappa = group[0]["kappa_realised"]
        body.append([arm, _mean_std([r["acc1"] for r in group]), _mean_std([r["loss"] for r in group]),
                     "–" if kappa is None else f"{kappa:.3f}", f"{group[0]['stored_params']:,}",
                     f"{group[0]['deployed_params']:,}", len(group)])
    return markdown_table(["arm", "val top-1 (%)", "val loss", "dynamic ratio (realised)", "stored params",
                      "deployed params", "seeds"], body)


def plot_proxy(runs: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    for family, marker in (("static", "s"), ("DY-Conv", "D"), ("PAD SNIP-IMP", "o-"), ("PAD random", "^--")):
        points = []
        for arm in arms:
            if arm.startswith(family):
                group = [r for r in runs if r["arm"] == arm]
                acc = [r["acc1"] for r in group]
                points.append((group[0]["deployed_params"], statistics.mean(acc),
                               statistics.stdev(acc) if len(acc) > 1 else 0.0))
        if points:
            points.sort()
            ax.errorbar([p[0] / 1e3 for p in points], [p[1] for p in points], yerr=[p[2] for p in points],
                        fmt=marker, capsize=3, label=family)
    ax.set_xlabel("deployed parameters (thousands)")
    ax.set_ylabel("digits val top-1 (%), mean ± std over seeds")
    ax.set_title("PAD-Net proxy: ResNet-10 (1/16 width) on digits 32x32")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------- Part 3: MoE
def run_moe(args: argparse.Namespace) -> list[dict[str, Any]]:
    """MoE vs PAD-MoE on real SST-2 with the packaged MiniLM encoder (``run_glue_pad.main``), per seed."""
    from padnet.moe.run_glue_pad import main as run_glue_pad

    runs = []
    for name, extra in (("MoE", ["--use_moe", "MoE"]),
                        ("PAD-MoE kappa=0.5", ["--use_moe", "PadMoE", "--sparsity", "0.5", "--pruner", "snip"])):
        for seed in range(args.moe_seeds):
            with tempfile.TemporaryDirectory() as out:
                argv = ["--task_name", "sst2", "--data_dir", str(args.sst2), "--do_train", "--do_eval",
                        "--max_train_samples", str(args.moe_train), "--max_eval_samples", str(args.moe_eval),
                        "--max_seq_length", "64", "--per_device_train_batch_size", "16", "--num_train_epochs", "1",
                        "--learning_rate", str(args.moe_lr), "--n_experts", "4", "--k", "2", "--seed", str(seed),
                        "--length", "2", "--save_strategy", "no", "--output_dir", out, "--no_mlflow",
                        "--report_to", "none", *extra]
                start = time.time()
                metrics = run_glue_pad(argv)
            acc = next(v for k, v in metrics.get("eval", metrics).items() if k.endswith("accuracy"))
            acc = 100 * acc if acc <= 1 else acc
            print(f"  {name:<18} seed {seed}: SST-2 dev accuracy {acc:.2f}  ({time.time() - start:.0f} s)",
                  flush=True)
            runs.append({"arm": name, "seed": seed, "accuracy": acc, "seconds": time.time() - start})
    return runs


def format_moe(runs: Sequence[dict[str, Any]]) -> str:
    body = [[arm, _mean_std([r["accuracy"] for r in runs if r["arm"] == arm]),
             sum(r["arm"] == arm for r in runs)] for arm in dict.fromkeys(r["arm"] for r in runs)]
    return markdown_table(["arm", "SST-2 dev accuracy (%)", "seeds"], body)


# ------------------------------------------------------------------------------------------------------ main
def run(args: argparse.Namespace) -> int:
    """Run the chosen parts, print and write the report; 1 when a count drifts from the table."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.paper_table).is_file():
        raise UserError(f"--paper-table {args.paper_table} does not exist (the default is {PAPER_TABLE})")
    table = load_yaml(args.paper_table)
    check_paper_table(table, args.paper_table)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    command = f"python -m benchmarks.padnet_table {shlex.join(args.argv)}".strip()
    machine = f"{platform.platform()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    start = time.time()
    kappas = [float(k) for k in table["kappas"]]
    models = [m for m in table["models"] if not args.quick or m["variant"] in QUICK_VARIANTS]
    rows = [count_row(m, kappas) for m in models]
    counts_md = format_counts(rows, kappas)
    print(counts_md)
    ok = all(r["ok"] for r in rows)
    print("counts: " + ("every count of every model reproduced exactly" if ok else "DIFFERENCES above"))
    write_counts_csv(rows, kappas, out_dir / "padnet_counts.csv")
    sections = [f"# PAD-Net: parameters, MACs and proxy experiments\n\nCommand: `{command}`\n\nMachine: {machine}\n",
                "## Parameters and MACs at 224x224, 1000 classes (spec Sec. a, e)\n",
                f"Reference: {table.get('source', args.paper_table)}. Deployed = other + attention + phi + "
                "kappa K N + (1 - kappa) N; dynamic params = kappa K N; MACs at batch 1 (multiply-adds).\n", counts_md]
    if args.proxy:
        print(f"proxy: {len(proxy_arms(args.kappas))} arms x {args.seeds} seeds, {args.epochs} epochs each")
        runs = run_proxy(args)
        proxy_md = format_proxy(runs)
        print(proxy_md)
        write_csv(out_dir / "padnet.csv", runs)
        plot_proxy(runs, out_dir / "padnet_proxy.png")
        sections += ["\n## Proxy on digits (spec Sec. g)\n",
                     f"ResNet-10 at width scale {args.scale} on the embedded digits (1,437 train / 360 val, 32x32), "
                     f"{args.epochs} epochs, batch {args.batch_size}, SGD lr {args.lr} cosine, momentum 0.9, wd 1e-4, "
                     f"label smoothing 0.1, temperature 30 -> 1 over {max(1, args.epochs // 6)} epoch(s); IMP "
                     f"(1 round, global) on {args.prune_batches} batches before training; seeds 0..{args.seeds - 1}. "
                     "PAD uses Lambda both. Static = the static ResNet-10 (model/resnet.py) at the same scale, whose "
                     "stem is narrowed too (4 instead of 64 channels).\n",
                     proxy_md, "\n![proxy](padnet_proxy.png)"]
    if args.moe:
        if not Path(args.sst2).is_dir():
            print(f"MoE part skipped: {args.sst2} is absent")
            sections.append(f"\n## MoE vs PAD-MoE on SST-2\n\nSkipped: {args.sst2} is absent.")
        else:
            moe_runs = run_moe(args)
            moe_md = format_moe(moe_runs)
            print(moe_md)
            write_csv(out_dir / "padnet_moe.csv", moe_runs)
            sections += ["\n## MoE vs PAD-MoE on SST-2 (spec Sec. g)\n",
                         f"The packaged MiniLM encoder (all-MiniLM-L6-v2) with both FFN linears of every layer turned "
                         f"into 4 upcycled experts (top-2), the first {args.moe_train} SST-2 training sentences, 1 "
                         f"epoch at lr {args.moe_lr:g} (AdamW, linear decay), batch 16, 64 tokens, the first "
                         f"{args.moe_eval} dev sentences; PAD-MoE at kappa 0.5 via SNIP-IMP; seeds "
                         f"0..{args.moe_seeds - 1}.\n", moe_md]
    sections.append(f"\nWall time: {time.time() - start:.0f} s.")
    (out_dir / "padnet.md").write_text("\n".join(sections) + "\n")
    print(f"wrote {out_dir / 'padnet.md'} ({time.time() - start:.0f} s)")
    return 0 if ok else 1


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--paper-table", default=str(PAPER_TABLE), help="the counts table (default: %(default)s)")
    add("--output-dir", default="results", help="where the report goes (default: %(default)s)")
    add("--quick", action="store_true",
        help="CI-sized: the ResNet-50 / MobileNetV2 x1.0 counts, 2 proxy epochs, 2 seeds, kappa 0.3 and 0.5; no "
             "MoE part unless --moe (then 64 sentences, 1 seed)")
    add("--proxy", action=argparse.BooleanOptionalAction, default=True, help="run the digits proxy (default: on)")
    add("--moe", action=argparse.BooleanOptionalAction, default=None,
        help="run MoE vs PAD-MoE on SST-2 when --sst2 exists (default: on, off with --quick)")
    add("--kappas", type=float, nargs="+", default=[0.1, 0.3, 0.5], help="proxy PAD dynamic ratios (default: "
                                                                          "0.1 0.3 0.5)")
    add("--epochs", type=int, default=4, help="proxy training epochs (default: %(default)s)")
    add("--seeds", type=int, default=3, help="proxy seeds (default: %(default)s)")
    add("--scale", type=float, default=0.0625, help="proxy ResNet-10 width scale (default: %(default)s)")
    add("--batch-size", type=int, default=64, help="proxy batch size (default: %(default)s)")
    add("--lr", type=float, default=0.1, help="proxy learning rate (default: %(default)s)")
    add("--prune-batches", type=int, default=4, help="IMP batches of --batch-size images (default: %(default)s)")
    add("--sst2", default=str(SST2), help="SST-2 folder with train.tsv / dev.tsv (default: %(default)s)")
    add("--moe-train", type=int, default=256, help="SST-2 training sentences (default: %(default)s)")
    add("--moe-eval", type=int, default=256, help="SST-2 dev sentences (default: %(default)s)")
    add("--moe-lr", type=float, default=3e-4,
        help="MoE learning rate (default: %(default)s; 5e-5, HF's default, leaves both arms at the majority class "
             "after the few steps here)")
    add("--moe-seeds", type=int, default=2, help="MoE seeds (default: %(default)s)")
    add("--threads", type=int, default=0, help="torch threads (default: 0 = torch's default)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (``--quick`` shrinks the runs) and run; returns the exit status (1 on a count drift)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    args.argv = argv
    if args.quick:
        args.epochs, args.seeds, args.kappas = 2, 2, [0.3, 0.5]
        args.moe_train, args.moe_eval, args.moe_seeds = 64, 64, 1
    if args.moe is None:
        args.moe = not args.quick
    for flag, value in (("--epochs", args.epochs), ("--seeds", args.seeds), ("--moe-seeds", args.moe_seeds)):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    if any(not 0 < k <= 1 for k in args.kappas):
        raise UserError(f"--kappas must lie in (0, 1], got {args.kappas}")
    return run(args)


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
