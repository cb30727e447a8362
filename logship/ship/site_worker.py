"""One thread per site: keep a connection, ship each connector's queue in order.

The catalog is the queue: the worker only ever asks it for the next pending
files, so a restart resumes exactly where the previous run stopped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from logship.catalog.models import FileState
from logship.catalog.store import Catalog
from logship.config.model import SiteConfig
from logship.durable import sha256_of
from logship.engines.postgresql.archive_wal import shipped_sha256
from logship.engines.postgresql.standby_status import StandbyAnswer, ask_standby_status
from logship.errors import HostKeyRefused, shown_text
from logship.faults import crash_point
from logship.lag import replay_rate
from logship.logs import event
from logship.manifest import ManifestRecord, SiteLayout
from logship.ship.lane_process import LaneProcess
from logship.ship.lanes import Lane, Lanes
from logship.ship.shipper import ShipConflict, ship_file
from logship.ship.transport import SiteRefused, Transport
from logship.spool import SpoolEntry, entry_for, kept_path, prune_kept, retire
from logship.temp_names import is_temp_name

log = logging.getLogger("logship.ship")

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
MIB = 1024 * 1024
#: room a file needs beyond its own size (its manifest record, the file system's
#: own blocks) before a failed write is put down to a full disk
FREE_MARGIN = MIB
BATCH = 64
SAMPLE_TIMEOUT = 20.0
#: a lane (a process and an SSH session) unused this long is closed until needed
LANE_IDLE_S = 300.0
#: restore-wal's refused note is a few hundred bytes; more is not read
NOTE_LIMIT = 64 * 1024
#: a file the site says it refused is shipped again at most once in this long: a
#: site that keeps saying so (or lies) cannot keep the shipping thread busy
RESHIP_EVERY_S = 300.0


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
        return getattr(self.transport, "is_alive", True)

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


@dataclass(frozen=True)
class ShipTarget:
    connector: str
    spool_dir: Path
    compression: str
    layout: SiteLayout
    #: shipped WAL kept in the spool until the standby restored it (0: none)
    keep_bytes: int = 0


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
        self._connect = connect
        self._clock = clock
        self._sample_interval = sample_interval
        self._stopping = stop
        self._wake = threading.Event()
        self._transport: Transport | None = None
        self._lanes = Lanes(site, open_lane, site.connections - 1)
        self._backoff = BACKOFF_START
        self._next_sample = 0.0
        #: `standby status` asked at the site on a helper thread: the answer takes
        #: a process start there (0.1-0.3 s, up to SAMPLE_TIMEOUT), which the
        #: next segment must not wait behind
        self._asker = ThreadPoolExecutor(1, thread_name_prefix=f"ask-{site.name}")
        self._asking: Future[list[StandbyAnswer]] | None = None
        self._promoted: set[str] = set()
        self._sample_errors: dict[str, str | None] = {}
        self._link_up: bool | None = None  # the last link state told to the journal
        #: the site refusing writes while the link is fine (disk full, say)
        self._write_error: str | None = None
        #: per connector: files the standby refused that no kept copy can replace
        self._unrepairable: dict[str, str] = {}
        #: per connector: why the site's last answer was dropped (a malformed one)
        self._bad_answers: dict[str, str] = {}
        #: (connector, file) -> when it was last shipped again after a refusal
        self._reshipped_at: dict[tuple[str, str], float] = {}
        #: per connector: the last restored name the site gave that was never shipped
        self._unproven_restored: dict[str, str] = {}
        #: per connector: refused names the last answer listed beyond the cap
        self._refused_ignored: dict[str, int] = {}
        self._write_retry_at = 0.0
        self._write_backoff = BACKOFF_START

    def wake(self) -> None:
        self._wake.set()

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if self._transport is None and not self._try_connect():
                    self._stopping.wait(self._backoff)
                    self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                    continue
                try:
                    shipped = self._ship_round()
                    self._sample_standby()
                except Exception as exc:  # OSError, EOFError, paramiko's SSHException, ...
                    self._lost(exc)
                    continue
                if not shipped:
                    self._lanes.close_idle(LANE_IDLE_S)
                    self._wake.wait(timeout=1.0)
                    self._wake.clear()
        finally:
            self._disconnect()
            self._lanes.shutdown()
            self._asker.shutdown(wait=False)

    # -- connection ------------------------------------------------------------

    def _try_connect(self) -> bool:
        try:
            transport = self._connect(self.site)
            for target in self.targets:
                self._prepare(transport, target)
        except HostKeyRefused as exc:
            event(log, logging.ERROR, "host key refused", site=self.site.name, error=str(exc))
            self.catalog.set_site_status(self.site.name, False, str(exc), self._clock())
            self._journal_link(False, f"host key refused: {exc}")
            return False
        except Exception as exc:
            event(log, logging.WARNING, "site unreachable", site=self.site.name, error=str(exc))
            self.catalog.set_site_status(self.site.name, False, str(exc), self._clock())
            self._journal_link(False, f"site {self.site.name} unreachable: {exc}")
            return False
        self._transport = transport
        self._lanes.warm()
        self._backoff = BACKOFF_START
        self.catalog.set_site_status(self.site.name, True, None, self._clock())
        event(log, logging.INFO, "connected", site=self.site.name)
        self._journal_link(True, f"connected to site {self.site.name}")
        return True

    def _journal_link(self, up: bool, message: str) -> None:
        """Link changes go to the catalog's journal (the dashboard's events), once each."""
        if self._link_up == up:
            return
        self._link_up = up
        for target in self.targets:
            self.catalog.add_event(target.connector, self._clock(), "link", message)

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
        event(log, logging.WARNING, "link lost", site=self.site.name, error=str(exc))
        self.catalog.set_site_status(self.site.name, False, str(exc), self._clock())
        self._journal_link(False, f"link to site {self.site.name} lost: {exc}")
        self._disconnect()

    def _disconnect(self) -> None:
        # An ask in flight fails with the connection; its answer is not wanted.
        self._asking = None
        self._lanes.close()
        if self._transport is not None:
            try:
                self._transport.close()
            except Exception as exc:
                event(log, logging.DEBUG, "close failed", site=self.site.name, error=str(exc))
            self._transport = None

    # -- shipping --------------------------------------------------------------

    def _ship_round(self) -> int:
        assert self._transport is not None
        shipped = 0
        if time.monotonic() < self._write_retry_at:
            return shipped  # the site could not take the last file: not yet
        for target in self.targets:
            if target.connector in self._promoted:
                continue
            jobs: list[_Job] = []
            for row in self.catalog.pending(target.connector, BATCH):
                entry = entry_for(target.connector, target.spool_dir / row.name)
                if entry is None:
                    self.catalog.set_error(row.id, "missing from the spool")
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
        assert self._transport is not None
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
                    return

        own = _OwnConnection(self._transport, self._clock)
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
        if isinstance(result, ShipConflict):
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
                if isinstance(exc, ShipConflict):
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
        crash_point("ship-before-retire")
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
        )

    def _write_failed(
        self, target: ShipTarget, row_id: int, size: int, name: str, exc: Exception
    ) -> None:
        assert self._transport is not None
        where = target.layout.wal_dir
        free = self._transport.free_bytes(where)
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
        self._write_retry_at = time.monotonic() + self._write_backoff
        self._write_backoff = min(self._write_backoff * 2, BACKOFF_MAX)

    def _write_recovered(self) -> None:
        event(log, logging.INFO, "site write resumed", site=self.site.name)
        self._write_error = None
        self._set_reachable()
        for target in self.targets:
            self.catalog.add_event(
                target.connector, self._clock(), "link", f"site {self.site.name} takes files again"
            )
        self._write_backoff = BACKOFF_START

    def _sample_standby(self) -> None:
        """Ask the site how the standby is doing (over SSH: no database port
        crosses), every `lag_sample_interval`; record the answer once it is in.

        Only the asking runs on the helper thread (on a channel of its own);
        the catalog, the spool and the SFTP session stay with this thread.
        """
        assert self._transport is not None
        asking = self._asking
        if asking is not None:
            if not asking.done():
                return
            self._asking = None
            # A failure of the link (raised here) is handled as one of shipping.
            self._record_standby(asking.result())
            self._next_sample = self._clock() + self._sample_interval
        if self._clock() < self._next_sample:
            return
        for target in self.targets:
            self._refresh_promoted(self._transport, target)
        self._asking = self._asker.submit(self._ask_standby, self._transport)
        self._asking.add_done_callback(lambda _: self.wake())

    def _ask_standby(self, transport: Transport) -> list[StandbyAnswer]:
        return [
            ask_standby_status(
                transport, self.site.command, target.connector, self._clock, SAMPLE_TIMEOUT
            )
            for target in self.targets
        ]

    def _record_standby(self, answers: list[StandbyAnswer]) -> None:
        for target, answer in zip(self.targets, answers, strict=True):
            self._note_answer(target, answer)
            try:
                self._record_facts(target, answer)
            except Exception as exc:
                # Only this connector's sample is lost: the link, the other
                # connectors and shipping go on (the answer was checked, so this
                # is a bug or a catalog failure, which the next sample retries).
                event(
                    log,
                    logging.ERROR,
                    "recording the standby's facts failed",
                    connector=target.connector,
                    error=shown_text(str(exc)),
                )
                continue
            # The SFTP link failing in here is a lost link, as in shipping.
            self._repair(target, answer.facts.refused)
        # Reachable; a write the site refused stays the error until one succeeds.
        self._set_reachable()

    def _note_answer(self, target: ShipTarget, answer: StandbyAnswer) -> None:
        connector = target.connector
        if answer.answered:
            self._sample_errors.pop(connector, None)
        else:
            self._warn_once(connector, answer.facts.error)
        if answer.bad is None:
            self._bad_answers.pop(connector, None)
        else:
            # Shown as the site's error: the link is fine, the answer is not.
            self._bad_answers[connector] = f"site {self.site.name}: {answer.bad}"
        ignored = answer.refused_ignored
        if ignored and self._refused_ignored.get(connector) != ignored:
            event(
                log,
                logging.WARNING,
                "refused names beyond the cap ignored",
                connector=connector,
                site=self.site.name,
                ignored=ignored,
            )
        self._refused_ignored[connector] = ignored

    def _record_facts(self, target: ShipTarget, answer: StandbyAnswer) -> None:
        facts = answer.facts
        previous = self.catalog.standby_progress(target.connector)
        rate = replay_rate(
            previous.replay_lsn if previous else None,
            previous.measured_at if previous else None,
            previous.replay_rate_bps if previous else None,
            facts.replay_lsn,
            facts.measured_at if facts.reachable else None,
        )
        measured: dict[str, object] = {"reachable": facts.reachable, "error": facts.error}
        if facts.reachable:
            # An unreachable standby keeps its last known position and heartbeat,
            # so its apply lag keeps growing instead of turning unknown.
            measured.update(
                in_recovery=facts.in_recovery,
                replay_lsn=facts.replay_lsn,
                heartbeat_at=facts.heartbeat_at,
                replay_timestamp=facts.replay_timestamp,
                measured_at=facts.measured_at,
                replay_rate_bps=rate,
            )
        self.catalog.record_restored(
            target.connector,
            facts.last_restored,
            facts.restored_at,
            self._clock(),
            **measured,
        )
        restored = self._proven_restored(target, facts.last_restored)
        if restored is not None:
            prune_kept(target.spool_dir, restored, target.keep_bytes)

    def _proven_restored(self, target: ShipTarget, name: str | None) -> str | None:
        """`name` when the kept copies up to it may go: a segment this primary
        shipped and recorded. A name the site made up (or one past everything
        shipped) prunes nothing; the size cap still does."""
        if name is None:
            return None
        row = self.catalog.file(target.connector, name)
        if row is None or row.state not in (FileState.SHIPPED, FileState.APPLIED):
            if self._unproven_restored.get(target.connector) != name:
                event(
                    log,
                    logging.WARNING,
                    "the site's last restored file was never shipped: no kept copy pruned",
                    connector=target.connector,
                    file=name,
                )
            self._unproven_restored[target.connector] = name
            return None
        return name

    def _set_reachable(self) -> None:
        """The link is up; the status shows what still stands in the way, if anything."""
        problems = [self._write_error, *self._bad_answers.values(), *self._unrepairable.values()]
        error = "; ".join(p for p in problems if p) or None
        self.catalog.set_site_status(self.site.name, True, error, self._clock())

    def _repair(self, target: ShipTarget, refused: tuple[str, ...]) -> None:
        """Ship again what restore-wal refused as corrupt, from the spool's kept copy
        when it matches what was shipped; say loudly when there is none.

        restore-wal sets the refused copy and its record aside at the site, so the
        re-ship is a new file. A record still there means either that the re-ship
        waits for the standby's next try, or an older logship at the site that sets
        nothing aside: only an unrestricted key may then ship over it.
        """
        assert self._transport is not None
        lost: list[str] = []
        stuck: list[str] = []
        now = time.monotonic()
        self._reshipped_at = {
            key: at for key, at in self._reshipped_at.items() if now - at < RESHIP_EVERY_S
        }
        for name in refused:
            last = self._reshipped_at.get((target.connector, name))
            if last is not None and now - last < RESHIP_EVERY_S:
                continue  # shipped again a moment ago: the site has not caught up yet
            expected = shipped_sha256(target.spool_dir, name)
            kept = kept_path(target.spool_dir, name)
            entry = entry_for(target.connector, kept)
            if entry is None or expected is None or sha256_of(kept) != expected:
                lost.append(name)
                continue
            present = self._transport.read_bytes(target.layout.record_path(name)) is not None
            if present and self.site.restricted:
                if not self._set_aside_at_site(target, name):
                    stuck.append(name)
                continue
            try:
                ship_file(
                    self._transport,
                    target.layout,
                    entry,
                    target.compression,
                    self._clock,
                    replace=present,
                )
            except SiteRefused:
                # A restricted site holds another copy under the name (a crash
                # between the file and its record): only the site may set it aside.
                stuck.append(name)
                continue
            self._reshipped_at[(target.connector, name)] = now
            if not self.site.restricted:
                # Restricted: restore-wal removes the note once it takes the file.
                self._transport.remove(target.layout.refused_note(name))
            message = (
                f"{name} was refused as corrupt at site {self.site.name}; "
                "shipped again from the spool's kept copy"
            )
            event(log, logging.WARNING, "re-shipped", connector=target.connector, file=name)
            self.catalog.add_event(target.connector, self._clock(), "error", message)
        key = target.connector
        problems = []
        if lost:
            problems.append(
                f"{target.connector}: {', '.join(lost)} refused as corrupt at site "
                f"{self.site.name}, and the spool has no good copy left: the standby cannot "
                "replay past it. Copy the segment from the primary's pg_wal if it is still "
                f"there, or take a new base backup (logship base-backup {target.connector})"
            )
        if stuck:
            problems.append(
                f"{target.connector}: {', '.join(stuck)} refused as corrupt at site "
                f"{self.site.name}, which could not set the bad copy aside (see restore-wal's "
                "message in the standby's log), and this restricted key may not replace it: "
                f"move it from {target.layout.wal_dir} and its record from "
                f"{target.layout.manifest_dir} into {target.layout.quarantine_dir} there, "
                "and it ships again"
            )
        if not problems:
            self._unrepairable.pop(key, None)
            return
        message = "; ".join(problems)
        if self._unrepairable.get(key) != message:
            event(log, logging.ERROR, "corrupt at the site", connector=key, files=lost + stuck)
            self.catalog.add_event(key, self._clock(), "error", message)
        self._unrepairable[key] = message

    def _set_aside_at_site(self, target: ShipTarget, name: str) -> bool:
        """Whether restore-wal's refused note says it moved the bad copy aside (then
        a record there now is the re-ship's, waiting for the standby's next try)."""
        assert self._transport is not None
        data = self._transport.read_bytes(target.layout.refused_note(name))
        if data is None:
            return True  # taken meanwhile: restore-wal removes the note then
        try:
            note = json.loads(data[:NOTE_LIMIT])
        except (ValueError, RecursionError):
            return False
        moved = note.get("set_aside") if isinstance(note, dict) else None
        return isinstance(moved, list) and bool(moved)

    def _warn_once(self, connector: str, error: str | None) -> None:
        if self._sample_errors.get(connector) != error:
            event(
                log, logging.WARNING, "standby status unavailable", connector=connector, error=error
            )
        self._sample_errors[connector] = error
