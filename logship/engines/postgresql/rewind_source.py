"""What a rewind needs from its source, the new primary, read over libpq.

The checks use the role pg_rewind will use, so a missing grant shows here, named,
instead of as pg_rewind's "permission denied" (repmgr#829, patroni#2581).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from logship.engines.postgresql.timeline_history import (
    MAX_HISTORY_BYTES,
    HistoryEntry,
    parse_history,
)
from logship.errors import OperationFailed, first_line, shown_text

CONNECT_TIMEOUT_S = 10
CHECKPOINT_TIMEOUT_MS = 600_000
_WALFILE = re.compile(r"^[0-9A-F]{24}$")

#: what pg_rewind runs on the source without superuser (its documented grants)
REWIND_FUNCTIONS = (
    "pg_catalog.pg_ls_dir(text, boolean, boolean)",
    "pg_catalog.pg_stat_file(text, boolean)",
    "pg_catalog.pg_read_binary_file(text)",
    "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
)


@dataclass
class SourceFacts:
    """The new primary as pg_rewind's role sees it; None where it could not tell."""

    reachable: bool = False
    error: str | None = None
    role: str | None = None
    superuser: bool | None = None
    missing_grants: list[str] = field(default_factory=list)
    in_recovery: bool | None = None
    timeline: int | None = None
    checkpoint_timeline: int | None = None
    system_identifier: int | None = None
    major_version: int | None = None
    full_page_writes: bool | None = None
    history: list[HistoryEntry] | None = None
    history_error: str | None = None


def _connect(dsn: str) -> Any:
    import psycopg

    return psycopg.connect(dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)


def _one(conn: Any, sql: str, params: tuple[object, ...] = ()) -> Any:
    row = conn.execute(sql, params).fetchone()
    return row[0] if row else None


def _current_timeline(conn: Any) -> int | None:
    # The timeline a primary writes is the first part of its current WAL file's name.
    name = _one(conn, "SELECT pg_walfile_name(pg_current_wal_lsn())")
    return int(name[:8], 16) if isinstance(name, str) and _WALFILE.match(name) else None


def _history(conn: Any, timeline: int) -> list[HistoryEntry]:
    if timeline == 1:
        return []
    data = _one(
        conn,
        "SELECT pg_read_binary_file(%s, 0, %s, false)",
        (f"pg_wal/{timeline:08X}.history", MAX_HISTORY_BYTES + 1),
    )
    if not isinstance(data, bytes):
        raise OperationFailed(f"no {timeline:08X}.history in its pg_wal")
    return parse_history(data, timeline, source=f"{timeline:08X}.history at the new primary")


def read_source(dsn: str) -> SourceFacts:
    """Everything `rewind_safety` asks of the source, in one connection."""
    import psycopg

    facts = SourceFacts()
    try:
        conn = _connect(dsn)
    except psycopg.Error as exc:
        facts.error = shown_text(first_line(exc))
        return facts
    with conn:
        facts.reachable = True
        try:
            facts.role = _one(conn, "SELECT current_user")
            facts.superuser = bool(
                _one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            )
            if not facts.superuser:
                facts.missing_grants = [
                    fn
                    for fn in REWIND_FUNCTIONS
                    if not _one(conn, "SELECT has_function_privilege(%s, 'EXECUTE')", (fn,))
                ]
            facts.in_recovery = bool(_one(conn, "SELECT pg_is_in_recovery()"))
            facts.system_identifier = int(
                _one(conn, "SELECT system_identifier FROM pg_control_system()")
            )
            facts.major_version = int(_one(conn, "SHOW server_version_num")) // 10000
            facts.full_page_writes = _one(conn, "SHOW full_page_writes") == "on"
            facts.checkpoint_timeline = int(
                _one(conn, "SELECT timeline_id FROM pg_control_checkpoint()")
            )
            if not facts.in_recovery:
                facts.timeline = _current_timeline(conn)
        except (psycopg.Error, TypeError, ValueError) as exc:
            facts.error = shown_text(first_line(exc))
            return facts
        if facts.timeline is not None and not facts.missing_grants:
            try:
                facts.history = _history(conn, facts.timeline)
            except psycopg.Error as exc:
                facts.history_error = shown_text(first_line(exc))
            except OperationFailed as exc:
                facts.history_error = str(exc)
    return facts


def request_checkpoint(source_dsn: str) -> int:
    """Run CHECKPOINT on the source and return the timeline it then records.

    CHECKPOINT returns when the checkpoint is complete. A promoted server's first
    checkpoint after promotion is what writes its new timeline to pg_control,
    which pg_rewind reads to find the fork (patroni#3367).
    """
    import psycopg

    try:
        with _connect(source_dsn) as conn:
            conn.execute(f"SET statement_timeout = {CHECKPOINT_TIMEOUT_MS}")
            conn.execute("CHECKPOINT")
            return int(_one(conn, "SELECT timeline_id FROM pg_control_checkpoint()"))
    except psycopg.errors.InsufficientPrivilege:
        raise OperationFailed(
            "CHECKPOINT on the new primary was refused to its role: grant it pg_checkpoint "
            "(GRANT pg_checkpoint TO <role>) or run CHECKPOINT there as a superuser"
        ) from None
    except psycopg.Error as exc:
        raise OperationFailed(
            f"CHECKPOINT on the new primary failed: {shown_text(first_line(exc))}"
        ) from None
