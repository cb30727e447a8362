"""Source tree -> catalog: record which paths the site does not have as they are now.

Only lstat metadata is compared (type, mode, size, mtime, link target); content
is read, and hashed, only when a path is shipped, so after an outage a scan
costs one lstat per path and only the changed files move.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from logship.catalog.store import Catalog
from logship.engines.files import rows
from logship.engines.files.exclude import ExcludeRules
from logship.engines.files.rows import FilesPathRow
from logship.engines.files.scan import EntryKind, TreeEntry, lstat_entry, scan_tree
from logship.engines.files.watcher import Touched


class Tracker:
    def __init__(
        self,
        catalog: Catalog,
        connector: str,
        source: Path,
        rules: ExcludeRules,
        *,
        propagate_deletes: bool,
    ) -> None:
        self._catalog = catalog
        self._connector = connector
        self._source = source
        self._rules = rules
        self._propagate = propagate_deletes

    def excluded(self, path: bytes, *, is_dir: bool) -> bool:
        """True for an excluded path or one inside an excluded folder."""
        parts = path.split(b"/")
        for depth in range(1, len(parts)):
            if self._rules.excludes(b"/".join(parts[:depth]), is_dir=True):
                return True
        return self._rules.excludes(path, is_dir=is_dir)

    def reconcile(self, now: float, below: bytes = b"") -> int:
        """Compare the tree (or the folder `below`) with the catalog; returns changes found."""
        known = rows.rows_below(self._catalog, self._connector, below)
        seen: set[bytes] = set()
        entries: Iterable[TreeEntry] = scan_tree(self._source, self._rules, below)
        if below:
            top = lstat_entry(self._source, below)
            if top is None or top.kind is not EntryKind.DIR:
                return self.touch(Touched(below, deep=False), now)
            entries = [top, *entries]
        changed_entries = []
        for entry in entries:
            seen.add(entry.path)
            if self._differs(entry, known.get(entry.path)):
                changed_entries.append(entry)
        changed = rows.record_changed(self._catalog, self._connector, changed_entries, now)
        gone = [path for path, row in known.items() if path not in seen and self._live(row)]
        rows.record_gone(self._catalog, self._connector, gone, now, propagate=self._propagate)
        return changed + len(gone)

    def touch(self, touched: Touched, now: float) -> int:
        """Look at one path the watcher reported; returns changes found."""
        entry = lstat_entry(self._source, touched.path)
        if entry is None:
            # Gone, and with it everything below it if it was a folder.
            known = rows.rows_below(self._catalog, self._connector, touched.path)
            gone = [path for path, row in known.items() if self._live(row)]
            rows.record_gone(self._catalog, self._connector, gone, now, propagate=self._propagate)
            return len(gone)
        if self.excluded(touched.path, is_dir=entry.kind is EntryKind.DIR):
            return 0
        if entry.kind is EntryKind.DIR and touched.deep:
            return self.reconcile(now, below=touched.path)
        known = rows.rows_below(self._catalog, self._connector, touched.path)
        changed = 0
        if self._differs(entry, known.get(touched.path)):
            changed += rows.record_changed(self._catalog, self._connector, [entry], now)
        if entry.kind is not EntryKind.DIR:
            # A folder replaced by a file or link takes its old contents with it.
            below = [path for path, row in known.items() if path != touched.path]
            below = [path for path in below if self._live(known[path])]
            rows.record_gone(self._catalog, self._connector, below, now, propagate=self._propagate)
            changed += len(below)
        return changed

    @staticmethod
    def _live(row: FilesPathRow) -> bool:
        return row.state != rows.DELETING

    @staticmethod
    def _differs(entry: TreeEntry, row: FilesPathRow | None) -> bool:
        if row is None or row.state == rows.DELETING:
            return True
        return not entry.same_metadata(rows.entry_of(row))
