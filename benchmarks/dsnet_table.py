"""DS-Net (Li et al., CVPR 2021): the README's 14 sub-networks counted against the original, and a checkpoint's
accuracy.

For every row of ``benchmarks/paper_tables/dsnet.yaml`` (the README's 14 sub-networks of the pretrained supernet,
plus ``smallest`` and ``largest``; spec ``dsnet.md`` Sec. 9) build ``slimmable_mbnet_v1_bn_uniform`` and count,
per 224x224 image:

* the MAdds with the original's convention (:func:`dsnet.madds.madds`: convolutions + classifier + the input
  elements of every average pool), which must equal the original counter's value exactly and round to the
  README's printed millions;
* the conv + linear MACs that really execute in a sliced forward, measured with ``common.flops``
  (:func:`dsnet.madds.executed_macs`), and the pool elements, which together must give the same figure;
* the active parameters (the slices of the weights a sub-network uses).

Exit code 1 when any of the 16 rows is off. ``--checkpoint FILE --data-path DIR`` evaluates a supernet checkpoint
(the original's ``state_dict`` / ``state_dict_ema`` format) on ImageNet val to fill "our Top-1/Top-5". The
abstract's claims are listed with what this repository checks of each: speed is timed by ``benchmarks/speed.py``
and the training claims are measured by the proxy ``benchmarks/proxies/dsnet.py``.

Writes ``dsnet_madds.csv`` and ``dsnet.md`` to ``--output-dir`` (default ``results``).

    python -m benchmarks.dsnet_table
    python -m benchmarks.dsnet_table --checkpoint DS_MBNet-70_1.pth.tar --data-path /data/imagenet
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from benchmarks.tables import machine_info, markdown_table, write_csv
from common.config import load_yaml
from common.errors import ArgumentParser, UserError, run_cli
from dsnet.madds import executed_macs, madds, mode_widths
from dsnet.models import MODELS, DSNet, create_model

PAPER_TABLE = Path(__file__).resolve().parent / "paper_tables" / "dsnet.yaml"
ROW_KEYS = ("subnet", "mode", "choice", "widths", "madds", "conv_linear_macs", "avgpool_elements",
            "readme_madds_M", "top1", "top5")
CLAIM_KEYS = ("id", "claim", "value", "checkable")


class DsnetTableError(UserError):
    """A bad flag, a missing file, or a malformed paper table."""


def _plain(head: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*b) for b in body])


# --------------------------------------------------------------------------------------------------------------
# The README's sub-networks (MAdds in the original's add_flops convention, dsnet/madds.py)
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
    torch.manual_seed(0)
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
    return markdown_table(head, body) if markdown else _plain(head, body)


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


def claim_evidence(table: dict[str, Any], results: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """The abstract's claims (``claims`` in the YAML) with what was checked here, in words."""
    by_name = {r["subnet"]: r["our_madds"] for r in results}
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
    evidence["real_acceleration"] = ("timed by benchmarks/speed.py (results/speed.md): sliced sub-networks and "
                                     "the gated model on this CPU; not the paper's hardware or comparison "
                                     "(against MobileNet / ResNet-50 baselines)")
    if any(r["our_top1"] is not None for r in results):
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


def write_markdown(path: Path, command: str, seconds: float, table: dict[str, Any], results: list[dict[str, Any]],
                   claims: list[dict[str, str]]) -> None:
    lines = ["# DS-Net: the README's sub-networks and the abstract's claims", "", f"Command: `{command}`", "",
             f"Machine: {machine_info()}. Wall time: {seconds:.0f} s.", "",
             "## MAdds of the README's 14 sub-networks (the original's counter convention)", "",
             f"{table['model']}, 1x3x{table['img_size']}x{table['img_size']}. `MAdds (ours)`: dsnet.madds with "
             "the original's convention; `original counter`: the value the original code gives; `README`: "
             "as printed (ours must round to it); `executed MACs`: conv + linear multiply-adds counted by "
             "common.flops on a sliced forward; `+ pool elems`: the average-pool inputs the original also "
             "counts (executed + pools = MAdds). Top-1/5: ImageNet val, as published; ours only with "
             "--checkpoint.", "", format_madds_table(results, markdown=True), ""]
    bad = [f"- {r['subnet']}: {r['problems']}" for r in results if r["status"] != "ok"]
    lines += (["Rows off:", "", *bad, ""] if bad else [f"All {len(results)} rows reproduced exactly.", ""])
    lines += ["## The abstract's claims", "", markdown_table(["claim", "value", "checkable here", "what was checked"],
                                                            [[c["claim"], c["value"], c["checkable"],
                                                              c["checked_here"]] for c in claims]), ""]
    notes = third_party_notes(table)
    if notes:
        lines += ["Third-party citation (not the paper; flagged as suspect):", "", *[f"- {n}" for n in notes], ""]
    lines += ["The training claims (the gated model against the static curve, in-place bootstrapping) are measured "
              "on digits by `python -m benchmarks.proxies.dsnet` (dsnet_proxy.md).", ""]
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
    elif args.data_path is not None or args.model_ema:
        raise DsnetTableError("--data-path and --model-ema only make sense with --checkpoint FILE")


def main(argv: Sequence[str] | None = None) -> int:
    """Count (and evaluate), print and write the table; return 1 when a MAdds row is off."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    check_args(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    table = load_paper_table(args.paper_table)
    accuracies = evaluate_checkpoint(args, table) if args.checkpoint is not None else None
    results = count_rows(table, accuracies)
    print(format_madds_table(results))
    for r in results:
        if r["status"] != "ok":
            print(f"FAIL: sub-network {r['subnet']}: {r['problems']}")
    write_csv(output_dir / "dsnet_madds.csv", results)
    claims = claim_evidence(table, results)
    print("\nthe abstract's claims:")
    for c in claims:
        print(f"- {c['value']} {c['claim']}: checkable here: {c['checkable']}. Checked: {c['checked_here']}")
    for note in third_party_notes(table):
        print(f"- third party: {note}")
    write_markdown(output_dir / "dsnet.md", "python -m benchmarks.dsnet_table " + shlex.join(argv),
                   time.time() - start, table, results, claims)
    print(f"wrote {output_dir / 'dsnet.md'} and {output_dir / 'dsnet_madds.csv'}")
    failures = sum(r["status"] != "ok" for r in results)
    if failures:
        print(f"{failures} of {len(results)} MAdds row(s) differ from the original counter or the README",
              file=sys.stderr)
        return 1
    return 0


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m benchmarks.dsnet_table", description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--paper-table", default=str(PAPER_TABLE), help="the paper-table YAML to compare with")
    parser.add_argument("--checkpoint", default=None,
                        help="a supernet checkpoint (the original's format: state_dict / state_dict_ema) to evaluate "
                        "on ImageNet val; fills 'our top-1/5'")
    parser.add_argument("--data-path", default=None, help="ImageNet folder with val/<class>/*.JPEG (for --checkpoint)")
    parser.add_argument("--model-ema", action="store_true", help="evaluate the checkpoint's state_dict_ema")
    parser.add_argument("-b", "--batch-size", type=int, default=100, help="eval batch size for --checkpoint")
    parser.add_argument("-j", "--workers", type=int, default=4, help="data-loading workers for --checkpoint")
    parser.add_argument("--device", default="cpu", help="device for --checkpoint evaluation")
    parser.add_argument("--quick", action="store_true", help="accepted for run_all; the table is always complete")
    parser.add_argument("--output-dir", default="results", help="where dsnet.md and dsnet_madds.csv go")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="dsnet_table"))
