"""Streaming as the primary sees it: the replication slot, the standby's walsender
row, the synchronous mode in force, and how far commits are durable at the site.

`StreamSupervisor.sample` is one round over one connection to the primary. It
keeps the slot (bounded by max_slot_wal_keep_size), decides the synchronous mode
(Data Guard's names: maximum performance is async, maximum availability falls
back to async without the standby, maximum protection never does) and measures
exposure through an LSN -> time map sampled here, against the standby's flushed
position that its walreceiver reports.
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from logship.engines.postgresql.streaming.settings import standby_name
from logship.engines.postgresql.walnames import int_to_lsn, lsn_to_int
from logship.errors import first_line
from logship.logs import event

if TYPE_CHECKING:
    import psycopg

    from logship.engines.postgresql.engine import PostgresConnector

log = logging.getLogger("logship.streaming")

MIB = 1 << 20
#: the standby counts as caught up (synchronous mode may return) within this much:
#: PostgreSQL's own "streaming" state says it reached the end of WAL once, and a
#: busy primary on a far link is always some WAL ahead of the standby's flush
CAUGHT_UP_BYTES = 16 * MIB
#: LSN -> time samples kept while the standby is behind; beyond, the oldest go
#: (exposure then comes from the shipped segments, which never forget)
MAP_LIMIT = 20_000

SLOT = """
select wal_status, active, restart_lsn::text
from pg_replication_slots where slot_name = %s and slot_type = 'physical'
"""
ROW = """
select pg_current_wal_lsn()::text, extract(epoch from clock_timestamp())::float8,
       r.state, r.sent_lsn::text, r.flush_lsn::text, extract(epoch from r.reply_time)::float8
