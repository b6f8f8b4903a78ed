"""PAD-Net (He et al., ACL 2023): parameter and MAC counts reproduced, and the evaluation of a given checkpoint.

Counts (spec ``padnet.md`` Sec. a, e). Every model of ``benchmarks/paper_tables/padnet.yaml`` (static, DY-Conv and
PAD ResNet-50/18/10 and MobileNetV2 x1.0/0.75/0.5/0.35 at 224 px, 1000 classes) is built from
``padnet.dyconv.models`` (on the meta device: no memory, no init) and counted: stored parameters, deployed
parameters at kappa in {0.1, 0.3, 0.5, 1} (``padnet.dyconv.counting.deployed_params``), dynamic parameters
kappa K N, MACs of convolutions + attention (``torch.utils.flop_counter``) and of the kernel aggregation (dense
K N, and kappa K N when only the dynamic positions are aggregated). The ODConv and ODConv-PAD models (``od_models``:
``od_resnet18/50``, ``od_mobilenetv2_050/075/100`` and their ``_pad`` variants, ``padnet/dyconv/odconv.py``) are
counted the same way against the original's ODConv model code. Exit code 1 when a count differs from the table.

Checkpoint (``--weight FILE --config-file YAML``): a checkpoint of ``padnet/dyconv/main.py`` (or of the original)
is validated by that entry point (``main.py -e``) on ``--dataset`` at ``--input-size``, and its deployed parameters,
realised dynamic ratio and MACs are counted from its own masks.

The accuracy claims are measured by ``benchmarks/proxies/padnet.py`` (DY-Conv) and ``padnet_moe.py`` (MoE).
Writes ``padnet.md`` and ``padnet_counts.csv`` to ``--output-dir``::

    python -m benchmarks.padnet_table                # all 18 DY-Conv / PAD and 12 ODConv models
    python -m benchmarks.padnet_table --quick        # the ResNet-50 and MobileNetV2 x1.0 rows (and their ODConv ones)
    python -m benchmarks.padnet_table --quick --weight ckpt/model_best.pth.tar \\
        --config-file padnet/dyconv/configs/digits_pad_resnet10_s0.0625.yml --dataset digits --input-size 16
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.tables import machine_info, markdown_table, write_csv
from common.config import load_yaml
from common.errors import ArgumentParser, UserError, run_cli
from common.flops import count_macs
from padnet.dyconv import main as dyconv_main
from padnet.dyconv.counting import count_model_macs, deployed_params, dynamic_params, param_breakdown, stored_params
from padnet.dyconv.models import build_model
from padnet.dyconv.odconv import (
    od_aggregation_macs,
    od_deployed_params,
    od_dynamic_params,
    od_layers,
    od_param_breakdown,
)

PROG = "padnet_table"
PAPER_TABLE = Path(__file__).resolve().parent / "paper_tables" / "padnet.yaml"
QUICK_VARIANTS = ("static_resnet50", "dy_resnet50", "pad_resnet50", "static_mobilenetv2_w1.0", "dy_mobilenetv2_w1.0",
                  "pad_mobilenetv2_w1.0", "od_resnet50", "od_resnet50_pad", "od_mobilenetv2_100",
                  "od_mobilenetv2_100_pad")
MODEL_KEYS = ("variant", "type", "kwargs", "stored_params", "macs", "aggregation")
OD_MODEL_KEYS = ("variant", "type", "kwargs", "stored_params", "macs")  # the original's aggregation is element-wise
COUNT_COLUMNS = ("variant", "type", "kappa", "stored_params", "stored_params_original", "deployed_params",
                 "deployed_params_original", "dynamic_params", "macs", "macs_original", "aggregation_macs",
                 "sparse_aggregation_macs")


# ---------------------------------------------------------------------------------------------- Part 1: counts
def check_paper_table(table: Any, path: str) -> None:
    """A ``models`` list whose entries have every key of ``MODEL_KEYS`` and a ``kappas`` list, else a UserError."""
    models = table.get("models") if isinstance(table, dict) else None
    if not isinstance(models, list) or not models or not isinstance(table.get("kappas"), list):
        raise UserError(f"paper table {path} needs a non-empty 'models' list and a 'kappas' list")
    for key, keys in (("models", MODEL_KEYS), ("od_models", OD_MODEL_KEYS)):
        rows = table.get(key, [])
        if not isinstance(rows, list):
            raise UserError(f"paper table {path}: '{key}' must be a list")
        for i, row in enumerate(rows):
            missing = [k for k in keys if not isinstance(row, dict) or k not in row]
            if missing:
                raise UserError(f"paper table {path}: {key[:-1].replace('_', ' ')} {i} lacks {', '.join(missing)}")


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


def count_od_row(row: dict[str, Any], kappas: Sequence[float]) -> dict[str, Any]:
    """Our counts of one ODConv table row (:mod:`padnet.dyconv.odconv`), in :func:`count_row`'s layout; ``ok``
    compares the stored parameters, the conv + attention MACs and the deployed parameters."""
    with torch.device("meta"):
        model = build_model(row["type"], **row["kwargs"]).eval()
    aggregation = od_aggregation_macs(model)
    dynamic_kernels = od_param_breakdown(model)["dynamic_kernels"]  # K N
    is_pad = "deployed" in row
    macs = count_macs(model, torch.zeros(1, 3, 224, 224, device="meta")).total - aggregation
    ours = {"stored_params": stored_params(model), "macs": macs, "aggregation": aggregation,
            "dynamic_kernels": dynamic_kernels,
            "deployed": {k: od_deployed_params(model, k) for k in kappas} if is_pad else None,
            "dynamic_params": {k: round(k * dynamic_kernels) for k in kappas} if is_pad else None,
            "sparse_aggregation": {k: round(k * aggregation) for k in kappas} if is_pad else None}
    ok = ours["stored_params"] == row["stored_params"] and ours["macs"] == row["macs"]
    if is_pad:
        ok = ok and all(ours["deployed"][k] == row["deployed"][k] for k in row["deployed"])
    return {"variant": row["variant"], "type": row["type"], "kwargs": row["kwargs"], "table": row, "ours": ours,
            "ok": ok}


def format_counts(rows: Sequence[dict[str, Any]], kappas: Sequence[float]) -> str:
    body = []
    for r in rows:
        ours, table = r["ours"], r["table"]
        deployed = " / ".join(f"{ours['deployed'][k] / 1e6:.2f}" for k in kappas) if ours["deployed"] else "–"
        full = ours.get("dynamic_kernels", ours["aggregation"])  # K N (ODConv with K = 1 aggregates nothing)
        dynamic = " / ".join(f"{ours['dynamic_params'][k] / 1e6:.2f}" for k in kappas) if ours["dynamic_params"] \
            else (f"{full / 1e6:.2f}" if full else "0")
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
    """``padnet_counts.csv`` (read by ``benchmarks/report.py``): one line per model, per kappa for PAD models."""
    lines = []
    for r in rows:
        ours, table = r["ours"], r["table"]
        for k in kappas if ours["deployed"] else [None]:
            def pick(values: dict | None, k: float | None = k) -> Any:
                return values[k] if values and k is not None else ""
            lines.append(dict(zip(COUNT_COLUMNS, [
                r["variant"], r["type"], "" if k is None else k, ours["stored_params"], table["stored_params"],
                pick(ours["deployed"]), pick(table.get("deployed")), pick(ours["dynamic_params"]), ours["macs"],
                table["macs"], ours["aggregation"], pick(ours["sparse_aggregation"])], strict=True)))
    write_csv(path, lines, COUNT_COLUMNS)


# ------------------------------------------------------------------------------------------- checkpoint
def evaluate_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """Validate ``--weight`` with ``padnet/dyconv/main.py -e`` and count the checkpoint's own model: stored and
    deployed parameters, dynamic parameters K D and the realised dynamic ratio D / N, MACs at ``--input-size``."""
    argv = ["-e", "--weight", args.weight, "--config_file", args.config_file, "--dataset", args.dataset,
            "--input-size", str(args.input_size), "-b", str(args.batch_size), "-j", str(args.workers), "--no-mlflow"]
    if args.data:
        argv += ["-d", args.data]
    entry_args = dyconv_main.parse_args(argv)
    with contextlib.redirect_stderr(io.StringIO()):  # the entry point's progress bar
        result = dyconv_main.main(entry_args)
    config = dyconv_main.load_model_config(args.config_file)
    model = build_model(config["type"], **config["kwargs"])
    dyconv_main.load_weight(model, args.weight)
    if od_layers(model):  # an ODConv / ODConv-PAD model
        model.eval()
        aggregation = od_aggregation_macs(model)
        total = count_macs(model, torch.zeros(1, 3, args.input_size, args.input_size)).total
        kernels, dynamic = od_param_breakdown(model)["dynamic_kernels"], od_dynamic_params(model)
        macs = {"macs": total - aggregation, "aggregation_macs": aggregation}
        deployed = od_deployed_params(model)
    else:
        counted = count_model_macs(model, (3, args.input_size, args.input_size))
        kernels, dynamic = param_breakdown(model).dynamic_kernels, dynamic_params(model)
        macs = {"macs": counted.conv_and_attention, "aggregation_macs": counted.aggregation}
        deployed = deployed_params(model)
    return {"weight": args.weight, "model": config["type"], "dataset": args.dataset, "input_size": args.input_size,
            **{k: result["evaluate"][k] for k in ("acc1", "acc5", "loss")}, "temperature": result["temperature"],
            "stored_params": stored_params(model), "deployed_params": deployed, "dynamic_params": dynamic,
            "dynamic_ratio": dynamic / kernels if kernels else 0.0, **macs}


def format_checkpoint(row: dict[str, Any]) -> str:
    return markdown_table(
        ["checkpoint", "model", "data", "top-1 (%)", "top-5 (%)", "loss", "temperature", "stored params",
         "deployed params", "dynamic ratio", "conv+attention MACs (M)", "+ aggregation MACs (M, dense)"],
        [[row["weight"], row["model"], f"{row['dataset']} {row['input_size']} px", f"{row['acc1']:.2f}",
          f"{row['acc5']:.2f}", f"{row['loss']:.4f}", f"{row['temperature']:g}", f"{row['stored_params']:,}",
          f"{row['deployed_params']:,}", f"{row['dynamic_ratio']:.3f}", f"{row['macs'] / 1e6:.3f}",
          f"{row['aggregation_macs'] / 1e6:.3f}"]])


# ------------------------------------------------------------------------------------------------------ main
def run(args: argparse.Namespace) -> int:
    """Count, compare, optionally evaluate, print and write the report; 1 when a count drifts from the table."""
    if not Path(args.paper_table).is_file():
        raise UserError(f"--paper-table {args.paper_table} does not exist (the default is {PAPER_TABLE})")
    table = load_yaml(args.paper_table)
    check_paper_table(table, args.paper_table)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    kappas = [float(k) for k in table["kappas"]]
    models = [m for m in table["models"] if not args.quick or m["variant"] in QUICK_VARIANTS]
    rows = [count_row(m, kappas) for m in models]
    od_rows = [count_od_row(m, kappas) for m in table.get("od_models", [])
               if not args.quick or m["variant"] in QUICK_VARIANTS]
    counts_md = format_counts(rows, kappas)
    print(counts_md)
    od_md = format_counts(od_rows, kappas) if od_rows else ""
    print(od_md)
    rows += od_rows
    ok = all(r["ok"] for r in rows)
    print("counts: " + ("every count of every model reproduced exactly" if ok else "DIFFERENCES above"))
    write_counts_csv(rows, kappas, out_dir / "padnet_counts.csv")
    command = f"python -m benchmarks.padnet_table {shlex.join(args.argv)}".strip()
    sections = [f"# PAD-Net: parameters and MACs\n\nCommand: `{command}`\n\nMachine: {machine_info()}\n",
                "## Parameters and MACs at 224x224, 1000 classes (spec Sec. a, e)\n",
                f"Reference: {table.get('source', args.paper_table)}. Deployed = other + attention + phi + "
                "kappa K N + (1 - kappa) N; dynamic params = kappa K N; MACs at batch 1 (multiply-adds).\n", counts_md,
                "\nThe accuracy claims: `python -m benchmarks.proxies.padnet` (DY-Conv, digits) and "
                "`python -m benchmarks.proxies.padnet_moe` (MoE, SST-2).\n"]
    if od_rows:
        sections += ["\n## ODConv and ODConv-PAD at 224x224, 1000 classes\n",
                     f"Reference: {table.get('od_source', args.paper_table)}. The original aggregates the ODConv "
                     "kernels element-wise, which the counter does not see, so its MACs are conv + attention heads; "
                     "the aggregation column is ours (one matrix product, K N MACs, none for K = 1). With K = 1 "
                     "(the MobileNetV2 default) a PAD layer's K D + (N - D) is N at any kappa.\n", od_md]
    if args.weight:
        checkpoint_md = format_checkpoint(evaluate_checkpoint(args))
        print(checkpoint_md)
        sections += ["\n## Checkpoint evaluated with padnet/dyconv/main.py -e\n", checkpoint_md]
    sections.append(f"\nWall time: {time.time() - start:.0f} s.")
    (out_dir / "padnet.md").write_text("\n".join(sections) + "\n")
    print(f"wrote {out_dir / 'padnet.md'} ({time.time() - start:.0f} s)")
    return 0 if ok else 1


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--paper-table", default=str(PAPER_TABLE), help="the counts table (default: %(default)s)")
    add("--output-dir", default="results", help="where the report goes (default: %(default)s)")
    add("--quick", action="store_true", help="only the ResNet-50 and MobileNetV2 x1.0 rows")
    add("--weight", default="", help="a checkpoint of padnet/dyconv/main.py (or the original's) to evaluate")
    add("--config-file", default="", help="the model config of --weight (padnet/dyconv/configs/*.yml)")
    add("--dataset", default="imagenet", choices=dyconv_main.DATASETS,
        help="validation data of --weight, as main.py's --dataset (default: %(default)s)")
    add("-d", "--data", default="", help="ImageNet root with val/ (for --dataset imagenet)")
    add("--input-size", type=int, default=224, help="image size of the evaluation and the MACs (default: %(default)s)")
    add("-b", "--batch-size", type=int, default=256, help="evaluation batch size (default: %(default)s)")
    add("-j", "--workers", type=int, default=4, help="data loading workers (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run; returns the exit status (1 on a count drift)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    args.argv = argv
    if args.config_file and not args.weight:
        raise UserError("--config-file is read with --weight only (the checkpoint to evaluate)")
    if args.weight and not args.config_file:
        raise UserError("--weight needs --config-file, the model config it was trained with "
                        "(padnet/dyconv/configs/*.yml)")
    if args.weight and not Path(args.weight).is_file():
        raise UserError(f"--weight {args.weight} does not exist")
    return run(args)


if __name__ == "__main__":
    sys.exit(run_cli(main, prog=PROG))
