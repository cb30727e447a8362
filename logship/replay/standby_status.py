"""`standby status`: the standby's own facts, read at the standby site.

The primary's daemon runs this over its SSH link (no database port crosses
sites) and keeps the answer in its catalog, so `status` and `dashboard` never
touch the standby themselves.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from logship.errors import first_line
from logship.manifest import SiteLayout

STANDBY_QUERY = """
select pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       extract(epoch from pg_last_xact_replay_timestamp())::float8,
       extract(epoch from now())::float8
"""
HEARTBEAT_QUERY = """
select extract(epoch from beat_at)::float8 from logship.heartbeat where connector = %s
"""


@dataclass(frozen=True)
class StandbyFacts:
    connector: str
    measured_at: float
    reachable: bool
    in_recovery: bool | None = None
    replay_lsn: str | None = None
    #: the primary's clock, as written by the heartbeat and replayed here
    heartbeat_at: float | None = None
    #: commit time of the last replayed transaction (fallback without heartbeat)
    replay_timestamp: float | None = None
    last_restored: str | None = None
    restored_at: float | None = None
    promoted: bool = False
    error: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> StandbyFacts:
        return cls(**json.loads(text))


def _restored(layout: SiteLayout) -> tuple[str | None, float | None]:
    try:
        marker = json.loads(Path(layout.restored_marker).read_text())
        return str(marker["name"]), float(marker["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def read_standby_facts(connector: str, dsn: str, site_root: Path) -> StandbyFacts:
    import psycopg

    layout = SiteLayout.for_connector(site_root.as_posix(), connector)
    last_restored, restored_at = _restored(layout)
    promoted = Path(layout.promoted_marker).exists()
    base = {
        "connector": connector,
        "last_restored": last_restored,
        "restored_at": restored_at,
        "promoted": promoted,
    }
    try:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
            in_recovery, replay_lsn, replay_ts, now = conn.execute(STANDBY_QUERY).fetchone()
            heartbeat = None
            has_table = conn.execute("select to_regclass('logship.heartbeat')").fetchone()[0]
            if has_table is not None:
                row = conn.execute(HEARTBEAT_QUERY, (connector,)).fetchone()
                heartbeat = row[0] if row else None
    except psycopg.Error as exc:
        return StandbyFacts(measured_at=time.time(), reachable=False, error=first_line(exc), **base)
    return StandbyFacts(
        measured_at=now,
        reachable=True,
        in_recovery=in_recovery,
        replay_lsn=replay_lsn,
        heartbeat_at=heartbeat,
        replay_timestamp=replay_ts,
        **base,
    )
