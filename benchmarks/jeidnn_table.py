"""JEI-DNN (Regol, Chataoui, Coates, ICLR 2024): the cost of every exit, reproduced, and the evaluation of a checkpoint.

For every backbone configuration of ``benchmarks/paper_tables/jeidnn.yaml`` build the model and count the cost of
each exit in the original repository's Mul-Add convention (:func:`jeidnn.cost.original_mul_add_per_exit`, the
x-axis of the paper's figures) and in executed MACs (:func:`jeidnn.cost.executed_macs_per_exit`,
``torch.utils.flop_counter``). Exit code 1 when a count differs from the table. ``--checkpoint FILE`` also
evaluates a JEI-DNN checkpoint written by ``jeidnn/train_dynn.py`` on the test set of ``--dataset``: gated top-1,
average cost (both counters), dataset-level ECE and the share of samples leaving at each exit. Writes
``jeidnn_costs.csv`` and ``jeidnn.md`` to ``--output-dir`` (default ``results``). The paper's accuracy and
calibration claims are measured by ``benchmarks/proxies/jeidnn.py``.

    python -m benchmarks.jeidnn_table
    python -m benchmarks.jeidnn_table --checkpoint checkpoint/checkpoint_digits_t2t_vit_7_confEE/0.1/checkpoint.pth \\
        --dataset digits --img-size 16
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from benchmarks import tables
from common.config import load_yaml
from common.errors import ArgumentParser, UserError, run_cli
from jeidnn import engine, metrics
from jeidnn.cost import executed_macs_per_exit, normalized_costs, original_mul_add_per_exit
from jeidnn.data import DATASETS, IMG_SIZE, NUM_CLASSES, build_jeidnn_datasets
from jeidnn.models import MODELS, create_model
from jeidnn.weights import load_jeidnn_checkpoint

PAPER_TABLE = Path(__file__).resolve().parent / "paper_tables" / "jeidnn.yaml"
CONFIG_KEYS = ("arch", "num_classes", "img_size", "num_params", "mul_add_per_exit", "macs_per_exit")
COST_COLUMNS = ["arch", "num_classes", "img_size", "exit", "mul_add_ours", "mul_add_original", "macs_ours",
                "macs_original"]


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
    return tables.markdown_table(["configuration", "exit", "Mul-Add ours (M)", "Mul-Add original (M)", "normalised",
                                  "MACs ours (M)", "MACs original counter (M)", "status"], body)


def cost_csv_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """``jeidnn_costs.csv``: one row per configuration and exit (``COST_COLUMNS``)."""
    out = []
    for row in rows:
        for level, values in enumerate(zip(row["ours_mul_add"], row["mul_add_per_exit"], row["ours_macs"],
                                           row["macs_per_exit"], strict=True)):
            out.append(dict(zip(COST_COLUMNS, [row["arch"], row["num_classes"], row["img_size"], level, *values],
                                strict=True)))
    return out


def evaluate_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """Gated top-1, cost, ECE and exit shares of a ``train_dynn.py`` checkpoint on the test set of ``--dataset``."""
    img_size = args.img_size or IMG_SIZE[args.dataset]
    model = create_model(args.arch, num_classes=NUM_CLASSES[args.dataset], img_size=img_size)
    load_jeidnn_checkpoint(model, args.checkpoint)
    mul_add = original_mul_add_per_exit(model, img_size)
    costs = engine.CostTables(mul_add=[c / 1e6 for c in mul_add],
                              macs=[c / 1e6 for c in executed_macs_per_exit(model, img_size)],
                              normalized=normalized_costs(mul_add))
    _, _, test_set, _ = build_jeidnn_datasets(args.dataset, args.data_root, img_size)
    loader = DataLoader(test_set, batch_size=args.batch, shuffle=False)
    settings = engine.BilevelSettings(0.0, costs.normalized, pos_weights=[1.0] * model.num_exits)
    out = engine.collect_outputs(model, loader, torch.device("cpu"), settings, desc="test")
    result = engine.evaluate_split(out, costs, args.batch, None)
    result["exits"] = metrics.exit_statistics(out.exit_levels, model.num_exits + 1).tolist()
    result["samples"] = len(out.labels)
    return result


def format_evaluation(args: argparse.Namespace, result: dict[str, Any]) -> str:
    body = [[args.checkpoint, args.dataset, result["samples"], f"{result['gated_acc']:.2f}",
             f"{result['acc_final']:.2f}", f"{result['total_cost']:.3f}", f"{result['total_macs']:.1f}",
             f"{result['gated_ece']:.2f}", " / ".join(f"{e:.2f}" for e in result["exits"])]]
    return tables.markdown_table(["checkpoint", "dataset", "test images", "gated top-1", "final head top-1",
                                  "Mul-Add / image (M, original)", "MACs / image (M)", "ECE x100",
                                  "exit shares (0.., final)"], body)


def main(argv: Sequence[str] | None = None) -> int:
    """Count, compare with the paper's table (exit 1 on drift), evaluate ``--checkpoint`` if given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    if not Path(args.paper_table).is_file():
        raise UserError(f"--paper-table {args.paper_table} does not exist (the default is {PAPER_TABLE})")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise UserError(f"--checkpoint {args.checkpoint} does not exist; give a checkpoint.pth or best.pth written by "
                        "jeidnn/train_dynn.py")
    if args.batch < 1:
        raise UserError(f"--batch must be at least 1, got {args.batch}")
    if args.img_size is not None and (args.img_size < 16 or args.img_size % 16):
        raise UserError(f"--img-size must be a positive multiple of 16 (T2T-ViT's token grid), got {args.img_size}")
    table = load_yaml(args.paper_table)
    check_paper_table(table, args.paper_table)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rows = cost_rows(table)
    cost_md = format_cost_table(rows)
    print(cost_md)
    ok = all(row["ok"] for row in rows)
    print("cost table: " + ("every exit of every configuration reproduced exactly" if ok else "DIFFERENCES above"))
    tables.write_csv(out_dir / "jeidnn_costs.csv", cost_csv_rows(rows), COST_COLUMNS)
    sections = [f"# JEI-DNN: cost per exit\n\nCommand: `python -m benchmarks.jeidnn_table {shlex.join(argv)}`\n",
                f"Machine: {tables.machine_info()}\n", "## Cost of every exit\n", cost_md]
    if args.checkpoint:
        evaluation = format_evaluation(args, evaluate_checkpoint(args))
        print(evaluation)
        sections += ["\n## Checkpoint evaluation (test set; ECE: 15 equal-width bins, whole set)\n", evaluation]
    sections.append(f"\nWall time: {time.time() - start:.0f} s.")
    (out_dir / "jeidnn.md").write_text("\n".join(sections) + "\n")
    print(f"wrote {out_dir / 'jeidnn.md'} ({time.time() - start:.0f} s)")
    return 0 if ok else 1


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="jeidnn_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper-table", default=str(PAPER_TABLE), help="the cost table (default: %(default)s)")
    parser.add_argument("--output-dir", default="results", help="where the report goes (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="accepted for run_all; the counts take seconds anyway")
    parser.add_argument("--checkpoint", default=None,
                        help="a jeidnn/train_dynn.py checkpoint (checkpoint.pth or best.pth) to evaluate on test")
    parser.add_argument("--dataset", default="digits", choices=list(DATASETS),
                        help="dataset of --checkpoint (default: %(default)s)")
    parser.add_argument("--arch", default="t2t_vit_7", choices=list(MODELS),
                        help="backbone of --checkpoint (default: %(default)s)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="input size of --checkpoint, a multiple of 16 (default: the dataset's, 32 for digits)")
    parser.add_argument("--data-root", default="data", help="torchvision files of --dataset (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=100, help="evaluation batch size (default: %(default)s)")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="jeidnn_table"))
