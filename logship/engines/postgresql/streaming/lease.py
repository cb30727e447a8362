"""The synchronous mode's word to the site: `streaming.json` beside the shipped WAL.

While commits wait for the standby, the daemon at the primary rewrites this file
about every second: "synchronous since S; the primary will not drop to async
before U". The supervisor keeps that promise (it never drops before the `U` of
the last lease that reached the site), so `promote`, which runs at the site after
the primary is gone, can prove from it that no acknowledged commit is lost: in
maximum protection always, in maximum availability when the primary was seen
down before `U`.

The file crosses the site boundary: it is read as untrusted JSON, every field
checked.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

from logship.manifest import SiteLayout

LEASE_NAME = "streaming.json"
LEASE_LIMIT = 4096
SYNC_MODES = ("async", "availability", "protection")
_LSN_MAX = 2 * len("FFFFFFFF") + 1


def lease_path(layout: SiteLayout) -> PurePosixPath:
    return layout.root / LEASE_NAME


@dataclass(frozen=True)
class SyncLease:
    connector: str
    #: the mode in force at the primary when written
    sync_mode: str
    #: since when that mode has been in force (primary's clock)
    since: float
    written_at: float
    #: the primary does not drop to async before this; null in maximum protection
    #: (never) and in async (nothing promised)
    holds_until: float | None
    #: the standby's flushed position the primary saw when writing
    flush_lsn: str | None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes, connector: str) -> SyncLease:
        """Strictly: ValueError naming the first thing wrong."""
        if len(data) > LEASE_LIMIT:
            raise ValueError(f"larger than {LEASE_LIMIT} bytes")
        entry = json.loads(data)
        if not isinstance(entry, dict):
            raise ValueError("not a JSON object")
        if entry.get("connector") != connector:
            raise ValueError(f"written for connector {entry.get('connector')!r}")
        mode = entry.get("sync_mode")
        if mode not in SYNC_MODES:
            raise ValueError(f"sync_mode {mode!r} is not one of {', '.join(SYNC_MODES)}")
        since, written = _time(entry, "since"), _time(entry, "written_at")
        holds = entry.get("holds_until")
        if holds is not None:
            holds = _time(entry, "holds_until")
        if (mode == "availability") != (holds is not None):
            raise ValueError(f"holds_until {holds!r} does not fit sync_mode {mode!r}")
        flush = entry.get("flush_lsn")
        if flush is not None and not _is_lsn(flush):
            raise ValueError(f"flush_lsn {flush!r} is not a WAL position")
        return cls(connector, mode, since, written, holds, flush)


def _time(entry: dict, key: str) -> float:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} {value!r} is not a time")
    if not 0 < value < 1e11:
        raise ValueError(f"{key} {value!r} is out of range")
    return float(value)


def _is_lsn(value: object) -> bool:
    if not isinstance(value, str) or len(value) > _LSN_MAX:
        return False
    high, slash, low = value.partition("/")
    hexdigits = set("0123456789ABCDEFabcdef")
    return bool(slash and high and low) and set(high + low) <= hexdigits
