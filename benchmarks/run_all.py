"""All five papers in one command: every table script, then the combined report (issue 8, item 1).

For each selected paper this runs its ``benchmarks/<paper>_table.py`` in this process, as
``python -m benchmarks.<paper>_table --quick --output-dir DIR`` would (``--full`` drops ``--quick`` and runs the
longer proxy schedules): the paper-scale models' computational columns next to the paper's numbers with the
relative difference, then the small proxy experiment on embedded data, writing ``DIR/<paper>.md``, its CSVs and
plots. A paper whose table drifts (its script exits 1) or that fails is reported and the others still run; the
exit code is then 1. A paper whose subproject does not import yet (DyT, PAD-Net while they land) is skipped with a
note. Then ``benchmarks/speed.py`` times the selected papers' models (``--quick``: three configurations each and no
training steps, ``--full``: everything; ``--no-speed`` skips it), and :mod:`benchmarks.report` writes
``DIR/README.md``: every table against the paper, the speed-up table, the command and the machine.

    python -m benchmarks.run_all --quick                  # what `make demo` runs (under 15 min on 2 CPU cores)
    python -m benchmarks.run_all --full --only adn,dsnet  # the longer schedules of two papers
    python -m benchmarks.run_all --quick --update-readme  # also refresh the "## Results" section of README.md
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import os
import shlex
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from common.errors import ArgumentParser, UserError, run_cli


@dataclass(frozen=True)
class Paper:
    """One paper's table script and what ``--tiny`` adds to its ``--quick`` run (CI smoke size: smaller subsets and
    models; JEI-DNN's cost table only)."""

    name: str
    title: str
    module: str
    requires: str
    tiny_args: tuple[str, ...] = field(default_factory=tuple)


SPEED_MODULE = "benchmarks.speed"
SPEED_TINY_ARGS = ("--tiny", "--batch-sizes", "1", "2", "--batch1-images", "1", "--repeats", "1", "--warmup", "0",
                   "--no-train")
PAPERS: dict[str, Paper] = {p.name: p for p in (
    Paper("adn", "ADN (NeurIPS 2024)", "benchmarks.adn_table", "adn.models",
          ("--models", "mobilenet_v2", "--proxy-train-samples", "64", "--proxy-val-samples", "32",
           "--recalibration-samples", "16", "--proxy-width", "4")),
    Paper("dsnet", "DS-Net (CVPR 2021)", "benchmarks.dsnet_table", "dsnet.models",
          ("--no-speed", "--proxy-train-samples", "64", "--proxy-val-samples", "32", "--bn-batches", "2",
           "--routing-spaces", "0,1,2,3")),
    Paper("jeidnn", "JEI-DNN (ICLR 2024)", "benchmarks.jeidnn_table", "jeidnn.models", ("--no-proxy",)),
    Paper("dyt", "DyT (NeurIPS 2024)", "benchmarks.dyt_table", "dyt.models", ()),
    Paper("padnet", "PAD-Net (ACL 2023)", "benchmarks.padnet_table", "padnet.dyconv.models", ()),
)}


class RunAllError(UserError):
    """A bad ``--only`` list or output folder."""


@dataclass
class Outcome:
    """What happened to one paper: ``ok``, ``drift`` (exit 1: a column off the paper), ``error`` or ``skipped``."""

    paper: str
    status: str
    seconds: float = 0.0
    exit_code: int | None = None
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


def missing_dependency(paper: Paper) -> str | None:
    """Why ``paper`` cannot run yet (its subproject or table script does not import), or ``None``."""
    for module in (paper.requires, paper.module):
        try:
            importlib.import_module(module)
        except ImportError as err:
            return f"{module} does not import yet ({err}); the subproject has not landed"
    return None


def table_argv(paper: Paper, quick: bool, tiny: bool, output_dir: Path) -> list[str]:
    """The command-line arguments of the paper's table script."""
    argv = ["--quick"] if quick else []
    if tiny:
        argv += list(paper.tiny_args)
    return argv + ["--output-dir", str(output_dir)]


def call_table(module_name: str, argv: Sequence[str]) -> int:
    """Run a table script's entry point in this process, as ``python -m module argv`` would; return its exit code.

    The scripts have one of three shapes: ``cli(argv)``, ``main(argv)`` (its first parameter is named ``argv``) or
    ``main(get_args_parser().parse_args(argv))``. A ``UserError`` is printed as one line and gives exit code 2, as
    under ``run_cli``.
    """
    module = importlib.import_module(module_name)
    prog = module_name.rsplit(".", 1)[-1]
    parses_itself = not hasattr(module, "get_args_parser") or (
        hasattr(module, "main") and next(iter(inspect.signature(module.main).parameters), None) == "argv")
    if hasattr(module, "cli"):
        call = lambda: module.cli(list(argv))  # noqa: E731
    elif parses_itself:
        call = lambda: module.main(list(argv))  # noqa: E731
    else:
        call = lambda: module.main(module.get_args_parser().parse_args(list(argv)))  # noqa: E731
    try:
        code = run_cli(call, prog=prog)
    except SystemExit as exit_:
        code = exit_.code
    if code is None:
        return 0
    return code if isinstance(code, int) else 1


