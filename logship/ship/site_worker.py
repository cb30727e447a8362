"""One thread per site: keep a connection, ship each connector's queue in order.

The catalog is the queue: the worker only ever asks it for the next pending
files, so a restart resumes exactly where the previous run stopped. Between
rounds it runs each engine's site-side sampling (`Engine.site_sampler`) over the
same connection; what that samples is the engine's business, not this module's.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from logship.catalog.store import Catalog
from logship.config.model import SiteConfig
from logship.engines.registry import SiteSampler, engine_for
from logship.faults import crash_point
from logship.logs import event
from logship.manifest import ManifestRecord, SiteLayout
from logship.read_ahead_beat import BEHIND, HELD, SHIPPING, STOPPED, BeatWriter
from logship.ready_source import ReadySource, SourceReleased
from logship.ship.lane_process import LaneProcess
from logship.ship.lanes import Lane, Lanes
from logship.ship.link import Backoff, SiteLink
from logship.ship.shipper import ShipConflict, ship_file
from logship.ship.transport import Transport
from logship.spool import SpoolEntry, entry_for, keep_copy, prune_kept, retire
from logship.temp_names import is_temp_name

log = logging.getLogger("logship.ship")

MIB = 1024 * 1024
#: room a file needs beyond its own size (its manifest record, the file system's
#: own blocks) before a failed write is put down to a full disk
FREE_MARGIN = MIB
BATCH = 64
#: a lane (a process and an SSH session) unused this long is closed until needed
LANE_IDLE_S = 300.0


@dataclass(frozen=True)
class _Job:
    row_id: int
    name: str
    entry: SpoolEntry


@dataclass(frozen=True)
class _OwnConnection:
    """The worker's own connection, shipping in this process as a lane does in its."""

    transport: Transport
    clock: Callable[[], float]

    @property
    def is_alive(self) -> bool:
        return self.transport.is_alive

    def ship(self, layout: SiteLayout, entry: SpoolEntry, compression: str) -> ManifestRecord:
        return ship_file(self.transport, layout, entry, compression, self.clock)

    def close(self) -> None:
        """Nothing: the worker's connection is also its control connection, and
        the worker closes it on disconnect, never a round."""


@dataclass(frozen=True)
class _Outcome:
    job: _Job
    lane: Lane
    #: which of the site's connections shipped it (0: the worker's own)
    connection: int
    result: ManifestRecord | Exception


@dataclass
class _Settled:
    """What one round has done so far."""

    shipped: int = 0
    refused: bool = False  # the site answered but refused a file
    lost: Exception | None = None  # the main connection broke


def _source_of(target: ShipTarget, name: str) -> SpoolEntry | None:
    """Where a queued file ships from: the spool's copy, else its producer's while
    it is still marked ready there. The spool is looked at again last: archive-wal
    copies a file there before its producer unmarks it."""
    in_spool = entry_for(target.connector, target.spool_dir / name)
    if in_spool is not None or target.ready is None:
        return in_spool
    return target.ready.entry(name) or entry_for(target.connector, target.spool_dir / name)


def _missing(target: ShipTarget) -> str:
    if target.ready is None:
        return "missing from the spool"
    return f"missing from the spool, and no longer marked ready in {target.ready.files_dir}"


@dataclass(frozen=True)
class ShipTarget:
    connector: str
    #: the connector's engine: its site-side sampling runs between shipping rounds
    kind: str
    spool_dir: Path
    compression: str
    layout: SiteLayout
    #: shipped WAL kept in the spool until the standby restored it (0: none)
    keep_bytes: int = 0
    #: files also read straight from their producer, before hand-over (read-ahead)
    ready: ReadySource | None = None


