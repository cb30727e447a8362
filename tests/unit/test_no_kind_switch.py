"""Outside `logship/engines/`, no code tests an engine's kind or connector type.

What differs between engines is asked of the engine (`logship.engines.registry`);
a switch on the kind elsewhere is what makes a new engine an edit of many modules.
Comparisons of an engine's own enums (EntryKind, WalKind) inside its package are
its business, and a kind shown as text (`status.kind` in a table) is no switch.
"""

from __future__ import annotations

import re
from pathlib import Path

#: the source tree, not the installed copy the other tests import
PACKAGE = Path(__file__).resolve().parents[2] / "logship"
ENGINES = PACKAGE / "engines"

#: what a switch on an engine looks like
SWITCHES = [
    re.compile(r"\.kind\s*(==|!=)|(==|!=)\s*[\w.]+\.kind\b"),  # connector.kind == ...
    re.compile(r"\.kind\s+(not\s+)?in\b"),  # connector.kind in (...)
    re.compile(r"\bkind\s*(==|!=)\s*[\"']|[\"']\s*(==|!=)\s*kind\b"),  # kind == "files"
    re.compile(r"[\"']kind[\"']\)\s*(==|!=)"),  # table.get("kind") != ...
    re.compile(r"[\"']files[\"']\s*(==|!=)|(==|!=)\s*[\"']files[\"']"),  # ... == "files"
    re.compile(r"isinstance\(.*\b(PostgresConnector|FilesConnector)\b"),
    re.compile(r"\buses_spool\b"),  # "has a spool" standing in for "is PostgreSQL"
]


def kind_switches(root: Path, excluded: Path) -> list[str]:
    """`path:line: text` of each line under `root` (not under `excluded`) that
    switches on an engine's kind."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.is_relative_to(excluded):
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.strip()
            if code.startswith("#"):
                continue
            if any(pattern.search(code) for pattern in SWITCHES):
                found.append(f"{path.relative_to(root.parent)}:{number}: {code}")
    return found


def test_no_code_outside_the_engines_switches_on_an_engine_kind() -> None:
    found = kind_switches(PACKAGE, ENGINES)
    assert not found, "ask the engine instead (logship.engines.registry):\n" + "\n".join(found)


def test_the_grep_finds_each_kind_of_switch(tmp_path: Path) -> None:
    package = tmp_path / "logship"
    (package / "engines").mkdir(parents=True)
    lines = [
        'if connector.kind == "files":',
        "if kind != other.kind:",
        'if c.kind in ("files", "postgresql"):',
        'if kind == "postgresql":',
        'if table.get("kind") != "files":',
        'if "files" == name:',
        "if isinstance(c, PostgresConnector):",
        "if not isinstance(connector, (FilesConnector, int)):",
        "if engine_for(c.kind).uses_spool:",
    ]
    (package / "generic.py").write_text("\n".join(lines) + "\n")
    fine = [
        'if engine.dialect.name == "postgresql":',  # the catalog's SQL dialect
        "if entry.kind is EntryKind.FILE:",
        'print(f"{status.kind:<10}")',  # a kind shown as text
        '# connector.kind == "files" in a comment',
    ]
    (package / "shown.py").write_text("\n".join(fine) + "\n")
    (package / "engines" / "own.py").write_text('if connector.kind == "files":\n')
    found = kind_switches(package, package / "engines")
    assert [line.split(":")[1] for line in found] == [str(n) for n in range(1, len(lines) + 1)]
    assert all(line.startswith("logship/generic.py:") for line in found), found
