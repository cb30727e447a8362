"""The daemon's streaming thread for one connector: keep the tunnel to the site
open, and supervise the primary's side several times a second."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from logship.catalog.store import Catalog
from logship.config.model import SiteConfig
from logship.engines.postgresql.engine import PostgresConnector
from logship.engines.postgresql.streaming.lease import SyncLease, lease_path
from logship.engines.postgresql.streaming.primary import StreamSupervisor
from logship.engines.postgresql.streaming.tunnel import SiteTunnel, primary_connector
from logship.engines.postgresql.tools import parse_dsn
from logship.errors import first_line
from logship.logs import event
from logship.manifest import SiteLayout
from logship.ship.link import Backoff
from logship.ship.sftp import SftpTransport

log = logging.getLogger("logship.streaming")

#: how often the primary's side is sampled: exposure is measured to about this
SAMPLE_S = 0.25
#: how often the synchronous mode's lease is renewed at the site
LEASE_S = 1.0


class StreamWorker(threading.Thread):
    def __init__(
        self,
        connector: PostgresConnector,
        site: SiteConfig,
        catalog: Catalog,
        clock: Callable[[], float],
        stop: threading.Event,
    ) -> None:
        super().__init__(name=f"stream-{connector.name}", daemon=True)
        self.connector = connector
        self.site = site
        self.catalog = catalog
        self._clock = clock
        self._stopping = stop
        self._wake = threading.Event()
        join = primary_connector(
            parse_dsn(connector.primary.dsn, setting=f"connector {connector.name}: [primary].dsn")
        )
        self.tunnel = SiteTunnel(
            site, connector.streaming.site_port, join, connector.name, connector.streaming.user
        )
        self.supervisor = StreamSupervisor(connector, lambda: self.tunnel.is_alive, self._journal)
        self._backoff = Backoff()
        self._retry_at = 0.0
        self._up = False
        self._tunnel_error: str | None = None
        self._lease_at = 0.0
        self._lease_mode: str | None = None
        self._lease_since = 0.0
        self._lease_site: SftpTransport | None = None
        self._layout = SiteLayout.for_connector(site.root, connector.name)

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._round()
                except Exception as exc:  # a catalog hiccup, say: the next round retries
                    event(
                        log,
                        logging.ERROR,
                        "streaming round failed",
                        connector=self.connector.name,
                        error=first_line(exc),
                    )
                self._wake.wait(SAMPLE_S)
                self._wake.clear()
        finally:
            self._release_sync()
            self.tunnel.close()
            self.supervisor.close()

    def _round(self) -> None:
        self._keep_tunnel()
        facts = self.supervisor.sample()
        if self._tunnel_error and not self.tunnel.is_alive:
            shown = facts.get("error")
            facts["error"] = "; ".join(e for e in (self._tunnel_error, shown) if e)
        facts.setdefault("measured_at", self._clock())
        self._renew_lease(facts)
        self.catalog.record_stream_facts(self.connector.name, facts)

    def _keep_tunnel(self) -> None:
        if self.tunnel.is_alive:
            return
        if self._up:
            self._up = False
            event(
                log,
                logging.WARNING,
                "streaming tunnel lost",
                connector=self.connector.name,
                site=self.site.name,
            )
            self._journal("streaming", "the streaming tunnel to the site was lost", None)
        now = self._clock()
        if now < self._retry_at:
            return
        self.tunnel.close()
        self._lease_site = None
        try:
            self.tunnel.open()
        except Exception as exc:  # OperationFailed, ForwardRefused, paramiko's, OSError
            error = first_line(exc)
            if error != self._tunnel_error:
                event(
                    log,
                    logging.WARNING,
                    "streaming tunnel down",
                    connector=self.connector.name,
                    site=self.site.name,
                    error=error,
                )
            self._tunnel_error = error
            self._retry_at = now + self._backoff.next()
            return
        event(
            log,
            logging.INFO,
            "streaming tunnel open",
            connector=self.connector.name,
            site=self.site.name,
            port=self.connector.streaming.site_port,
        )
        if self._tunnel_error is not None:
            self._journal("streaming", "the streaming tunnel is open again", None)
        self._up = True
        self._tunnel_error = None
        self._backoff.reset()

    def _release_sync(self) -> None:
        """Maximum availability must not outlive the daemon: with the tunnel gone,
        nobody would drop the primary to async, and every commit would wait for good.
        Maximum protection stays: that is what it promises."""
        streaming = self.connector.streaming
        if streaming.protection != "availability" or self.supervisor.mode in (None, "async"):
            return
        at = self._clock()
        if not self._renew_lease({"sync_mode": "async", "measured_at": at}):
            # The site was not told: keep the last lease's promise before dropping.
            promised = self.supervisor.promised_until
            if promised is not None and promised > at:
                time.sleep(promised - at)
        self.supervisor.release(self._clock(), "logship is stopping")

    def _renew_lease(self, facts: dict) -> bool:
        """Tell the site the mode in force, at once when it changes and every
        LEASE_S while commits wait for the standby."""
        mode = facts.get("sync_mode")
        if mode is None or self.site.restricted or not self.tunnel.is_alive:
            return False
        at = float(facts["measured_at"])
        if mode != self._lease_mode:
            self._lease_since = at
        elif mode == "async" or at - self._lease_at < LEASE_S:
            return True
        fallback = self.connector.streaming.fallback_after
        lease = SyncLease(
            connector=self.connector.name,
            sync_mode=mode,
            since=self._lease_since,
            written_at=at,
            holds_until=at + fallback if mode == "availability" else None,
            flush_lsn=facts.get("flush_lsn"),
        )
        try:
            if self._lease_site is None:
                self._lease_site = SftpTransport(self.site, client=self.tunnel.client)
            self._lease_site.put_atomic(lease_path(self._layout), [lease.to_json()])
        except Exception as exc:  # the link: the tunnel's own check finds it next round
            self._lease_site = None
            event(
                log,
                logging.WARNING,
                "streaming lease not written",
                connector=self.connector.name,
                error=first_line(exc),
            )
            return False
        # Only a lease that reached the site binds the supervisor.
        self.supervisor.promised_until = lease.holds_until
        self._lease_mode, self._lease_at = mode, at
        return True

    def _journal(self, kind: str, message: str, detail: str | None) -> None:
        self.catalog.add_event(self.connector.name, self._clock(), kind, message, detail)
