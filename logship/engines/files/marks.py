"""Shipped marks of a round's batches, written to the catalog beside the shipping.

A first sync marks thousands of files a second. Written on the shipping thread,
the marks (an UPDATE per file, then a commit with its fsync) took a sixth of
that thread's time; the sqlite and PostgreSQL drivers do that work without
holding the GIL, so a thread of their own lets the next batches be read and
sent meanwhile. Marks are only ever handed over for files already durable at
the site, and the round waits for every one of them before it ends: the next
round's plan must not find them pending and ship them again.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from logship.catalog.store import Catalog
from logship.engines.files import rows
from logship.engines.files.scan import TreeEntry

#: (row id, the entry as shipped, its sha256) of one file durable at the site
Mark = tuple[int, TreeEntry, str | None]


class ShippedMarks:
    """Marks written in the order handed over, on one thread started at the first."""

    def __init__(self, catalog: Catalog, clock: Callable[[], float]) -> None:
        self._catalog = catalog
        self._clock = clock
        self._pending: queue.SimpleQueue[list[Mark] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def add(self, marks: list[Mark]) -> None:
        """Mark these on the thread; a failure of an earlier mark is raised here."""
        self._raise_failure()
        if not marks:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="files-marks", daemon=True)
            self._thread.start()
        self._pending.put(marks)

    def finish(self, last: list[Mark]) -> None:
        """Every mark handed over is written, then `last`; the first failure is raised."""
        if self._thread is not None:
            self._pending.put(None)
            self._thread.join()
            self._thread = None
        self._raise_failure()
        # Written here: there is nothing left to overlap it with.
        rows.mark_shipped_many(self._catalog, last, self._clock())

    def _raise_failure(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (marks := self._pending.get()) is not None:
            if self._error is not None:
                continue  # raised to the round; what follows waits for the next round
            try:
                rows.mark_shipped_many(self._catalog, marks, self._clock())
            except BaseException as exc:
                self._error = exc
