"""A worker's link to its site: connecting with backoff, the journal of the link
going up and down, and the link's state in the catalog.

Every worker that keeps a connection to a site holds one `SiteLink`: the thread
that ships a site's spool connectors, and each files connector's worker. Each link
reports only for the connectors its worker serves (their `link_state` rows), so
one worker's link never speaks for another's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from logship.catalog.store import Catalog
from logship.config.model import SiteConfig
from logship.errors import HostKeyRefused
from logship.logs import event
from logship.ship.transport import Transport

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0

#: what a worker opens over a new connection (its folders at the site, say)
Opened = TypeVar("Opened")


class SiteUnusable(Exception):
    """Connected, but what the worker needs at the site is not usable (its folders):
    the link itself is fine, the worker tries again later."""


class Backoff:
    """Delays that double from BACKOFF_START up to BACKOFF_MAX, until reset."""

    def __init__(self) -> None:
        self._delay = BACKOFF_START

    def next(self) -> float:
        delay = self._delay
        self._delay = min(self._delay * 2, BACKOFF_MAX)
        return delay

    def reset(self) -> None:
        self._delay = BACKOFF_START


@dataclass(frozen=True)
class _Attempt(Generic[Opened]):
    """How connecting went: a connection and what was opened over it, or why not."""

    transport: Transport | None = None
    opened: Opened | None = None
    unreachable: Exception | None = None
    unusable: str | None = None


def _nothing_to_close(_opened: Any) -> None:
    pass


class SiteLink(Generic[Opened]):
    """One worker's connection to `site`, for `connectors`.

    `open_site` runs on each new connection (it may raise SiteUnusable); what it
    returns is `opened` while the connection stands, and `close_site` closes it.
    Only the worker's own thread calls the methods, except that `connect_ahead`
    runs one attempt (network only, no catalog) on a helper thread.
    """

    def __init__(
        self,
        site: SiteConfig,
        connectors: Sequence[str],
        catalog: Catalog,
        connect: Callable[[SiteConfig], Transport],
        clock: Callable[[], float],
        open_site: Callable[[Transport], Opened],
        *,
        log: logging.Logger,
        close_site: Callable[[Opened], None] = _nothing_to_close,
        fields: dict[str, str] | None = None,
    ) -> None:
        self.site = site
        self.connectors = list(connectors)
        self._catalog = catalog
        self._connect = connect
        self._clock = clock
        self._open_site = open_site
        self._close_site = close_site
        self._log = log
        #: added to each log event (which connector's worker speaks)
        self._fields = fields or {}
        self.transport: Transport | None = None
        self.opened: Opened | None = None
        self._backoff = Backoff()
        self._retry_at = 0.0  # time.monotonic()
        self._ahead: Future[_Attempt[Opened]] | None = None
        self._up: bool | None = None  # the last link state told to the journal
        self._unusable: str | None = None

    @property
    def is_alive(self) -> bool:
        return self.transport is not None and self.transport.is_alive

    def retry_in(self) -> float:
        """Seconds until the next connection attempt is due."""
        return max(0.0, self._retry_at - time.monotonic())

    def connect_ahead(self) -> None:
        """Start connecting now on a helper thread (the worker has other work to
        start meanwhile); the next `try_connect` takes the outcome."""
        runner = ThreadPoolExecutor(1, thread_name_prefix=f"connect-{self.site.name}")
        self._ahead = runner.submit(self._attempt)
        runner.shutdown(wait=False)

    def try_connect(self) -> bool:
        """Connected, connecting now when not and an attempt is due."""
        if self.transport is not None:
            return True
        if time.monotonic() < self._retry_at:
            return False
        ahead, self._ahead = self._ahead, None
        attempt = ahead.result() if ahead is not None else self._attempt()
        if attempt.unreachable is not None:
            self._unreachable(attempt.unreachable)
            self._retry_later()
            return False
        self.report(None)
        self._journal(True, f"connected to site {self.site.name}")
        if attempt.unusable is not None:
            if self._unusable != attempt.unusable:
                event(self._log, logging.ERROR, attempt.unusable, **self._fields)
                for connector in self.connectors:
                    self._catalog.add_event(connector, self._clock(), "error", attempt.unusable)
            self._unusable = attempt.unusable
            self._retry_later()
            return False
        self._unusable = None
        self.transport, self.opened = attempt.transport, attempt.opened
        self._backoff.reset()
        event(self._log, logging.INFO, "connected", site=self.site.name, **self._fields)
        return True

    def report(self, error: str | None) -> None:
        """The link is up; `error` is what still stands in the way, if anything."""
        self._catalog.set_link_state(self.site.name, self.connectors, True, error, self._clock())

    def lost(self, exc: BaseException) -> None:
        """The connection broke: say so, close it; the next attempt is due at once."""
        event(
            self._log,
            logging.WARNING,
            "link lost",
            site=self.site.name,
            error=str(exc),
            **self._fields,
        )
        self._down(str(exc), f"link to site {self.site.name} lost: {exc}")
        self.disconnect()

    def disconnect(self) -> None:
        opened, self.opened = self.opened, None
        transport, self.transport = self.transport, None
        if transport is None:
            return
        if opened is not None:
            self._close_site(opened)
        self._close(transport)

    def close(self) -> None:
        """The worker stops: its connection, and one still being made, are closed."""
        self.disconnect()
        ahead, self._ahead = self._ahead, None
        if ahead is not None and (attempt := ahead.result()).transport is not None:
            if attempt.opened is not None:
                self._close_site(attempt.opened)
            self._close(attempt.transport)

    def _attempt(self) -> _Attempt[Opened]:
        """Connect and open what the worker needs there: network only, no catalog."""
        try:
            transport = self._connect(self.site)
        except Exception as exc:
            return _Attempt(unreachable=exc)
        try:
            opened = self._open_site(transport)
        except SiteUnusable as exc:
            self._close(transport)
            return _Attempt(unusable=str(exc))
        except Exception as exc:
            self._close(transport)
            return _Attempt(unreachable=exc)
        return _Attempt(transport=transport, opened=opened)

    def _unreachable(self, exc: Exception) -> None:
        if isinstance(exc, HostKeyRefused):
            event(
                self._log,
                logging.ERROR,
                "host key refused",
                site=self.site.name,
                error=str(exc),
                **self._fields,
            )
            self._down(str(exc), f"host key refused: {exc}")
            return
        event(
            self._log,
            logging.WARNING,
            "site unreachable",
            site=self.site.name,
            error=str(exc),
            **self._fields,
        )
        self._down(str(exc), f"site {self.site.name} unreachable: {exc}")

    def _down(self, error: str, message: str) -> None:
        self._catalog.set_link_state(self.site.name, self.connectors, False, error, self._clock())
        self._journal(False, message)

    def _journal(self, up: bool, message: str) -> None:
        """Link changes go to the catalog's journal (the dashboard's events), once each."""
        if self._up == up:
            return
        self._up = up
        for connector in self.connectors:
            self._catalog.add_event(connector, self._clock(), "link", message)

    def _retry_later(self) -> None:
        self._retry_at = time.monotonic() + self._backoff.next()

    def _close(self, transport: Transport) -> None:
        try:
            transport.close()
        except Exception as exc:
            event(self._log, logging.DEBUG, "close failed", site=self.site.name, error=str(exc))
