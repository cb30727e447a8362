"""Lag and RPO from catalog rows, a clock reading and the site's reachability
(as the README's `status --json` section defines them).

Pure functions, no I/O: `status`, `dashboard` and the daemon's samples all compute
the same numbers the same way, and the rules are testable with plain rows.

Rows must come in ship order (as `Catalog.files` returns them): by timeline, a
timeline's `.history` first, then by name.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from logship.catalog.models import FileState
from logship.engines.postgresql import walnames
from logship.engines.postgresql.walnames import WalKind, segment_name

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
# PostgreSQL accepts power-of-two segment sizes from 1 MiB to 1 GiB (initdb --wal-segsize).
_MIN_SEGMENT_SIZE = 1024 * 1024
_MAX_SEGMENT_SIZE = 1024 * 1024 * 1024
WARN_FRACTION = 0.5
DURABLE_STATES = frozenset({FileState.SHIPPED, FileState.APPLIED})


class State(StrEnum):
    OK = "ok"
    WARN = "warn"
    BREACH = "breach"
    DOWN = "down"


class FileRow(Protocol):
    """What lag needs from a catalog file row (`SpoolFile` satisfies it)."""

    name: str
    order_key: str
    size: int
    closed_at: float
    state: str


class SiteRow(Protocol):
    reachable: bool
    error: str | None


class PrimaryRow(Protocol):
    measured_at: float
    current_lsn: str | None
    archive_ready: int | None
    archive_failed_count: int | None
    archive_last_failed_at: float | None


class DrillRow(Protocol):
    state: str
    finished_at: float | None
    error: str | None
    restore_s: float | None
    replay_s: float | None


class VerifyRow(Protocol):
    """What status needs from a `TreeVerify` row (a files connector's `verify`)."""

    state: str  # clean, drift, failed
    finished_at: float | None
    drift: int | None
    error: str | None


@dataclass(frozen=True)
class JobFacts:
    """What the scheduled jobs of a connector last did and will do next."""

    next_job: tuple[str, float] | None = None  # (action, planned time)
    last_job: tuple[str, float, str | None] | None = None  # (action, finished, error)
    last_drill: DrillRow | None = None
    last_passed_drill: DrillRow | None = None
    #: the newest finished `verify` of a files connector
    last_verify: VerifyRow | None = None


class ProgressRow(Protocol):
    last_restored: str | None
    sampled_at: float
    replay_lsn: str | None
    replay_rate_bps: float | None
    error: str | None
    #: the primary's heartbeat time as replayed by the standby (primary's clock)
    heartbeat_at: float | None
    #: commit time of the last transaction the standby replayed
    replay_timestamp: float | None


@dataclass(frozen=True)
class Gap:
    """The first WAL segment missing from the sequence; replay cannot pass it."""

    missing: str  # named on the timeline of the segment before it
    segment_number: int
    after: str  # the last segment present before the gap

    def to_json(self) -> dict[str, Any]:
        return {"missing": self.missing, "segment_number": self.segment_number, "after": self.after}

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> Gap:
        return cls(entry["missing"], int(entry["segment_number"]), entry["after"])


@dataclass(frozen=True)
class ConnectorStatus:
    """One entry of `status --json`: the contract fields, then `gap` and `site_error`."""

    name: str
    kind: str
    site: str
    state: State
    rpo_target_s: float
    rpo_exposure_s: float | None
    transport_lag_s: float | None
    apply_lag_s: float | None
    pending_files: int | None
    pending_bytes: int | None
    last_shipped: str | None
    last_applied: str | None
    last_base_backup_at: str | None
    gap: Gap | None = None
    site_error: str | None = None
    # Per stage, beyond the contract. Each stage's figures carry when they were
    # measured, so a stale number shows as stale.
    archive_ready_files: int | None = None
    archive_failed_count: int | None = None
    archive_last_failed_at: str | None = None
    primary_measured_at: str | None = None
    replay_rate_bps: float | None = None
    replay_backlog_bytes: int | None = None
    rto_estimate_s: float | None = None
    standby_measured_at: str | None = None
    standby_error: str | None = None
    #: the connector's next scheduled job (schedules/*.toml) as the daemon planned it
    next_job: str | None = None
    next_job_at: str | None = None
    #: the connector's most recently finished scheduled job, and its error if it failed
    last_job: str | None = None
    last_job_at: str | None = None
    last_job_error: str | None = None
    #: the newest restore drill ("passed" or "failed") and when it finished
    drill_state: str | None = None
    drill_at: str | None = None
    drill_error: str | None = None
    #: restore + replay seconds of the newest drill that passed: a measured rebuild
    rebuild_rto_s: float | None = None
    #: the newest `verify` (files connectors): paths that differ at the site (null
    #: when it failed or never ran), when it finished, and why it failed
    drift_files: int | None = None
    verified_at: str | None = None
    verify_error: str | None = None
    #: files connectors: rounds that changed the site so far, the newest complete
    #: consistency point and when it completed, and how many are still open
    sync_generation: int | None = None
    consistency_point: str | None = None
    consistency_at: str | None = None
    consistency_open: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "site": self.site,
            "state": str(self.state),
            "rpo_target_s": self.rpo_target_s,
            "rpo_exposure_s": self.rpo_exposure_s,
            "transport_lag_s": self.transport_lag_s,
            "apply_lag_s": self.apply_lag_s,
            "pending_files": self.pending_files,
            "pending_bytes": self.pending_bytes,
            "last_shipped": self.last_shipped,
            "last_applied": self.last_applied,
            "last_base_backup_at": self.last_base_backup_at,
            "gap": self.gap.to_json() if self.gap else None,
            "site_error": self.site_error,
            "archive_ready_files": self.archive_ready_files,
            "archive_failed_count": self.archive_failed_count,
            "archive_last_failed_at": self.archive_last_failed_at,
            "primary_measured_at": self.primary_measured_at,
            "replay_rate_bps": self.replay_rate_bps,
            "replay_backlog_bytes": self.replay_backlog_bytes,
            "rto_estimate_s": self.rto_estimate_s,
            "standby_measured_at": self.standby_measured_at,
            "standby_error": self.standby_error,
            "next_job": self.next_job,
            "next_job_at": self.next_job_at,
            "last_job": self.last_job,
            "last_job_at": self.last_job_at,
            "last_job_error": self.last_job_error,
            "drill_state": self.drill_state,
            "drill_at": self.drill_at,
            "drill_error": self.drill_error,
            "rebuild_rto_s": self.rebuild_rto_s,
            "drift_files": self.drift_files,
            "verified_at": self.verified_at,
            "verify_error": self.verify_error,
            "sync_generation": self.sync_generation,
            "consistency_point": self.consistency_point,
            "consistency_at": self.consistency_at,
            "consistency_open": self.consistency_open,
        }

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> ConnectorStatus:
        """Back from one `status --json` entry (for views fed by another process)."""
        values = {f.name: entry.get(f.name) for f in fields(cls)}
        values["state"] = State(entry["state"])
        values["gap"] = Gap.from_json(entry["gap"]) if entry.get("gap") else None
        return cls(**values)


