"""One thread per files connector: watch the tree, keep a connection, converge the site.

Every catalog write for the tree happens on this thread, in one direction:
watcher events and scans -> catalog rows -> the site -> rows marked shipped.
The catalog is the queue, so a restart (or a link back up) resumes from it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from logship import consistency
from logship.catalog.store import Catalog
from logship.config.model import SiteConfig
from logship.engines.files.engine import FilesConnector
from logship.engines.files.exclude import ExcludeRules
from logship.engines.files.generations import GenerationRecord
from logship.engines.files.ship import TreeShipper, TreeSite
from logship.engines.files.track import Tracker
from logship.engines.files.watcher import TreeWatcher
from logship.logs import event
from logship.manifest import SiteLayout
from logship.ship.transport import Transport

log = logging.getLogger("logship.files")

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
#: how often settled watcher events are looked at when nothing else happens
TICK = 0.1


def sftp_tree_site(transport: Transport, connector: FilesConnector) -> TreeSite:
    """The mirror root over this transport; only SFTP can carry a file tree."""
    from logship.engines.files.sftp_site import SftpTreeSite
    from logship.ship.sftp import SftpTransport

    if not isinstance(transport, SftpTransport):
        raise TypeError(f"a files connector needs an SFTP link, not {type(transport).__name__}")
    receiver = [*transport.site.command, "tree-receive", connector.name]
    site = SftpTreeSite(transport, connector.standby.target, receiver)
    site.ensure_root()
    site.launch_receiver()
    return site


@dataclass(frozen=True)
class _LinkAttempt:
    """How connecting went: a link and mirror root, or why not."""

    transport: Transport | None = None
    tree: TreeSite | None = None
    #: connecting failed
    unreachable: Exception | None = None
    #: connected, but the mirror root or the site folder is not usable
    root_error: str | None = None


class MirrorWorker(threading.Thread):
    def __init__(
        self,
        connector: FilesConnector,
        site: SiteConfig,
        catalog: Catalog,
        connect: Callable[[SiteConfig], Transport],
        clock: Callable[[], float],
        reconcile_interval: float,
        stop: threading.Event,
        open_site: Callable[[Transport, FilesConnector], TreeSite] = sftp_tree_site,
    ) -> None:
        super().__init__(name=f"mirror-{connector.name}", daemon=True)
        self.connector = connector
        self.site = site
        self.catalog = catalog
        self._connect = connect
        self._clock = clock
        self._reconcile_interval = reconcile_interval
        self._stopping = stop
        self._open_site = open_site
        self._wake = threading.Event()
        self._transport: Transport | None = None
        self._ahead: Future[_LinkAttempt] | None = None
        self._tree: TreeSite | None = None
        self._backoff = BACKOFF_START
        self._next_connect = 0.0
        self._next_reconcile = 0.0
        self._link_up: bool | None = None
        self._root_error: str | None = None
        self.tracker = Tracker(
            catalog,
            connector.name,
            connector.source,
            ExcludeRules(connector.exclude),
            propagate_deletes=connector.delete,
        )
        self.shipper = TreeShipper(
            catalog,
            connector.name,
            connector.source,
            connector.settle,
            clock,
            keep_write_bits=connector.keep_write_bits,
        )
        self.watcher = TreeWatcher(connector.source)
        self._layout = SiteLayout.for_connector(site.root, connector.name)

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        watching = False
        # The SSH handshake and the receiver's start at the site overlap the
        # first scan of the tree.
        self._connect_ahead()
        try:
            while not self._stopping.is_set():
                if not watching:
                    watching = self._start_watching()
                self._track(watching)
                if self._tree is None and not self._try_connect():
                    self._idle()
                    continue
                tree = self._tree
                assert tree is not None
                try:
                    shipped = self.shipper.ship_round(
                        tree, self._alive, self._stopping.is_set, self._begin_generation
                    )
                    self._complete_points()
                except Exception as exc:  # OSError, EOFError, paramiko's SSHException, ...
                    self._lost(exc)
                    continue
                if not shipped:
                    self._idle()
        finally:
            if watching:
                self.watcher.stop()
            self._disconnect()
            self._drop_ahead()

    def _drop_ahead(self) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None and (attempt := ahead.result()).transport is not None:
            if attempt.tree is not None:
                attempt.tree.close()
            attempt.transport.close()

    def _idle(self) -> None:
        self._wake.wait(TICK)
        self._wake.clear()

    # -- the tree -> the catalog ---------------------------------------------------

    def _start_watching(self) -> bool:
        """Watch the source; until it exists, only scans (which find nothing) run."""
        try:
            self.watcher.start()
        except OSError as exc:
            if self._next_reconcile == 0.0:
                event(
                    log,
                    logging.WARNING,
                    "source not watchable",
                    connector=self.connector.name,
                    error=str(exc),
                )
            self.watcher = TreeWatcher(self.connector.source)
            return False
        # Events from before the watch are lost: scan right after it starts.
        self._next_reconcile = 0.0
        return True

    def _track(self, watching: bool) -> None:
        if not self.connector.source.is_dir():
            # An unmounted or missing source must not read as "everything deleted".
            return
        now = self._clock()
        overflow = watching and self.watcher.take_overflow()
        if overflow or time.monotonic() >= self._next_reconcile:
            if overflow:
                event(log, logging.WARNING, "events lost: rescan", connector=self.connector.name)
            changes = self.tracker.reconcile(now)
            self._next_reconcile = time.monotonic() + self._reconcile_interval
            if changes:
                event(
                    log, logging.INFO, "reconciled", connector=self.connector.name, changes=changes
                )
        if watching:
            for touched in self.watcher.take_settled(self.connector.settle):
                self.tracker.touch(touched, now)
        self._take_up_points()

    # -- consistency points --------------------------------------------------------

    def _take_up_points(self) -> None:
        """A new point's file state is the tree as a scan finds it now."""
        fresh = [
            p.id
            for p in consistency.open_parts(self.catalog, self.connector.name)
            if not p.scanned_at
        ]
        if not fresh:
            return
        now = self._clock()
        self.tracker.reconcile(now)
        consistency.mark_scanned(self.catalog, fresh, now)

    def _begin_generation(self, paths: list[bytes]) -> None:
        """The site's log learns of a round before the round changes anything."""
        assert self._transport is not None
        now = self._clock()
        generation = consistency.next_generation(self.catalog, self.connector.name, now)
        record = GenerationRecord.for_round(generation, now, paths)
        self._transport.append_durably(self._layout.generations_log, record.to_line())

    def _complete_points(self) -> None:
        """Points whose scanned changes are all durable at the site are written there."""
        transport = self._transport
        assert transport is not None
        for part in consistency.open_parts(self.catalog, self.connector.name):
            if part.scanned_at is None:
                continue
            if not consistency.durable_since(self.catalog, self.connector.name, part.scanned_at):
                break  # a later point cannot complete before an earlier one
            now = self._clock()
            generation = consistency.current_generation(self.catalog, self.connector.name)
            point = consistency.SitePoint.from_row(part, generation=generation, complete_at=now)
            transport.makedirs(self._layout.consistency_dir)
            transport.put_atomic(
                self._layout.consistency_dir / f"{part.point_id}.json", [point.to_bytes()]
            )
            consistency.mark_complete(self.catalog, part.id, generation, now)
            event(
                log,
                logging.INFO,
                "consistency point complete",
                connector=self.connector.name,
                point=part.point_id,
                database=part.database,
                lsn=part.lsn,
                generation=generation,
            )

    # -- the link ------------------------------------------------------------------

    def _alive(self) -> bool:
        transport = self._transport
        return transport is not None and transport.is_alive

    def _open_link(self) -> _LinkAttempt:
        """Connect and open the mirror root: network only, no catalog, so that it
        can run on another thread while the first scan runs."""
        try:
            transport = self._connect(self.site)
        except Exception as exc:
            return _LinkAttempt(unreachable=exc)
        try:
            where = f"mirror root {self.connector.standby.target}"
            tree = self._open_site(transport, self.connector)
            # Where the generations log and consistency points go.
            where = f"site folder {self._layout.root}"
            transport.makedirs(self._layout.root)
        except Exception as exc:
            # The link is fine (other connectors of this site keep shipping);
            # only this mirror's folders are not usable.
            transport.close()
            return _LinkAttempt(root_error=f"{where} unusable: {exc}")
        return _LinkAttempt(transport=transport, tree=tree)

    def _connect_ahead(self) -> None:
        """Start connecting now; the first `_try_connect` takes the outcome."""
        runner = ThreadPoolExecutor(1, thread_name_prefix=f"connect-{self.connector.name}")
        self._ahead = runner.submit(self._open_link)
        runner.shutdown(wait=False)

    def _try_connect(self) -> bool:
        if time.monotonic() < self._next_connect:
            return False
        ahead, self._ahead = self._ahead, None
        attempt = ahead.result() if ahead is not None else self._open_link()
        if attempt.unreachable is not None:
            exc = attempt.unreachable
            self._down(f"site {self.site.name} unreachable: {exc}", str(exc))
            self._retry_later()
            return False
        self.catalog.set_link_state(
            self.site.name, [self.connector.name], True, None, self._clock()
        )
        self._journal_link(True, f"connected to site {self.site.name}")
        if attempt.root_error is not None:
            if self._root_error != attempt.root_error:
                event(log, logging.ERROR, attempt.root_error, connector=self.connector.name)
                self.catalog.add_event(
                    self.connector.name, self._clock(), "error", attempt.root_error
                )
            self._root_error = attempt.root_error
            self._retry_later()
            return False
        assert attempt.transport is not None and attempt.tree is not None
        self._root_error = None
        self._transport, self._tree = attempt.transport, attempt.tree
        self._backoff = BACKOFF_START
        event(log, logging.INFO, "connected", site=self.site.name, connector=self.connector.name)
        return True

    def _retry_later(self) -> None:
        self._next_connect = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX)

    def _lost(self, exc: BaseException) -> None:
        self._down(f"link to site {self.site.name} lost: {exc}", str(exc))
        self._disconnect()
        self._next_connect = time.monotonic() + self._backoff

    def _down(self, message: str, error: str) -> None:
        event(log, logging.WARNING, "site unreachable", site=self.site.name, error=error)
        self.catalog.set_link_state(
            self.site.name, [self.connector.name], False, error, self._clock()
        )
        self._journal_link(False, message)

    def _journal_link(self, up: bool, message: str) -> None:
        if self._link_up == up:
            return
        self._link_up = up
        self.catalog.add_event(self.connector.name, self._clock(), "link", message)

    def _disconnect(self) -> None:
        tree = self._tree
        transport, self._transport, self._tree = self._transport, None, None
        if tree is not None:
            tree.close()
        if transport is not None:
            try:
                transport.close()
            except Exception as exc:
                event(log, logging.DEBUG, "close failed", site=self.site.name, error=str(exc))
