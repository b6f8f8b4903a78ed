"""All five papers in one command (``make demo``): every table, every proxy, the report.

Each stage is a benchmark script's ``main(argv) -> int``, called as ``python -m <module> argv`` would: per paper
its ``benchmarks/<paper>_table.py`` (the paper's computational columns, exit 1 on drift) and its
``benchmarks/proxies/*.py`` (the paper's claims measured on embedded data through the subproject's entry points,
with a verdict per claim), and with ``--speed`` then ``benchmarks/speed.py`` (``make speed`` runs it on its own: it
times every configuration, longer than the rest of the demo, and the report includes its last results). With
``--jobs N`` (default 2, the cores of the machine the demo is sized for) the tables and proxies run in N worker
processes of one torch thread each, longest first (by the seconds of the previous run in ``runs.csv``), each
stage's output in ``<output-dir>/logs/``; small models train faster as two one-thread processes than as one
two-thread process, and one thread keeps every run bit-reproducible. The speed stage always runs last and alone. A
stage that fails is reported and the others still run; the exit code is then 1. The proxies' ``<name>_claims.csv``
and ``<name>_proxies.csv`` are gathered into ``claims.csv`` and ``proxies.csv``, and :mod:`benchmarks.report`
writes ``README.md`` in the output folder.

    python -m benchmarks.run_all                          # what `make demo` runs (under 15 min on 2 CPU cores)
    python -m benchmarks.run_all --full --only adn,dsnet  # the longer schedules (more seeds) of two papers
    python -m benchmarks.run_all --update-readme          # also refresh the "## Results" section of README.md
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import multiprocessing
import os
import shlex
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm import tqdm

from benchmarks import report
from benchmarks.tables import CLAIM_COLUMNS, PROXY_COLUMNS, write_csv
from common.errors import ArgumentParser, UserError, run_cli


@dataclass(frozen=True)
class Paper:
    """One paper's table script and proxy scripts (module names)."""

    name: str
    title: str
    table: str
    proxies: tuple[str, ...]


PAPERS: dict[str, Paper] = {p.name: p for p in (
    Paper("adn", "ADN (NeurIPS 2024)", "benchmarks.adn_table", ("benchmarks.proxies.adn",)),
    Paper("dsnet", "DS-Net (CVPR 2021)", "benchmarks.dsnet_table", ("benchmarks.proxies.dsnet",)),
    Paper("jeidnn", "JEI-DNN (ICLR 2024)", "benchmarks.jeidnn_table", ("benchmarks.proxies.jeidnn",)),
    Paper("dyt", "DyT (NeurIPS 2024)", "benchmarks.dyt_table", ("benchmarks.proxies.dyt",)),
    Paper("padnet", "PAD-Net (ACL 2023)", "benchmarks.padnet_table",
          ("benchmarks.proxies.padnet", "benchmarks.proxies.padnet_moe")),
)}


class RunAllError(UserError):
    """A bad ``--only`` list or output folder."""


@dataclass
class Outcome:
    """What happened to one stage: ``ok``, ``drift`` (a table off its paper: exit 1) or ``error``."""

    paper: str
    stage: str
    status: str
    seconds: float = 0.0
    note: str = ""


def parse_only(text: str | None) -> list[str]:
    """``"adn,dsnet"`` -> ``["adn", "dsnet"]`` in the given order; every paper when ``None``."""
    if text is None:
        return list(PAPERS)
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PAPERS]
    if unknown or not names:
        raise RunAllError(f"--only {text!r}: unknown paper(s) {', '.join(unknown) or '(none given)'}; choose from "
                          f"{', '.join(PAPERS)}")
    return list(dict.fromkeys(names))


@contextlib.contextmanager
def script_context(module: str, argv: Sequence[str]) -> Iterator[None]:
    """``sys.argv`` as the script would see it (reports quote their command); the environment and torch's thread
    count restored afterwards (a script may set either for itself)."""
    saved_argv, saved_env, threads = sys.argv, dict(os.environ), torch.get_num_threads()
    sys.argv = [f"{module.replace('.', '/')}.py", *argv]
    try:
        yield
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)