def is_durable(row: FileRow) -> bool:
    return row.state in DURABLE_STATES


def _is_valid_segment_size(size: int) -> bool:
    return _MIN_SEGMENT_SIZE <= size <= _MAX_SEGMENT_SIZE and size & (size - 1) == 0


def segment_size(rows: Sequence[FileRow]) -> int:
    """The cluster's WAL segment size, read off the segments' own sizes."""
    for row in rows:
        parsed = walnames.parse(row.name)
        if parsed and parsed.kind is WalKind.SEGMENT and _is_valid_segment_size(row.size):
            return row.size
    return DEFAULT_SEGMENT_SIZE


@dataclass(frozen=True)
class DurablePrefix:
    """The newest segment that, with every file before it, is durable at the site
    with no segment missing before it.

    A walk over a connector's rows finds it; later walks may start after it,
    because a file's state only moves forward (discovered, then shipped, then
    applied) and retention removes only durable files. A file that turns up
    before it later invalidates it (the catalog drops it). This is what keeps
    `status` fast with millions of rows: only the rows after it are read.
    """

    name: str
    order_key: str
    closed_at: float
    segment_size: int


@dataclass(frozen=True)
class _Walk:
    newest_durable: FileRow | DurablePrefix | None  # newest segment, every earlier one durable
    gap: Gap | None
    segment_size: int
    #: as newest_durable, but every earlier file of any kind durable too (a backup
    #: label does not hold replay up, yet a pending one must stay in later walks)
    prefix_end: FileRow | DurablePrefix | None

    @property
    def prefix(self) -> DurablePrefix | None:
        end = self.prefix_end
        if end is None or isinstance(end, DurablePrefix):
            return end
        return DurablePrefix(end.name, end.order_key, end.closed_at, self.segment_size)


