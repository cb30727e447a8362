"""Shipped marks written beside the shipping: all written by the end of the round,
in order, and a failure reaches the round."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import pytest

from logship.catalog.store import Catalog
from logship.engines.files import marks as marks_module
from logship.engines.files import rows
from logship.engines.files.marks import Mark, ShippedMarks
from logship.engines.files.scan import EntryKind, TreeEntry


def _catalog_with(tmp_path: Path, count: int) -> tuple[Catalog, list[Mark]]:
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    entries = [TreeEntry(b"f%04d" % n, EntryKind.FILE, 0o644, n, n) for n in range(count)]
    rows.record_changed(catalog, "app", entries, time.time())
    due = {row.path: row for row in rows.due(catalog, "app", time.time())}
    return catalog, [(due[e.path].id, e, f"{n:064x}") for n, e in enumerate(entries)]


def _shipped(catalog: Catalog) -> set[bytes]:
    return {p for p, row in rows.all_rows(catalog, "app").items() if row.state == rows.SHIPPED}


def test_every_mark_is_written_when_finish_returns(tmp_path: Path) -> None:
    catalog, marks = _catalog_with(tmp_path, 300)
    try:
        shipped = ShippedMarks(catalog, time.time)
        for start in range(0, 250, 50):
            shipped.add(marks[start : start + 50])
        shipped.finish(marks[250:])
        assert _shipped(catalog) == {entry.path for _, entry, _ in marks}
        by_path = rows.all_rows(catalog, "app")
        assert all(by_path[e.path].sha256 == sha for _, e, sha in marks)
    finally:
        catalog.close()


def test_a_round_without_batches_to_overlap_starts_no_thread(tmp_path: Path) -> None:
    catalog, marks = _catalog_with(tmp_path, 3)
    try:
        before = threading.active_count()
        shipped = ShippedMarks(catalog, time.time)
        shipped.add([])
        shipped.finish(marks)
        assert threading.active_count() == before
        assert _shipped(catalog) == {entry.path for _, entry, _ in marks}
    finally:
        catalog.close()


def test_a_failed_mark_is_raised_and_nothing_after_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog, marks = _catalog_with(tmp_path, 30)
    real = rows.mark_shipped_many
    calls: list[int] = []

    def failing_once(catalog: Catalog, shipped: list[Mark], now: float) -> None:
        calls.append(len(shipped))
        if len(calls) == 2:
            raise OSError("disk full")
        real(catalog, shipped, now)

    monkeypatch.setattr(marks_module.rows, "mark_shipped_many", failing_once)
    try:
        shipped = ShippedMarks(catalog, time.time)
        # The next add raises it once the thread has failed; finish always does.
        with contextlib.suppress(OSError):
            for start in range(0, 30, 10):
                shipped.add(marks[start : start + 10])
        with pytest.raises(OSError, match="disk full"):
            shipped.finish([])
        # The first ten are durable in the catalog; the rest ship again next round.
        assert _shipped(catalog) == {entry.path for _, entry, _ in marks[:10]}
    finally:
        catalog.close()
