"""The combined results report: ``results/README.md`` and the "## Results" section of the top-level README.

Built only from what the benchmark scripts wrote into the results folder: the claims and verdicts of every paper
(``claims.csv``, first), each paper's table against its paper (``TABLES``: which CSV, which columns), its proxy
arms (``proxies.csv``) and plots, and the speed-ups of ``benchmarks/speed.py`` (``speed.csv``), with the command
that produced them and the machine.

    python -m benchmarks.report                          # rewrite results/README.md from results/
    python -m benchmarks.report --update-readme          # and the "## Results" section of README.md
"""

from __future__ import annotations

import csv
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from benchmarks.speed import format_table as speed_table
from benchmarks.tables import VERDICT_RULE, machine_info, markdown, markdown_table, write_csv
from common.errors import ArgumentParser, UserError, run_cli

README_HEADING = "## Results"
VERDICTS = ("reproduced", "not reproduced", "inconclusive")


Row = tuple[str, float | None, float | None, str]  # label, paper, ours, status


@dataclass(frozen=True)
class TableSpec:
    """Where a paper's "paper vs ours" table lives: a CSV and how one of its rows becomes table rows."""

    title: str
    csv: str
    unit: str
    rows: Callable[[dict[str, str]], list[Row]]


def _num(text: str | None, scale: float = 1.0) -> float | None:
    try:
        return float(text) / scale
    except (TypeError, ValueError):
        return None


def _padnet_rows(r: dict[str, str]) -> list[Row]:
    kappa = f" kappa {r['kappa']}" if r["kappa"] else ""
    out = []
    for name, ours, paper in (("stored params", "stored_params", "stored_params_original"),
                              ("deployed params", "deployed_params", "deployed_params_original"),
                              ("MACs", "macs", "macs_original")):
        if r.get(ours) and r.get(paper):
            label = f"{r['variant']}: {name}" + (kappa if name == "deployed params" else "")
            out.append((label, _num(r[paper], 1e6), _num(r[ours], 1e6), "ok" if r[ours] == r[paper] else "FAIL"))
    return out


TABLES: dict[str, TableSpec] = {
    "adn": TableSpec(
        "ADN: README model zoo GFLOPs", "adn_flops.csv", "GFLOPs (README counter)",
        lambda r: [(f"{r['model']} {r['skip_cfg']}", _num(r["paper_gflops"]), _num(r["our_gflops"]), r["status"])]),
    "dsnet": TableSpec(
        "DS-Net: MAdds of the README's sub-networks (paper: the README's printed millions, else the original "
        "counter)", "dsnet_madds.csv", "MAdds (M)",
        lambda r: [(f"sub-network {r['subnet']}", _num(r["readme_madds_M"]) or _num(r["original_madds"], 1e6),
                    _num(r["our_madds"], 1e6), r["status"])]),
    "jeidnn": TableSpec(
        "JEI-DNN: Mul-Add of every exit (the original's counter)", "jeidnn_costs.csv", "Mul-Add (M)",
        lambda r: [(f"{r['arch']} {r['img_size']}px C={r['num_classes']} exit {r['exit']}",
                    _num(r["mul_add_original"], 1e6), _num(r["mul_add_ours"], 1e6),
                    "ok" if r["mul_add_ours"] == r["mul_add_original"] else "FAIL")]),
    "dyt": TableSpec(
        "DyT: parameters and FLOPs of ViT-B/16", "dyt_params_flops.csv", "",
        lambda r: [(f"{r['model']}: {r['column']}", _num(r["paper"]), _num(r["ours"]),
                    "ok" if r["ok"] == "True" else "FAIL")]),
    "padnet": TableSpec("PAD-Net: parameters and MACs at 224x224", "padnet_counts.csv", "M", _padnet_rows),
}
TITLES = {"adn": "ADN (NeurIPS 2024)", "dsnet": "DS-Net (CVPR 2021)", "jeidnn": "JEI-DNN (ICLR 2024)",
          "dyt": "DyT (NeurIPS 2024)", "padnet": "PAD-Net (ACL 2023)"}


class ReportError(UserError):
    """A results folder that does not exist or a README without a place for the results."""


# ------------------------------------------------------------------------------------------------------ tables
def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def paper_table(paper: str, output_dir: Path) -> dict[str, Any] | None:
    """``{"spec", "rows": [(label, paper, ours, rel_diff, status)], "fails", "max_rel"}`` or ``None`` when the
    paper's CSV is not in ``output_dir``."""
    spec = TABLES.get(paper)
    if spec is None or not (output_dir / spec.csv).is_file():
        return None
    rows, seen = [], set()
    for r in _rows(output_dir / spec.csv):
        for label, ref, ours, status in spec.rows(r):
            if label in seen:
                continue
            seen.add(label)
            rel = (ours - ref) / ref if ours is not None and ref not in (None, 0) else None
            rows.append((label, ref, ours, rel, status))
    rels = [abs(x[3]) for x in rows if x[3] is not None]
    return {"spec": spec, "rows": rows, "fails": sum(x[4] == "FAIL" for x in rows),
            "max_rel": max(rels) if rels else None}


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def format_paper_table(table: dict[str, Any]) -> str:
    spec = table["spec"]
    unit = f" ({spec.unit})" if spec.unit else ""
    body = [[label, _fmt(ref), _fmt(ours), "-" if rel is None else f"{100 * rel:+.2f}%", status or "-"]
            for label, ref, ours, rel, status in table["rows"]]
    return markdown_table(["configuration", f"paper{unit}", f"ours{unit}", "rel. diff", "status"], body)


