"""`logship run`: the daemon at the primary site.

Flow, one way: spool event -> queue -> catalog row -> site worker ships it ->
manifest at the site + catalog state -> metrics.
"""

from __future__ import annotations

import fcntl
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from logship.catalog.models import FileState, SpoolFile
from logship.catalog.opening import open_catalog
from logship.catalog.store import Catalog, NewFile
from logship.config.model import Config, SiteConfig
from logship.durable import ensure_private_dir, sha256_of, sha256_of_chunks
from logship.engines.registry import BackgroundJob, DaemonWorker, WorkerContext, engine_for
from logship.errors import OperationFailed, SafetyRefusal
from logship.faults import crash_point
from logship.logs import event
from logship.manifest import SiteLayout
from logship.private_state import tighten_state
from logship.ready_source import SourceReleased, read_held
from logship.schedule import ScheduleRunner
from logship.ship.site_worker import ShipTarget, SiteWorker
from logship.ship.transport import Transport
from logship.spool import SpoolEntry, entry_for, keep_copy, retire, write_tombstone
from logship.status.monitor import Monitor, build_sinks
from logship.tombstones import shipped_sha256
from logship.watch import SpoolEvent, SpoolWatcher, WatchedSpool

log = logging.getLogger("logship.daemon")

LOCK_NAME = "logship.lock"
MONITOR_INTERVAL = 1.0
#: spool events recorded in one catalog commit at most
INGEST_BATCH = 512
#: on stop, how long scheduled jobs get to finish before their SSH links are cut
ABORT_GRACE_S = 10.0