from (select 1) one
left join pg_stat_replication r on r.application_name = %s
order by r.state = 'streaming' desc nulls last
limit 1
"""
SETTINGS = """
select name, setting from pg_settings
where name in ('max_slot_wal_keep_size', 'synchronous_standby_names')
"""


class LsnClock:
    """Primary-clock times of WAL positions, sampled: which commits a flushed
    position covers. A sample (t, lsn) says every commit acknowledged by t ends
    before lsn, so a standby flushed to lsn holds all of them."""

    def __init__(self, limit: int = MAP_LIMIT) -> None:
        self._times: deque[float] = deque()
        self._lsns: deque[int] = deque()
        self._limit = limit

    def add(self, at: float, lsn: int) -> None:
        if self._lsns and lsn < self._lsns[-1]:
            self.clear()  # a new timeline or a restored primary: start again
        self._times.append(at)
        self._lsns.append(lsn)
        if len(self._lsns) > self._limit:
            self._times.popleft()
            self._lsns.popleft()

    def durable_at(self, flushed: int) -> float | None:
        """The newest sample time whose position the standby has flushed; the samples
        before it are no longer needed. None: older than every sample kept."""
        index = bisect.bisect_right(self._lsns, flushed) - 1
        if index < 0:
            return None
        at = self._times[index]
        for _ in range(index):
            self._times.popleft()
            self._lsns.popleft()
        return at

    def clear(self) -> None:
        self._times.clear()
        self._lsns.clear()


@dataclass
class _SyncDecision:
    """Where maximum availability stands: when the standby was last seen."""

    absent_since: float | None = None


class StreamSupervisor:
    """One connection to the primary; each `sample` returns `StreamFacts` columns."""

    def __init__(
        self,
        connector: PostgresConnector,
        tunnel_up: Callable[[], bool],
        journal: Callable[[str, str, str | None], None],
    ) -> None:
        self.connector = connector
        self.name = standby_name(connector.name)
        self._tunnel_up = tunnel_up
        self._journal = journal
        self._conn: psycopg.Connection | None = None
        self._clock = LsnClock()
        self._flush: int | None = None
        self._durable_at: float | None = None
        self._sync = _SyncDecision()
        self._mode: str | None = None
        self._failing: str | None = None
        #: the site was told the primary will not drop to async before this
        self.promised_until: float | None = None

    # -- one round -------------------------------------------------------------

    def sample(self) -> dict[str, Any]:
        import psycopg

        try:
            conn = self._connect()
            facts = self._round(conn)
        except psycopg.Error as exc:
            self.close()
            error = first_line(exc)
            if self._failing != error:
                event(
                    log,
                    logging.WARNING,
                    "streaming supervision failed",
                    connector=self.connector.name,
                    error=error,
                )
            self._failing = error
            return {"state": "down", "error": f"the primary did not answer: {error}"}
        self._failing = None
        return facts

    def _round(self, conn: psycopg.Connection) -> dict[str, Any]:
        settings = dict(conn.execute(SETTINGS).fetchall())
        bound_error = self._ensure_bound(conn, settings)
        slot = conn.execute(SLOT, (self.name,)).fetchone()
        if bound_error is None:
            slot = self._ensure_slot(conn, slot)
        current, at, state, sent, flush, reply_at = conn.execute(ROW, (self.name,)).fetchone()
        current_int = lsn_to_int(current)
        self._clock.add(at, current_int)
        if flush is not None:
            flushed = lsn_to_int(flush)
            if self._flush is None or flushed >= self._flush:
                self._flush = flushed
            durable = self._clock.durable_at(self._flush)
            if durable is not None:
                self._durable_at = durable
        tunnel = self._tunnel_up()
        present = tunnel and state in ("streaming", "catchup")
        if present and flush is not None and sent is not None and reply_at is not None:
            # A stalled link keeps the walsender's row until wal_sender_timeout:
            # a standby that owes replies for longer than we wait is away.
            owes = lsn_to_int(sent) > lsn_to_int(flush)
            if owes and at - reply_at > self.connector.streaming.fallback_after:
                present = False
        caught_up = (
            present
            and state == "streaming"
            and self._flush is not None
            and current_int - self._flush <= CAUGHT_UP_BYTES
        )
        mode, sync_error = self._steer_sync(conn, settings, at, present, caught_up)
        retained = None
        if slot is not None and slot[2] is not None:
            retained = max(0, current_int - lsn_to_int(slot[2]))
        errors = [e for e in (bound_error, sync_error) if e]
        if not tunnel:
            errors.append("the streaming tunnel to the site is down")
        elif slot is not None and slot[0] == "lost":
            errors.append("the replication slot lost WAL the standby needs (re-created)")
        return {
            "measured_at": at,
            "state": state if present and state in ("streaming", "catchup") else "down",
            "flush_lsn": flush
            if flush is not None
            else (None if self._flush is None else int_to_lsn(self._flush)),
            "durable_at": self._durable_at,
            "sync_mode": mode,
            "slot_retained_bytes": retained,
            "error": "; ".join(errors) or None,
        }

    # -- the slot and its bound ---------------------------------------------------

    def _ensure_bound(self, conn: psycopg.Connection, settings: dict[str, str]) -> str | None:
        """max_slot_wal_keep_size no larger than `max_slot_wal_keep`; lowered here
        when this role may. An unbounded slot could fill the primary's disk during
        a long outage, so without the bound there is no slot."""
        import psycopg

        limit_mb = max(1, self.connector.streaming.max_slot_wal_keep // MIB)
        current_mb = int(settings.get("max_slot_wal_keep_size", "-1"))
        if 0 <= current_mb <= limit_mb:
            return None
        try:
            conn.execute(f"alter system set max_slot_wal_keep_size = '{limit_mb}MB'")
            conn.execute("select pg_reload_conf()")
        except psycopg.Error as exc:
            shown = "unbounded" if current_mb < 0 else f"{current_mb}MB"
            return (
                f"max_slot_wal_keep_size is {shown} at the primary, more than "
                f"[streaming].max_slot_wal_keep ({limit_mb}MB), and could not be lowered "
                f"({first_line(exc)}): run `ALTER SYSTEM SET max_slot_wal_keep_size = "
                f"'{limit_mb}MB'; SELECT pg_reload_conf();` as a superuser"
            )
        self._journal(
            "streaming",
            f"max_slot_wal_keep_size lowered to {limit_mb}MB at the primary",
            f"it was {current_mb}MB" if current_mb >= 0 else "it was unbounded",
        )
        return None

    def _ensure_slot(self, conn: psycopg.Connection, slot: tuple | None) -> tuple | None:
        if slot is not None and slot[0] == "lost" and not slot[1]:
            # It held back more than the bound allowed: PostgreSQL gave up the WAL.
            # The standby catches up from shipped segments and then streams again.
            conn.execute("select pg_drop_replication_slot(%s)", (self.name,))
            self._journal(
                "streaming",
                "the replication slot was invalidated and is re-created",
                "the standby was away longer than max_slot_wal_keep allows; it catches "
                "up from the shipped segments",
            )
            slot = None
        if slot is None:
            conn.execute("select pg_create_physical_replication_slot(%s, true)", (self.name,))
            event(
                log,
                logging.INFO,
                "replication slot created",
                connector=self.connector.name,
                slot=self.name,
            )
            slot = conn.execute(SLOT, (self.name,)).fetchone()
        return slot

    # -- the synchronous mode -----------------------------------------------------

    def _steer_sync(
        self,
        conn: psycopg.Connection,
        settings: dict[str, str],
        at: float,
        present: bool,
        caught_up: bool,
    ) -> tuple[str, str | None]:
        """The mode in force after this round, and why it is not the one wanted."""
        streaming = self.connector.streaming
        names = settings.get("synchronous_standby_names", "")
        ours = names == self.name
        foreign = bool(names) and not ours
        if not streaming.synchronous:
            if ours:
                self._set_sync(conn, "")  # a mode turned off in the config
            return self._record_mode("async", at), None
        if foreign:
            return self._record_mode("async", at), (
                f"synchronous_standby_names is {names!r} at the primary, set outside "
                "logship; it is left alone and commits do not wait for this standby"
            )
        if streaming.protection == "protection":
            if not ours:
                self._set_sync(conn, self.name)
            return self._record_mode("protection", at), None
        decision = self._sync
        if present:
            decision.absent_since = None
        elif decision.absent_since is None:
            decision.absent_since = at
        if ours:
            away = decision.absent_since is not None and at - decision.absent_since
            promised = self.promised_until is not None and at < self.promised_until
            if away and away >= streaming.fallback_after and not promised:
                self._set_sync(conn, "")
                return self._record_mode("async", at, f"no standby for {away:.0f} s"), None
            return self._record_mode("availability", at), None
        if caught_up:
            self._set_sync(conn, self.name)
            return self._record_mode("availability", at, "the standby is caught up"), None
        return self._record_mode("async", at), None

    def _set_sync(self, conn: psycopg.Connection, names: str) -> None:
        # The connection's role needs superuser (or ALTER SYSTEM on this setting):
        # `check` proves it. A reload releases commits waiting for the standby.
        from psycopg import sql

        statement = sql.SQL("alter system set synchronous_standby_names = {}")
        conn.execute(statement.format(sql.Literal(names)))
        conn.execute("select pg_reload_conf()")

    def _record_mode(self, mode: str, at: float, why: str | None = None) -> str:
        if mode != self._mode:
            previous, self._mode = self._mode, mode
            message = f"synchronous mode: {mode}" + (f" ({why})" if why else "")
            if previous is not None or mode != "async":
                self._journal("sync_mode", message, f"was {previous}" if previous else None)
            event(
                log,
                logging.WARNING if previous and mode == "async" else logging.INFO,
                "synchronous mode changed",
                connector=self.connector.name,
                mode=mode,
                previous=previous,
                why=why,
            )
        return mode

    def release(self, at: float, why: str) -> None:
        """Drop the primary to async now (maximum availability, when nobody will be
        left to drop it: the daemon is stopping). The caller has made sure no lease
        at the site still promises otherwise."""
        import psycopg

        try:
            conn = self._connect()
            settings = dict(conn.execute(SETTINGS).fetchall())
            if settings.get("synchronous_standby_names") == self.name:
                self._set_sync(conn, "")
        except psycopg.Error as exc:
            event(
                log,
                logging.ERROR,
                "synchronous mode not released: commits may wait for the standby",
                connector=self.connector.name,
                error=first_line(exc),
            )
            return
        self._record_mode("async", at, why)

    @property
    def mode(self) -> str | None:
        return self._mode

    # -- the connection -----------------------------------------------------------

    def _connect(self) -> psycopg.Connection:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self.connector.primary.dsn, connect_timeout=5, autocommit=True
            )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