# ------------------------------------------------------------------------------------------------------ speed
def speed_rows(output_dir: Path) -> list[dict[str, str]]:
    path = output_dir / "speed.csv"
    return _rows(path) if path.is_file() else []


def speed_header(rows: Sequence[dict[str, str]], output_dir: Path) -> str:
    r = rows[0]
    report = output_dir / "speed.md"
    lines = report.read_text().splitlines() if report.is_file() else []
    command = next((line for line in lines if line.startswith("Command: ")), "")
    text = (f"Device {r['device']}, {r['threads']} torch thread(s), median of {r['repeats']} interleaved runs after "
            "warm-up; realised = img/s of the configuration / img/s of the full static model of its group, in the "
            "same process; ideal = the full static model's MACs / the configuration's (common.flops.count_macs, on "
            "the same images); dynamic / export = img/s of the configuration / img/s of its static export.")
    return f"{command}. {text}" if command else text


# ------------------------------------------------------------------------------------------------------ claims
def claims_table(output_dir: Path) -> pd.DataFrame | None:
    """``claims.csv`` (every paper's claims and verdicts, gathered by ``run_all``) or ``None``."""
    path = output_dir / "claims.csv"
    return pd.read_csv(path, keep_default_na=False) if path.is_file() else None


def format_claims(claims: pd.DataFrame) -> str:
    """The claims table of the report: one row per claim, the verdict in bold."""
    shown = claims.assign(verdict=claims["verdict"].map(lambda v: f"**{v}**"))
    shown = shown.rename(columns={"paper_value": "paper's value", "ours": "ours (mean diff.)", "ci95": "95 % CI"})
    return markdown(shown.drop(columns=["metric"]))


def proxy_arms(paper: str, output_dir: Path) -> pd.DataFrame | None:
    """The rows of ``proxies.csv`` that belong to ``paper`` (matched on its title's first word)."""
    path = output_dir / "proxies.csv"
    if not path.is_file():
        return None
    arms = pd.read_csv(path, keep_default_na=False)
    arms = arms[arms["paper"].astype(str).str.startswith(TITLES[paper].split(" ")[0])]
    return arms if len(arms) else None


# ------------------------------------------------------------------------------------------------------ report
def _outcome_rows(outcomes: Sequence[Any], link_prefix: str, output_dir: Path) -> list[list[str]]:
    body = []
    for o in outcomes:
        name = o.stage.removeprefix("proxy ")
        report = {"table": f"{o.paper}.md", "speed": "speed.md"}.get(o.stage, f"{name}_proxy.md")
        link = f"[{report}]({link_prefix}{report})" if (output_dir / report).is_file() else "-"
        body.append([TITLES.get(o.paper, o.paper), o.stage, o.status, f"{o.seconds:.0f}", link, o.note])
    return body


def build_report(output_dir: Path, command: str, outcomes: Sequence[Any] | None = None, *, link_prefix: str = "",
                 heading_level: int = 1) -> str:
    """The report's markdown: the claims and verdicts of all five papers first, then the runs, each paper's counts
    against its paper, proxy arms and plots, and the speed stage. ``link_prefix`` is prepended to file links
    (``results/`` inside the top-level README); ``heading_level`` 2 nests it under the README's "## Results"."""
    h = "#" * heading_level
    lines = [f"{h} Results", "", f"Command: `{command}`", "", f"Machine: {machine_info()}.", ""]
    claims = claims_table(output_dir)
    if claims is not None and len(claims):
        counts = claims["verdict"].value_counts()
        lines += [f"{h}# Claims and verdicts", "",
                  f"{len(claims)} claims: " + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS) + ". "
                  f"Verdict rule, fixed before the runs: {VERDICT_RULE}. `ours` is the mean per-seed difference "
                  "(oriented so that > 0 supports the claim); `evidence` says what was compared and, where a claim "
                  "is not reproduced, why. From `claims.csv`; the arms behind them are in `proxies.csv`.", "",
                  format_claims(claims), ""]
    if outcomes:
        lines += [f"{h}# Runs", "", markdown_table(["paper", "stage", "status", "seconds", "report", "note"],
                                                  _outcome_rows(outcomes, link_prefix, output_dir)), ""]
    for paper in TITLES:
        table = paper_table(paper, output_dir)
        arms = proxy_arms(paper, output_dir)
        plots = sorted(output_dir.glob(f"{paper}*.png"))
        if table is None and arms is None and not plots:
            continue
        lines += [f"{h}# {TITLES[paper]}", ""]
        if table is not None:
            spec = table["spec"]
            worst = "-" if table["max_rel"] is None else f"{100 * table['max_rel']:.2f}%"
            lines += [f"{spec.title} (`{spec.csv}`): {len(table['rows'])} rows, {table['fails']} off the paper "
                      f"beyond tolerance, largest relative difference {worst}.", "",
                      "<details><summary>paper vs ours</summary>", "", format_paper_table(table), "", "</details>",
                      ""]
        if arms is not None:
            lines += ["Proxy arms (mean and standard deviation over seeds; MACs per sample):", "",
                      markdown(arms.drop(columns=["paper"])), ""]
        lines += [f"![{p.stem}]({link_prefix}{p.name})" for p in plots] + [""]
    speed = speed_rows(output_dir)
    if speed:
        lines += [f"{h}# Speed: measured against ideal (`benchmarks/speed.py`)", "",
                  speed_header(speed, output_dir), "",
                  speed_table(speed), ""]
        short = [r for r in speed if r.get("profile")]
        if short:
            lines += ["Below target, where the time goes (`torch.profiler` on the same images):", ""]
            lines += [f"- {r['model']} {r['config']}, batch {r['batch_size']}: {r['profile']}" for r in short] + [""]
        if (output_dir / "speed.png").is_file():
            lines += [f"![speed]({link_prefix}speed.png)", ""]
    return "\n".join(lines)