def _walk(rows: Sequence[FileRow], start: DurablePrefix | None = None) -> _Walk:
    """One pass in ship order; `rows` are those after `start` when there is one."""
    seg_size = start.segment_size if start is not None else segment_size(rows)
    newest_durable: FileRow | DurablePrefix | None = start
    prefix_end = start
    prefix_intact = every_durable = True
    gap: Gap | None = None
    previous: tuple[walnames.WalName, int] | None = None
    if start is not None and (parsed_start := walnames.parse(start.name)) is not None:
        previous = (parsed_start, parsed_start.segment_number(seg_size))
    for row in rows:
        every_durable = every_durable and is_durable(row)
        parsed = walnames.parse(row.name)
        if parsed is None or parsed.kind is WalKind.BACKUP:
            continue  # a backup label holds no data replay needs
        if parsed.kind is WalKind.HISTORY:
            # Without its history file a standby cannot follow the new timeline, so
            # that timeline's segments are of no use at the site yet.
            prefix_intact = prefix_intact and is_durable(row)
            continue
        number = parsed.segment_number(seg_size)
        if previous is not None:
            prev_name, prev_number = previous
            expected = prev_number + 1
            # Only a jump forward is a gap. A new timeline starts inside the segment
            # where it branched off, so its first segment repeats that number (or an
            # earlier one after a point-in-time recovery) instead of following it.
            if number > expected:
                if gap is None:
                    gap = Gap(
                        missing=segment_name(prev_name.timeline, expected, seg_size),
                        segment_number=expected,
                        after=prev_name.name,
                    )
                prefix_intact = False
        prefix_intact = prefix_intact and is_durable(row)
        if prefix_intact:
            newest_durable = row
            if every_durable:
                prefix_end = row
        previous = (parsed, number)
    return _Walk(newest_durable, gap, seg_size, prefix_end)


def find_gap(rows: Sequence[FileRow]) -> Gap | None:
    """The first segment missing between two known ones, whatever their states."""
    return _walk(rows).gap


def _exposure(walk: _Walk, now: float) -> float | None:
    newest = walk.newest_durable
    return None if newest is None else max(0.0, now - newest.closed_at)


@dataclass(frozen=True)
class QueueFacts:
    """What `status` shows about a connector's files, from one walk over its rows."""

    walk: _Walk
    pending_files: int
    pending_bytes: int
    oldest_pending_closed_at: float | None
    last_shipped: str | None
    newest_applied: str | None

    @property
    def prefix(self) -> DurablePrefix | None:
        """Where the next walk may start (see `DurablePrefix`)."""
        return self.walk.prefix


def queue_facts(
    rows: Sequence[FileRow],
    start: DurablePrefix | None = None,
    applied_before: str | None = None,
) -> QueueFacts:
    """The queue figures from `rows` in ship order: every row of the connector, or
    only those after `start`, with `applied_before` the newest applied file before
    them (files up to `start` are all durable, so none of them is pending)."""
    walk = _walk(rows, start)
    pending = pending_rows(rows)
    durable = [row.name for row in rows if is_durable(row)]
    applied = [row.name for row in rows if row.state == FileState.APPLIED]
    return QueueFacts(
        walk=walk,
        pending_files=len(pending),
        pending_bytes=sum(row.size for row in pending),
        oldest_pending_closed_at=min((row.closed_at for row in pending), default=None),
        last_shipped=durable[-1] if durable else (start.name if start is not None else None),
        newest_applied=applied[-1] if applied else applied_before,
    )


