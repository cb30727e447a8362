"""One timestamped insert every 100 ms into whichever database takes writes: the
proof that a role swap loses no committed row."""

from __future__ import annotations

import threading
import time

import psycopg

TICK_S = 0.1
SETUP = "create table if not exists ticks (id bigint primary key, at timestamptz not null)"


class Ticker(threading.Thread):
    def __init__(self, dsns: list[str]) -> None:
        super().__init__(name="ticker", daemon=True)
        self._dsns = dsns
        self._stop_event = threading.Event()
        #: ids whose commit returned success: these must never be lost
        self.committed: list[int] = []
        self.failures = 0
        self._next = 1

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)

    def _tick(self, conn: psycopg.Connection) -> None:
        # An id whose commit failed is not used again: the commit may have landed.
        tick, self._next = self._next, self._next + 1
        conn.execute("insert into ticks (id, at) values (%s, now())", (tick,))
        self.committed.append(tick)

    def run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop_event.wait(TICK_S):
            try:
                if conn is None:
                    conn = self._writable()
                if conn is not None:
                    self._tick(conn)
            except psycopg.Error:
                self.failures += 1
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def _writable(self) -> psycopg.Connection | None:
        for dsn in self._dsns:
            try:
                conn = psycopg.connect(dsn, autocommit=True, connect_timeout=2)
            except psycopg.Error:
                continue
            (in_recovery,) = conn.execute("select pg_is_in_recovery()").fetchone()  # type: ignore[misc]
            if not in_recovery:
                return conn
            conn.close()
        return None

    def wait_for_ticks(self, more: int, timeout: float = 60) -> None:
        target = len(self.committed) + more
        deadline = time.monotonic() + timeout
        while len(self.committed) < target:
            assert time.monotonic() < deadline, f"ticks stalled at {len(self.committed)}"
            self._stop_event.wait(TICK_S)
