"""Which side of a two-sided PostgreSQL connector is the primary: the databases say.

The database at this site answers whether it is in recovery. When it does not
answer (stopped, restarting), the other side's database is asked over TCP when
the connector names a `check_dsn` for it; when neither answers, nobody says and
the last role found stands (logship.roles).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from logship.config.model import Config
from logship.engines.postgresql.engine import PostgresConnector, SideSection
from logship.errors import first_line

#: a database that takes longer than this to accept a connection counts as not answering
ASK_TIMEOUT_S = 3


@dataclass(frozen=True)
class Answer:
    """What one side's database said: in recovery or not, or why it did not answer."""

    in_recovery: bool | None
    timeline: int | None = None
    error: str | None = None

    @property
    def answered(self) -> bool:
        return self.in_recovery is not None


#: in recovery or not, and a primary's timeline as it writes now (pg_control's
#: checkpoint timeline lags behind a promotion until its first checkpoint)
TIMELINE_NOW = """
select pg_is_in_recovery(),
       case when pg_is_in_recovery() then null
            else substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) end
"""


def ask(dsn: str) -> Answer:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=ASK_TIMEOUT_S, autocommit=True) as conn:
            row = conn.execute(TIMELINE_NOW).fetchone()
    except psycopg.Error as exc:
        return Answer(None, error=first_line(str(exc)))
    assert row is not None
    return Answer(bool(row[0]), int(row[1], 16) if row[1] else None)


def other_side(connector: PostgresConnector, side: str) -> str:
    assert connector.sides is not None
    return next(name for name in connector.sides if name != side)


def found_primary(connector: PostgresConnector, here: str) -> str | None:
    """The side that is the primary now, as the databases say; None: nobody says.

    Two databases out of recovery (an old primary started again after a failover)
    are told apart by timeline: the promoted one writes on the later timeline.
    """
    sides: Mapping[str, SideSection] = connector.sides or {}
    if here not in sides:
        return None
    mine = ask(sides[here].dsn)
    other = other_side(connector, here)
    if mine.answered and mine.in_recovery:
        return other
    check_dsn = sides[other].check_dsn
    theirs = ask(check_dsn) if check_dsn is not None else Answer(None)
    if not mine.answered:
        if not theirs.answered:
            return None
        return here if theirs.in_recovery else other
    if theirs.answered and not theirs.in_recovery:
        if (theirs.timeline or 0) > (mine.timeline or 0):
            return other
        if (mine.timeline or 0) == (theirs.timeline or 0):
            return None  # two primaries on one timeline: nothing here can tell
    return here


def fence_if_old_primary(config: Config, connector: PostgresConnector) -> str | None:
    """At this site's standby side: a stopped database that was a primary while the
    other side now writes on a later timeline is fenced (what happened, when)."""
    from logship.engines.postgresql.switchover_steps import fence_old_primary

    here = config.this_site
    sides = connector.sides or {}
    if here not in sides:
        return None
    other = other_side(connector, here)
    check_dsn = sides[other].check_dsn
    if check_dsn is None or ask(sides[here].dsn).answered:
        return None
    theirs = ask(check_dsn)
    if not theirs.answered or theirs.in_recovery or theirs.timeline is None:
        return None
    done = fence_old_primary(config, connector.name, theirs.timeline)
    return f"fenced ({done['why']})" if done["fenced"] and "already" not in done["why"] else None
