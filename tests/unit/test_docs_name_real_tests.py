"""Every test that docs/security.md and docs/reliability.md name must exist: a
boundary whose proof was renamed or deleted would otherwise still read as proven."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("docs/security.md", "docs/reliability.md")
# `tests/x.py::name` or a bare `::name` that continues the last file named in the cell
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?(?:::(\w+))?(?:\[[^\]`]*\])?`")


def _test_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def _references(doc: str) -> list[tuple[int, str, str | None]]:
    found: list[tuple[int, str, str | None]] = []
    for number, line in enumerate((ROOT / doc).read_text().splitlines(), 1):
        if not line.startswith("|"):
            continue
        for cell in line.split(" | "):
            current: str | None = None
            for match in REFERENCE.finditer(cell):
                file, name = match.group(1), match.group(2)
                if file is None and name is None:
                    continue
                current = file or current
                if current is None:
                    continue
                found.append((number, current, name))
    return found


@pytest.mark.parametrize("doc", DOCS)
def test_every_named_test_exists(doc: str) -> None:
    references = _references(doc)
    assert references, f"{doc} names no test"
    missing = []
    for number, file, name in references:
        path = ROOT / file
        if not path.exists():
            missing.append(f"{doc}:{number}: {file} does not exist")
        elif name is not None and name not in _test_names(path):
            missing.append(f"{doc}:{number}: {file}::{name} does not exist")
    assert not missing, "\n".join(missing)
