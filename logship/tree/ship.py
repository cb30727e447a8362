"""Catalog -> site: make the mirror match every row that is not durable there yet.

One round, in an order that keeps the site consistent: removals deepest first,
then folders parents first, then files and links, then folder mtimes (last,
because every change inside a folder moves its mtime at the site).
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from logship.catalog.models import TreeFile
from logship.catalog.store import Catalog
from logship.logs import event
from logship.tree import rows
from logship.tree.scan import EntryKind, TreeEntry, lstat_entry

log = logging.getLogger("logship.tree")

RETRY_START = 1.0
RETRY_MAX = 300.0
#: files up to this size go in pipelined batches (read whole into memory)
BATCH_FILE_MAX = 1024 * 1024
#: a batch ends at this many files or bytes, whichever comes first: bounds the
#: memory held and the work a failure of the link throws away
BATCH_FILES = 512
BATCH_BYTES = 16 * 1024 * 1024


class SourceChanged(Exception):
    """The source changed under an upload; the site keeps what it had."""


@dataclass(frozen=True)
class Shipped:
    """A file of a batch that is durable at the site under its final name."""

    sha256: str
    size: int
    before: os.stat_result


class TreeSite(Protocol):
    """The mirror root at a site (see logship.ship.sftp_tree.SftpTreeSite)."""

    def put_file(
        self,
        relative: bytes,
        local: bytes,
        *,
        unchanged: Callable[[os.stat_result, os.stat_result], bool],
    ) -> tuple[str, int, os.stat_result]: ...

    def put_files(
        self,
        files: Sequence[tuple[bytes, bytes]],
        *,
        unchanged: Callable[[os.stat_result, os.stat_result], bool],
    ) -> Sequence[Shipped | Exception]: ...

    def put_symlink(self, relative: bytes, target: bytes) -> None: ...

    def make_dirs(self, folders: Sequence[tuple[bytes, int]]) -> Sequence[OSError | None]: ...

    def set_dir_times(self, folders: Sequence[tuple[bytes, int]]) -> Sequence[bool]: ...

    def remove(self, relative: bytes) -> None: ...

    def close(self) -> None: ...


def same_file(before: os.stat_result, after: os.stat_result) -> bool:
    """Nothing wrote to, replaced or truncated the file between the two lstats."""
    return (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns) == (
        after.st_ino,
        after.st_size,
        after.st_mtime_ns,
        after.st_ctime_ns,
    )


def retry_delay(attempts: int) -> float:
    return min(RETRY_START * 2**attempts, RETRY_MAX)


class TreeShipper:
    def __init__(
        self,
        catalog: Catalog,
        connector: str,
        source: Path,
        settle: float,
        clock: Callable[[], float],
    ) -> None:
        self._catalog = catalog
        self._connector = connector
        self._root = os.fsencode(source)
        self._source = source
        self._settle = settle
        self._clock = clock

    def ship_round(
        self,
        site: TreeSite,
        alive: Callable[[], bool],
        stopping: Callable[[], bool],
        begin: Callable[[list[bytes]], None] = lambda paths: None,
    ) -> int:
        """Ship what is due; returns how many paths reached the site.

        `begin` is told the paths the round is about to change, before the first
        change (the site's generations log); nothing is changed when it raises.
        A failure of one path is recorded on its row (retried with backoff); a
        failure of the link itself is raised for the worker to reconnect.
        """
        now = self._clock()
        due = rows.due(self._catalog, self._connector, now)
        if not due:
            return 0
        removals = sorted((r for r in due if r.state == rows.DELETING), key=_path, reverse=True)
        folders = sorted(
            (r for r in due if r.state == rows.PENDING and r.kind == EntryKind.DIR), key=_path
        )
        others = sorted(
            (
                r
                for r in due
                if r.state == rows.PENDING and r.kind != EntryKind.DIR and self._ready(r, now)
            ),
            key=_path,
        )
        if not (removals or folders or others):
            return 0
        begin([r.path for r in (*removals, *folders, *others)])
        small = [r for r in others if r.kind == EntryKind.FILE and r.size <= BATCH_FILE_MAX]
        batched = {r.id for r in small}
        single = [r for r in others if r.id not in batched]
        touched_dirs: set[bytes] = set()
        done = 0
        # Folders exist before anything lands in them; small files then go in
        # batches, the rest one by one.
        for row in removals:
            if stopping():
                break  # what is left stays pending in the catalog
            if self._ship_one(site, row, alive):
                done += 1
                touched_dirs.add(row.path.rpartition(b"/")[0])
        if folders and not stopping():
            made = self._ship_folders(site, folders, alive)
            done += len(made)
            touched_dirs.update(path.rpartition(b"/")[0] for path in made)
        for batch in _batches(small):
            if stopping():
                break
            shipped = self._ship_batch(site, batch, alive)
            done += len(shipped)
            touched_dirs.update(path.rpartition(b"/")[0] for path in shipped)
        for row in single:
            if stopping():
                break
            if self._ship_one(site, row, alive):
                done += 1
                touched_dirs.add(row.path.rpartition(b"/")[0])
        self._restore_dir_times(site, touched_dirs, {r.path for r in folders})
        return done

    def _ship_one(self, site: TreeSite, row: TreeFile, alive: Callable[[], bool]) -> bool:
        try:
            return self._ship(site, row)
        except Exception as exc:
            if not alive():
                raise
            self._failed(row, exc)
            return False

    def _ship_folders(
        self, site: TreeSite, folders: list[TreeFile], alive: Callable[[], bool]
    ) -> list[bytes]:
        """All new folders of a round in one pipelined pass (parents sort first).

        They are marked shipped later, once their mtimes are set after their
        contents (see _restore_dir_times).
        """
        try:
            outcomes = site.make_dirs([(row.path, row.mode) for row in folders])
        except Exception as exc:
            if not alive():
                raise
            for row in folders:
                self._failed(row, exc)
            return []
        made: list[bytes] = []
        for row, outcome in zip(folders, outcomes, strict=True):
            if outcome is None:
                made.append(row.path)
            else:
                self._failed(row, outcome)
        return made

    def _ship_batch(
        self, site: TreeSite, batch: list[TreeFile], alive: Callable[[], bool]
    ) -> list[bytes]:
        """Small files in one pipelined upload and one catalog transaction."""
        # Looked at again: a batch late in a long round may run seconds after the plan.
        now = self._clock()
        ready = [row for row in batch if self._ready(row, now)]
        if not ready:
            return []
        files = [(row.path, os.path.join(self._root, row.path)) for row in ready]
        try:
            outcomes = site.put_files(files, unchanged=same_file)
        except Exception as exc:
            if not alive():
                raise
            # Nothing of this batch is known durable: all of it goes again.
            for row in ready:
                self._failed(row, exc)
            return []
        shipped: list[tuple[int, TreeEntry, str | None]] = []
        for row, outcome in zip(ready, outcomes, strict=True):
            if isinstance(outcome, Shipped):
                entry = _file_entry(row.path, outcome.before, outcome.size)
                shipped.append((row.id, entry, outcome.sha256))
            elif isinstance(outcome, SourceChanged):
                self._changed_while_shipping(row)
            else:
                self._failed(row, outcome)
        # Every file of the batch is durable at the site: one commit says so.
        rows.mark_shipped_many(self._catalog, shipped, self._clock())
        if shipped:
            # One line per batch: a first sync ships thousands of files a second.
            # Each file's shipped_at is in the catalog; --debug lists them here too.
            event(
                log,
                logging.INFO,
                "shipped batch",
                connector=self._connector,
                files=len(shipped),
                bytes=sum(entry.size for _, entry, _ in shipped),
                first=rows.show_path(shipped[0][1].path),
            )
            if log.isEnabledFor(logging.DEBUG):
                for _, entry, _ in shipped:
                    event(
                        log,
                        logging.DEBUG,
                        "shipped",
                        connector=self._connector,
                        path=rows.show_path(entry.path),
                        bytes=entry.size,
                    )
        return [entry.path for _, entry, _ in shipped]

    def _ready(self, row: TreeFile, now: float) -> bool:
        """The path is still of its kind and untouched for `settle`; else it is put back."""
        try:
            return self._same_kind(row, now) is not None and self._untouched(row, now)
        except Exception as exc:
            self._failed(row, exc)
            return False

    def _same_kind(self, row: TreeFile, now: float) -> TreeEntry | None:
        """The path as it is now, if still of the kind recorded; else it is put back
        (the watcher or the scan records it again)."""
        current = lstat_entry(self._source, row.path)
        if current is None or current.kind != row.kind:
            rows.retry_later(self._catalog, row.id, now + self._settle)
            return None
        return current

    def _untouched(self, row: TreeFile, now: float) -> bool:
        """Nothing has touched the file for `settle`; else it is put back until then.

        ctime moves on every write and cannot be set back (unlike mtime): a file
        written in pieces is shipped once, complete.
        """
        age = now - os.lstat(os.path.join(self._root, row.path)).st_ctime
        if age < self._settle:
            rows.retry_later(self._catalog, row.id, now + self._settle - age)
            return False
        return True

    def _changed_while_shipping(self, row: TreeFile) -> None:
        rows.retry_later(self._catalog, row.id, self._clock() + self._settle)
        event(
            log, logging.INFO, "changed while shipping", connector=self._connector, path=_show(row)
        )

    def _ship(self, site: TreeSite, row: TreeFile) -> bool:
        now = self._clock()
        if row.state == rows.DELETING:
            site.remove(row.path)
            rows.mark_removed(self._catalog, row.id)
            event(log, logging.INFO, "removed", connector=self._connector, path=_show(row))
            return True
        current = self._same_kind(row, now)
        if current is None:
            return False
        if current.kind is EntryKind.SYMLINK:
            assert current.link_target is not None
            site.put_symlink(row.path, current.link_target)
            rows.mark_shipped(self._catalog, row.id, current, None, self._clock())
            event(log, logging.INFO, "shipped", connector=self._connector, path=_show(row))
            return True
        return self._ship_file(site, row)

    def _ship_file(self, site: TreeSite, row: TreeFile) -> bool:
        if not self._untouched(row, self._clock()):
            return False
        local = os.path.join(self._root, row.path)
        try:
            sha256, size, shipped = site.put_file(row.path, local, unchanged=same_file)
        except SourceChanged:
            self._changed_while_shipping(row)
            return False
        entry = _file_entry(row.path, shipped, size)
        rows.mark_shipped(self._catalog, row.id, entry, sha256, self._clock())
        event(log, logging.INFO, "shipped", connector=self._connector, path=_show(row), bytes=size)
        return True

    def _restore_dir_times(self, site: TreeSite, touched: set[bytes], shipped: set[bytes]) -> None:
        if not touched and not shipped:
            return
        known = rows.rows_for(self._catalog, self._connector, touched | shipped)
        due: list[TreeFile] = []
        for path in sorted(touched | shipped):
            row = known.get(path)
            if row is None or row.kind != EntryKind.DIR or row.state == rows.DELETING:
                continue
            if row.state == rows.PENDING and path not in shipped:
                continue  # made later in its own round
            due.append(row)
        set_at = site.set_dir_times([(row.path, row.mtime_ns) for row in due])
        made = [
            (row.id, rows.entry_of(row), None)
            for row, was_set in zip(due, set_at, strict=True)
            if was_set and row.path in shipped
        ]
        # One commit for all new folders of the round, not one each.
        rows.mark_shipped_many(self._catalog, made, self._clock())

    def _failed(self, row: TreeFile, exc: Exception) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, FileNotFoundError) and row.state == rows.PENDING:
            # The source vanished: not an error, its removal is recorded next.
            rows.retry_later(self._catalog, row.id, self._clock() + self._settle)
            return
        rows.mark_failed(self._catalog, row.id, error, self._clock() + retry_delay(row.attempts))
        event(
            log,
            logging.WARNING,
            "ship failed",
            connector=self._connector,
            path=_show(row),
            error=error,
            attempts=row.attempts + 1,
        )


def _batches(files: list[TreeFile]) -> list[list[TreeFile]]:
    batches: list[list[TreeFile]] = []
    current: list[TreeFile] = []
    size = 0
    for row in files:
        if current and (len(current) >= BATCH_FILES or size + row.size > BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(row)
        size += row.size
    if current:
        batches.append(current)
    return batches


def _path(row: TreeFile) -> bytes:
    return row.path


def _file_entry(path: bytes, st: os.stat_result, size: int) -> TreeEntry:
    """The entry a file was shipped as: the lstat taken around its upload."""
    return TreeEntry(path, EntryKind.FILE, stat.S_IMODE(st.st_mode), size, st.st_mtime_ns)


def _show(row: TreeFile) -> str:
    return rows.show_path(row.path)
