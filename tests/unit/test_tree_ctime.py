"""A file's ctime in the state map: a rewrite keeping size and mtime is a change,
an untouched file is not, and a row an older logship wrote is not re-shipped."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from logship.catalog.store import Catalog
from logship.engines.files import rows
from logship.engines.files.exclude import ExcludeRules
from logship.engines.files.scan import EntryKind, TreeEntry, lstat_entry
from logship.engines.files.track import Tracker

CONNECTOR = "app"


def _tracker(catalog: Catalog, source: Path) -> Tracker:
    return Tracker(catalog, CONNECTOR, source, ExcludeRules([]), propagate_deletes=True)


def _ship_all(catalog: Catalog, source: Path, now: float) -> None:
    """Mark every pending row shipped as the mirror does: with the lstat it shipped."""
    shipped = []
    for row in rows.due(catalog, CONNECTOR, now):
        entry = lstat_entry(source, row.path)
        assert entry is not None
        shipped.append((row.id, entry, "ab" * 32 if entry.kind is EntryKind.FILE else None))
    rows.mark_shipped_many(catalog, shipped, now)


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    source = tmp_path / "src"
    (source / "etc").mkdir(parents=True)
    conf = source / "etc" / "app.conf"
    conf.write_bytes(b"port = 8080\n")
    (source / "etc" / "other.conf").write_bytes(b"other\n")
    os.symlink("etc/app.conf", source / "current.conf")
    return source, conf


def test_a_rewrite_keeping_size_and_mtime_is_a_change(tmp_path: Path) -> None:
    source, conf = _tree(tmp_path)
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        tracker = _tracker(catalog, source)
        now = time.time()
        assert tracker.reconcile(now) == 4  # etc, its two files, the link
        _ship_all(catalog, source, now)
        assert tracker.reconcile(now) == 0  # an untouched tree: nothing to ship
        assert rows.pending_paths(catalog, CONNECTOR) == set()

        before = conf.stat()
        conf.write_bytes(b"port = 9090\n")
        os.utime(conf, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert tracker.reconcile(now + 1) == 1
        assert rows.pending_paths(catalog, CONNECTOR) == {b"etc/app.conf"}
        (row,) = (r for r in rows.due(catalog, CONNECTOR, now + 1) if r.path == b"etc/app.conf")
        assert (row.size, row.mtime_ns) == (before.st_size, before.st_mtime_ns)
        assert row.ctime_ns == conf.stat().st_ctime_ns != before.st_ctime_ns
        assert row.sha256 is None and row.state == rows.PENDING
    finally:
        catalog.close()


def test_a_row_an_older_logship_wrote_gains_the_ctime_when_next_shipped(
    tmp_path: Path,
) -> None:
    """An older catalog has no ctime column: it is added, and its rows (no ctime
    known) are judged by the rest of their metadata, not all shipped again."""
    source, conf = _tree(tmp_path)
    database = tmp_path / "catalog.db"
    url = f"sqlite:///{database}"
    catalog = Catalog(url)
    now = time.time()
    _tracker(catalog, source).reconcile(now)
    _ship_all(catalog, source, now)
    catalog.close()
    with sqlite3.connect(database) as db:  # as an older logship left it
        db.execute("ALTER TABLE tree_files DROP COLUMN ctime_ns")

    reopened = Catalog(url)
    try:
        tracker = _tracker(reopened, source)
        assert all(row.ctime_ns is None for row in rows.all_rows(reopened, CONNECTOR).values())
        assert tracker.reconcile(now + 1) == 0
        conf.write_bytes(b"port = 9999\n")  # a change the older logship saw too (mtime)
        assert tracker.reconcile(now + 2) == 1
        _ship_all(reopened, source, now + 2)
        known = rows.all_rows(reopened, CONNECTOR)
        assert known[b"etc/app.conf"].ctime_ns == conf.stat().st_ctime_ns
        assert known[b"etc/other.conf"].ctime_ns is None
    finally:
        reopened.close()


def test_ctimes_are_compared_only_when_both_sides_know_one() -> None:
    old = TreeEntry(b"f", EntryKind.FILE, 0o644, 3, 10)
    seen = TreeEntry(b"f", EntryKind.FILE, 0o644, 3, 10, None, 20)
    assert old.same_metadata(seen) and seen.same_metadata(old)
    assert seen.same_metadata(TreeEntry(b"f", EntryKind.FILE, 0o644, 3, 10, None, 20))
    assert not seen.same_metadata(TreeEntry(b"f", EntryKind.FILE, 0o644, 3, 10, None, 21))
    assert not seen.same_metadata(TreeEntry(b"f", EntryKind.FILE, 0o644, 4, 10, None, 20))
