"""Watching a source tree: watchdog events become "this path may have changed".

Events only make the files connector prompt; they carry no facts. It looks at
each path again (lstat) once it has had no event for `settle` seconds, so a
file being written is looked at once, after it settles. Events can be lost (an
inotify overflow, a directory moved in from outside), which the reconcile scan
covers: an overflow asks for one at once.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

#: watchdog reports a kernel queue overflow only through this logger
_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"
#: the events that can mean a change; opens and read-only closes are not even
#: asked of inotify: the files connector reads every file it ships, and each read would
#: come back as events to handle
CHANGE_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    DirModifiedEvent,
    FileMovedEvent,
    DirMovedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileClosedEvent,
]


@dataclass(frozen=True)
class Touched:
    path: bytes  # relative to the source
    #: a folder that appeared (created or moved in): everything below it is new too
    deep: bool


class _OverflowSignal(logging.Handler):
    def __init__(self, on_overflow: Callable[[], None]) -> None:
        super().__init__(level=logging.WARNING)
        self._on_overflow = on_overflow

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._on_overflow()


class FilesWatcher(FileSystemEventHandler):
    """Recursive watch on `source`; collects touched paths with their last event time."""

    def __init__(self, source: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._root = os.fsencode(source)
        self._clock = clock
        self._lock = threading.Lock()
        self._touched: dict[bytes, tuple[float, bool]] = {}
        self._overflowed = threading.Event()
        self._observer = Observer()
        self._signal = _OverflowSignal(self._overflowed.set)

    # -- watchdog side -----------------------------------------------------------

    def _relative(self, raw: str | bytes) -> bytes | None:
        path = raw if isinstance(raw, bytes) else os.fsencode(raw)
        if path == self._root:
            return None
        if not path.startswith(self._root + b"/"):
            return None
        return path[len(self._root) + 1 :]

    def _touch(self, raw: str | bytes, deep: bool) -> None:
        relative = self._relative(raw)
        if relative is None:
            return
        with self._lock:
            _, was_deep = self._touched.get(relative, (0.0, False))
            self._touched[relative] = (self._clock(), deep or was_deep)

    def on_any_event(self, event: FileSystemEvent) -> None:
        deep = event.is_directory and event.event_type in ("created", "moved")
        self._touch(event.src_path, deep and event.event_type == "created")
        if event.dest_path:
            self._touch(event.dest_path, deep)

    # -- the worker's side ---------------------------------------------------------

    def start(self) -> None:
        watch_logger = logging.getLogger(_OVERFLOW_LOGGER)
        watch_logger.addHandler(self._signal)
        if watch_logger.getEffectiveLevel() > logging.WARNING:
            watch_logger.setLevel(logging.WARNING)
        # A bytes path makes watchdog report bytes paths: no name is ever decoded.
        self._observer.schedule(self, self._root, recursive=True, event_filter=CHANGE_EVENTS)
        self._observer.start()

    def stop(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=10)
        logging.getLogger(_OVERFLOW_LOGGER).removeHandler(self._signal)

    def take_settled(self, settle: float) -> list[Touched]:
        """Paths with no event for `settle` seconds, removed from the watch list."""
        now = self._clock()
        with self._lock:
            ready = [
                (path, deep) for path, (at, deep) in self._touched.items() if now - at >= settle
            ]
            for path, _ in ready:
                del self._touched[path]
        return [Touched(path, deep) for path, deep in sorted(ready)]

    def take_overflow(self) -> bool:
        """True once after events were lost: only a full scan can tell what changed."""
        if self._overflowed.is_set():
            self._overflowed.clear()
            return True
        return False

    @property
    def waiting(self) -> int:
        with self._lock:
            return len(self._touched)