def run_stage(paper: str, stage: str, module: str, argv: Sequence[str]) -> Outcome:
    """``module.main(argv)``; a one-line user error (exit 2), a drift (exit 1) or a crash becomes an
    :class:`Outcome`, never an exception, so the other stages still run."""
    tqdm.write(f"==> python -m {module} {shlex.join(argv)}")
    start = time.time()
    try:
        with script_context(module, argv):
            code = run_cli(importlib.import_module(module).main, list(argv), prog=module.rsplit(".", 1)[-1])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except Exception as err:  # a crash in one stage must not stop the others
        traceback.print_exc()
        return Outcome(paper, stage, "error", time.time() - start, f"{type(err).__name__}: {err}")
    status = {0: "ok", 1: "drift"}.get(code or 0, "error")
    note = {"drift": "a computed column differs from the paper beyond its tolerance (see its report)",
            "error": f"exit code {code}"}.get(status, "")
    outcome = Outcome(paper, stage, status, time.time() - start, note)
    tqdm.write(f"<== {paper} {stage}: {status} ({outcome.seconds:.0f} s){' - ' + note if note else ''}")
    return outcome


def run_logged(paper: str, stage: str, module: str, argv: Sequence[str], log: Path) -> Outcome:
    """:func:`run_stage` in a worker process with one torch thread, its stdout and stderr (also those of C
    extensions and progress bars) in ``log``."""
    torch.set_num_threads(1)
    with log.open("w", buffering=1) as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        sys.stdout = sys.stderr = f
        return run_stage(paper, stage, module, argv)


def log_name(paper: str, stage: str) -> str:
    return f"{paper}_{stage.replace(' ', '_')}.log"


def previous_seconds(output_dir: Path) -> dict[tuple[str, str], float]:
    """``{(paper, stage): seconds}`` of the last run in ``output_dir/runs.csv`` (empty without one)."""
    path = output_dir / report.RUNS_CSV
    if not path.is_file():
        return {}
    runs = pd.read_csv(path, keep_default_na=False)
    if "stage" not in runs.columns:
        return {}
    return {(r.paper, r.stage): float(r.seconds) for r in runs.itertuples()}


def run_parallel(stages: list[tuple[str, str, str, list[str]]], jobs: int, output_dir: Path) -> list[Outcome]:
    """The stages in ``jobs`` worker processes, longest first; outcomes in the order of ``stages``."""
    logs = output_dir / "logs"
    logs.mkdir(exist_ok=True)
    before = previous_seconds(output_dir)
    order = sorted(range(len(stages)), key=lambda i: -before.get(stages[i][:2], 0.0))
    outcomes: list[Outcome | None] = [None] * len(stages)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {}
        for i in order:
            paper, stage, module, argv = stages[i]
            log = logs / log_name(paper, stage)
            tqdm.write(f"==> python -m {module} {shlex.join(argv)}  (log: {log})")
            futures[pool.submit(run_logged, paper, stage, module, argv, log)] = i
        for future in tqdm(as_completed(futures), total=len(futures), desc="stages", unit="stage",
                           dynamic_ncols=True):
            i = futures[future]
            o = outcomes[i] = future.result()
            tqdm.write(f"<== {o.paper} {o.stage}: {o.status} ({o.seconds:.0f} s){' - ' + o.note if o.note else ''}")
            if o.status != "ok":  # the end of its log says why
                log = logs / log_name(o.paper, o.stage)
                tqdm.write("\n".join("    " + line for line in log.read_text(errors="replace").splitlines()[-8:]))
    return [o for o in outcomes if o is not None]


def stage_argv(kind: str, mode: str, output_dir: Path) -> list[str]:
    """The flags of one stage. ``mode`` is ``quick`` (the demo), ``full`` or ``tiny`` (CI smoke size)."""
    flags = {("table", "quick"): ["--quick"], ("table", "tiny"): ["--quick"], ("table", "full"): [],
             ("proxy", "quick"): [], ("proxy", "tiny"): ["--tiny"], ("proxy", "full"): ["--full"],
             ("speed", "quick"): ["--quick"], ("speed", "tiny"): ["--tiny"], ("speed", "full"): []}[kind, mode]
    return [*flags, "--output-dir", str(output_dir)]