class StateDirLock:
    """One daemon per state_dir: two would ship, retire and mark the same files."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise SafetyRefusal(
                f"{self.path}: a logship daemon (pid {holder}) already runs on this state_dir; "
                "stop it first"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _default_connect(site: SiteConfig) -> Transport:
    from logship.ship.gated import connect

    return connect(site)


def _record_facts(job: BackgroundJob, catalog: Catalog) -> None:
    catalog.record_primary_facts(job.connector, job.run())


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        connect: Callable[[SiteConfig], Transport] = _default_connect,
    ) -> None:
        self.config = config
        self._clock = clock
        self._connect = connect
        self._events: queue.Queue[SpoolEvent] = queue.Queue()
        self._stop = threading.Event()
        #: per connector: where its files are read ahead of hand-over, if anywhere
        self._ready = {
            name: source
            for name, connector in sorted(config.connectors.items())
            if (source := engine_for(connector.kind).ready_source(connector)) is not None
        }

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        state_dir = self.config.logship.state_dir
        ensure_private_dir(state_dir)
        # Made by an older logship or a verb run under a loose umask: make it ours only.
        for item in tighten_state(state_dir, self.config.catalog_url):
            event(
                log,
                logging.WARNING,
                "tightened permissions",
                path=str(item.path),
                mode=f"{item.old_mode:04o}",
                now=f"{item.new_mode:04o}",
            )
        lock = StateDirLock(state_dir)
        lock.acquire()
        # A catalog that cannot be opened: one line, the URL's password masked.
        catalog = open_catalog(self.config)
        spools = self._build()
        workers, own_workers = self._build_workers(catalog)
        watcher = SpoolWatcher(spools, self._events, list(self._ready.values()))
        scheduler = BackgroundScheduler(timezone="UTC")
        schedules: ScheduleRunner | None = None
        monitor = Monitor(self.config, catalog, build_sinks(self.config, catalog), self._clock)
        jobs = [
            job
            for name, connector in sorted(self.config.connectors.items())
            for job in engine_for(connector.kind).background_jobs(connector)
        ]
        try:
            watcher.start()
            watcher.reconcile()
            scheduler.add_job(
                watcher.reconcile,
                "interval",
                seconds=self.config.logship.reconcile_interval,
                id="reconcile",
                max_instances=1,
                coalesce=True,
            )
            for job in jobs:
                scheduler.add_job(
                    _record_facts,
                    "interval",
                    args=[job, catalog],
                    seconds=job.interval,
                    id=job.name,
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=None,
                )
            scheduler.add_job(
                monitor.sample,
                "interval",
                seconds=MONITOR_INTERVAL,
                id="monitor",
                max_instances=1,
                coalesce=True,
            )
            schedules = ScheduleRunner(
                self.config, catalog, scheduler, self._connect, self._clock, self._stop
            )
            schedules.install()
            scheduler.start()
            schedules.publish_next_runs()
            for worker in workers.values():
                worker.start()
            for own in own_workers:
                own.start()
            event(log, logging.INFO, "started", connectors=sorted(self.config.connectors))
            self._ingest_until_stopped(catalog, workers, [*workers.values(), *own_workers])
        finally:
            if schedules is not None:
                schedules.abort(grace=ABORT_GRACE_S)
            scheduler.shutdown(wait=True)
            for job in jobs:
                job.close()
            monitor.close()
            watcher.stop()
            self._stop.set()
            for worker in workers.values():
                worker.wake()
                # An upload in flight finishes: a worker checks the stop flag
                # only between files.
                worker.join()
            for own in own_workers:
                own.wake()
                own.join()
            catalog.close()
            lock.release()
            event(log, logging.INFO, "stopped")

    def _build(self) -> list[WatchedSpool]:
        spools: list[WatchedSpool] = []
        for name, connector in sorted(self.config.connectors.items()):
            engine = engine_for(connector.kind)
            spool_dir = engine.spool_dir(self.config, connector)
            if spool_dir is None:
                continue  # its files do not come through a spool
            spools.append(WatchedSpool(name, spool_dir, engine.accepts))
        return spools

    def _build_workers(self, catalog: Catalog) -> tuple[dict[str, SiteWorker], list[DaemonWorker]]:
        """What each connector's engine needs running: one shipping worker per site
        for the connectors whose spool ships on it, and the engines' own threads."""
        context = WorkerContext(self.config, catalog, self._connect, self._clock, self._stop)
        targets: dict[str, list[ShipTarget]] = {}
        own: list[DaemonWorker] = []
        for name, connector in sorted(self.config.connectors.items()):
            engine = engine_for(connector.kind)
            needs = engine.daemon_workers(connector, context)
            own.extend(needs.threads)
            spool_dir = engine.spool_dir(self.config, connector)
            if not needs.site_shipping or spool_dir is None:
                continue
            site = self.config.site_of(connector)
            targets.setdefault(site.name, []).append(
                ShipTarget(
                    connector=name,
                    kind=connector.kind,
                    spool_dir=spool_dir,
                    compression=connector.compression,
                    layout=SiteLayout.for_connector(site.root, name),
                    keep_bytes=engine.kept_after_shipping(connector),
                    ready=self._ready.get(name),
                )
            )
        workers = {
            site: SiteWorker(
                self.config.sites[site],
                site_targets,
                catalog,
                self._connect,
                self._clock,
                self.config.logship.lag_sample_interval,
                self._stop,
            )
            for site, site_targets in targets.items()
        }
        return workers, own

    def _ingest_until_stopped(
        self,
        catalog: Catalog,
        workers: dict[str, SiteWorker],
        threads: Sequence[DaemonWorker],
    ) -> None:
        while not self._stop.is_set():
            # A shipping thread that died (an unexpected error; its traceback is on
            # stderr) would leave the daemon up but shipping nothing: exit instead,
            # nonzero, so that the service manager restarts it.
            dead = [thread.name for thread in threads if not thread.is_alive()]
            if dead and not self._stop.is_set():
                event(log, logging.ERROR, "shipping thread died", threads=dead)
                raise OperationFailed(
                    f"shipping thread(s) {', '.join(dead)} stopped on an unexpected error "
                    "(see the log); the daemon exits so that it can be restarted"
                )
            try:
                batch = [self._events.get(timeout=0.5)]
            except queue.Empty:
                continue
            # Whatever else already waits goes into the same commit.
            while len(batch) < INGEST_BATCH:
                try:
                    batch.append(self._events.get_nowait())
                except queue.Empty:
                    break
            for connector_name in self._ingest(catalog, batch):
                workers[self.config.connectors[connector_name].site].wake()

    def _ingest(self, catalog: Catalog, spool_events: list[SpoolEvent]) -> set[str]:
        """Record spool files in the catalog; returns the connectors with files that
        wait to be shipped."""
        entries: dict[tuple[str, str], SpoolEntry] = {}
        news = []
        for spool_event in spool_events:
            if spool_event.ready:
                entry = self._ready[spool_event.connector].entry(spool_event.path.name)
            else:
                entry = entry_for(spool_event.connector, spool_event.path)
            if entry is None:
                continue  # already shipped and retired, or handed over
            engine = engine_for(self.config.connectors[entry.connector].kind)
            entries[(entry.connector, entry.name)] = entry
            news.append(
                NewFile(
                    connector=entry.connector,
                    name=entry.name,
                    order_key=engine.ship_order(entry.name),
                    size=entry.size,
                    closed_at=entry.closed_at,
                )
            )
        known = catalog.add_discovered_many(news, self._clock())
        waiting = set()
        for key, entry in entries.items():
            existing = known.get(key)
            if existing is None or existing.state == FileState.DISCOVERED:
                waiting.add(entry.connector)
            else:
                self._pushed_again(entry, existing)
        return waiting

    def _pushed_again(self, entry: SpoolEntry, existing: SpoolFile) -> None:
        if entry.held_by is not None:
            self._still_ready(entry, existing)
            return
        if existing.state in (FileState.SHIPPED, FileState.APPLIED) and existing.sha256:
            # Back in the spool after shipping: a crash before it was retired, or
            # PostgreSQL pushing it again. Same content is done; different is a
            # conflict that must stay visible.
            if sha256_of(entry.path) == existing.sha256:
                connector = self.config.connectors[entry.connector]
                engine = engine_for(connector.kind)
                retire(
                    entry.path.parent,  # the engine's spool, where the file was found
                    entry.name,
                    existing.sha256,
                    keep=engine.kept_after_shipping(connector) > 0,
                )
            else:
                event(
                    log,
                    logging.ERROR,
                    "conflict: shipped file pushed again with different content",
                    connector=entry.connector,
                    file=entry.name,
                )

    def _still_ready(self, entry: SpoolEntry, existing: SpoolFile) -> None:
        """A file read ahead and shipped, still marked ready: archive-wal has not
        confirmed it yet. After a crash between the catalog and its tombstone, the
        tombstone is what archive-wal needs; the producer's file is never touched."""
        if existing.state not in (FileState.SHIPPED, FileState.APPLIED) or not existing.sha256:
            return
        connector = self.config.connectors[entry.connector]
        spool_dir = engine_for(connector.kind).spool_dir(self.config, connector)
        if spool_dir is None or shipped_sha256(spool_dir, entry.name) is not None:
            return
        try:
            digest = sha256_of_chunks(read_held(entry))
        except SourceReleased:
            return  # handed over meanwhile: what was hashed proves nothing
        if digest == existing.sha256:
            if engine_for(connector.kind).kept_after_shipping(connector) > 0:
                keep_copy(spool_dir, entry)  # before the tombstone, as when shipped
            crash_point("readahead-restart-tombstone")
            write_tombstone(spool_dir, entry.name, digest)
        else:
            event(
                log,
                logging.ERROR,
                "conflict: shipped file marked ready again with different content",
                connector=entry.connector,
                file=entry.name,
            )
