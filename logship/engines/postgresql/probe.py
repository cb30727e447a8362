"""The primary probe: a heartbeat row rewritten every second, and archiver facts.

Replayed on the standby, the heartbeat's timestamp says how far behind the
standby's data is, in the primary's own clock. An idle primary then shows no
false lag (the row keeps changing), and a stuck replay shows lag that keeps
growing. It also keeps WAL flowing, so `archive_timeout` closes a segment even
on a quiet primary. The same connection reads what PostgreSQL's archiver says:
segments waiting for archive_command (.ready files) and its failures.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from logship.errors import first_line
from logship.logs import event

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("logship.heartbeat")

SETUP = (
    "create schema if not exists logship",
    "create table if not exists logship.heartbeat ("
    " connector text primary key, beat_at timestamptz not null)",
)
BEAT = (
    "insert into logship.heartbeat (connector, beat_at) values (%s, now())"
    " on conflict (connector) do update set beat_at = excluded.beat_at"
)
ARCHIVER = """
select pg_current_wal_lsn()::text, failed_count,
       extract(epoch from last_failed_time)::float8, last_archived_wal,
       extract(epoch from last_archived_time)::float8
from pg_stat_archiver
"""
# Needs superuser or pg_monitor; without it the backlog is unknown, not zero.
READY = "select count(*) from pg_ls_archive_statusdir() where name like '%%.ready'"


class PrimaryProbe:
    """Owns one connection to the primary; reconnects on the next run after an error."""

    def __init__(
        self, connector: str, dsn: str, *, heartbeat: bool, stale_slot: str | None = None
    ) -> None:
        self.connector = connector
        #: a replication slot of this connector's that nothing streams to any more
        self._stale_slot = stale_slot
        self._dsn = dsn
        self._heartbeat = heartbeat
        self._conn: psycopg.Connection | None = None
        self._failing: str | None = None

    def run(self) -> dict[str, Any]:
        """Beat (when enabled) and return the primary's facts, or the error."""
        # Imported on use: engine discovery imports this module for every verb.
        import psycopg

        try:
            conn = self._connect()
            if self._heartbeat:
                conn.execute(BEAT, (self.connector,))
            lsn, failed, failed_at, archived_wal, archived_at = conn.execute(ARCHIVER).fetchone()
            try:
                with conn.transaction():
                    (ready,) = conn.execute(READY).fetchone()
            except psycopg.errors.InsufficientPrivilege:
                ready = None
        except psycopg.Error as exc:
            self.close()
            error = first_line(exc)
            if self._failing != error:  # one line per outage, not one per second
                event(
                    log,
                    logging.WARNING,
                    "primary probe failed",
                    connector=self.connector,
                    error=error,
                )
            self._failing = error
            return {"measured_at": time.time(), "error": error}
        if self._failing:
            event(log, logging.INFO, "primary probe resumed", connector=self.connector)
        self._failing = None
        return {
            "measured_at": time.time(),
            "current_lsn": lsn,
            "archive_ready": ready,
            "archive_failed_count": failed,
            "archive_last_failed_at": failed_at,
            "last_archived_wal": archived_wal,
            "last_archived_at": archived_at,
            "error": None,
        }

    def _connect(self) -> psycopg.Connection:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._dsn, connect_timeout=5, autocommit=True)
            # The heartbeat must not wait for a synchronous standby: with the standby
            # away it would stall the probe (and a stopping daemon) with it.
            self._conn.execute("set synchronous_commit to local")
            if self._stale_slot is not None:
                self._drop_stale_slot(self._conn, self._stale_slot)
            if self._heartbeat:
                for statement in SETUP:
                    self._conn.execute(statement)
        return self._conn

    def _drop_stale_slot(self, conn: psycopg.Connection, slot: str) -> None:
        """Streaming turned off leaves the slot behind, holding WAL back for good."""
        import psycopg

        try:
            dropped = conn.execute(
                "select pg_drop_replication_slot(slot_name) from pg_replication_slots"
                " where slot_name = %s and not active",
                (slot,),
            ).fetchall()
        except psycopg.Error as exc:
            # A role without the right: the heartbeat still matters more.
            event(
                log,
                logging.WARNING,
                "replication slot left by streaming not dropped",
                connector=self.connector,
                slot=slot,
                error=first_line(exc),
            )
            return
        if dropped:
            event(
                log,
                logging.WARNING,
                "replication slot dropped: streaming is off",
                connector=self.connector,
                slot=slot,
            )

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
