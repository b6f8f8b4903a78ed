"""DyT (Zhao et al., NeurIPS 2024): the parameter and FLOPs columns reproduced, and a given checkpoint evaluated.

For every row of ``benchmarks/paper_tables/dyt.yaml`` build the real ViT-B/16 (shapes only, on the meta device)
and count its parameters and its FLOPs with the original accounting (:mod:`dyt.flops`: complete model and uniform
activation rates). Exit code 1 when a number drifts from the table. Writes ``dyt_params_flops.csv`` and ``dyt.md``
to ``--output-dir``.

With ``--checkpoint PATH`` a checkpoint written by ``dyt/main_image.py`` is also evaluated through that entry
point (``--eval --eval_ckpt PATH`` plus the model and data flags given in ``--eval-args``): top-1, the realised
activation rate and GFLOPs per image go to ``dyt_checkpoint.csv`` and ``dyt.md``. The paper's claims on data are
measured by ``benchmarks/proxies/dyt.py``; the gather-vs-masked wall-clock by ``benchmarks/speed.py``.

    python -m benchmarks.dyt_table                 # the parameter/FLOPs table (a few seconds)
    python -m benchmarks.dyt_table --checkpoint out/final_checkpoint.pth \
        --eval-args "--dataset digits --model vit_digits --device cpu --ffn_num 8"
"""

from __future__ import annotations

import contextlib
import io
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.tables import machine_info, markdown_table, write_csv
from common.config import load_yaml
from common.errors import ArgumentParser, UserError, run_cli
from dyt import main_image
from dyt.flops import complete_flops, uniform_rate_flops
from dyt.models import build_model

PAPER_TABLE = Path(__file__).resolve().parent / "paper_tables" / "dyt.yaml"
MODEL_KEYS = ("name", "ffn_num", "dispatch", "num_classes", "gflops")
COUNT_KEYS = ("num_params", "adapter_params", "dispatcher_params", "trainable_params")


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


# ------------------------------------------------------------------------------------------- checkpoint
def evaluate_checkpoint(path: str, eval_args: str) -> dict[str, Any]:
    """``dyt/main_image.py --eval --eval_ckpt path`` with ``eval_args`` (model and data flags), MLflow off; its
    log is kept out of this script's output. Returns one row: top-1, top-5, activation rate, GFLOPs, images."""
    if not Path(path).is_file():
        raise UserError(f"--checkpoint {path} does not exist; pass a checkpoint written by dyt/main_image.py")
    argv = [*shlex.split(eval_args), "--eval", "--eval_ckpt", path, "--no-mlflow", "--output_dir", ""]
    with contextlib.redirect_stdout(io.StringIO()):
        stats = main_image.main(main_image.parse_args(argv))["test"]
    return {"checkpoint": path, "eval_args": eval_args, "acc1": round(stats["acc1"], 2),
            "acc5": round(stats["acc5"], 2), "activation_rate": round(stats.get("activation_rate", 1.0), 4),
            "gflops": round(stats.get("flops", float("nan")), 6), "images": stats["samples"]}


# ------------------------------------------------------------------------------------------------------ main
def main(argv: Sequence[str] | None = None) -> int:
    """Count, compare with the paper (exit 1 on drift), evaluate ``--checkpoint`` if given, write the report."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    if not Path(args.paper_table).is_file():
        raise UserError(f"--paper-table {args.paper_table} does not exist (the default is {PAPER_TABLE})")
    table = load_yaml(args.paper_table)
    check_paper_table(table, args.paper_table)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    rows = table_rows(table)
    table_md = format_table(rows)
    print(table_md)
    ok = all(row["ok"] for row in rows)
    print("params/FLOPs table: " + ("every number reproduced" if ok else "DIFFERENCES above"))
    write_csv(out_dir / "dyt_params_flops.csv", rows)
    sections = [f"# DyT: parameters and FLOPs\n\nCommand: `python -m benchmarks.dyt_table {shlex.join(argv)}`\n\n"
                f"Machine: {machine_info()}\n",
                "## Parameters and FLOPs of ViT-B/16 (spec Sec. a, e)\n",
                "FLOPs = multiply-adds as the original counts them (fvcore: Linear, Conv, attention matmuls, "
                "LayerNorm 5/element), DyT at a uniform activation rate r = base + 12 table[round(196 r) + 1].\n",
                table_md]
    if args.checkpoint:
        row = evaluate_checkpoint(args.checkpoint, args.eval_args)
        write_csv(out_dir / "dyt_checkpoint.csv", [row])
        checkpoint_md = markdown_table(list(row), [list(row.values())])
        print(checkpoint_md)
        sections += ["\n## Checkpoint evaluated with `dyt/main_image.py --eval`\n", checkpoint_md]
    sections.append(f"\nWall time: {time.time() - start:.1f} s.")
    (out_dir / "dyt.md").write_text("\n".join(sections) + "\n")
    print(f"wrote {out_dir / 'dyt.md'} ({time.time() - start:.1f} s)")
    return 0 if ok else 1


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="dyt_table", description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper-table", default=str(PAPER_TABLE), help="the parameter/FLOPs table (default: "
                        "%(default)s)")
    parser.add_argument("--output-dir", default="results", help="where the report goes (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="accepted for run_all; the table is always quick")
    parser.add_argument("--checkpoint", default="", metavar="PATH",
                        help="also evaluate this dyt/main_image.py checkpoint (final_checkpoint.pth, checkpoint-N.pth)")
    parser.add_argument("--eval-args", default="--dataset digits --model vit_digits --device cpu --num_workers 0",
                        help="main_image.py flags that rebuild the checkpoint's model and data, as one string "
                             "(default: %(default)s)")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="dyt_table"))
