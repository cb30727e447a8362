"""Lag and RPO arithmetic that holds for every engine (as
docs/reference/status-json.md defines the figures): pure functions over catalog rows and a
clock reading, so `status`, `dashboard` and the daemon's samples all compute
the same numbers the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from logship.catalog.models import FileState

DURABLE_STATES = frozenset({FileState.SHIPPED, FileState.APPLIED})


class FileRow(Protocol):
    """What lag needs from a catalog file row (`SpoolFile` satisfies it)."""

    name: str
    order_key: str
    size: int
    closed_at: float
    state: str


class SiteRow(Protocol):
    reachable: bool
    error: str | None


@dataclass(frozen=True)
class DurablePrefix:
    """The newest file that, with every file before it, is durable at the site
    with nothing missing before it.

    A walk over a connector's rows finds it; later walks may start after it,
    because a file's state only moves forward (discovered, then shipped, then
    applied) and retention removes only durable files. A file that turns up
    before it later invalidates it (the catalog drops it). This is what keeps
    `status` fast with millions of rows: only the rows after it are read.
    """

    name: str
    order_key: str
    closed_at: float
    #: the size of one file of the sequence, as the walk read it off the rows
    segment_size: int


def is_durable(row: FileRow) -> bool:
    return row.state in DURABLE_STATES


def pending_rows(rows: Sequence[FileRow]) -> list[FileRow]:
    """Files closed at the primary and not durable at the site (conflicts included:
    their content never reaches the site)."""
    return [row for row in rows if not is_durable(row)]


def age_s(since: float, now: float) -> float:
    """Seconds from `since` to `now`, never negative (clocks step back)."""
    return max(0.0, now - since)


def transport_lag(oldest_pending_closed_at: float | None, now: float) -> float:
    """Age of the oldest closed-but-not-shipped file; 0.0 when nothing is pending."""
    return 0.0 if oldest_pending_closed_at is None else age_s(oldest_pending_closed_at, now)


def rto_estimate_s(backlog: int | None, rate: float | None) -> float | None:
    """Time to replay what is left; the promote itself is not measured yet."""
    if backlog is None:
        return None
    if backlog == 0:
        return 0.0
    return backlog / rate if rate else None


def iso_utc(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    return moment.replace("+00:00", "Z")


def rounded(value: float | None) -> float | None:
    # A non-finite figure (a bad time stored by an older logship) is unknown.
    return None if value is None or not math.isfinite(value) else round(value, 3)