RUNS_CSV = "runs.csv"  # what run_all saw of each stage (status, seconds, note), kept for regenerated reports


def saved_outcomes(output_dir: Path) -> list[SimpleNamespace] | None:
    """The outcomes :func:`write_report` saved in ``output_dir/runs.csv``, or ``None`` without that file."""
    path = output_dir / RUNS_CSV
    if not path.is_file():
        return None
    runs = pd.read_csv(path, keep_default_na=False)
    return [SimpleNamespace(**r) for r in runs.to_dict("records")]


def write_report(output_dir: Path, command: str, outcomes: Sequence[Any] | None = None) -> Path:
    """Write ``output_dir/README.md`` (and, given the run's ``outcomes``, ``runs.csv``); return its path."""
    output_dir = Path(output_dir)
    if outcomes is not None:
        write_csv(output_dir / RUNS_CSV, [{"paper": o.paper, "stage": o.stage, "status": o.status,
                                           "seconds": round(o.seconds, 1), "note": o.note} for o in outcomes])
    path = output_dir / "README.md"
    path.write_text(build_report(output_dir, command, outcomes) + "\n")
    return path


def update_readme(readme: Path, output_dir: Path, command: str, outcomes: Sequence[Any] | None = None) -> None:
    """Replace the README's "## Results" section (up to the next "## " heading) with the report, or append one.

    The section embeds the tables themselves; plot links point into the results folder, which is committed with
    the README so that they show.
    """
    if not readme.is_file():
        raise ReportError(f"--readme {readme}: no such file")
    text = readme.read_text()
    prefix = os.path.relpath(output_dir, readme.parent).rstrip("/") + "/"
    section = build_report(output_dir, command, outcomes, link_prefix=prefix, heading_level=2).strip()
    intro = ("`make demo` (`python -m benchmarks.run_all --update-readme`; its wall clock is the last row of the "
             "runs table) runs every paper's table (computational columns against the paper) and proxy experiments "
             "(the paper's claims measured on embedded real data through the subprojects' entry points, with a "
             "verdict per claim), and writes "
             f"`{prefix}claims.csv`, `{prefix}proxies.csv`, each paper's reports, CSVs and plots and "
             f"`{prefix}README.md`; `make speed` (`python -m benchmarks.speed`) times every configuration of every "
             f"dynamic model against its static export and its MAC ratio into `{prefix}speed.*` and refreshes this "
             "section. "
             "This section is generated from those files by `python -m benchmarks.report --update-readme` (or "
             "`run_all --update-readme`); the files in `results/` are committed with it.")
    head, _, rest = section.partition("\n")
    section = f"{head}\n\n{intro}\n{rest}\n"
    pattern = re.compile(rf"^{re.escape(README_HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    readme.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite the report (and, with ``--update-readme``, the README's results section) from a results folder."""
    args = get_args_parser().parse_args(argv)
    output_dir = Path(args.output_dir)
    if not output_dir.is_dir():
        raise ReportError(f"--output-dir {output_dir}: no such folder; run `python -m benchmarks.run_all` first")
    command = args.command or "python -m benchmarks.run_all"
    outcomes = saved_outcomes(output_dir)
    print(f"wrote {write_report(output_dir, command, outcomes)}")
    if args.update_readme:
        update_readme(Path(args.readme), output_dir, command, outcomes)
        print(f"updated the '{README_HEADING}' section of {args.readme}")
    return 0


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output-dir", default="results", help="the results folder (default: %(default)s)")
    parser.add_argument("--command", default=None,
                        help="the command that produced the results, for the report (default: the quick demo)")
    parser.add_argument("--update-readme", action="store_true", help="also rewrite the README's results section")
    parser.add_argument("--readme", default="README.md", help="the README to update (default: %(default)s)")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="report"))