def rpo_exposure_s(rows: Sequence[FileRow], now: float) -> float | None:
    """now - close time of the newest durable segment with no gap before it; None if none."""
    return _exposure(_walk(rows), now)


def pending_rows(rows: Sequence[FileRow]) -> list[FileRow]:
    """Files closed at the primary and not durable at the site (conflicts included:
    their content never reaches the site)."""
    return [row for row in rows if not is_durable(row)]


def _transport_lag(oldest_pending_closed_at: float | None, now: float) -> float:
    return 0.0 if oldest_pending_closed_at is None else max(0.0, now - oldest_pending_closed_at)


def transport_lag_s(rows: Sequence[FileRow], now: float) -> float:
    """Age of the oldest closed-but-not-shipped file; 0.0 when nothing is pending."""
    return _transport_lag(queue_facts(rows).oldest_pending_closed_at, now)


def last_shipped(rows: Sequence[FileRow]) -> str | None:
    return queue_facts(rows).last_shipped


def _last_applied(progress: ProgressRow | None, newest_applied: str | None) -> str | None:
    if progress is not None and progress.last_restored:
        return progress.last_restored
    return newest_applied


def last_applied(rows: Sequence[FileRow], progress: ProgressRow | None) -> str | None:
    """What the standby last fetched for replay; else the newest row marked applied."""
    return _last_applied(progress, queue_facts(rows).newest_applied)


def apply_lag_s(progress: ProgressRow | None, now: float) -> float | None:
    """How far the standby's data is behind the primary, in time.

    From the heartbeat when the standby has replayed one. Between samples the
    figure keeps growing with `now`: an unknown standby is never shown as caught
    up. Without a heartbeat, the last replayed commit's time (which an idle
    primary makes look old) is the only figure there is.
    """
    if progress is None:
        return None
    reference = progress.heartbeat_at
    if reference is None:
        reference = progress.replay_timestamp
    return None if reference is None else max(0.0, now - reference)


def replay_backlog_bytes(primary: PrimaryRow | None, progress: ProgressRow | None) -> int | None:
    if primary is None or progress is None or not primary.current_lsn or not progress.replay_lsn:
        return None
    backlog = walnames.lsn_to_int(primary.current_lsn) - walnames.lsn_to_int(progress.replay_lsn)
    return max(0, backlog)


def rto_estimate_s(backlog: int | None, rate: float | None) -> float | None:
    """Time to replay what is left; the promote itself is not measured yet."""
    if backlog is None:
        return None
    if backlog == 0:
        return 0.0
    return backlog / rate if rate else None


def classify(
    *,
    rpo_target_s: float,
    rpo_exposure_s: float | None,
    transport_lag_s: float | None,
    site_reachable: bool | None,
    has_gap: bool = False,
) -> State:
    """`down` > `breach` > `warn` > `ok`, the order the README gives the states in."""
    if site_reachable is False:
        return State.DOWN
    exposure = rpo_exposure_s
    if exposure is None and transport_lag_s:
        # Nothing is durable at the site yet, so at least everything since the
        # oldest pending file would be lost: that age is the exposure.
        exposure = transport_lag_s
    if exposure is not None and exposure > rpo_target_s:
        return State.BREACH
    if exposure is not None and exposure > WARN_FRACTION * rpo_target_s:
        return State.WARN
    # Replay stops at a gap and the exposure only grows from here on: say so now.
    if has_gap:
        return State.WARN
    return State.OK


