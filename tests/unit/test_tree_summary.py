"""A files connector's summary (status, the monitor's sample every second) stays
cheap on a large tree: its failing paths and newest shipped path come from indexes."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from logship.catalog.store import Catalog
from logship.engines.files import rows
from logship.engines.files.scan import EntryKind, TreeEntry


def _plan(db: sqlite3.Connection, query: str) -> str:
    return " ".join(str(row[-1]) for row in db.execute("EXPLAIN QUERY PLAN " + query, ("app",)))


def test_an_older_catalog_gains_the_summary_indexes_and_the_summary_uses_them(
    tmp_path: Path,
) -> None:
    database = tmp_path / "catalog.db"
    url = f"sqlite:///{database}"
    catalog = Catalog(url)
    now = time.time()
    entries = [TreeEntry(b"f%03d" % n, EntryKind.FILE, 0o644, n, n) for n in range(50)]
    rows.record_changed(catalog, "app", entries, now)
    due = {row.path: row for row in rows.due(catalog, "app", now)}
    for n in (3, 7):
        rows.mark_shipped(catalog, due[b"f%03d" % n].id, entries[n], "ab" * 32, now + n)
    rows.mark_failed(catalog, due[b"f010"].id, "PermissionError: denied", now + 60)
    catalog.close()
    with sqlite3.connect(database) as db:  # as an older logship left it
        db.execute("DROP INDEX ix_tree_files_failing")
        db.execute("DROP INDEX ix_tree_files_shipped")

    reopened = Catalog(url)
    try:
        summary = rows.summary(reopened, "app")
    finally:
        reopened.close()
    assert (summary.rows, summary.pending_files, summary.failing) == (50, 48, 1)
    assert summary.first_error == "f010: PermissionError: denied"
    assert (summary.last_shipped, summary.last_shipped_at) == (b"f007", now + 7)
    with sqlite3.connect(database) as db:
        failing = _plan(
            db,
            "SELECT count(*) FROM tree_files WHERE connector = ? AND error IS NOT NULL",
        )
        newest = _plan(
            db,
            "SELECT path FROM tree_files WHERE connector = ? AND shipped_at IS NOT NULL"
            " ORDER BY shipped_at DESC, id DESC LIMIT 1",
        )
    assert "ix_tree_files_failing" in failing
    assert "ix_tree_files_shipped" in newest and "TEMP B-TREE" not in newest
