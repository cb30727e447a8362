"""Extra connections to one site, so that a backlog ships several files at once.

One SSH connection is bound by one core's worth of cipher work on a fast link and
by its channel window on a far one (the window allows one window's worth of bytes
per round trip). A site worker ships a backlog across its own connection plus
these lanes; each lane is one more SSH connection (in a process of its own, see
lane_process), driven by one thread at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeVar

from logship.config.model import SiteConfig
from logship.logs import event
from logship.manifest import ManifestRecord, SiteLayout
from logship.spool import SpoolEntry

log = logging.getLogger("logship.ship")
T = TypeVar("T")
#: after a lane failed to connect, how long the site is left to the main connection
RETRY_S = 30.0


class Lane(Protocol):
    """One more connection to the site that ships whole spool files."""

    @property
    def is_alive(self) -> bool: ...

    def ship(self, layout: SiteLayout, entry: SpoolEntry, compression: str) -> ManifestRecord:
        """Make `entry` durable at the site with its record, as `ship_file` does."""
        ...

    def close(self) -> None: ...


class Lanes:
    """Up to `extra` lanes, each used by one task at a time; a round hands each
    usable slot one task, and the lane behind it connects there, in the
    background, so the worker's own connection starts shipping at once."""

    def __init__(self, site: SiteConfig, connect: Callable[[SiteConfig], Lane], extra: int) -> None:
        self.site = site
        self._connect = connect
        self._slots: list[Lane | None] = [None] * extra
        #: a slot's lane is connected by whichever task gets there first
        self._connecting = [threading.Lock() for _ in range(extra)]
        self._used_at = [0.0] * extra
        self._retry_at = 0.0
        self._pool = (
            ThreadPoolExecutor(extra, thread_name_prefix=f"lane-{site.name}") if extra else None
        )

    def usable(self) -> list[int]:
        """The slots a round may use: connected lanes, and empty slots unless a
        lane failed to connect a short while ago."""
        retrying = time.monotonic() < self._retry_at
        return [i for i, slot in enumerate(self._slots) if slot is not None or not retrying]

    def warm(self) -> None:
        """Connect every lane in the background: after a start or a reconnect a
        backlog is likely, and a lane takes a process start to come up."""
        if self._pool is not None:
            for index in self.usable():
                self._pool.submit(self.lane, index)

    def lane(self, index: int) -> Lane | None:
        """The lane in slot `index`, connected first if need be (None: it cannot be
        now, and the round goes on without it)."""
        with self._connecting[index]:
            return self._lane(index)

    def _lane(self, index: int) -> Lane | None:
        slot = self._slots[index]
        if slot is not None and not slot.is_alive:
            self.drop(slot)
            slot = None
        if slot is None:
            if time.monotonic() < self._retry_at:
                return None
            try:
                slot = self._slots[index] = self._connect(self.site)
            except Exception as exc:
                # The site may cap connections: the main one ships alone a while.
                self._retry_at = time.monotonic() + RETRY_S
                event(log, logging.DEBUG, "lane not connected", site=self.site.name, error=str(exc))
                return None
            event(log, logging.INFO, "lane connected", site=self.site.name, lane=index + 1)
        self._used_at[index] = time.monotonic()
        return slot

    def close_idle(self, idle_s: float) -> None:
        """Close lanes unused for `idle_s`: each is a process and an SSH session at
        the site, worth keeping for a backlog, not for a quiet primary."""
        now = time.monotonic()
        for index, lock in enumerate(self._connecting):
            if not lock.acquire(blocking=False):
                continue  # being connected right now: not idle
            try:
                slot = self._slots[index]
                if slot is not None and now - self._used_at[index] >= idle_s:
                    self.drop(slot)
            finally:
                lock.release()

    def submit(self, work: Callable[..., T], *args: object) -> Future[T]:
        assert self._pool is not None
        return self._pool.submit(work, *args)

    def drop(self, lane: Lane) -> None:
        for index, slot in enumerate(self._slots):
            if slot is lane:
                self._slots[index] = None
        try:
            lane.close()
        except Exception as exc:
            event(log, logging.DEBUG, "close failed", site=self.site.name, error=str(exc))

    def close(self) -> None:
        # A lane being connected in the background is waited for, then closed too.
        for index, lock in enumerate(self._connecting):
            with lock:
                slot = self._slots[index]
                if slot is not None:
                    self.drop(slot)

    def shutdown(self) -> None:
        self.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
