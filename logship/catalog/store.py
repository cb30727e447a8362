"""Catalog queries. Every state change is one short transaction."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import create_engine, delete, event, func, inspect, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from logship.catalog.models import (
    POSTGRESQL_INDEXES,
    Base,
    BaseBackup,
    Drill,
    FileState,
    JournalEvent,
    LagSample,
    LinkState,
    PrimaryFacts,
    ScheduledJob,
    SiteStatus,
    SpoolFile,
    StandbyProgress,
    StreamFacts,
    WalkCheckpoint,
)
from logship.status.figures import DurablePrefix

#: how long a process opening the SQLite catalog waits for another's lock
_SQLITE_BUSY_S = 10.0


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(_SQLITE_BUSY_S * 1000)}")
    # WAL lets `status` read while the daemon writes; FULL keeps a committed
    # state change durable, which the queue relies on after a crash.
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.close()


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    # Two processes opening a new catalog at once both switch it to WAL. That
    # takes a shared lock, then an exclusive one, and SQLite does not call the
    # busy handler for such an upgrade (it could deadlock): the loser gets
    # "database is locked" at once. Once switched, the file stays in WAL mode.
    deadline = time.monotonic() + _SQLITE_BUSY_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


#: any fixed number: the key of the PostgreSQL advisory lock under which every
#: logship process checks and creates the catalog's tables
_SCHEMA_LOCK_KEY = 0x6C6F6773


def _create_tables(engine: Engine) -> None:
    # The daemon, base-backup and status may open a new catalog at the same
    # moment. create_all checks, then creates, table by table: interleaved with
    # another process, it finds a table made meanwhile and fails. So the whole
    # check-and-create is one transaction that first takes the catalog's write
    # lock; the others wait for it (SQLite: busy_timeout) and find all made.
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
        Base.metadata.create_all(conn)
        _add_missing_columns(conn)
        _add_missing_indexes(conn)


def _add_missing_columns(conn: Connection) -> None:
    """Bring a catalog written by an older logship up to the current tables.

    Columns are only ever added, and always nullable, so an older catalog gains
    them with ALTER TABLE ADD COLUMN and no data is rewritten.
    """
    inspector = inspect(conn)
    for table in Base.metadata.sorted_tables:
        existing = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in existing:
                kind = column.type.compile(dialect=conn.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


def _drop_passed_checkpoints(s: Session, news: Iterable[NewFile]) -> None:
    """A new row at or before a connector's durable prefix invalidates it: the walk
    must see that row again (see `DurablePrefix`)."""
    earliest: dict[str, str] = {}
    for new in news:
        if new.connector not in earliest or new.order_key < earliest[new.connector]:
            earliest[new.connector] = new.order_key
    for connector, order_key in earliest.items():
        checkpoint = s.get(WalkCheckpoint, connector)
        if checkpoint is not None and order_key <= checkpoint.order_key:
            s.delete(checkpoint)


def _drop_checkpoint_if_named(s: Session, connector: str, names: Sequence[str]) -> None:
    """Retention may remove the prefix's own row or rows after it; the next walk then
    starts from the rows left, as a walk over them alone would."""
    checkpoint = s.get(WalkCheckpoint, connector)
    if checkpoint is None:
        return
    at_or_after = s.scalars(
        select(SpoolFile.id)
        .where(
            SpoolFile.connector == connector,
            SpoolFile.name.in_(names),
            SpoolFile.order_key >= checkpoint.order_key,
        )
        .limit(1)
    ).first()
    if at_or_after is not None:
        s.delete(checkpoint)


def _add_missing_indexes(conn: Connection) -> None:
    """create_all makes a table's indexes only with the table: add those an older
    logship's catalog lacks (one pass over the rows, once), and on PostgreSQL
    those of POSTGRESQL_INDEXES (a new catalog's too)."""
    inspector = inspect(conn)
    own = POSTGRESQL_INDEXES if conn.dialect.name == "postgresql" else {}
    for table in Base.metadata.sorted_tables:
        existing = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in existing:
                index.create(conn, checkfirst=True)
        for name, statement in own.get(table.name, ()):
            if name not in existing:
                conn.execute(text(statement))


@dataclass(frozen=True)
class NewFile:
    connector: str
    name: str
    order_key: str
    size: int
    closed_at: float


@dataclass(frozen=True)
class NewSample:
    """A lag sample to store (see `LagSample`)."""

    connector: str
    at: float
    state: str
    rpo_exposure_s: float | None
    transport_lag_s: float | None
    apply_lag_s: float | None
    pending_files: int | None
    pending_bytes: int | None


#: names per `IN (...)`: well under SQLite's limit on bound parameters
_IN_CHUNK = 500


class Catalog:
    def __init__(self, url: str) -> None:
        self.engine = make_engine(url)
        _create_tables(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._session()

    def close(self) -> None:
        self.engine.dispose()

    # -- the queue -------------------------------------------------------------

    def add_discovered(self, new: NewFile, now: float) -> SpoolFile | None:
        """Insert a discovered file: None when new, the existing row when already known."""
        return self.add_discovered_many([new], now).get((new.connector, new.name))

    def add_discovered_many(
        self, news: Sequence[NewFile], now: float
    ) -> dict[tuple[str, str], SpoolFile]:
        """Insert discovered files in one commit (a burst after an outage can be
        thousands); returns the rows of those already known, by (connector, name)."""
        existing: dict[tuple[str, str], SpoolFile] = {}
        by_connector: dict[str, list[str]] = {}
        for new in news:
            by_connector.setdefault(new.connector, []).append(new.name)
        with self.session() as s:
            for connector, names in by_connector.items():
                for start in range(0, len(names), _IN_CHUNK):
                    chunk = names[start : start + _IN_CHUNK]
                    for row in s.scalars(
                        select(SpoolFile).where(
                            SpoolFile.connector == connector, SpoolFile.name.in_(chunk)
                        )
                    ):
                        existing[(row.connector, row.name)] = row
            fresh = {
                (n.connector, n.name): n for n in news if (n.connector, n.name) not in existing
            }
            _drop_passed_checkpoints(s, fresh.values())
            s.add_all(
                SpoolFile(
                    connector=new.connector,
                    name=new.name,
                    order_key=new.order_key,
                    size=new.size,
                    closed_at=new.closed_at,
                    discovered_at=now,
                    state=FileState.DISCOVERED,
                )
                for new in fresh.values()
            )
            try:
                s.commit()
            except IntegrityError:
                s.rollback()  # a concurrent reconcile inserted some first
                if len(news) == 1:
                    return existing
            else:
                return existing
        for new in fresh.values():  # one at a time now, each judged on its own
            if (row := self.add_discovered(new, now)) is not None:
                existing[(new.connector, new.name)] = row
        return existing

    def pending(self, connector: str, limit: int = 100) -> list[SpoolFile]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(SpoolFile)
                    .where(
                        SpoolFile.connector == connector,
                        SpoolFile.state == FileState.DISCOVERED,
                    )
                    .order_by(SpoolFile.order_key)
                    .limit(limit)
                )
            )

    def mark_shipped(self, file_id: int, sha256: str, stored_size: int, at: float) -> None:
        with self.session() as s:
            s.execute(
                update(SpoolFile)
                .where(SpoolFile.id == file_id)
                .values(
                    state=FileState.SHIPPED,
                    sha256=sha256,
                    stored_size=stored_size,
                    shipped_at=at,
                    error=None,
                )
            )
            s.commit()

    def mark_conflict(self, file_id: int, error: str) -> None:
        with self.session() as s:
            s.execute(
                update(SpoolFile)
                .where(SpoolFile.id == file_id)
                .values(state=FileState.CONFLICT, error=error)
            )
            s.commit()

    def set_error(self, file_id: int, error: str | None) -> None:
        with self.session() as s:
            s.execute(update(SpoolFile).where(SpoolFile.id == file_id).values(error=error))
            s.commit()

    def file(self, connector: str, name: str) -> SpoolFile | None:
        with self.session() as s:
            return s.scalars(
                select(SpoolFile).where(SpoolFile.connector == connector, SpoolFile.name == name)
            ).first()

    def files(self, connector: str, after: str | None = None) -> Sequence[SpoolFile]:
        """A connector's rows in ship order; only those past order key `after` if given."""
        query = select(SpoolFile).where(SpoolFile.connector == connector)
        if after is not None:
            query = query.where(SpoolFile.order_key > after)
        with self.session() as s:
            return list(s.scalars(query.order_by(SpoolFile.order_key)))

    def newest_applied(self, connector: str) -> str | None:
        with self.session() as s:
            return s.scalars(
                select(SpoolFile.name)
                .where(SpoolFile.connector == connector, SpoolFile.state == FileState.APPLIED)
                .order_by(SpoolFile.order_key.desc())
                .limit(1)
            ).first()

    # -- the durable prefix (a cache of the lag walk) ------------------------------

    def walk_checkpoint(self, connector: str) -> DurablePrefix | None:
        with self.session() as s:
            row = s.get(WalkCheckpoint, connector)
            if row is None:
                return None
            return DurablePrefix(row.name, row.order_key, row.closed_at, row.segment_size)

    def save_walk_checkpoint(self, connector: str, prefix: DurablePrefix) -> bool:
        """Remember where the next walk may start; False when the rows moved on meanwhile.

        The walk read its rows before this transaction: a file that turned up before
        `prefix` since then (still pending, as every new row is) makes it wrong, so it
        is checked here, in the same transaction as the write.
        """
        with self.session() as s:
            pending_before = s.scalars(
                select(SpoolFile.id)
                .where(
                    SpoolFile.connector == connector,
                    SpoolFile.state.in_([FileState.DISCOVERED, FileState.CONFLICT]),
                    SpoolFile.order_key <= prefix.order_key,
                )
                .limit(1)
            ).first()
            if pending_before is not None:
                return False
            row = s.get(WalkCheckpoint, connector) or WalkCheckpoint(connector=connector)
            row.order_key, row.name = prefix.order_key, prefix.name
            row.closed_at, row.segment_size = prefix.closed_at, prefix.segment_size
            s.add(row)
            s.commit()
            return True

    def count_by_state(self, connector: str) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(
                select(SpoolFile.state, func.count())
                .where(SpoolFile.connector == connector)
                .group_by(SpoolFile.state)
            )
            return {state: count for state, count in rows}

    # -- the standby's progress ------------------------------------------------

    def record_restored(
        self, connector: str, name: str | None, at: float | None, now: float, **facts: Any
    ) -> None:
        """Note what the standby last fetched (everything before it has been replayed),
        plus the other facts it reported (`StandbyProgress` columns)."""
        with self.session() as s:
            progress = s.get(StandbyProgress, connector) or StandbyProgress(connector=connector)
            progress.last_restored, progress.restored_at, progress.sampled_at = name, at, now
            for key, value in facts.items():
                setattr(progress, key, value)
            s.add(progress)
            if name is not None:
                restored = s.scalars(
                    select(SpoolFile.order_key).where(
                        SpoolFile.connector == connector, SpoolFile.name == name
                    )
                ).first()
                if restored is not None:
                    s.execute(
                        update(SpoolFile)
                        .where(
                            SpoolFile.connector == connector,
                            SpoolFile.state == FileState.SHIPPED,
                            SpoolFile.order_key < restored,
                        )
                        .values(state=FileState.APPLIED, applied_at=now)
                    )
            s.commit()

    def record_primary_facts(self, connector: str, facts: Mapping[str, Any]) -> None:
        with self.session() as s:
            row = s.get(PrimaryFacts, connector) or PrimaryFacts(connector=connector)
            if facts.get("error"):
                # Keep the last good figures (their measured_at shows their age).
                row.error = facts["error"]
                if row.measured_at is None:
                    row.measured_at = facts["measured_at"]
            else:
                for key, value in facts.items():
                    setattr(row, key, value)
            s.add(row)
            s.commit()

    def primary_facts(self, connector: str) -> PrimaryFacts | None:
        with self.session() as s:
            return s.get(PrimaryFacts, connector)

    def record_stream_facts(self, connector: str, facts: Mapping[str, Any]) -> None:
        with self.session() as s:
            row = s.get(StreamFacts, connector) or StreamFacts(connector=connector)
            for key, value in facts.items():
                setattr(row, key, value)
            s.add(row)
            s.commit()

    def stream_facts(self, connector: str) -> StreamFacts | None:
        with self.session() as s:
            return s.get(StreamFacts, connector)

    def standby_progress(self, connector: str) -> StandbyProgress | None:
        with self.session() as s:
            return s.get(StandbyProgress, connector)

    # -- sites -----------------------------------------------------------------

    def set_link_state(
        self,
        site: str,
        connectors: Sequence[str],
        reachable: bool,
        error: str | None,
        now: float,
    ) -> None:
        """The link of the worker serving `connectors` at `site`, as it stands now."""
        values = {"reachable": reachable, "error": error, "checked_at": now}
        with self.session() as s:
            for connector in connectors:
                row = s.get(LinkState, (site, connector))
                if row is None:
                    s.add(LinkState(site=site, connector=connector, **values))
                else:
                    row.reachable, row.error, row.checked_at = reachable, error, now
            s.commit()

    def site_status(self, site: str, connector: str | None = None) -> SiteStatus | None:
        """`site` as the links of `connector` (of every connector when None) show it;
        None before any worker has reported on it."""
        query = select(LinkState).where(LinkState.site == site).order_by(LinkState.connector)
        if connector is not None:
            query = query.where(LinkState.connector == connector)
        with self.session() as s:
            links = list(s.scalars(query))
        if not links:
            return None
        # One worker serving several connectors reports the same error for each.
        errors = dict.fromkeys(link.error for link in links if link.error)
        return SiteStatus(
            reachable=all(link.reachable for link in links),
            error="; ".join(errors) or None,
            checked_at=max(link.checked_at for link in links),
        )

    # -- events ----------------------------------------------------------------

    def add_event(
        self, connector: str, at: float, kind: str, message: str, detail: str | None = None
    ) -> None:
        with self.session() as s:
            s.add(
                JournalEvent(connector=connector, at=at, kind=kind, message=message, detail=detail)
            )
            s.commit()

    def journal(self, since: float) -> list[JournalEvent]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(JournalEvent).where(JournalEvent.at >= since).order_by(JournalEvent.at)
                )
            )

    # -- scheduled jobs --------------------------------------------------------

    def update_schedule(self, name: str, connector: str, job: str, **fields: Any) -> None:
        """Upsert a scheduled job's row with `ScheduledJob` column values."""
        with self.session() as s:
            row = s.get(ScheduledJob, name) or ScheduledJob(name=name)
            row.connector, row.job = connector, job
            for key, value in fields.items():
                setattr(row, key, value)
            s.add(row)
            s.commit()

    def scheduled_job(self, name: str) -> ScheduledJob | None:
        with self.session() as s:
            return s.get(ScheduledJob, name)

    def schedules(self, connector: str) -> list[ScheduledJob]:
        with self.session() as s:
            return list(
                s.scalars(
                    select(ScheduledJob)
                    .where(ScheduledJob.connector == connector)
                    .order_by(ScheduledJob.next_run_at)
                )
            )

    # -- base backups ----------------------------------------------------------

    def start_backup(self, connector: str, backup_id: str, now: float) -> None:
        with self.session() as s:
            s.add(
                BaseBackup(
                    connector=connector, backup_id=backup_id, started_at=now, state="running"
                )
            )
            s.commit()

    def finish_backup(
        self,
        connector: str,
        backup_id: str,
        *,
        now: float,
        error: str | None = None,
        **facts: Any,
    ) -> None:
        """Mark a backup done (with `BaseBackup` column values in `facts`) or failed."""
        with self.session() as s:
            s.execute(
                update(BaseBackup)
                .where(BaseBackup.connector == connector, BaseBackup.backup_id == backup_id)
                .values(finished_at=now, state="failed" if error else "done", error=error, **facts)
            )
            s.commit()

    def fail_interrupted_backups(self, connector: str, now: float) -> int:
        """Backups still "running" whose process is gone (the caller holds the backup
        lock, so none can be running): they failed. Returns how many."""
        with self.session() as s:
            result = s.execute(
                update(BaseBackup)
                .where(BaseBackup.connector == connector, BaseBackup.state == "running")
                .values(
                    finished_at=now,
                    state="failed",
                    error="interrupted: the process taking it stopped before it finished",
                )
            )
            s.commit()
            return int(result.rowcount or 0)

    def mark_backups_deleted(self, connector: str, backup_ids: Sequence[str], now: float) -> None:
        if not backup_ids:
            return
        with self.session() as s:
            s.execute(
                update(BaseBackup)
                .where(BaseBackup.connector == connector, BaseBackup.backup_id.in_(backup_ids))
                .values(state="deleted", deleted_at=now)
            )
            s.commit()

    def backups(self, connector: str) -> list[BaseBackup]:
        """Every backup the catalog knows of, oldest first."""
        with self.session() as s:
            return list(
                s.scalars(
                    select(BaseBackup)
                    .where(BaseBackup.connector == connector)
                    .order_by(BaseBackup.started_at, BaseBackup.id)
                )
            )

    def last_backup(self, connector: str) -> BaseBackup | None:
        with self.session() as s:
            return s.scalars(
                select(BaseBackup)
                .where(BaseBackup.connector == connector, BaseBackup.state == "done")
                .order_by(BaseBackup.finished_at.desc())
                .limit(1)
            ).first()

    # -- restore drills ----------------------------------------------------------

    def start_drill(self, connector: str, backup_id: str | None, now: float) -> int:
        with self.session() as s:
            row = Drill(connector=connector, backup_id=backup_id, started_at=now, state="running")
            s.add(row)
            s.commit()
            return row.id

    def finish_drill(
        self,
        drill_id: int,
        *,
        now: float,
        error: str | None,
        interrupted: bool = False,
        **facts: Any,
    ) -> None:
        """Mark a drill passed (with `Drill` column values in `facts`), failed, or
        interrupted (stopped from here: it proved nothing either way)."""
        state = "interrupted" if interrupted else "failed" if error else "passed"
        with self.session() as s:
            s.execute(
                update(Drill)
                .where(Drill.id == drill_id)
                .values(finished_at=now, state=state, error=error, **facts)
            )
            s.commit()

    def last_drill(self, connector: str, *, passed: bool = False) -> Drill | None:
        """The newest drill with a verdict (the newest that passed, when `passed`);
        running and interrupted drills have none."""
        verdicts = ["passed"] if passed else ["passed", "failed"]
        query = select(Drill).where(Drill.connector == connector, Drill.state.in_(verdicts))
        with self.session() as s:
            return s.scalars(
                query.order_by(Drill.started_at.desc(), Drill.id.desc()).limit(1)
            ).first()

    # -- retention ---------------------------------------------------------------

    def forget_files(self, connector: str, names: Sequence[str]) -> int:
        """Drop the rows of files retention removed from the site (in batches)."""
        removed = 0
        with self.session() as s:
            for start in range(0, len(names), 500):
                batch = list(names[start : start + 500])
                _drop_checkpoint_if_named(s, connector, batch)
                result = s.execute(
                    delete(SpoolFile).where(
                        SpoolFile.connector == connector,
                        SpoolFile.name.in_(batch),
                        SpoolFile.state.in_([FileState.SHIPPED, FileState.APPLIED]),
                    )
                )
                removed += int(result.rowcount or 0)
            s.commit()
        return removed

    # -- lag history -----------------------------------------------------------

    def add_samples(self, samples: Sequence[NewSample]) -> None:
        """Store samples in one transaction (the monitor writes a batch per tick)."""
        if not samples:
            return
        with self.session() as s:
            s.add_all(
                LagSample(
                    connector=sample.connector,
                    at=sample.at,
                    state=sample.state,
                    rpo_exposure_s=sample.rpo_exposure_s,
                    transport_lag_s=sample.transport_lag_s,
                    apply_lag_s=sample.apply_lag_s,
                    pending_files=sample.pending_files,
                    pending_bytes=sample.pending_bytes,
                )
                for sample in samples
            )
            s.commit()

    def samples(self, connector: str | None, since: float) -> list[LagSample]:
        """Samples taken at or after `since`, oldest first; every connector's when None."""
        query = select(LagSample).where(LagSample.at >= since)
        if connector is not None:
            query = query.where(LagSample.connector == connector)
        with self.session() as s:
            return list(s.scalars(query.order_by(LagSample.at, LagSample.id)))

    def prune_samples(self, before: float) -> int:
        """Delete samples taken before `before`; returns how many went."""
        with self.session() as s:
            result = s.execute(delete(LagSample).where(LagSample.at < before))
            s.commit()
            return int(result.rowcount or 0)
