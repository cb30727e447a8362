"""The heartbeat: a row the daemon rewrites on the primary every second.

Replayed on the standby, its timestamp says how far behind the standby's data
is, in the primary's own clock. An idle primary then shows no false lag (the
row keeps changing), and a stuck replay shows lag that keeps growing. It also
keeps WAL flowing, so `archive_timeout` closes a segment even on a quiet primary.
"""

from __future__ import annotations

import logging

import psycopg

from logship.logs import event

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


class HeartbeatWriter:
    """Owns one connection to the primary; reconnects on the next beat after an error."""

    def __init__(self, connector: str, dsn: str) -> None:
        self.connector = connector
        self._dsn = dsn
        self._conn: psycopg.Connection | None = None
        self._failing = False

    def beat(self) -> None:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self._dsn, connect_timeout=5, autocommit=True)
                for statement in SETUP:
                    self._conn.execute(statement)
            self._conn.execute(BEAT, (self.connector,))
        except psycopg.Error as exc:
            self.close()
            if not self._failing:  # one line per outage, not one per second
                event(
                    log,
                    logging.WARNING,
                    "heartbeat failed",
                    connector=self.connector,
                    error=str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc),
                )
            self._failing = True
            return
        if self._failing:
            event(log, logging.INFO, "heartbeat resumed", connector=self.connector)
        self._failing = False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