def iso_utc(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    return moment.replace("+00:00", "Z")


def _rounded(value: float | None) -> float | None:
    # A non-finite figure (a bad time stored by an older logship) is unknown.
    return None if value is None or not math.isfinite(value) else round(value, 3)


def connector_status(
    *,
    name: str,
    kind: str,
    site: str,
    rpo_target_s: float,
    now: float,
    files: Sequence[FileRow] | None = None,
    queue: QueueFacts | None = None,
    site_status: SiteRow | None = None,
    progress: ProgressRow | None = None,
    last_base_backup_at: float | None = None,
    primary: PrimaryRow | None = None,
    jobs: JobFacts | None = None,
) -> ConnectorStatus:
    """Everything `status` shows for one connector.

    The queue comes as every file row (`files`) or as figures already walked
    (`queue`, see `queue_facts`). With neither there is no catalog yet: then
    nothing about the queue is known and its figures are null rather than a
    made-up 0.
    """
    if queue is None and files is not None:
        queue = queue_facts(files)
    facts = queue or queue_facts(())
    walk = facts.walk
    exposure = _exposure(walk, now)
    transport = _transport_lag(facts.oldest_pending_closed_at, now) if queue is not None else None
    reachable = None if site_status is None else bool(site_status.reachable)
    backlog = replay_backlog_bytes(primary, progress)
    return ConnectorStatus(
        name=name,
        kind=kind,
        site=site,
        state=classify(
            rpo_target_s=rpo_target_s,
            rpo_exposure_s=exposure,
            transport_lag_s=transport,
            site_reachable=reachable,
            has_gap=walk.gap is not None,
        ),
        rpo_target_s=float(rpo_target_s),
        rpo_exposure_s=_rounded(exposure),
        transport_lag_s=_rounded(transport),
        apply_lag_s=_rounded(apply_lag_s(progress, now)),
        pending_files=facts.pending_files if queue is not None else None,
        pending_bytes=facts.pending_bytes if queue is not None else None,
        last_shipped=facts.last_shipped,
        last_applied=_last_applied(progress, facts.newest_applied),
        last_base_backup_at=iso_utc(last_base_backup_at),
        gap=walk.gap,
        site_error=site_status.error if site_status is not None else None,
        archive_ready_files=primary.archive_ready if primary else None,
        archive_failed_count=primary.archive_failed_count if primary else None,
        archive_last_failed_at=iso_utc(primary.archive_last_failed_at) if primary else None,
        primary_measured_at=iso_utc(primary.measured_at) if primary else None,
        replay_rate_bps=_rounded(progress.replay_rate_bps) if progress else None,
        replay_backlog_bytes=backlog,
        rto_estimate_s=_rounded(
            rto_estimate_s(backlog, progress.replay_rate_bps if progress else None)
        ),
        standby_measured_at=iso_utc(progress.sampled_at) if progress else None,
        standby_error=progress.error if progress else None,
        **_job_fields(jobs or JobFacts()),
    )


def failed_status(
    *, name: str, kind: str, site: str, rpo_target_s: float, error: str
) -> ConnectorStatus:
    """A connector whose status could not be computed: shown as `down` with why,
    every figure unknown (null), so the failure is seen and nothing is made up."""
    return ConnectorStatus(
        name=name,
        kind=kind,
        site=site,
        state=State.DOWN,
        rpo_target_s=float(rpo_target_s),
        rpo_exposure_s=None,
        transport_lag_s=None,
        apply_lag_s=None,
        pending_files=None,
        pending_bytes=None,
        last_shipped=None,
        last_applied=None,
        last_base_backup_at=None,
        site_error=error,
    )


def _job_fields(jobs: JobFacts) -> dict[str, Any]:
    next_job, last_job, drill = jobs.next_job, jobs.last_job, jobs.last_drill
    passed = jobs.last_passed_drill
    rebuild = None
    if passed is not None and passed.restore_s is not None and passed.replay_s is not None:
        rebuild = _rounded(passed.restore_s + passed.replay_s)
    return {
        "next_job": next_job[0] if next_job else None,
        "next_job_at": iso_utc(next_job[1]) if next_job else None,
        "last_job": last_job[0] if last_job else None,
        "last_job_at": iso_utc(last_job[1]) if last_job else None,
        "last_job_error": last_job[2] if last_job else None,
        "drill_state": drill.state if drill else None,
        "drill_at": iso_utc(drill.finished_at) if drill else None,
        "drill_error": drill.error if drill else None,
        "rebuild_rto_s": rebuild,
        **_verify_fields(jobs.last_verify),
    }


def _verify_fields(verify: VerifyRow | None) -> dict[str, Any]:
    if verify is None:
        return {"drift_files": None, "verified_at": None, "verify_error": None}
    failed = verify.state == "failed"
    return {
        # A verify that could not compare knows nothing about drift: null, not 0.
        "drift_files": None if failed else verify.drift,
        "verified_at": iso_utc(verify.finished_at),
        "verify_error": verify.error if failed else None,
    }