def gather(output_dir: Path, proxies: Sequence[str]) -> None:
    """Concatenate the proxies' ``<name>_claims.csv`` / ``<name>_proxies.csv`` into ``claims.csv`` /
    ``proxies.csv`` (only the proxies of this run, so a stale file of an earlier run is never mixed in)."""
    for suffix, columns in (("claims", CLAIM_COLUMNS), ("proxies", PROXY_COLUMNS)):
        parts = [pd.read_csv(p, keep_default_na=False) for p in (output_dir / f"{n}_{suffix}.csv" for n in proxies)
                 if p.is_file()]
        write_csv(output_dir / f"{suffix}.csv", pd.concat(parts) if parts else pd.DataFrame(), columns)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected papers, gather the claims, write the report; 0 only when every stage succeeded."""
    start = time.time()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    names = parse_only(args.only)
    if args.jobs < 1:
        raise RunAllError(f"--jobs must be at least 1, got {args.jobs}")
    output_dir = Path(args.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunAllError(f"--output-dir {output_dir}: cannot create it ({err.strerror})") from None
    if not os.access(output_dir, os.W_OK):
        raise RunAllError(f"--output-dir {output_dir}: not writable; choose another folder")
    mode = "full" if args.full else "tiny" if args.tiny else "quick"
    stages, ran = [], []
    for name in names:
        paper = PAPERS[name]
        stages.append((name, "table", paper.table, stage_argv("table", mode, output_dir)))
        if args.proxies:
            for module in paper.proxies:
                proxy = module.rsplit(".", 1)[-1]
                stages.append((name, f"proxy {proxy}", module, stage_argv("proxy", mode, output_dir)))
                ran.append(proxy)
    if args.jobs > 1:
        outcomes = run_parallel(stages, args.jobs, output_dir)
    else:
        outcomes = [run_stage(*stage) for stage in tqdm(stages, desc="stages", unit="stage", dynamic_ncols=True)]
    gather(output_dir, ran)
    if args.speed:
        outcomes.append(run_stage("speed", "speed", "benchmarks.speed",
                                  [*stage_argv("speed", mode, output_dir), "--only", ",".join(names)]))
    # the whole run's wall clock, a row of its own (the stages' seconds overlap with --jobs > 1)
    outcomes.append(Outcome("run_all", f"wall clock, --jobs {args.jobs}", "ok", time.time() - start))
    command = "python -m benchmarks.run_all " + shlex.join(argv)
    report_path = report.write_report(output_dir, command.strip(), outcomes)
    if args.update_readme:
        report.update_readme(Path(args.readme), output_dir, command.strip(), outcomes)
    print("\nsummary:")
    for o in outcomes:
        print(f"{o.paper:>7} {o.stage:<18} {o.status:<6} {o.seconds:6.0f} s  {o.note}".rstrip())
    print(f"report: {report_path}")
    failed = [f"{o.paper} {o.stage}" for o in outcomes if o.status != "ok"]
    if failed:
        print(f"run_all: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="run_all", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the demo settings (the default)")
    mode.add_argument("--full", action="store_true", help="the proxies' longer schedules (more seeds), complete speed")
    mode.add_argument("--tiny", action="store_true", help="smoke size for tests (numbers meaningless)")
    parser.add_argument("--only", default=None, metavar="P1,P2",
                        help=f"comma-separated papers to run (default: all of {', '.join(PAPERS)})")
    parser.add_argument("--jobs", type=int, default=2, metavar="N",
                        help="worker processes (one torch thread each) for the tables and proxies; 1 runs them in "
                             "this process with the default threads (default: %(default)s)")
    parser.add_argument("--proxies", action=argparse.BooleanOptionalAction, default=True,
                        help="run the proxy experiments (default: on)")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=False,
                        help="also time the selected papers' models with benchmarks/speed.py (--quick unless --full; "
                             "default: off, `make speed` runs it)")
    parser.add_argument("--output-dir", default="results", help="where every report goes (default: %(default)s)")
    parser.add_argument("--update-readme", action="store_true",
                        help="also rewrite the '## Results' section of --readme from the results")
    parser.add_argument("--readme", default="README.md", help="the README for --update-readme (default: %(default)s)")
    return parser


if __name__ == "__main__":
    sys.exit(run_cli(main, prog="run_all"))
