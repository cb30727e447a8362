"""Spool watching: watchdog events plus a reconcile scan feed one queue.

Events can be lost (inotify overflow, events before start, a daemon restart), so
the reconcile scan is what guarantees nothing is missed; events only make
shipping prompt.
"""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from logship.durable import ensure_private_dir
from logship.logs import event
from logship.ready_source import ReadySource
from logship.spool import scan

log = logging.getLogger("logship.daemon")


@dataclass(frozen=True)
class SpoolEvent:
    connector: str
    path: Path
    #: marked ready by its producer, not in the spool (read-ahead)
    ready: bool = False


@dataclass(frozen=True)
class WatchedSpool:
    connector: str
    directory: Path
    accepts: Callable[[str], bool]


class _Arrivals(FileSystemEventHandler):
    """Files created or renamed into one folder, each offered by its path."""

    def _offer(self, path: Path) -> None:
        raise NotImplementedError

    def _path(self, raw_path: str | bytes) -> Path:
        return Path(raw_path.decode() if isinstance(raw_path, bytes) else raw_path)

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._offer(self._path(event.src_path))

    def on_moved(self, event: FileSystemEvent) -> None:
        # basic_archive and other tools write a temp name, then rename it.
        if not event.is_directory:
            self._offer(self._path(event.dest_path))


class _Handler(_Arrivals):
    def __init__(self, spool: WatchedSpool, events: queue.Queue[SpoolEvent]) -> None:
        self._spool = spool
        self._events = events

    def _offer(self, path: Path) -> None:
        if path.parent == self._spool.directory and self._spool.accepts(path.name):
            self._events.put(SpoolEvent(self._spool.connector, path))


class _ReadyHandler(_Arrivals):
    """A ready mark appearing: its file can ship before it is handed over."""

    def __init__(self, source: ReadySource, events: queue.Queue[SpoolEvent]) -> None:
        self._source = source
        self._events = events

    def _offer(self, path: Path) -> None:
        if path.parent != self._source.marks_dir:
            return
        name = self._source.name_of_mark(path.name)
        if name is not None:
            found = SpoolEvent(self._source.connector, self._source.files_dir / name, ready=True)
            self._events.put(found)


class SpoolWatcher:
    def __init__(
        self,
        spools: list[WatchedSpool],
        events: queue.Queue[SpoolEvent],
        ready: list[ReadySource] | None = None,
    ) -> None:
        self._spools = spools
        self._ready = ready or []
        self._events = events
        self._observer = Observer()

    def start(self) -> None:
        for spool in self._spools:
            ensure_private_dir(spool.directory)
            self._observer.schedule(_Handler(spool, self._events), str(spool.directory))
        for source in self._ready:
            if not os.access(source.marks_dir, os.R_OK | os.X_OK):
                # The reconcile scan keeps looking; until then archive-wal copies.
                event(
                    log,
                    logging.ERROR,
                    "read-ahead off: cannot read the ready marks",
                    connector=source.connector,
                    path=str(source.marks_dir),
                )
                continue
            self._observer.schedule(_ReadyHandler(source, self._events), str(source.marks_dir))
        self._observer.start()

    def reconcile(self) -> int:
        """Offer every file in every spool; the catalog ignores the ones it knows."""
        offered = 0
        for spool in self._spools:
            for entry in scan(spool.connector, spool.directory, spool.accepts):
                self._events.put(SpoolEvent(spool.connector, entry.path))
                offered += 1
        for source in self._ready:
            for name in sorted(source.ready_names()):
                self._events.put(SpoolEvent(source.connector, source.files_dir / name, ready=True))
                offered += 1
        return offered

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=10)
