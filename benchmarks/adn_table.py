"""ADN (Kang & Lee, NeurIPS 2024): the README model zoo's GFLOPs, reproduced, and the evaluation of a checkpoint.

For every row of ``benchmarks/paper_tables/adn.yaml`` (the ``wchkang/depth`` README model zoo) build the model,
count its GFLOPs for the row's skip configuration under the counter the README used
(:func:`adn.flops.count_readme_flops`) and the MACs that really execute (:func:`adn.flops.count_executed_macs`),
and compare with the paper. Exit code 1 when a row is off by more than the table's tolerance (its known
discrepancies are reported instead). ``--weights FILE --model NAME --data-path DIR`` also evaluates a checkpoint
on ImageNet val to fill the "our Acc@1" column.

Writes ``adn_flops.csv`` and ``adn.md`` to ``--output-dir``. The paper's claims on real data (accuracy of the
sub-networks against individually trained ones) are measured by the proxy, ``python -m benchmarks.proxies.adn``.

    python -m benchmarks.adn_table
    python -m benchmarks.adn_table --models resnet50 mobilenet_v2
    python -m benchmarks.adn_table --weights W.pth --model resnet50 --data-path /path/to/imagenet
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
from torch import nn
from tqdm import tqdm

from adn.engine import evaluate
from adn.flops import count_executed_macs, count_readme_flops, readme_convention
from adn.models import MODELS, create_model
from benchmarks.tables import machine_info, markdown_table, write_csv
from common.config import load_yaml
from common.errors import ArgumentParser, UserError, run_cli

PAPER_TABLE = Path(__file__).resolve().parent / "paper_tables" / "adn.yaml"
ROW_KEYS = ("model", "arch", "variant", "skip_cfg", "gflops", "acc1", "source")
FLOPS_COLUMNS = ["model", "arch", "variant", "skip_cfg", "counter", "paper_gflops", "our_gflops", "rel_diff",
                 "executed_gmacs", "paper_acc1", "our_acc1", "status", "note"]
TABLE_HEAD = ["model", "skip-cfg", "paper GFLOPs", "ours", "rel. diff", "executed GMACs", "paper Acc@1", "our Acc@1",
              "counter", "status"]


class AdnTableError(UserError):
    """A bad flag, a missing file, or a malformed paper table."""


# --------------------------------------------------------------------------------------------------------------
# The README model zoo
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


def table_cells(results: Sequence[dict[str, Any]]) -> list[list[str]]:
    """The rows of :data:`TABLE_HEAD`, formatted."""
    return [[r["model"], r["skip_cfg"], f"{r['paper_gflops']:.2f}", f"{r['our_gflops']:.4f}",
             f"{100 * r['rel_diff']:+.2f}%", f"{r['executed_gmacs']:.4f}", f"{r['paper_acc1']}",
             "-" if r["our_acc1"] is None else f"{r['our_acc1']:.2f}", r["counter"], r["status"]] for r in results]


def format_flops_table(results: Sequence[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table (what is printed)."""
    body = table_cells(results)
    widths = [max(len(str(x)) for x in col) for col in zip(TABLE_HEAD, *body, strict=True)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*TABLE_HEAD), fmt.format(*("-" * w for w in widths))]
                     + [fmt.format(*b) for b in body])


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


def write_markdown(path: Path, command: str, flops: Sequence[dict[str, Any]], table: dict[str, Any],
                   seconds: float) -> None:
    """``adn.md``: the command, the machine, and the README model zoo against our counts."""
    lines = ["# ADN: README model zoo", "", f"Command: `{command}`", "",
             f"Machine: {machine_info()}. Wall time: {seconds:.0f} s.", "",
             "## GFLOPs of the README model zoo", "",
             f"Tolerance: {table['tolerance']['gflops_abs']} G absolute. `ours` uses the README's counter per model "
             "(adn/flops.py); `executed GMACs` are the multiply-adds that actually run (common.flops).", "",
             markdown_table(TABLE_HEAD, table_cells(flops)), ""]
    notes = [f"- {r['model']} {r['skip_cfg']}: {r['note']}" for r in flops if r["note"]]
    if notes:
        lines += ["Known discrepancies (reported, not failed):", "", *notes, ""]
    lines += ["The paper's claims on real data are measured by `python -m benchmarks.proxies.adn` "
              "(`adn_proxy.md`).", ""]
    path.write_text("\n".join(lines))


def check_args(args: argparse.Namespace) -> None:
    """``--weights`` needs ``--model`` and ``--data-path`` and an existing file; they make no sense alone."""
    if args.weights is not None:
        if args.model is None or args.data_path is None:
            raise AdnTableError("--weights needs --model NAME and --data-path DIR (ImageNet with a val/ folder)")
        if not Path(args.weights).is_file():
            raise AdnTableError(f"--weights {args.weights}: no such file")
    elif args.model is not None or args.data_path is not None:
        raise AdnTableError("--model and --data-path only make sense with --weights FILE")


def main(argv: Sequence[str] | None = None) -> int:
    """Count, compare, print and write the tables; return 1 when a paper row is out of tolerance."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    check_args(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    table = load_paper_table(args.paper_table)
    archs = _table_archs(table, args.models)
    if args.weights is not None and args.model not in archs:
        raise AdnTableError(f"--model {args.model} is not among the table's models: {', '.join(archs)}")
    accuracies = evaluate_weights(args, table) if args.weights is not None else None
    flops = compare_rows(table, count_table_flops(table, archs), accuracies)
    seconds = time.time() - start
    print(format_flops_table(flops))
    for r in flops:
        if r["status"] != "ok":
            print(f"{r['status']}: {r['model']} {r['skip_cfg']}: paper {r['paper_gflops']:.2f}, ours "
                  f"{r['our_gflops']:.4f}{' (' + r['note'] + ')' if r['note'] else ''}")
    write_csv(output_dir / "adn_flops.csv", flops, FLOPS_COLUMNS)
    write_markdown(output_dir / "adn.md", "python -m benchmarks.adn_table " + shlex.join(argv), flops, table,
                   seconds)
    print(f"wrote {output_dir / 'adn_flops.csv'} and {output_dir / 'adn.md'} ({seconds:.0f} s)")
    failures = sum(r["status"] == "FAIL" for r in flops)
    if failures:
        tol = table["tolerance"]["gflops_abs"]
        print(f"{failures} row(s) differ from the paper by more than {tol} GFLOPs", file=sys.stderr)
        return 1
    return 0


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="adn_table", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--paper-table", default=str(PAPER_TABLE), help="the paper-table YAML to compare with")
    parser.add_argument("--models", nargs="+", default=None, metavar="ARCH",
                        help="these archs only (default: every model of the table)")
    parser.add_argument("--quick", action="store_true",
                        help="accepted for run_all; the table is the same (it takes well under 30 s)")
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
    parser.add_argument("--output-dir", default="results", help="where adn_flops.csv and adn.md go")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="adn_table"))
