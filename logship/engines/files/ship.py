"""Catalog -> site: make the target folder match every row that is not durable there yet.

One round, in an order that keeps the site consistent: removals deepest first,
then folders parents first, then files and links, then folder mtimes (last,
because every change inside a folder moves its mtime at the site).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from logship.catalog.store import Catalog
from logship.engines.files import rows
from logship.engines.files.marks import Mark, ShippedMarks
from logship.engines.files.modes import site_mode
from logship.engines.files.rows import FilesPathRow
from logship.engines.files.scan import EntryKind, TreeEntry, file_entry, lstat_entry
from logship.logs import event

log = logging.getLogger("logship.files")

RETRY_START = 1.0
RETRY_MAX = 300.0
#: files up to this size go in pipelined batches (read whole into memory)
BATCH_FILE_MAX = 1024 * 1024
#: a batched file grown past this since it was recorded is left for the next
#: round, which sees its new size
BATCH_READ_MAX = 4 * 1024 * 1024
#: a batch ends at this many files or bytes, whichever comes first: bounds the
#: memory held and the work a failure of the link throws away
BATCH_FILES = 512
BATCH_BYTES = 16 * 1024 * 1024
#: batches sent and not yet finished: the next batch is read and sent while the
#: site lands the one before
BATCHES_IN_FLIGHT = 3
#: files whose arrival at the site is recorded in one catalog transaction: an
#: fsync per batch held up the next batch (until then a crash only means
#: shipping them again)
MARK_ROWS = 2048


class SourceChanged(Exception):
    """The source changed under an upload; the site keeps what it had."""


@dataclass(frozen=True)
class BatchFile:
    """A small file read whole for a batch: the copy the site gets, as it was read."""

    relative: bytes
    data: bytes
    #: fstat at the read; the shipped mode and mtime come from it
    before: os.stat_result
    #: the connector's keep_write_bits (see logship.engines.files.modes)
    keep_write_bits: bool = False

    @property
    def mode(self) -> int:
        """The mode the site gets: the source's, masked (see logship.engines.files.modes)."""
        return site_mode(self.before.st_mode, folder=False, keep_write_bits=self.keep_write_bits)


class BatchUpload(Protocol):
    """A batch on its way to the site (see FilesSite.start_files)."""

    def finish(self) -> Sequence[OSError | None]:
        """Once the batch is durable at the site: each file's error, None when it landed."""
        ...


class FilesSite(Protocol):
    """The target folder at a site (see logship.engines.files.sftp_site.SftpFilesSite)."""

    def put_file(
        self,
        relative: bytes,
        local: bytes,
        *,
        unchanged: Callable[[os.stat_result, os.stat_result], bool],
        keep_write_bits: bool = False,
    ) -> tuple[str, int, os.stat_result]: ...

    def start_files(self, files: Sequence[BatchFile]) -> BatchUpload:
        """Send a batch; the next may be read and sent before this one is finished."""
        ...

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


