"""What every benchmark script shares: machine info, statistics over seeds, the claim verdict rule, and output.

The verdict rule (fixed before any proxy was run, and printed in every report). For a claim "A matches or beats
B", each seed s gives a paired difference ``d_s = A_s - B_s`` oriented so that a positive value supports the
claim (for "lower ECE", ``d_s = ECE_B - ECE_A``; for "rises with MACs", ``d_s`` is the seed's Spearman rank
correlation). With ``n`` seeds, the 95 % interval of the mean difference is ``mean(d) +- t(0.975, n-1) *
std(d) / sqrt(n)``. With ``margin`` = 0 for a strict claim ("beats", "helps", "rises") and the stated tolerance
for a "matches" claim (1 point of top-1 unless a proxy says otherwise):

- ``reproduced`` when the whole interval lies above ``-margin``;
- ``not reproduced`` when the whole interval lies below ``-margin``;
- ``inconclusive`` otherwise (the seeds disagree, or too few seeds to tell).

CSV and markdown go through pandas; statistics through scipy.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch.utils.data import Dataset, Subset

from common.errors import UserError

VERDICT_RULE = ("95 % Student-t interval of the per-seed paired difference (oriented so > 0 supports the claim): "
                "reproduced if it lies wholly above -margin, not reproduced if wholly below, else inconclusive; "
                "margin 0 for 'beats' claims, the stated tolerance for 'matches' claims")
CLAIM_COLUMNS = ["paper", "claim", "metric", "paper_value", "ours", "ci95", "seeds", "verdict", "evidence"]
PROXY_COLUMNS = ["paper", "arm", "dataset", "metric", "mean", "std", "seeds", "macs"]


# ------------------------------------------------------------------------------------------------ machine
def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> str:
    """One line: CPU, threads, OS, Python, torch and the GPU if any (every report states it)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu_model()}, {torch.get_num_threads()} threads, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, torch {torch.__version__}, {gpu}")


# ------------------------------------------------------------------------------------------------ statistics
def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    x = np.asarray(values, dtype=float)
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t interval (``inf`` with one value: nothing can be told)."""
    mean, std = mean_std(values)
    n = len(values)
    if n < 2:
        return mean, math.inf
    return mean, float(stats.t.ppf(0.5 + level / 2, n - 1) * std / math.sqrt(n))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (ties averaged); 0 when either side is constant."""
    if len(set(x)) < 2 or len(set(y)) < 2:
        return 0.0
    return float(stats.spearmanr(x, y).statistic)


def verdict(diffs: Sequence[float], margin: float = 0.0) -> tuple[str, float, float]:
    """The module's verdict rule on per-seed differences: ``(verdict, mean, half-width of the 95 % interval)``."""
    mean, half = mean_ci(diffs)
    if mean - half > -margin:
        return "reproduced", mean, half
    if mean + half < -margin:
        return "not reproduced", mean, half
    return "inconclusive", mean, half


@dataclass
class Claim:
    """One row of ``results/claims.csv``: a paper's claim measured on a proxy, and its verdict."""

    paper: str
    claim: str
    metric: str
    paper_value: str
    ours: str
    ci95: str
    seeds: int
    verdict: str
    evidence: str


def judge(paper: str, claim: str, metric: str, paper_value: str, diffs: Sequence[float], *, margin: float = 0.0,
          evidence: str = "", digits: int = 2) -> Claim:
    """A :class:`Claim` from per-seed differences under :func:`verdict`; ``evidence`` should say what the
    difference is (and, when the claim is not reproduced, the diagnostic)."""
    outcome, mean, half = verdict(diffs, margin)
    margin_note = f" (margin {margin:g})" if margin else ""
    return Claim(paper, claim, metric, paper_value, f"{mean:+.{digits}f}",
                 f"[{mean - half:+.{digits}f}, {mean + half:+.{digits}f}]{margin_note}", len(diffs), outcome,
                 evidence)


# ------------------------------------------------------------------------------------------------ data
def subset(dataset: Dataset, n: int | None, seed: int = 0) -> Dataset:
    """A fixed random subset of ``n`` items (the whole set when ``n`` is None or not smaller)."""
    if n is None or n >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return Subset(dataset, order[:n].tolist())


# ------------------------------------------------------------------------------------------------ output
def frame(rows: Sequence[dict[str, Any]] | pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows (dicts or dataclasses) as a DataFrame; ``columns`` fixes the order and fails on a missing one."""
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(
        [asdict(r) if hasattr(r, "__dataclass_fields__") else r for r in rows])
    return df if columns is None else df.reindex(columns=list(columns))


def markdown(rows: Sequence[dict[str, Any]] | pd.DataFrame, floatfmt: str = "g") -> str:
    """A GitHub markdown table of the rows."""
    return frame(rows).to_markdown(index=False, floatfmt=floatfmt)


def markdown_table(head: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table from a header and rows of cells (written as given)."""
    return pd.DataFrame([[str(c) for c in row] for row in body], columns=list(head)).to_markdown(index=False)


def write_csv(path: Path, rows: Sequence[dict[str, Any]] | pd.DataFrame, columns: Sequence[str] | None = None) -> Path:
    """Rows as a CSV (a list cell becomes space-separated values with 4 decimals); returns ``path``."""
    df = frame(rows, columns)
    df = df.apply(lambda col: col.map(lambda v: " ".join(f"{x:.4f}" for x in v) if isinstance(v, list) else v))
    df.to_csv(path, index=False)
    return path


def write_proxy_results(output_dir: Path, name: str, arms: Sequence[dict[str, Any]], claims: Sequence[Claim]) -> None:
    """A proxy's two tables: ``<name>_proxies.csv`` (:data:`PROXY_COLUMNS`) and ``<name>_claims.csv``
    (:data:`CLAIM_COLUMNS`), which ``run_all`` gathers into ``proxies.csv`` and ``claims.csv``."""
    write_csv(output_dir / f"{name}_proxies.csv", arms, PROXY_COLUMNS)
    write_csv(output_dir / f"{name}_claims.csv", claims, CLAIM_COLUMNS)


# ------------------------------------------------------------------------------------------------ proxies
def proxy_settings(args: Any, demo: Any, full: Any, tiny: Any, counts: Sequence[str] = ("seeds",)) -> Any:
    """A proxy's settings dataclass: ``full`` with ``--full``, ``tiny`` with ``--tiny``, else ``demo``; the
    integer flags named in ``counts`` (``--seeds``, ``--epochs``, ...) replace their fields when given."""
    if args.full and args.tiny:
        raise UserError("--full and --tiny exclude each other")
    settings = full if args.full else tiny if args.tiny else demo
    for flag in counts:
        value = getattr(args, flag)
        if value is not None:
            if value < 1:
                raise UserError(f"--{flag} must be at least 1, got {value}")
            settings = replace(settings, **{flag: value})
    return settings


def print_summary(arms: Sequence[dict[str, Any]], claims: Sequence[Claim], report: Path, cpu_seconds: float) -> None:
    """What a proxy prints at the end: its arms, its claims with their verdicts, and where the report is."""
    print(markdown(arms))
    print(markdown(frame(claims, ["claim", "ours", "ci95", "verdict"])))
    print(f"wrote {report} (CPU time {cpu_seconds:.0f} s)")