class SiteWorker(threading.Thread):
    def __init__(
        self,
        site: SiteConfig,
        targets: list[ShipTarget],
        catalog: Catalog,
        connect: Callable[[SiteConfig], Transport],
        clock: Callable[[], float],
        sample_interval: float,
        stop: threading.Event,
        open_lane: Callable[[SiteConfig], Lane] = LaneProcess,
    ) -> None:
        super().__init__(name=f"ship-{site.name}", daemon=True)
        self.site = site
        self.targets = targets
        self.catalog = catalog
        self._clock = clock
        self._sample_interval = sample_interval
        self._next_promoted_check = 0.0
        self._stopping = stop
        self._wake = threading.Event()
        self._link = SiteLink(
            site,
            [target.connector for target in targets],
            catalog,
            connect,
            clock,
            self._prepare_all,
            log=log,
        )
        self._lanes = Lanes(site, open_lane, site.connections - 1)
        self._samplers = self._engine_samplers()
        self._promoted: set[str] = set()
        #: the site refusing writes while the link is fine (disk full, say)
        self._write_error: str | None = None
        self._write_retry_at = 0.0
        self._write_backoff = Backoff()
        #: the read-ahead's beat per connector that has one, and its files queued
        self._beats = {
            target.connector: BeatWriter(target.spool_dir, target.ready.wait_s)
            for target in targets
            if target.ready is not None
        }
        self._queued: dict[str, int] = {}

    def wake(self) -> None:
        self._wake.set()

    def _engine_samplers(self) -> list[SiteSampler]:
        """Each engine's site-side sampling for its connectors among the targets."""
        by_engine: dict[str, list[ShipTarget]] = {}
        for target in self.targets:
            by_engine.setdefault(target.kind, []).append(target)
        samplers = []
        for kind, targets in by_engine.items():
            sampler = engine_for(kind).site_sampler(
                self.site, targets, self.catalog, self._clock, self._sample_interval, self.wake
            )
            if sampler is not None:
                samplers.append(sampler)
        return samplers

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._beat()
                if self._link.transport is None:
                    if not self._link.try_connect():
                        self._stopping.wait(self._link.retry_in())
                        continue
                    self._lanes.warm()
                try:
                    shipped = self._ship_round()
                    self._sample()
                except Exception as exc:  # OSError, EOFError, paramiko's SSHException, ...
                    self._lost(exc)
                    continue
                if not shipped:
                    self._lanes.close_idle(LANE_IDLE_S)
                    self._wake.wait(timeout=1.0)
                    self._wake.clear()
        finally:
            for writer in self._beats.values():
                writer.beat(STOPPED)
            self._disconnect()
            self._link.close()
            self._lanes.shutdown()
            for sampler in self._samplers:
                sampler.close()

    # -- connection ------------------------------------------------------------

    def _prepare_all(self, transport: Transport) -> None:
        for target in self.targets:
            self._prepare(transport, target)

    def _prepare(self, transport: Transport, target: ShipTarget) -> None:
        layout = target.layout
        for directory in (layout.wal_dir, layout.manifest_dir):
            transport.makedirs(directory)
            if self.site.restricted:
                continue  # this key may remove nothing there: the site sweeps them
            # Temp files of an upload cut short (kill -9, lost link) are never
            # visible under a WAL name; clearing them keeps the site tidy.
            for name in transport.listdir(directory):
                if is_temp_name(name):
                    transport.remove(directory / name)
        self._refresh_promoted(transport, target)

    def _refresh_promoted(self, transport: Transport, target: ShipTarget) -> None:
        if transport.read_bytes(target.layout.promoted_marker) is not None:
            if target.connector not in self._promoted:
                event(
                    log,
                    logging.ERROR,
                    "standby promoted: shipping stopped",
                    connector=target.connector,
                    site=self.site.name,
                )
            self._promoted.add(target.connector)
        else:
            self._promoted.discard(target.connector)

    def _lost(self, exc: BaseException) -> None:
        self._disconnect()
        self._link.lost(exc)
        self._beat()

    def _disconnect(self) -> None:
        for sampler in self._samplers:
            sampler.drop()
        self._lanes.close()

    # -- shipping --------------------------------------------------------------

    def _ship_round(self) -> int:
        assert self._link.transport is not None
        shipped = 0
        if time.monotonic() < self._write_retry_at:
            return shipped  # the site could not take the last file: not yet
        for target in self.targets:
            if target.connector in self._promoted:
                continue
            jobs: list[_Job] = []
            rows = self.catalog.pending(target.connector, BATCH)
            self._queued[target.connector] = len(rows)
            for row in rows:
                entry = _source_of(target, row.name)
                if entry is None:
                    self.catalog.set_error(row.id, _missing(target))
                    continue
                jobs.append(_Job(row.id, row.name, entry))
            if not jobs:
                continue
            settled, refused = self._ship_jobs(target, jobs)
            shipped += settled
            if refused or self._stopping.is_set():
                return shipped
        return shipped

    def _ship_jobs(self, target: ShipTarget, jobs: list[_Job]) -> tuple[int, bool]:
        """Ship `jobs` across this worker's connection and its lanes, each taking the
        next file in queue order as soon as it is free (so a slow file holds up no
        other), recording each file as soon as it is at the site. Returns (files
        shipped, whether the site refused one); a lost main connection is raised
        once every lane has stopped."""
        assert self._link.transport is not None
        slots = self._lanes.usable()[: len(jobs) - 1]
        todo: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        for job in jobs:
            todo.put(job)
        done: queue.Queue[_Outcome] = queue.Queue()
        futures = [
            self._lanes.submit(self._ship_on_lane, slot, target, todo, done.put) for slot in slots
        ]
        settle = _Settled()

        def drain() -> None:
            # Only this thread touches the catalog's queue state and the spool.
            while True:
                try:
                    self._settle(target, done.get_nowait(), settle)
                except queue.Empty:
                    break
            self._queued[target.connector] = len(jobs) - settle.shipped
            self._beat()

        own = _OwnConnection(self._link.transport, self._clock)
        self._ship_from(own, 0, target, todo, done.put, between=drain)
        for future in futures:
            while not future.done():
                drain()
                with contextlib.suppress(TimeoutError):
                    future.exception(timeout=0.05)
            future.result()  # a bug in a lane is raised here, not lost
        drain()
        if settle.lost is not None:
            raise settle.lost
        return settle.shipped, settle.refused

    def _settle(self, target: ShipTarget, outcome: _Outcome, settle: _Settled) -> None:
        job, result = outcome.job, outcome.result
        connector = target.connector
        if isinstance(result, SourceReleased):
            # Not an error: archive-wal copied it into the spool; it ships from there.
            event(log, logging.INFO, "read-ahead released", connector=connector, file=job.name)
        elif isinstance(result, ShipConflict):
            event(log, logging.ERROR, "conflict", connector=connector, error=str(result))
            self.catalog.mark_conflict(job.row_id, str(result))
            self.catalog.add_event(connector, self._clock(), "error", str(result))
        elif not isinstance(result, Exception):
            self._record_shipped(target, job, result, outcome.connection)
            settle.shipped += 1
        elif outcome.lane.is_alive:
            # The site answers but cannot take the file (full, read-only,
            # permissions): say why, keep the link, try again later.
            if not settle.refused:
                self._write_failed(target, job.row_id, job.entry.size, job.name, result)
            settle.refused = True
        elif outcome.connection == 0:
            settle.lost = settle.lost or result  # the link itself: reconnect
        else:
            event(log, logging.INFO, "lane lost", site=self.site.name, error=str(result))
            self._lanes.drop(outcome.lane)

    def _ship_on_lane(
        self,
        slot: int,
        target: ShipTarget,
        todo: queue.SimpleQueue[_Job],
        report: Callable[[_Outcome], None],
    ) -> None:
        # Connecting here, not before the round: the worker's own connection is
        # already shipping, and a lane joins in as soon as it is up.
        lane = self._lanes.lane(slot)
        if lane is not None:
            self._ship_from(lane, slot + 1, target, todo, report)

    def _ship_from(
        self,
        lane: Lane,
        connection: int,
        target: ShipTarget,
        todo: queue.SimpleQueue[_Job],
        report: Callable[[_Outcome], None],
        between: Callable[[], None] | None = None,
    ) -> None:
        while not self._stopping.is_set():
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            try:
                record = lane.ship(target.layout, job.entry, target.compression)
            except Exception as exc:  # sorted out by the worker's own thread
                report(_Outcome(job, lane, connection, exc))
                if isinstance(exc, ShipConflict | SourceReleased):
                    continue
                return  # this connection takes nothing more this round
            report(_Outcome(job, lane, connection, record))
            if between is not None:
                between()

    def _record_shipped(
        self, target: ShipTarget, job: _Job, record: ManifestRecord, connection: int
    ) -> None:
        if self._write_error is not None:
            self._write_recovered()
        crash_point("ship-before-catalog")
        self.catalog.mark_shipped(job.row_id, record.sha256, record.stored_size, self._clock())
        if job.entry.held_by is not None and target.keep_bytes > 0:
            # Before the tombstone: once archive-wal has confirmed the file,
            # PostgreSQL may recycle it.
            keep_copy(target.spool_dir, job.entry)
        crash_point("ship-before-retire")
        # The tombstone is archive-wal's proof that the file is durable at the site:
        # written only now, after the site and the catalog have it.
        retire(target.spool_dir, job.name, record.sha256, keep=target.keep_bytes > 0)
        prune_kept(target.spool_dir, None, target.keep_bytes)
        event(
            log,
            logging.INFO,
            "shipped",
            connector=target.connector,
            file=job.name,
            bytes=record.size,
            stored_bytes=record.stored_size,
            lag_s=round(record.arrived_at - record.closed_at, 3),
            connection=connection,
            source="spool" if job.entry.held_by is None else "read-ahead",
        )

    def _write_failed(
        self, target: ShipTarget, row_id: int, size: int, name: str, exc: Exception
    ) -> None:
        assert self._link.transport is not None
        where = target.layout.wal_dir
        free = self._link.transport.free_bytes(where)
        if free is not None and free < size + FREE_MARGIN:
            message = (
                f"site {self.site.name}: no space left for {name} in {where} "
                f"({free / MIB:.1f} MiB free, it needs up to {size / MIB:.1f} MiB); "
                "shipping resumes once space is freed there"
            )
        else:
            message = f"site {self.site.name}: writing {name} failed: {exc}"
        self.catalog.set_error(row_id, message)
        if message != self._write_error:
            event(log, logging.ERROR, "site write failed", site=self.site.name, error=message)
            self.catalog.add_event(target.connector, self._clock(), "error", message)
        self._write_error = message
        self._set_reachable()
        self._write_retry_at = time.monotonic() + self._write_backoff.next()

    def _write_recovered(self) -> None:
        event(log, logging.INFO, "site write resumed", site=self.site.name)
        self._write_error = None
        self._set_reachable()
        for target in self.targets:
            self.catalog.add_event(
                target.connector, self._clock(), "link", f"site {self.site.name} takes files again"
            )
        self._write_backoff.reset()

    # -- read-ahead ----------------------------------------------------------------

    def _beat(self) -> None:
        """Tell archive-wal, per read-ahead connector, whether waiting for us pays."""
        for target in self.targets:
            writer = self._beats.get(target.connector)
            if writer is not None:
                writer.beat(self._read_ahead_state(target))

    def _read_ahead_state(self, target: ShipTarget) -> str:
        if (
            self._link.transport is None
            or self._write_error is not None
            or target.connector in self._promoted
        ):
            return HELD
        # Files beyond what the site's connections take at once wait their turn,
        # and a segment handed over now would wait behind all of them.
        if self._queued.get(target.connector, 0) > self.site.connections + 1:
            return BEHIND
        return SHIPPING

    # -- between rounds ------------------------------------------------------------

    def _sample(self) -> None:
        """The engines' site-side sampling, and whether a standby was promoted, every
        `sample_interval`; a failure of the link is raised as one of shipping."""
        transport = self._link.transport
        assert transport is not None
        if self._clock() >= self._next_promoted_check:
            for target in self.targets:
                self._refresh_promoted(transport, target)
            self._next_promoted_check = self._clock() + self._sample_interval
        answered = [sampler.sample(transport) for sampler in self._samplers]
        if any(answered):
            # Reachable; a write the site refused stays the error until one succeeds.
            self._set_reachable()

    def _set_reachable(self) -> None:
        """The link is up; the status shows what still stands in the way, if anything."""
        problems = [self._write_error, *(p for s in self._samplers for p in s.problems())]
        error = "; ".join(p for p in problems if p) or None
        self._link.report(error)
