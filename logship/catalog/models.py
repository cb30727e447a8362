"""SQLAlchemy models. Times are POSIX seconds (floats): the same on SQLite and PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import BigInteger, Float, Index, LargeBinary, String, Text, UniqueConstraint, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class FileState(StrEnum):
    DISCOVERED = "discovered"  # in the spool, not yet durable at the site
    SHIPPED = "shipped"  # durable at the site, checksum recorded
    APPLIED = "applied"  # handed to the standby's replay
    CONFLICT = "conflict"  # same name as a shipped file, different content: never shipped


class Base(DeclarativeBase):
    pass


class SpoolFile(Base):
    __tablename__ = "spool_files"
    __table_args__ = (
        UniqueConstraint("connector", "name"),
        Index("ix_spool_files_queue", "connector", "state", "order_key"),
        # The rows after a durable prefix, in ship order (see `DurablePrefix`).
        Index("ix_spool_files_order", "connector", "order_key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connector: Mapped[str] = mapped_column(String(200))
    name: Mapped[str] = mapped_column(String(255))
    # Ship order as a sortable string (see Engine.ship_order), so SQL can ORDER BY it.
    order_key: Mapped[str] = mapped_column(String(300))
    size: Mapped[int] = mapped_column(BigInteger)
    closed_at: Mapped[float] = mapped_column(Float)
    discovered_at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(20), default=FileState.DISCOVERED)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    stored_size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    shipped_at: Mapped[float | None] = mapped_column(Float, default=None)
    applied_at: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class WalkCheckpoint(Base):
    """How far a connector's files are known durable with no gap (see `DurablePrefix`).

    A cache of a walk over the file rows, so that `status` and the daemon's
    monitor walk only the rows after it instead of every row ever shipped.
    """

    __tablename__ = "walk_checkpoints"

    connector: Mapped[str] = mapped_column(String(200), primary_key=True)
    order_key: Mapped[str] = mapped_column(String(300))
    name: Mapped[str] = mapped_column(String(255))
    closed_at: Mapped[float] = mapped_column(Float)
    segment_size: Mapped[int] = mapped_column(BigInteger)


class BaseBackup(Base):
    __tablename__ = "base_backups"
    __table_args__ = (UniqueConstraint("connector", "backup_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connector: Mapped[str] = mapped_column(String(200), index=True)
    backup_id: Mapped[str] = mapped_column(String(100))
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    stored_size: Mapped[int | None] = mapped_column(BigInteger, default=None)
    state: Mapped[str] = mapped_column(String(20))  # running, done, failed, deleted
    error: Mapped[str | None] = mapped_column(Text, default=None)
    start_lsn: Mapped[str | None] = mapped_column(String(40), default=None)
    stop_lsn: Mapped[str | None] = mapped_column(String(40), default=None)
    start_wal: Mapped[str | None] = mapped_column(String(255), default=None)
    stop_wal: Mapped[str | None] = mapped_column(String(255), default=None)
    #: when retention removed it from the site
    deleted_at: Mapped[float | None] = mapped_column(Float, default=None)


class Drill(Base):
    """One restore drill of a base backup at the standby site."""

    __tablename__ = "drills"
    __table_args__ = (Index("ix_drills_connector_started", "connector", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connector: Mapped[str] = mapped_column(String(200))
    backup_id: Mapped[str | None] = mapped_column(String(100), default=None)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    state: Mapped[str] = mapped_column(String(20))  # running, passed, failed
    #: extract + verify of the backup, then replay of the shipped WAL to its end:
    #: together the measured time to rebuild a standby from scratch
    restore_s: Mapped[float | None] = mapped_column(Float, default=None)
    replay_s: Mapped[float | None] = mapped_column(Float, default=None)
    replayed_to_wal: Mapped[str | None] = mapped_column(String(255), default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class ScheduledJob(Base):
    """A schedules/*.toml job as the daemon runs it: when next, how the last went."""

    __tablename__ = "scheduled_jobs"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    connector: Mapped[str] = mapped_column(String(200), index=True)
    job: Mapped[str] = mapped_column(String(50))
    #: the trigger the times below belong to (cron + timezone); a changed one
    #: makes a stored next_run_at meaningless for catching up a missed run
    trigger: Mapped[str | None] = mapped_column(String(200), default=None)
    next_run_at: Mapped[float | None] = mapped_column(Float, default=None)
    last_started_at: Mapped[float | None] = mapped_column(Float, default=None)
    last_finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)


class JournalEvent(Base):
    """Something an operator did or should know of (a promote, for now)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    connector: Mapped[str] = mapped_column(String(200), index=True)
    at: Mapped[float] = mapped_column(Float, index=True)
    kind: Mapped[str] = mapped_column(String(50))
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text, default=None)  # JSON


class LinkState(Base):
    """How a connector's link to its site stood when the worker serving it last looked.

    Each row has one writer, the one worker that ships its connector; what status
    shows of a site is derived from these rows (`Catalog.site_status`), so that no
    worker's word on the site overwrites another's.
    """

    __tablename__ = "link_state"

    site: Mapped[str] = mapped_column(String(200), primary_key=True)
    connector: Mapped[str] = mapped_column(String(200), primary_key=True)
    reachable: Mapped[bool]
    checked_at: Mapped[float] = mapped_column(Float)
    #: what stands in the way while the link is up (a full disk), or why it is down
    error: Mapped[str | None] = mapped_column(Text, default=None)


@dataclass(frozen=True)
class SiteStatus:
    """A site as its links show it: reachable when every link is up; their errors."""

    reachable: bool
    error: str | None
    checked_at: float


class PrimaryFacts(Base):
    """What the primary said of itself at `measured_at` (engines' background probe)."""

    __tablename__ = "primary_facts"

    connector: Mapped[str] = mapped_column(String(200), primary_key=True)
    measured_at: Mapped[float] = mapped_column(Float)
    current_lsn: Mapped[str | None] = mapped_column(String(40), default=None)
    archive_ready: Mapped[int | None] = mapped_column(default=None)
    archive_failed_count: Mapped[int | None] = mapped_column(BigInteger, default=None)
    archive_last_failed_at: Mapped[float | None] = mapped_column(Float, default=None)
    last_archived_wal: Mapped[str | None] = mapped_column(String(255), default=None)
    last_archived_at: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class StreamFacts(Base):
    """How the streaming of a connector's WAL stood at `measured_at`, as the
    primary sees it (its replication slot and walsender)."""

    __tablename__ = "stream_facts"

    connector: Mapped[str] = mapped_column(String(200), primary_key=True)
    measured_at: Mapped[float] = mapped_column(Float)
    #: "streaming", "catchup" or "down"
    state: Mapped[str] = mapped_column(String(20))
    #: the newest WAL position the standby has flushed to its disk
    flush_lsn: Mapped[str | None] = mapped_column(String(40), default=None)
    #: primary-clock time up to which every commit is flushed at the standby
    durable_at: Mapped[float | None] = mapped_column(Float, default=None)
    #: "async", "availability" or "protection": the mode in force
    sync_mode: Mapped[str | None] = mapped_column(String(20), default=None)
    #: WAL the replication slot holds back at the primary
    slot_retained_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class StandbyProgress(Base):
    __tablename__ = "standby_progress"

    connector: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_restored: Mapped[str | None] = mapped_column(String(255), default=None)
    restored_at: Mapped[float | None] = mapped_column(Float, default=None)
    sampled_at: Mapped[float] = mapped_column(Float)
    # What the standby said of itself at `sampled_at` (see replay.standby_status).
    reachable: Mapped[bool | None] = mapped_column(default=None)
    in_recovery: Mapped[bool | None] = mapped_column(default=None)
    replay_lsn: Mapped[str | None] = mapped_column(String(40), default=None)
    heartbeat_at: Mapped[float | None] = mapped_column(Float, default=None)
    replay_timestamp: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    #: the standby's own clock when it answered; replay rate is measured against it
    measured_at: Mapped[float | None] = mapped_column(Float, default=None)
    #: bytes of WAL replayed per second, smoothed over samples that had work to do
    replay_rate_bps: Mapped[float | None] = mapped_column(Float, default=None)


class LagSample(Base):
    """One point of lag history: the worst of a `history.resolution` window, or a state change."""

    __tablename__ = "lag_samples"
    __table_args__ = (
        Index("ix_lag_samples_connector_at", "connector", "at"),
        # Pruning and the dashboard's all-connector event scan select by time alone.
        Index("ix_lag_samples_at", "at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connector: Mapped[str] = mapped_column(String(200))
    at: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(20))
    rpo_exposure_s: Mapped[float | None] = mapped_column(Float, default=None)
    transport_lag_s: Mapped[float | None] = mapped_column(Float, default=None)
    apply_lag_s: Mapped[float | None] = mapped_column(Float, default=None)
    pending_files: Mapped[int | None] = mapped_column(default=None)
    pending_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)


class FilesPath(Base):
    """One path of a files connector's source folder: the state map its target converges on.

    `path` is the path relative to the source as bytes: file names may be any bytes.
    """

    __tablename__ = "tree_files"
    __table_args__ = (
        UniqueConstraint("connector", "path"),
        Index("ix_tree_files_state", "connector", "state"),
        # The monitor asks every second for the failing paths and the newest
        # shipped one: without these, two walks of every row of the tree. Only
        # failing rows are in the first: SQLite's planner (no statistics) takes
        # it over the state index only when it constrains a second column, and
        # PostgreSQL caps an index row at about 2.7 kB, less than an error may be
        # (its index: POSTGRESQL_INDEXES).
        Index(
            "ix_tree_files_failing",
            "connector",
            "error",
            sqlite_where=text("error IS NOT NULL"),
        ).ddl_if(dialect="sqlite"),
        Index("ix_tree_files_shipped", "connector", "shipped_at", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connector: Mapped[str] = mapped_column(String(200))
    path: Mapped[bytes] = mapped_column(LargeBinary)
    kind: Mapped[str] = mapped_column(String(10))  # file, dir, symlink
    mode: Mapped[int] = mapped_column()
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    #: a file's ctime as last recorded (see logship.engines.files.scan.TreeEntry.ctime_ns)
    ctime_ns: Mapped[int | None] = mapped_column(BigInteger, default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    link_target: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    #: pending: changed here, not yet durable at the site; shipped: the site has it;
    #: deleting: gone here, still to be removed at the site
    state: Mapped[str] = mapped_column(String(20))
    #: when the change was first seen: exposure counts from here
    changed_at: Mapped[float] = mapped_column(Float)
    shipped_at: Mapped[float | None] = mapped_column(Float, default=None)
    attempts: Mapped[int] = mapped_column(default=0)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    next_try_at: Mapped[float | None] = mapped_column(Float, default=None)


#: Indexes the catalog makes on PostgreSQL only, by table: (name, statement).
#: Not declared on the table: `postgresql_where` there imports SQLAlchemy's
#: PostgreSQL dialect (with its asyncpg and psycopg modules) into every logship
#: process, about 25 ms of each command's start, for a catalog that is SQLite
#: unless configured otherwise.
POSTGRESQL_INDEXES: dict[str, tuple[tuple[str, str], ...]] = {
    "tree_files": (
        (
            "ix_tree_files_failing_pg",
            "CREATE INDEX IF NOT EXISTS ix_tree_files_failing_pg ON tree_files "
            "(connector, changed_at) WHERE error IS NOT NULL",
        ),
    ),
}


class FilesVerify(Base):
    """One `verify` of a files connector: the site's tree against the source."""

    __tablename__ = "tree_verifies"
    __table_args__ = (Index("ix_tree_verifies_connector_started", "connector", "started_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connector: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float, default=None)
    state: Mapped[str] = mapped_column(String(20))  # running, clean, drift, failed
    checked: Mapped[int | None] = mapped_column(default=None)
    drift: Mapped[int | None] = mapped_column(default=None)
    pending: Mapped[int | None] = mapped_column(default=None)
    detail: Mapped[str | None] = mapped_column(Text, default=None)  # JSON: first differences
    error: Mapped[str | None] = mapped_column(Text, default=None)


class FilesGeneration(Base):
    """A files connector's sync generation: one more per round that changes the site.

    The site keeps the same numbers in its generations log, so a consistency
    point recorded here can be matched with what the site holds after a promote.
    """

    __tablename__ = "tree_generations"

    connector: Mapped[str] = mapped_column(String(200), primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)
    at: Mapped[float] = mapped_column(Float)


class ConsistencyPoint(Base):
    """One files connector's part of a consistency point: a database LSN paired
    with the sync generation at which the tree, as scanned then, was durable at
    the site. One row per (point, files connector)."""

    __tablename__ = "consistency_points"
    __table_args__ = (
        UniqueConstraint("point_id", "files"),
        Index("ix_consistency_points_files", "files", "complete_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    point_id: Mapped[str] = mapped_column(String(100))
    database: Mapped[str] = mapped_column(String(200), index=True)
    files: Mapped[str] = mapped_column(String(200))
    lsn: Mapped[str] = mapped_column(String(40))
    timeline: Mapped[int | None] = mapped_column(default=None)
    taken_at: Mapped[float] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(Text)
    #: the scan of the tree that the point's file state is taken from
    scanned_at: Mapped[float | None] = mapped_column(Float, default=None)
    #: the first generation at which every change seen by that scan was durable
    generation: Mapped[int | None] = mapped_column(BigInteger, default=None)
    complete_at: Mapped[float | None] = mapped_column(Float, default=None)
