"""Output helpers every table script shares: a markdown table and a CSV of result rows."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def markdown_table(head: Sequence[str], body: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are formatted with ``str``."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in body])


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """``rows`` as a CSV whose columns are every key in order of appearance; a list cell is written as
    space-separated values with 4 decimals."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: " ".join(f"{v:.4f}" for v in row[k]) if isinstance(row.get(k), list) else row.get(k)
                             for k in keys})
