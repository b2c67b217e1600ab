"""The domain imports only the standard library (import-linter checks the other layer rules)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

DOMAIN = Path(__file__).resolve().parents[2] / "domain"


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_domain_imports_only_the_standard_library() -> None:
    files = sorted(DOMAIN.glob("*.py"))
    assert files
    offenders = {
        f"{path.name}: {root}"
        for path in files
        for root in imported_roots(path)
        if root not in sys.stdlib_module_names and root not in {"domain", "__future__"}
    }
    assert offenders == set()