@contextlib.contextmanager
def script_context(module_name: str, argv: Sequence[str]) -> Iterator[None]:
    """``sys.argv`` as the script would see it (the scripts write their command into the report); the environment
    and torch's thread count restored afterwards (a script may set either for itself)."""
    saved_argv, saved_env, threads = sys.argv, dict(os.environ), torch.get_num_threads()
    sys.argv = [f"{module_name.replace('.', '/')}.py", *argv]
    try:
        yield
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        torch.set_num_threads(threads)


def run_paper(paper: Paper, argv: Sequence[str]) -> Outcome:
    """Run one paper's table script; any failure becomes an :class:`Outcome`, never an exception."""
    reason = missing_dependency(paper)
    if reason is not None:
        return Outcome(paper.name, "skipped", note=reason)
    start = time.time()
    try:
        with script_context(paper.module, argv):
            code = call_table(paper.module, argv)
    except Exception as err:  # a crash in one paper must not stop the others
        traceback.print_exc()
        return Outcome(paper.name, "error", time.time() - start, None, f"{type(err).__name__}: {err}")
    status = {0: "ok", 1: "drift"}.get(code, "error")
    note = {"drift": "a computed column differs from the paper beyond its tolerance (see its report)",
            "error": f"exit code {code}"}.get(status, "")
    return Outcome(paper.name, status, time.time() - start, code, note)


def run_speed(names: Sequence[str], quick: bool, tiny: bool, output_dir: Path) -> Outcome:
    """The speed stage: ``benchmarks/speed.py`` on the selected papers (it skips those that do not import)."""
    argv = (["--quick", "--no-train"] if quick else []) + (list(SPEED_TINY_ARGS) if tiny else [])
    argv += ["--only", ",".join(names), "--output-dir", str(output_dir)]
    tqdm.write(f"==> speed: python -m {SPEED_MODULE} {shlex.join(argv)}")
    start = time.time()
    try:
        with script_context(SPEED_MODULE, argv):
            code = call_table(SPEED_MODULE, argv)
    except Exception as err:  # the report is still written
        traceback.print_exc()
        return Outcome("speed", "error", time.time() - start, None, f"{type(err).__name__}: {err}")
    return Outcome("speed", "ok" if code == 0 else "error", time.time() - start, code,
                   "" if code == 0 else f"exit code {code}")


def summary_lines(outcomes: Sequence[Outcome]) -> list[str]:
    return [f"{o.paper:>7}: {o.status:<7} {o.seconds:6.0f} s  {o.note}".rstrip() for o in outcomes]


def main(args: argparse.Namespace) -> int:
    """Run the selected papers, write the combined report; 0 only when every paper that ran matched its paper."""
    from benchmarks import report

    names = parse_only(args.only)
    output_dir = Path(args.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunAllError(f"--output-dir {output_dir}: cannot create it ({err.strerror})") from None
    quick = not args.full
    command = "python -m benchmarks.run_all " + shlex.join(getattr(args, "argv", sys.argv[1:]))
    outcomes = []
    stages = tqdm(names, desc="papers", unit="paper", dynamic_ncols=True)
    for name in stages:
        paper = PAPERS[name]
        stages.set_postfix_str(name)
        argv = table_argv(paper, quick, args.tiny, output_dir)
        tqdm.write(f"==> {paper.title}: python -m {paper.module} {shlex.join(argv)}")
        outcome = run_paper(paper, argv)
        outcomes.append(outcome)
        note = f" - {outcome.note}" if outcome.note else ""
        tqdm.write(f"<== {name}: {outcome.status} ({outcome.seconds:.0f} s){note}")
    stages.close()
    if args.speed:
        outcomes.append(run_speed(names, quick, args.tiny, output_dir))
    report_path = report.write_report(output_dir, command, outcomes)
    if args.update_readme:
        report.update_readme(Path(args.readme), output_dir, command, outcomes)
    print("\n".join(["", "summary:", *summary_lines(outcomes), f"report: {report_path}"]))
    failed = [o.paper for o in outcomes if o.status in ("drift", "error")]
    if failed:
        print(f"run_all: failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="run_all", description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the quick proxies (the default)")
    mode.add_argument("--full", action="store_true", help="the longer proxy schedules of every script")
    parser.add_argument("--only", default=None, metavar="P1,P2",
                        help=f"comma-separated papers to run (default: all of {', '.join(PAPERS)})")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke size on top of --quick: smaller subsets and models (for CI; numbers meaningless)")
    parser.add_argument("--speed", action=argparse.BooleanOptionalAction, default=True,
                        help="time the selected papers' models with benchmarks/speed.py (default: on)")
    parser.add_argument("--output-dir", default="results", help="where every report goes (default: %(default)s)")
    parser.add_argument("--update-readme", action="store_true",
                        help="also rewrite the '## Results' section of --readme from the results")
    parser.add_argument("--readme", default="README.md", help="the README for --update-readme (default: %(default)s)")
    return parser


def cli(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = get_args_parser().parse_args(argv)
    args.argv = argv
    return main(args)


if __name__ == "__main__":
    sys.exit(run_cli(cli, prog="run_all"))