class FilesShipper:
    def __init__(
        self,
        catalog: Catalog,
        connector: str,
        source: Path,
        settle: float,
        clock: Callable[[], float],
        *,
        keep_write_bits: bool = False,
    ) -> None:
        self._catalog = catalog
        self._keep_write_bits = keep_write_bits
        self._connector = connector
        self._root = os.fsencode(source)
        self._source = source
        self._settle = settle
        self._clock = clock

    def ship_round(
        self,
        site: FilesSite,
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
        files = [r for r in due if r.state == rows.PENDING and r.kind != EntryKind.DIR]
        # A small file is looked at once, when its batch reads it (see _load).
        small = sorted(
            (r for r in files if r.kind == EntryKind.FILE and r.size <= BATCH_FILE_MAX), key=_path
        )
        batched = {r.id for r in small}
        single = sorted(
            (r for r in files if r.id not in batched and self._ready(r, now)), key=_path
        )
        # A path is shipped only into a folder the site has as a folder: a parent
        # the site may still hold as a link (or file) would lead the write
        # wherever that link points.
        waiting: set[int] = set()
        while more := self._without_parent(folders, {r.path for r in folders}, now):
            # A folder put back takes the folders planned inside it along.
            waiting |= more
            folders = [r for r in folders if r.id not in more]
        planned_dirs = {r.path for r in folders}
        waiting |= self._without_parent([*small, *single], planned_dirs, now)
        small = [r for r in small if r.id not in waiting]
        single = [r for r in single if r.id not in waiting]
        if not (removals or folders or small or single):
            return 0
        planned = [r.path for r in (*removals, *folders, *small, *single)]
        begun = False

        def begin_once() -> None:
            # Not before something is about to change: a round of files still
            # being written must not append a generation to the site's log.
            nonlocal begun
            if not begun:
                begin(planned)
                begun = True

        touched_dirs: set[bytes] = set()
        done = 0
        # Folders exist before anything lands in them; small files then go in
        # batches, the rest one by one.
        for row in removals:
            if stopping():
                break  # what is left stays pending in the catalog
            begin_once()
            if self._ship_one(site, row, alive):
                done += 1
                touched_dirs.add(row.path.rpartition(b"/")[0])
        if folders and not stopping():
            begin_once()
            made = self._ship_folders(site, folders, alive)
            done += len(made)
            touched_dirs.update(path.rpartition(b"/")[0] for path in made)
        else:
            made = []
        # A folder of the plan that did not land keeps its contents waiting too.
        unmade = planned_dirs.difference(made)
        small = [r for r in small if _parent(r.path) not in unmade]
        single = [r for r in single if _parent(r.path) not in unmade]
        shipped = self._ship_batches(site, small, alive, stopping, begin_once)
        done += len(shipped)
        touched_dirs.update(path.rpartition(b"/")[0] for path in shipped)
        for row in single:
            if stopping():
                break
            begin_once()
            if self._ship_one(site, row, alive):
                done += 1
                touched_dirs.add(row.path.rpartition(b"/")[0])
        self._restore_dir_times(site, touched_dirs, {r.path for r in folders})
        return done

    def _without_parent(self, due: list[FilesPathRow], planned: set[bytes], now: float) -> set[int]:
        """Ids of the `due` rows whose folder is neither shipped as a folder nor
        planned as one this round; each is put back until it is (not a failure:
        the watcher or the scan records the folder)."""
        parents = {_parent(r.path) for r in due} - planned - {b""}
        known = rows.rows_for(self._catalog, self._connector, parents)
        folders = {
            path
            for path, row in known.items()
            if row.kind == EntryKind.DIR and row.state == rows.SHIPPED
        }
        ready = folders | planned | {b""}
        waiting = {r.id for r in due if _parent(r.path) not in ready}
        rows.retry_later_many(self._catalog, sorted(waiting), now + max(self._settle, RETRY_START))
        return waiting

    def _ship_one(self, site: FilesSite, row: FilesPathRow, alive: Callable[[], bool]) -> bool:
        try:
            return self._ship(site, row)
        except Exception as exc:
            if not alive():
                raise
            self._failed(row, exc)
            return False

    def _ship_folders(
        self, site: FilesSite, folders: list[FilesPathRow], alive: Callable[[], bool]
    ) -> list[bytes]:
        """All new folders of a round in one pipelined pass (parents sort first).

        They are marked shipped later, once their mtimes are set after their
        contents (see _restore_dir_times).
        """
        try:
            keep = self._keep_write_bits
            outcomes = site.make_dirs(
                [
                    (row.path, site_mode(row.mode, folder=True, keep_write_bits=keep))
                    for row in folders
                ]
            )
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

    def _ship_batches(
        self,
        site: FilesSite,
        small: list[FilesPathRow],
        alive: Callable[[], bool],
        stopping: Callable[[], bool],
        begin: Callable[[], None],
    ) -> list[bytes]:
        """Small files in batches, each read and sent while the site lands the ones
        before; the catalog learns what is durable every MARK_ROWS files (one
        commit, one fsync, beside the shipping: see logship.engines.files.marks) and at
        the end, a link failure included."""
        shipped: list[bytes] = []
        unmarked: list[Mark] = []
        marks = ShippedMarks(self._catalog, self._clock)
        in_flight: deque[tuple[list[_Loaded], BatchUpload]] = deque()

        def finish_oldest() -> None:
            nonlocal unmarked
            unmarked.extend(self._finish_batch(*in_flight.popleft(), alive))
            if len(unmarked) >= MARK_ROWS:
                marks.add(unmarked)
                shipped.extend(entry.path for _, entry, _ in unmarked)
                unmarked = []

        try:
            for batch in _batches(small):
                if stopping():
                    break
                loaded = self._load(batch)
                if not loaded:
                    continue
                begin()
                try:
                    upload = site.start_files([item.file for item in loaded])
                except Exception as exc:
                    if not alive():
                        raise
                    for item in loaded:
                        self._failed(item.row, exc)
                    continue
                in_flight.append((loaded, upload))
                if len(in_flight) >= BATCHES_IN_FLIGHT:
                    finish_oldest()
            while in_flight:
                finish_oldest()
        finally:
            # What is durable at the site is recorded even when the link broke.
            marks.finish(unmarked)
            shipped.extend(entry.path for _, entry, _ in unmarked)
        return shipped

    def _load(self, batch: list[FilesPathRow]) -> list[_Loaded]:
        """The batch's files read whole, each settled and unchanged while read.

        A file that is not ready is put back (see _load_one); nothing of the
        batch has reached the site yet.
        """
        # Looked at now: a batch late in a long round may run seconds after the plan.
        now = self._clock()
        loaded: list[_Loaded] = []
        for row in batch:
            try:
                item = self._load_one(row, now)
            except Exception as exc:
                self._failed(row, exc)
                continue
            if item is not None:
                loaded.append(item)
        return loaded

    def _load_one(self, row: FilesPathRow, now: float) -> _Loaded | None:
        local = self._root + b"/" + row.path
        try:
            data, before = read_small(local, BATCH_READ_MAX)
        except NotRegularFile:
            # Now a folder, a link or something else: the watcher or the scan
            # records it again.
            rows.retry_later(self._catalog, row.id, now + self._settle)
            return None
        except SourceChanged:
            self._changed_while_shipping(row)
            return None
        age = now - before.st_ctime
        if age < self._settle:
            # Still being written (see _untouched).
            rows.retry_later(self._catalog, row.id, now + self._settle - age)
            return None
        # Through the stream a file is in place before the site answers: it must
        # be a complete copy as read, not checked afterwards.
        if not same_file(before, os.lstat(local)):
            self._changed_while_shipping(row)
            return None
        batched = BatchFile(row.path, data, before, self._keep_write_bits)
        return _Loaded(row, batched, hashlib.sha256(data).hexdigest())

    def _finish_batch(
        self, loaded: list[_Loaded], upload: BatchUpload, alive: Callable[[], bool]
    ) -> list[Mark]:
        """The batch's files now durable at the site, to be marked shipped."""
        try:
            outcomes = upload.finish()
        except Exception as exc:
            if not alive():
                raise
            # Nothing of this batch is known durable: all of it goes again.
            for item in loaded:
                self._failed(item.row, exc)
            return []
        shipped: list[Mark] = []
        for item, error in zip(loaded, outcomes, strict=True):
            if error is None:
                # As shipped: the fstat the file was read with.
                entry = file_entry(item.row.path, item.file.before, len(item.file.data))
                shipped.append((item.row.id, entry, item.sha256))
            else:
                self._failed(item.row, error)
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
        return shipped

    def _ready(self, row: FilesPathRow, now: float) -> bool:
        """The path is still of its kind and untouched for `settle`; else it is put back."""
        try:
            return self._same_kind(row, now) is not None and self._untouched(row, now)
        except Exception as exc:
            self._failed(row, exc)
            return False

    def _same_kind(self, row: FilesPathRow, now: float) -> TreeEntry | None:
        """The path as it is now, if still of the kind recorded; else it is put back
        (the watcher or the scan records it again)."""
        current = lstat_entry(self._source, row.path)
        if current is None or current.kind != row.kind:
            rows.retry_later(self._catalog, row.id, now + self._settle)
            return None
        return current

    def _untouched(self, row: FilesPathRow, now: float) -> bool:
        """Nothing has touched the file for `settle`; else it is put back until then.

        ctime moves on every write and cannot be set back (unlike mtime): a file
        written in pieces is shipped once, complete.
        """
        age = now - os.lstat(os.path.join(self._root, row.path)).st_ctime
        if age < self._settle:
            rows.retry_later(self._catalog, row.id, now + self._settle - age)
            return False
        return True

    def _changed_while_shipping(self, row: FilesPathRow) -> None:
        rows.retry_later(self._catalog, row.id, self._clock() + self._settle)
        event(
            log, logging.INFO, "changed while shipping", connector=self._connector, path=_show(row)
        )

    def _ship(self, site: FilesSite, row: FilesPathRow) -> bool:
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

    def _ship_file(self, site: FilesSite, row: FilesPathRow) -> bool:
        if not self._untouched(row, self._clock()):
            return False
        local = os.path.join(self._root, row.path)
        try:
            sha256, size, shipped = site.put_file(
                row.path, local, unchanged=same_file, keep_write_bits=self._keep_write_bits
            )
        except SourceChanged:
            self._changed_while_shipping(row)
            return False
        entry = file_entry(row.path, shipped, size)  # the lstat taken around its upload
        rows.mark_shipped(self._catalog, row.id, entry, sha256, self._clock())
        event(log, logging.INFO, "shipped", connector=self._connector, path=_show(row), bytes=size)
        return True

    def _restore_dir_times(self, site: FilesSite, touched: set[bytes], shipped: set[bytes]) -> None:
        if not touched and not shipped:
            return
        known = rows.rows_for(self._catalog, self._connector, touched | shipped)
        due: list[FilesPathRow] = []
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

    def _failed(self, row: FilesPathRow, exc: Exception) -> None:
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


@dataclass(frozen=True)
class _Loaded:
    row: FilesPathRow
    file: BatchFile
    sha256: str


class NotRegularFile(Exception):
    """The path is no longer a regular file."""


def read_small(local: bytes, limit: int) -> tuple[bytes, os.stat_result]:
    """The whole file and its fstat; SourceChanged when it is over `limit` or
    changed size while read, NotRegularFile when it is not a file any more."""
    try:
        # O_NONBLOCK: a file replaced by a fifo must not block the read.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(local, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink now
            raise NotRegularFile(str(exc)) from None
        raise
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise NotRegularFile("no longer a regular file")
        if before.st_size > limit:
            raise SourceChanged("grew past the batch size")
        # One byte more than the size is asked for: a file that grew since the
        # fstat shows it here, one that grows later in the caller's lstat.
        data = os.read(fd, before.st_size + 1)
        while len(data) < before.st_size and (more := os.read(fd, before.st_size + 1 - len(data))):
            data += more  # a short read (a network file system)
    finally:
        os.close(fd)
    if len(data) != before.st_size:
        raise SourceChanged("changed while being read")
    return data, before


def _batches(files: list[FilesPathRow]) -> list[list[FilesPathRow]]:
    batches: list[list[FilesPathRow]] = []
    current: list[FilesPathRow] = []
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


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def _path(row: FilesPathRow) -> bytes:
    return row.path


def _show(row: FilesPathRow) -> str:
    return rows.show_path(row.path)
