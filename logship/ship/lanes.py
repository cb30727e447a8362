"""Extra connections to one site, so that a backlog ships several files at once.

One SSH connection is bound by one core's worth of cipher work on a fast link and
by its channel window on a far one (the window allows one window's worth of bytes
per round trip). A site worker ships a backlog across its own connection plus
these lanes; each lane is one more SSH connection, used by one thread at a time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from logship.config.model import SiteConfig
from logship.logs import event
from logship.ship.transport import Transport

log = logging.getLogger("logship.ship")
T = TypeVar("T")
#: after a lane failed to connect, how long the site is left to the main connection
RETRY_S = 30.0


class Lanes:
    def __init__(
        self, site: SiteConfig, connect: Callable[[SiteConfig], Transport], extra: int
    ) -> None:
        self.site = site
        self._connect = connect
        self._slots: list[Transport | None] = [None] * extra
        self._retry_at = 0.0
        self._pool = (
            ThreadPoolExecutor(extra, thread_name_prefix=f"lane-{site.name}") if extra else None
        )

    def ready(self) -> list[Transport]:
        """The lanes that are connected, connecting those that are not (a lane that
        cannot connect now is simply not used this time)."""
        for index, slot in enumerate(self._slots):
            if slot is not None and not getattr(slot, "is_alive", True):
                self.drop(slot)
                slot = None
            if slot is None and time.monotonic() >= self._retry_at:
                try:
                    self._slots[index] = self._connect(self.site)
                except Exception as exc:
                    # The site may cap connections: the main one ships alone a while.
                    self._retry_at = time.monotonic() + RETRY_S
                    event(
                        log,
                        logging.DEBUG,
                        "lane not connected",
                        site=self.site.name,
                        error=str(exc),
                    )
        return [slot for slot in self._slots if slot is not None]

    def submit(self, work: Callable[..., T], *args: object) -> Future[T]:
        assert self._pool is not None
        return self._pool.submit(work, *args)

    def drop(self, transport: Transport) -> None:
        for index, slot in enumerate(self._slots):
            if slot is transport:
                self._slots[index] = None
        try:
            transport.close()
        except Exception as exc:
            event(log, logging.DEBUG, "close failed", site=self.site.name, error=str(exc))

    def close(self) -> None:
        for slot in list(self._slots):
            if slot is not None:
                self.drop(slot)

    def shutdown(self) -> None:
        self.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
