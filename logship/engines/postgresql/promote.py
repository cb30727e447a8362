"""`promote`: a checked manual failover, run at the standby site.

It must work when the primary site is gone, so it reads only what lives here:
the shipped WAL and its manifest, the standby PostgreSQL, and a TCP path to the
primary when one is configured. The plan, each step printed as it happens:

1. gates (every one is evaluated and printed, also when an earlier one fails):
   not promoted already; standby in recovery on the expected timeline; the
   primary does not answer; no gap in the shipped WAL; replay not paused
2. final drain: wait until replay reaches the end of the shipped WAL (a shipped
   `.partial` is fed last, into pg_wal, as the PostgreSQL docs describe)
3. loss report: "you lose at most N s of commits (T1 → T2)", checked against the RPO
4. fence: the PROMOTED marker, written before pg_promote so that no old daemon
   can ship into a data dir that is already writable
5. promote: pg_promote(wait => true), then verify a new timeline and a write
6. record (marker + journal.jsonl), and print the next steps

`--dry-run` evaluates every gate and the loss report and changes nothing.

Why `restore-wal` keeps serving files after the marker exists: the marker is
written *before* pg_promote, and at promotion PostgreSQL still calls
restore_command, for the last segment and to probe `<tli>.history` files while
it picks the new timeline ID. A refusal there reads as "not found": PostgreSQL
could then choose a timeline ID that already exists in the archive and fork the
history. After promotion it stops calling restore_command by itself, so nothing
needs to refuse; fencing is about the *shipping* side, which the marker stops.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from logship.durable import write_bytes_atomically
from logship.engines.postgresql import walnames
from logship.engines.postgresql.engine import PostgresConnector
from logship.engines.postgresql.files_report import files_report
from logship.engines.postgresql.primary_check import PrimaryAnswer, primary_check_dsn, probe_primary
from logship.engines.postgresql.shipped_wal import ShippedFile, ShippedWal, read_manifest
from logship.engines.postgresql.standby_status import HEARTBEAT_QUERY
from logship.errors import ConfigError, OperationFailed, SafetyRefusal, first_line
from logship.manifest import SiteLayout

DEFAULT_TIMEOUT_S = 120.0
# At the last shipped segment, a replay position that has not moved for this long
# means PostgreSQL is waiting for the next segment (the last record may continue
# into WAL that never arrived, so the segment's end is not always reachable).
STABLE_S = 1.0
POLL_S = 0.2
JOURNAL_NAME = "journal.jsonl"

STANDBY_FACTS = """
select pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       extract(epoch from pg_last_xact_replay_timestamp())::float8,
       (select timeline_id from pg_control_checkpoint()),
       (select min_recovery_end_timeline from pg_control_recovery()),
       pg_last_wal_receive_lsn()::text
