"""One thread per files connector: watch its source, keep a connection, converge the site.

Every catalog write for the connector's paths happens on this thread, in one direction:
watcher events and scans -> catalog rows -> the site -> rows marked shipped.
The catalog is the queue, so a restart (or a link back up) resumes from it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from logship import consistency
from logship.catalog.store import Catalog
from logship.config.model import SiteConfig
from logship.engines.files.engine import FilesConnector
from logship.engines.files.exclude import ExcludeRules
from logship.engines.files.generations import GenerationRecord
from logship.engines.files.ship import FilesShipper, FilesSite
from logship.engines.files.track import Tracker
from logship.engines.files.watcher import FilesWatcher
from logship.logs import event
from logship.manifest import SiteLayout
from logship.ship.link import SiteLink, SiteUnusable
from logship.ship.transport import Transport

log = logging.getLogger("logship.files")

#: how often settled watcher events are looked at when nothing else happens
TICK = 0.1


def sftp_files_site(transport: Transport, connector: FilesConnector) -> FilesSite:
    """The target folder over this transport; only SFTP can carry a file tree."""
    from logship.engines.files.sftp_site import SftpFilesSite
    from logship.ship.sftp import SftpTransport

    if not isinstance(transport, SftpTransport):
        raise TypeError(f"a files connector needs an SFTP link, not {type(transport).__name__}")
    receiver = [*transport.site.command, "tree-receive", connector.name]
    site = SftpFilesSite(transport, connector.standby.target, receiver)
    site.ensure_root()
    site.launch_receiver()
    return site


class FilesWorker(threading.Thread):
    def __init__(
        self,
        connector: FilesConnector,
        site: SiteConfig,
        catalog: Catalog,
        connect: Callable[[SiteConfig], Transport],
        clock: Callable[[], float],
        reconcile_interval: float,
        stop: threading.Event,
        open_site: Callable[[Transport, FilesConnector], FilesSite] = sftp_files_site,
    ) -> None:
        super().__init__(name=f"files-{connector.name}", daemon=True)
        self.connector = connector
        self.site = site
        self.catalog = catalog
        self._clock = clock
        self._reconcile_interval = reconcile_interval
        self._stopping = stop
        self._open_site = open_site
        self._wake = threading.Event()
        self._link = SiteLink(
            site,
            [connector.name],
            catalog,
            connect,
            clock,
            self._open_target,
            log=log,
            close_site=_close_target,
            fields={"connector": connector.name},
        )
        self._next_reconcile = 0.0
        self.tracker = Tracker(
            catalog,
            connector.name,
            connector.source,
            ExcludeRules(connector.exclude),
            propagate_deletes=connector.delete,
        )
        self.shipper = FilesShipper(
            catalog,
            connector.name,
            connector.source,
            connector.settle,
            clock,
            keep_write_bits=connector.keep_write_bits,
        )
        self.watcher = FilesWatcher(connector.source)
        self._layout = SiteLayout.for_connector(site.root, connector.name)

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        watching = False
        # The SSH handshake and the receiver's start at the site overlap the
        # first scan of the tree.
        self._link.connect_ahead()
        try:
            while not self._stopping.is_set():
                if not watching:
                    watching = self._start_watching()
                self._track(watching)
                if not self._link.try_connect():
                    self._idle()
                    continue
                target = self._link.opened
                assert target is not None
                try:
                    shipped = self.shipper.ship_round(
                        target,
                        lambda: self._link.is_alive,
                        self._stopping.is_set,
                        self._begin_generation,
                    )
                    self._complete_points()
                except Exception as exc:  # OSError, EOFError, paramiko's SSHException, ...
                    self._link.lost(exc)
                    continue
                if not shipped:
                    self._idle()
        finally:
            if watching:
                self.watcher.stop()
            self._link.close()

    def _idle(self) -> None:
        self._wake.wait(TICK)
        self._wake.clear()

    # -- the source -> the catalog -------------------------------------------------

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
            self.watcher = FilesWatcher(self.connector.source)
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
        assert self._link.transport is not None
        now = self._clock()
        generation = consistency.next_generation(self.catalog, self.connector.name, now)
        record = GenerationRecord.for_round(generation, now, paths)
        self._link.transport.append_durably(self._layout.generations_log, record.to_line())

    def _complete_points(self) -> None:
        """Points whose scanned changes are all durable at the site are written there."""
        transport = self._link.transport
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

    def _open_target(self, transport: Transport) -> FilesSite:
        """The target folder and the connector's site folder, on a new connection."""
        try:
            where = f"target folder {self.connector.standby.target}"
            target = self._open_site(transport, self.connector)
            # Where the generations log and consistency points go.
            where = f"site folder {self._layout.root}"
            transport.makedirs(self._layout.root)
        except Exception as exc:
            # The link is fine (other connectors of this site keep shipping);
            # only this connector's folders are not usable.
            raise SiteUnusable(f"{where} unusable: {exc}") from exc
        return target


def _close_target(target: FilesSite) -> None:
    target.close()
