"""A PostgreSQL connector's entry of `status`: its WAL queue, its primary's archiver,
its standby's replay, its base backups and drills.

`connector_status` is pure (rows and facts in, a status out); `postgres_status`
reads them from the catalog.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from logship.engines.postgresql import walnames
from logship.engines.postgresql.lag import QueueFacts, queue_facts
from logship.errors import shown_text
from logship.status.figures import (
    FileRow,
    SiteRow,
    age_s,
    iso_utc,
    rounded,
    rto_estimate_s,
    transport_lag,
)
from logship.status.jobs import JobFacts, job_fields, scheduled_jobs
from logship.status.model import ConnectorStatus
from logship.status.state import measured_fields

if TYPE_CHECKING:
    from logship.catalog.store import Catalog
    from logship.engines.postgresql.engine import PostgresConnector


class PrimaryRow(Protocol):
    measured_at: float
    current_lsn: str | None
    archive_ready: int | None
    archive_failed_count: int | None
    archive_last_failed_at: float | None


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


class StreamRow(Protocol):
    measured_at: float
    state: str
    flush_lsn: str | None
    durable_at: float | None
    sync_mode: str | None
    slot_retained_bytes: int | None
    error: str | None


#: streaming facts older than this were not measured by a running daemon
STREAM_STALE_S = 10.0


@dataclass(frozen=True)
class StreamFigures:
    streaming: str
    exposure_s: float | None = None
    flush_lsn: str | None = None
    sync_mode: str | None = None
    slot_retained_bytes: int | None = None
    measured_at: float | None = None
    error: str | None = None


def stream_figures(enabled: bool, row: StreamRow | None, now: float) -> StreamFigures:
    """Streaming as the daemon last measured it. Flushed at the standby counts as
    durable at the site, so its exposure is now - the primary-clock time up to
    which every commit was flushed there: it keeps growing while nobody measures."""
    if not enabled:
        return StreamFigures("off")
    if row is None:
        return StreamFigures("down", error="not measured yet (is `logship run` running?)")
    exposure = age_s(row.durable_at, now) if row.durable_at is not None else None
    state, error, mode = row.state, row.error, row.sync_mode
    stale = now - row.measured_at
    if stale > STREAM_STALE_S:
        state, mode = "down", None
        error = f"not measured for {stale:.0f} s (is `logship run` running?)"
    return StreamFigures(
        streaming=state,
        exposure_s=exposure,
        flush_lsn=row.flush_lsn,
        sync_mode=mode,
        slot_retained_bytes=row.slot_retained_bytes,
        measured_at=row.measured_at,
        error=error,
    )


def _least(*values: float | None) -> float | None:
    known = [value for value in values if value is not None]
    return min(known) if known else None


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
    return None if reference is None else age_s(reference, now)


def replay_backlog_bytes(primary: PrimaryRow | None, progress: ProgressRow | None) -> int | None:
    if primary is None or progress is None or not primary.current_lsn or not progress.replay_lsn:
        return None
    backlog = walnames.lsn_to_int(primary.current_lsn) - walnames.lsn_to_int(progress.replay_lsn)
    return max(0, backlog)


def _last_applied(progress: ProgressRow | None, newest_applied: str | None) -> str | None:
    """What the standby last fetched for replay; else the newest row marked applied."""
    if progress is not None and progress.last_restored:
        return progress.last_restored
    return newest_applied


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
    stream: StreamFigures | None = None,
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
    stream = stream or StreamFigures("off")
    # Durable at the site is shipped (with no gap before it) or streamed and flushed.
    exposure = _least(facts.rpo_exposure_s(now), stream.exposure_s)
    transport = transport_lag(facts.oldest_pending_closed_at, now) if queue is not None else None
    reachable = None if site_status is None else bool(site_status.reachable)
    backlog = replay_backlog_bytes(primary, progress)
    return ConnectorStatus(
        **measured_fields(
            name=name,
            kind=kind,
            site=site,
            rpo_target_s=rpo_target_s,
            rpo_exposure_s=exposure,
            transport_lag_s=transport,
            site_reachable=reachable,
            has_gap=facts.gap is not None,
        ),
        apply_lag_s=rounded(apply_lag_s(progress, now)),
        pending_files=facts.pending_files if queue is not None else None,
        pending_bytes=facts.pending_bytes if queue is not None else None,
        last_shipped=facts.last_shipped,
        last_applied=_last_applied(progress, facts.newest_applied),
        last_base_backup_at=iso_utc(last_base_backup_at),
        gap=facts.gap,
        site_error=site_status.error if site_status is not None else None,
        archive_ready_files=primary.archive_ready if primary else None,
        archive_failed_count=primary.archive_failed_count if primary else None,
        archive_last_failed_at=iso_utc(primary.archive_last_failed_at) if primary else None,
        primary_measured_at=iso_utc(primary.measured_at) if primary else None,
        replay_rate_bps=rounded(progress.replay_rate_bps) if progress else None,
        replay_backlog_bytes=backlog,
        rto_estimate_s=rounded(
            rto_estimate_s(backlog, progress.replay_rate_bps if progress else None)
        ),
        standby_measured_at=iso_utc(progress.sampled_at) if progress else None,
        standby_error=progress.error if progress else None,
        streaming=stream.streaming,
        stream_flush_lsn=stream.flush_lsn,
        sync_mode=stream.sync_mode,
        slot_retained_bytes=stream.slot_retained_bytes,
        stream_measured_at=iso_utc(stream.measured_at),
        stream_error=stream.error,
        **job_fields(jobs or JobFacts()),
    )


def postgres_status(
    connector: PostgresConnector, catalog: Catalog | None, now: float, *, remember: bool
) -> ConnectorStatus:
    """From the catalog; None before any daemon created it. With `remember` how far
    the connector's WAL is durable is kept in the catalog, so that the next walk,
    this process's or another's, reads only the rows after it."""
    name = connector.name
    site_status = progress = backup = primary = None
    queue = None
    jobs = JobFacts()
    stream_row = catalog.stream_facts(name) if catalog is not None else None
    stream = stream_figures(connector.streaming.enabled, stream_row, now)
    if catalog is not None:
        primary = catalog.primary_facts(name)
        queue = _queue_facts(catalog, name, remember)
        if connector.primary.data_dir is None:
            queue = _with_archiver_backlog(queue, primary)
        site_status = catalog.site_status(connector.site, name)
        progress = catalog.standby_progress(name)
        backup = catalog.last_backup(name)
        jobs = replace(
            scheduled_jobs(catalog, name),
            last_drill=catalog.last_drill(name),
            last_passed_drill=catalog.last_drill(name, passed=True),
        )
    return connector_status(
        name=name,
        kind=connector.kind,
        site=connector.site,
        rpo_target_s=connector.rpo,
        now=now,
        queue=queue,
        site_status=site_status,
        progress=progress,
        last_base_backup_at=backup.finished_at if backup is not None else None,
        primary=primary,
        jobs=jobs,
        stream=stream,
    )


def _with_archiver_backlog(queue: QueueFacts, primary: PrimaryRow | None) -> QueueFacts:
    """Without read-ahead, segments PostgreSQL has marked ready but not yet handed to
    archive-wal are in no spool and no catalog row, yet they are not at the site
    either: they count as pending. (With read-ahead they are rows already.)"""
    if primary is None or not primary.archive_ready:
        return queue
    segment = queue.prefix.segment_size if queue.prefix else walnames.DEFAULT_SEGMENT_SIZE
    return replace(
        queue,
        pending_files=queue.pending_files + primary.archive_ready,
        pending_bytes=queue.pending_bytes + primary.archive_ready * segment,
    )


def _queue_facts(catalog: Catalog, name: str, remember: bool) -> QueueFacts:
    start = catalog.walk_checkpoint(name)
    rows = catalog.files(name, after=start.order_key if start is not None else None)
    facts = queue_facts(rows, start, catalog.newest_applied(name) if start is not None else None)
    if remember and facts.prefix is not None and facts.prefix != start:
        catalog.save_walk_checkpoint(name, facts.prefix)
    return facts


def null_reasons(status: ConnectorStatus) -> list[str]:
    """Why a figure of a PostgreSQL connector shows as unknown (beyond no catalog)."""
    reasons = []
    if status.pending_files is not None and status.rpo_exposure_s is None:
        reasons.append("exposure unknown: no WAL segment has reached the site yet")
    if status.apply_lag_s is None:
        if status.standby_error:
            reasons.append(
                "apply lag unknown: the standby did not answer "
                f"({shown_text(status.standby_error)})"
            )
        elif status.standby_measured_at is None:
            reasons.append("apply lag unknown: the standby has not been sampled yet")
        else:
            reasons.append("apply lag unknown: no heartbeat or commit replayed on the standby yet")
    if status.primary_measured_at is not None and status.archive_ready_files is None:
        reasons.append(
            "archive backlog unknown: counting .ready files needs superuser or pg_monitor"
        )
    return reasons