"""


class Verdict(StrEnum):
    OK = "ok"
    REFUSED = "refused"
    FAILED = "failed"
    FORCED = "forced"  # would refuse, overridden by --force / --accept-data-loss
    WOULD = "would"  # dry run: what the real run does here
    INFO = "info"


@dataclass(frozen=True)
class Step:
    name: str
    verdict: Verdict
    detail: str


@dataclass(frozen=True)
class PromoteOptions:
    dry_run: bool = False
    force: bool = False
    accept_data_loss: bool = False
    timeout: float = DEFAULT_TIMEOUT_S


class PromoteRefused(SafetyRefusal):
    pass


# -- loss -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossReport:
    last_commit_at: float | None  # pg_last_xact_replay_timestamp(), primary's clock
    heartbeat_at: float | None  # logship.heartbeat as replayed, primary's clock
    last_close_at: float | None  # close time of the last shipped segment, primary site
    #: the primary was seen not answering then (else: when the report was made)
    window_end: float
    #: WAL streamed to the standby and flushed there, and replayed (LSNs)
    streamed_lsn: str | None = None
    replayed_lsn: str | None = None
    #: why no acknowledged commit can be lost (synchronous mode), or None
    no_acknowledged_loss: str | None = None

    @property
    def window_start(self) -> float | None:
        """The newest moment known replayed: commits after it may be lost.

        The close time is only a fallback: a backlogged archiver closes a segment
        long after its last commit, so it would overstate what is safe.
        """
        known = [t for t in (self.last_commit_at, self.heartbeat_at) if t is not None]
        if known:
            return max(known)
        return self.last_close_at

    @property
    def bound_s(self) -> float | None:
        start = self.window_start
        return None if start is None else max(0.0, self.window_end - start)

    def to_json(self) -> dict[str, Any]:
        return {
            "last_commit_at": self.last_commit_at,
            "heartbeat_at": self.heartbeat_at,
            "last_close_at": self.last_close_at,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "bound_s": None if self.bound_s is None else round(self.bound_s, 3),
            "streamed_lsn": self.streamed_lsn,
            "replayed_lsn": self.replayed_lsn,
            "no_acknowledged_loss": self.no_acknowledged_loss,
        }


def iso(timestamp: float | None) -> str:
    if timestamp is None:
        return "unknown"
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


# -- the standby -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StandbyState:
    in_recovery: bool
    replay_lsn: int | None
    replay_lsn_text: str | None
    #: the newest WAL streamed to this standby and flushed (null: never streamed)
    received_lsn_text: str | None
    last_commit_at: float | None
    timeline: int
    paused: bool | None
    heartbeat_at: float | None


class Standby:
    """One autocommit connection to the standby; it survives the promotion."""

    def __init__(self, dsn: str, connector: str) -> None:
        import psycopg

        self.connector = connector
        try:
            self.conn = psycopg.connect(dsn, connect_timeout=10, autocommit=True)
        except psycopg.Error as exc:
            raise OperationFailed(f"cannot connect to the standby: {first_line(exc)}") from None

    def close(self) -> None:
        self.conn.close()

    def state(self) -> StandbyState:
        row = self.conn.execute(STANDBY_FACTS).fetchone()
        assert row is not None
        in_recovery, lsn, commit_at, checkpoint_tli, min_recovery_tli, received = row
        paused = None
        if in_recovery:
            (paused,) = self.conn.execute("select pg_is_wal_replay_paused()").fetchone()  # type: ignore[misc]
        heartbeat = None
        (has_table,) = self.conn.execute("select to_regclass('logship.heartbeat')").fetchone()  # type: ignore[misc]
        if has_table is not None:
            beat = self.conn.execute(HEARTBEAT_QUERY, (self.connector,)).fetchone()
            heartbeat = beat[0] if beat else None
        return StandbyState(
            in_recovery=bool(in_recovery),
            replay_lsn=walnames.lsn_to_int(lsn) if lsn else None,
            replay_lsn_text=lsn,
            received_lsn_text=received,
            last_commit_at=commit_at,
            timeline=max(int(checkpoint_tli or 0), int(min_recovery_tli or 0)),
            paused=paused,
            heartbeat_at=heartbeat,
        )

    def promote(self, timeout: float) -> bool:
        wait_s = max(1, int(timeout))
        row = self.conn.execute("select pg_promote(true, %s)", (wait_s,)).fetchone()
        return bool(row and row[0])

    def current_timeline(self) -> int:
        (name,) = self.conn.execute("select pg_walfile_name(pg_current_wal_lsn())").fetchone()  # type: ignore[misc]
        return int(name[:8], 16)

    def write_check(self) -> None:
        # A temp table needs a transaction ID and catalog writes: refused by a
        # read-only standby, and it leaves nothing behind after this session.
        with self.conn.transaction():
            self.conn.execute("create temp table logship_promote_check (at timestamptz)")
            self.conn.execute("insert into logship_promote_check values (now())")
            self.conn.execute("drop table logship_promote_check")


# -- files at the site -----------------------------------------------------------------------


def write_marker(path: Path, content: dict[str, Any]) -> None:
    """Present complete or not at all (see logship.durable)."""
    write_bytes_atomically(path, json.dumps(content, indent=2, sort_keys=True).encode() + b"\n")


def append_journal(path: Path, entry: dict[str, Any]) -> None:
    line = json.dumps(entry, sort_keys=True).encode() + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


# -- the plan --------------------------------------------------------------------------------


@dataclass
class PromoteOutcome:
    dry_run: bool
    steps: list[Step] = field(default_factory=list)
    loss: LossReport | None = None
    rto_s: float | None = None
    old_timeline: int | None = None
    new_timeline: int | None = None
    files: list[dict[str, Any]] = field(default_factory=list)


NEXT_STEPS = (
    "keep the old primary down (stop and disable its service): it must not take writes again",
    "point applications at the new primary",
    "rebuild the old primary as a standby of the new one: a new base backup, or pg_rewind "
    "of its data dir against the new primary",
    "the new primary does not archive (archive_mode = off): configure the reverse direction "
    "before relying on it for DR",
)
#: a connector written with [sides.*]: the reverse direction is configured already
NEXT_STEPS_TWO_SIDED = (
    "keep the old primary down: once its site is back, `logship run` there fences it",
    "point applications at the new primary",
    "at the old primary's site, `logship reinstate CONNECTOR` makes it a standby of the new "
    "one (by pg_rewind when safe, else a fresh base backup); the new primary archives and "
    "its site's daemon ships toward the old site already",
)


class Promotion:
    """Runs the plan for one connector; `emit` prints each step as it happens."""

    def __init__(
        self,
        connector: PostgresConnector,
        site_root: Path,
        options: PromoteOptions,
        emit: Callable[[Step], None],
        *,
        probe: Callable[[str], PrimaryAnswer] = probe_primary,
        record_event: Callable[[dict[str, Any]], str] | None = None,
        files: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._record_event = record_event
        self._files = list(files)
        self.connector = connector
        self._site_root = site_root
        self.layout = SiteLayout.for_connector(site_root.as_posix(), connector.name)
        self.options = options
        self._emit = emit
        self._probe = probe
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self.outcome = PromoteOutcome(dry_run=options.dry_run)
        self._refusals: list[str] = []
        self._primary_seen_down_at: float | None = None
        self._forced: list[str] = []

    def _step(self, name: str, verdict: Verdict, detail: str) -> None:
        step = Step(name, verdict, detail)
        self.outcome.steps.append(step)
        self._emit(step)
        if verdict is Verdict.REFUSED:
            self._refusals.append(f"{name}: {detail}")

    def _refuse_now(self) -> None:
        if self._refusals:
            what = "dry run: promote would refuse" if self.options.dry_run else "refused"
            raise PromoteRefused(f"{what} ({len(self._refusals)}): " + " | ".join(self._refusals))

    # -- run ---------------------------------------------------------------------

    def run(self) -> PromoteOutcome:
        import psycopg

        started = self._monotonic()
        marker = Path(self.layout.promoted_marker)
        if marker.exists():
            self._step("not promoted yet", Verdict.REFUSED, f"{marker} exists: {_summary(marker)}")
            self._refuse_now()
        self._step("not promoted yet", Verdict.OK, f"no {marker}")
        records, problems = read_manifest(self.layout)
        wal = ShippedWal.from_records(records)
        standby = Standby(self.connector.standby.dsn, self.connector.name)
        try:
            state = standby.state()
            self._gate_recovery(state, wal)
            self._gate_primary()
            self._gate_wal(state, wal, problems)
            self._gate_paused(state)
            if self.options.dry_run:
                return self._dry_run(state, wal)
            self._refuse_now()
            state = self._drain(standby, state, wal)
            loss = self._loss(state, wal)
            self._refuse_now()
            self._files_report(state)
            self._promote(standby, state, loss, started)
        except psycopg.Error as exc:
            # Mid-plan (the standby restarted, a role lacks rights for pg_promote):
            # one line with where it stopped; the printed steps say how far it got.
            done = self.outcome.steps[-1].name if self.outcome.steps else "start"
            raise OperationFailed(
                f"standby query failed after {done!r}: {first_line(exc)}"
            ) from None
        finally:
            standby.close()
        return self.outcome

    # -- gates -------------------------------------------------------------------

    def _gate_recovery(self, state: StandbyState, wal: ShippedWal) -> None:
        name = "standby in recovery"
        if not state.in_recovery:
            self._step(
                name,
                Verdict.REFUSED,
                "the standby is not in recovery: it already "
                "accepts writes (promoted by hand?); nothing to promote",
            )
            return
        self.outcome.old_timeline = state.timeline
        expected = wal.timeline
        where = f"timeline {state.timeline}, replayed up to {state.replay_lsn_text}"
        if expected is None:
            self._step(name, Verdict.OK, f"{where} (no WAL shipped to compare timelines)")
        elif state.timeline > expected:
            self._step(
                name,
                Verdict.REFUSED,
                f"{where}, but the newest shipped timeline is "
                f"{expected}: this standby has left the shipped history (promoted "
                "before, or restored from another cluster)",
            )
        elif state.timeline < expected and not wal.has_history(expected):
            self._step(
                name,
                Verdict.REFUSED,
                f"{where}; WAL of timeline {expected} is shipped "
                f"but not {expected:08X}.history, so replay cannot follow it",
            )
        elif state.timeline < expected:
            self._step(name, Verdict.OK, f"{where}; will follow shipped timeline {expected}")
        else:
            self._step(name, Verdict.OK, f"{where}, the newest shipped timeline")

    def _gate_primary(self) -> None:
        name = "primary down"
        try:
            dsn, how = primary_check_dsn(self.connector.primary, "[primary]")
        except ConfigError as exc:
            dsn, how = None, str(exc)
        if dsn is None:
            self._unverified(name, f"cannot verify that the primary is down: {how}")
            return
        answer = self._probe(dsn)
        if answer.answers is None:
            self._unverified(
                name, f"cannot verify that the primary is down via {how}: {answer.detail}"
            )
        elif answer.answers:
            detail = (
                f"the primary still answers via {how}: {answer.detail}. Promoting now "
                "makes two primaries; for a planned move stop the primary cleanly and "
                "let the standby catch up (a planned switchover), not a failover"
            )
            if self.options.force:
                self._forced.append("primary answered")
                self._step(name, Verdict.FORCED, detail + " (--force: going on)")
            else:
                self._step(name, Verdict.REFUSED, detail + " (--force overrides)")
        else:
            self._primary_seen_down_at = answer.checked_at
            self._step(name, Verdict.OK, f"no answer via {how}: {answer.detail}")

    def _unverified(self, name: str, detail: str) -> None:
        if self.options.force:
            self._forced.append("primary not verified down")
            self._step(name, Verdict.FORCED, detail + " (--force: going on)")
        else:
            self._step(name, Verdict.REFUSED, detail + " (--force overrides)")

    def _gate_wal(self, state: StandbyState, wal: ShippedWal, problems: list[str]) -> None:
        name = "shipped WAL complete"
        if problems:
            self._step(name, Verdict.REFUSED, "; ".join(problems))
            return
        gap = wal.gap(state.replay_lsn, state.timeline)
        if gap is not None:
            self._step(
                name,
                Verdict.REFUSED,
                f"gap in the shipped WAL: {gap.missing} is "
                f"missing (after {gap.after}); replay cannot pass it. Ship it (it may "
                "still be in the primary's spool) or accept the loss by hand",
            )
            return
        pending = wal.pending(state.replay_lsn)
        missing = [
            f.name for f in pending if not (Path(self.layout.wal_dir) / f.stored_name).is_file()
        ]
        if missing:
            self._step(
                name,
                Verdict.REFUSED,
                f"the manifest lists {missing[0]} but its file "
                f"{Path(self.layout.wal_dir) / missing[0]} is missing",
            )
            return
        last = wal.last_segment()
        if last is None:
            self._step(name, Verdict.OK, "no WAL shipped yet")
        else:
            self._step(
                name,
                Verdict.OK,
                f"no gap; {len(wal.segments())} segments shipped, last {last.name}",
            )

    def _gate_paused(self, state: StandbyState) -> None:
        name = "replay not paused"
        if state.paused:
            self._step(
                name,
                Verdict.REFUSED,
                "replay is paused (pg_wal_replay_pause()); "
                "resume it with `select pg_wal_replay_resume()` if that was not on "
                "purpose, then promote again",
            )
        elif state.in_recovery:
            self._step(name, Verdict.OK, "replaying")

    # -- drain -------------------------------------------------------------------

    def _drain_target(self, wal: ShippedWal) -> tuple[ShippedFile, int] | None:
        last = wal.last_segment()
        return None if last is None else (last, wal.end_lsn(last))

    def _dry_run(self, state: StandbyState, wal: ShippedWal) -> PromoteOutcome:
        target = self._drain_target(wal)
        if target is None:
            self._step("final drain", Verdict.WOULD, "nothing shipped to wait for")
        else:
            last, end = target
            partial = wal.final_partial()
            extra = f", then feed {partial.name}" if partial else ""
            self._step(
                "final drain",
                Verdict.WOULD,
                f"wait up to {self.options.timeout:g}s "
                f"for replay to reach the end of {last.name} ({walnames.int_to_lsn(end)}; now at "
                f"{state.replay_lsn_text}){extra}",
            )
        self._loss(state, wal, so_far=True)
        self._files_report(state)
        self._step("fence", Verdict.WOULD, f"write {self.layout.promoted_marker}")
        self._step(
            "promote",
            Verdict.WOULD,
            "pg_promote(wait => true), then check a new timeline and a write",
        )
        self._refuse_now()
        return self.outcome

    def _drain(self, standby: Standby, state: StandbyState, wal: ShippedWal) -> StandbyState:
        name = "final drain"
        target = self._drain_target(wal)
        begin = self._monotonic()
        deadline = begin + self.options.timeout
        shipped = "nothing shipped"
        if target is not None:
            last, end = target
            state = self._wait_replayed(standby, last, end, wal.seg_size, deadline)
            partial = wal.final_partial()
            if partial is not None:
                state = self._feed_partial(standby, partial, deadline)
            shipped = f"end of the shipped WAL: {last.name}{', ' + partial.name if partial else ''}"
        streamed = ""
        if state.received_lsn_text is not None:
            # What was streamed and flushed here replays from pg_wal, whatever the
            # archive holds: wait for it too.
            state = self._wait_settled(standby, deadline, state.received_lsn_text)
            streamed = f", streamed to {state.received_lsn_text}"
        if target is None and state.received_lsn_text is None:
            self._step(name, Verdict.OK, "nothing shipped or streamed to replay")
            return state
        self._step(
            name,
            Verdict.OK,
            f"replayed to {state.replay_lsn_text} ({shipped}{streamed}) in "
            f"{self._monotonic() - begin:.1f}s",
        )
        return state

    def _wait_replayed(
        self, standby: Standby, last: ShippedFile, end: int, seg_size: int, deadline: float
    ) -> StandbyState:
        stable_since: float | None = None
        previous: int | None = None
        while True:
            state = standby.state()
            lsn = state.replay_lsn or 0
            if lsn >= end:
                return state
            now = self._monotonic()
            stable_since = stable_since if lsn == previous else now
            previous = lsn
            if (
                self._last_restored() == last.name
                and lsn >= end - seg_size
                and now - stable_since >= STABLE_S
            ):
                return state
            if now >= deadline:
                raise OperationFailed(
                    f"final drain: replay is at {state.replay_lsn_text}, short of the end of "
                    f"{last.name} ({walnames.int_to_lsn(end)}), after "
                    f"{self.options.timeout:g}s; the standby log says why (restore-wal "
                    "refusals are logged there). Nothing was changed; promote again with a "
                    "longer --timeout"
                )
            self._sleep(POLL_S)

    def _last_restored(self) -> str | None:
        try:
            return str(json.loads(Path(self.layout.restored_marker).read_text())["name"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _feed_partial(
        self, standby: Standby, partial: ShippedFile, deadline: float
    ) -> StandbyState:
        """Copy a shipped `.partial` into pg_wal under its segment name, then let it replay.

        In standby mode PostgreSQL reads pg_wal when restore_command has nothing, so
        this is the final segment; its zeroed tail simply ends the WAL.
        """
        from logship.engines.postgresql.restore_wal import restore_wal

        segment = partial.name.removesuffix(".partial")
        dest = self.connector.standby.data_dir / "pg_wal" / segment
        restore_wal(self._site_root, self.connector.name, partial.name, dest)
        return self._wait_settled(standby, deadline)

    def _wait_settled(
        self, standby: Standby, deadline: float, until: str | None = None
    ) -> StandbyState:
        """Until replay reaches `until` (an LSN), or stops moving for STABLE_S (the
        last record may be cut short), or the deadline."""
        target = walnames.lsn_to_int(until) if until else None
        previous, stable_since = None, self._monotonic()
        while True:
            state = standby.state()
            now = self._monotonic()
            if target is not None and (state.replay_lsn or 0) >= target:
                return state
            if state.replay_lsn != previous:
                previous, stable_since = state.replay_lsn, now
            elif now - stable_since >= STABLE_S:
                return state
            if now >= deadline:
                return state
            self._sleep(POLL_S)

    # -- loss --------------------------------------------------------------------

    def _loss(self, state: StandbyState, wal: ShippedWal, *, so_far: bool = False) -> LossReport:
        name = "loss report"
        last = wal.last_segment()
        end = self._primary_seen_down_at or self._clock()
        loss = LossReport(
            last_commit_at=state.last_commit_at,
            heartbeat_at=state.heartbeat_at,
            last_close_at=last.closed_at if last else None,
            window_end=end,
            streamed_lsn=state.received_lsn_text,
            replayed_lsn=state.replay_lsn_text,
            no_acknowledged_loss=None if so_far else self._synchronous_evidence(state),
        )
        self.outcome.loss = loss
        facts = (
            f"last replayed commit {iso(loss.last_commit_at)}, last heartbeat "
            f"{iso(loss.heartbeat_at)}, last shipped segment closed "
            f"{iso(loss.last_close_at)}"
        )
        ends = "primary seen down" if self._primary_seen_down_at else "now"
        rpo = self.connector.rpo
        if loss.bound_s is None:
            headline = "the loss cannot be bounded: nothing replayed carries a time"
        else:
            headline = (
                f"you lose at most {loss.bound_s:.1f} s of commits "
                f"({iso(loss.window_start)} → {iso(loss.window_end)}, {ends})"
            )
        if so_far:
            headline += " (so far: the drain may shrink it)"
        if loss.streamed_lsn is not None:
            facts += f"; streamed and flushed here to {loss.streamed_lsn}"
        if loss.no_acknowledged_loss is not None:
            # The window still bounds commits in flight, which nobody was told of.
            headline = (
                f"no acknowledged commit is lost: {loss.no_acknowledged_loss}; unacknowledged "
                f"commits in flight at the end fall in {iso(loss.window_start)} → "
                f"{iso(loss.window_end)}"
            )
        detail = f"{headline}; {facts}; RPO {rpo:g} s"
        over = loss.no_acknowledged_loss is None and (loss.bound_s is None or loss.bound_s > rpo)
        if over and not self.options.accept_data_loss:
            self._step(
                name,
                Verdict.REFUSED,
                detail + ": above the RPO, promote with --accept-data-loss to go on",
            )
        elif over:
            self._forced.append("loss above RPO")
            self._step(name, Verdict.FORCED, detail + ": above the RPO (--accept-data-loss)")
        else:
            self._step(name, Verdict.OK, detail)
        return loss

    def _synchronous_evidence(self, state: StandbyState) -> str | None:
        """Why every commit the primary acknowledged is on this standby, from the
        primary's last word (its lease at the site); None when that cannot be shown."""
        from logship.engines.postgresql.streaming.lease import SyncLease, lease_path

        if state.received_lsn_text is None:
            return None
        try:
            data = Path(lease_path(self.layout)).read_bytes()
            lease = SyncLease.from_json(data, self.connector.name)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self._step("synchronous evidence", Verdict.INFO, f"lease unusable: {exc}")
            return None
        flushed = (
            f"replayed to {state.replay_lsn_text} of the {state.received_lsn_text} "
            f"streamed and flushed here"
        )
        if lease.sync_mode == "protection":
            return (
                f"maximum protection since {iso(lease.since)} (the primary's lease of "
                f"{iso(lease.written_at)}): every commit waited for this standby's flush; "
                f"{flushed}"
            )
        down = self._primary_seen_down_at
        if lease.sync_mode == "availability" and lease.holds_until is not None:
            if down is not None and down <= lease.holds_until:
                return (
                    f"maximum availability since {iso(lease.since)}, and the primary could "
                    f"not drop to async before {iso(lease.holds_until)}; it was seen down "
                    f"at {iso(down)}; {flushed}"
                )
            self._step(
                "synchronous evidence",
                Verdict.INFO,
                f"maximum availability since {iso(lease.since)}: no commit acknowledged "
                f"before {iso(lease.holds_until)} is lost; after that the primary may have "
                "dropped to async"
                + ("" if down is not None else " (the primary's end is unknown here)"),
            )
        return None

    # -- files -------------------------------------------------------------------

    def _files_report(self, state: StandbyState) -> None:
        """Which file state goes with the database as replayed (logship.consistency)."""
        for name in self._files:
            report = files_report(
                self._site_root,
                name,
                self.connector.name,
                state.timeline,
                state.replay_lsn or 0,
            )
            self.outcome.files.append(report.to_json())
            self._step(f"files {name}", Verdict.INFO, report.line())

    # -- promote -----------------------------------------------------------------

    def _record(self, loss: LossReport, state: str, rto_s: float | None) -> dict[str, Any]:
        return {
            "connector": self.connector.name,
            "state": state,
            "at": self._clock(),
            "at_iso": iso(self._clock()),
            "by": f"{getpass.getuser()}@{socket.gethostname()}",
            "pid": os.getpid(),
            "old_timeline": self.outcome.old_timeline,
            "new_timeline": self.outcome.new_timeline,
            "rpo_target_s": self.connector.rpo,
            "loss": loss.to_json(),
            "rto_s": None if rto_s is None else round(rto_s, 3),
            "forced": self._forced,
            "files": self.outcome.files,
        }

    def _promote(
        self, standby: Standby, state: StandbyState, loss: LossReport, started: float
    ) -> None:
        marker = Path(self.layout.promoted_marker)
        # Before pg_promote: from the moment the standby can be written, no daemon
        # may ship into it, so the fence must already stand.
        write_marker(marker, self._record(loss, "promoting", None))
        self._step("fence", Verdict.OK, f"wrote {marker}: nothing ships here any more")
        if not standby.promote(self.options.timeout):
            raise OperationFailed(
                f"pg_promote did not finish within {self.options.timeout:g}s; the standby may "
                f"still be promoting (see its log). {marker} stays: shipping stays stopped"
            )
        standby.write_check()
        rto = self._monotonic() - started
        self.outcome.rto_s = rto
        new_timeline = standby.current_timeline()
        self.outcome.new_timeline = new_timeline
        after = standby.state()
        if after.in_recovery or new_timeline <= state.timeline:
            raise OperationFailed(
                f"after pg_promote the server is on timeline {new_timeline} (was "
                f"{state.timeline}), in recovery: {after.in_recovery}; check its log"
            )
        self._step(
            "promote",
            Verdict.OK,
            f"writable on timeline {new_timeline} (was "
            f"{state.timeline}); RTO {rto:.1f} s from the command to a writable database",
        )
        record = self._record(loss, "promoted", rto)
        write_marker(marker, record)
        append_journal(Path(self.layout.root) / JOURNAL_NAME, {"event": "promote", **record})
        lost = "unknown" if loss.bound_s is None else f"at most {loss.bound_s:.1f} s"
        lost += " of commits lost"
        if loss.no_acknowledged_loss is not None:
            lost = "no acknowledged commit lost"
        catalog_note = self._record_event(record) if self._record_event else "not asked"
        self._step(
            "record",
            Verdict.OK,
            f"achieved RPO: {lost}; "
            f"RTO {rto:.1f} s; event appended to {Path(self.layout.root) / JOURNAL_NAME}; "
            f"catalog: {catalog_note}",
        )
        steps = NEXT_STEPS if self.connector.sides is None else NEXT_STEPS_TWO_SIDED
        for number, text in enumerate(steps, 1):
            self._step(
                f"next step {number}", Verdict.INFO, text.replace("CONNECTOR", self.connector.name)
            )


def _summary(marker: Path) -> str:
    try:
        content = json.loads(marker.read_text())
        summary = (
            f"promoted {content.get('at_iso')} by {content.get('by')} "
            f"(state {content.get('state')})"
        )
    except (OSError, ValueError, AttributeError):
        return "already promoted"
    if content.get("state") == "promoting":
        # pg_promote did not confirm: the standby may or may not have left recovery.
        summary += (
            "; pg_promote did not confirm: check the standby with "
            "`select pg_is_in_recovery()` and its log before removing the marker by hand"
        )
    return summary
