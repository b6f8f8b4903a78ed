"""The distribution: every package imports, the import rules of DESIGN.md hold, the code is ruff-clean."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBPROJECTS = ("padnet", "dsnet", "dyt", "jeidnn", "adn")
PACKAGES = ("common", *SUBPROJECTS, "benchmarks")


def test_every_package_imports_in_a_fresh_interpreter():
    code = f"import {', '.join(PACKAGES)}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr


def imported_top_level(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["common", *SUBPROJECTS])
def test_import_rules(package):
    """Subprojects import only common (and themselves); common imports no subproject."""
    forbidden = set(SUBPROJECTS) - {package}
    for path in (REPO / package).rglob("*.py"):
        wrong = imported_top_level(path) & forbidden
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}"


def test_ruff_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "--quiet", str(REPO)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
