"""The WAL walk: how far a connector's WAL is durable at the site, and its gaps.

Pure functions over catalog rows, which must come in ship order (as
`Catalog.files` returns them): by timeline, a timeline's `.history` first, then
by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from logship.catalog.models import FileState
from logship.engines.postgresql import walnames
from logship.engines.postgresql.walnames import WalKind, segment_name
from logship.status.figures import DurablePrefix, FileRow, age_s, is_durable, pending_rows
from logship.status.model import Gap

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
# PostgreSQL accepts power-of-two segment sizes from 1 MiB to 1 GiB (initdb --wal-segsize).
_MIN_SEGMENT_SIZE = 1024 * 1024
_MAX_SEGMENT_SIZE = 1024 * 1024 * 1024


def _is_valid_segment_size(size: int) -> bool:
    return _MIN_SEGMENT_SIZE <= size <= _MAX_SEGMENT_SIZE and size & (size - 1) == 0


def segment_size(rows: Sequence[FileRow]) -> int:
    """The cluster's WAL segment size, read off the segments' own sizes."""
    for row in rows:
        parsed = walnames.parse(row.name)
        if parsed and parsed.kind is WalKind.SEGMENT and _is_valid_segment_size(row.size):
            return row.size
    return DEFAULT_SEGMENT_SIZE


@dataclass(frozen=True)
class _Walk:
    newest_durable: FileRow | DurablePrefix | None  # newest segment, every earlier one durable
    gap: Gap | None
    segment_size: int
    #: as newest_durable, but every earlier file of any kind durable too (a backup
    #: label does not hold replay up, yet a pending one must stay in later walks)
    prefix_end: FileRow | DurablePrefix | None

    @property
    def prefix(self) -> DurablePrefix | None:
        end = self.prefix_end
        if end is None or isinstance(end, DurablePrefix):
            return end
        return DurablePrefix(end.name, end.order_key, end.closed_at, self.segment_size)


def _walk(rows: Sequence[FileRow], start: DurablePrefix | None = None) -> _Walk:
    """One pass in ship order; `rows` are those after `start` when there is one."""
    seg_size = start.segment_size if start is not None else segment_size(rows)
    newest_durable: FileRow | DurablePrefix | None = start
    prefix_end = start
    prefix_intact = every_durable = True
    gap: Gap | None = None
    previous: tuple[walnames.WalName, int] | None = None
    if start is not None and (parsed_start := walnames.parse(start.name)) is not None:
        previous = (parsed_start, parsed_start.segment_number(seg_size))
    for row in rows:
        every_durable = every_durable and is_durable(row)
        parsed = walnames.parse(row.name)
        if parsed is None or parsed.kind is WalKind.BACKUP:
            continue  # a backup label holds no data replay needs
        if parsed.kind is WalKind.HISTORY:
            # Without its history file a standby cannot follow the new timeline, so
            # that timeline's segments are of no use at the site yet.
            prefix_intact = prefix_intact and is_durable(row)
            continue
        number = parsed.segment_number(seg_size)
        if previous is not None:
            prev_name, prev_number = previous
            expected = prev_number + 1
            # Only a jump forward is a gap. A new timeline starts inside the segment
            # where it branched off, so its first segment repeats that number (or an
            # earlier one after a point-in-time recovery) instead of following it.
            if number > expected:
                if gap is None:
                    gap = Gap(
                        missing=segment_name(prev_name.timeline, expected, seg_size),
                        segment_number=expected,
                        after=prev_name.name,
                    )
                prefix_intact = False
        prefix_intact = prefix_intact and is_durable(row)
        if prefix_intact:
            newest_durable = row
            if every_durable:
                prefix_end = row
        previous = (parsed, number)
    return _Walk(newest_durable, gap, seg_size, prefix_end)


def find_gap(rows: Sequence[FileRow]) -> Gap | None:
    """The first segment missing between two known ones, whatever their states."""
    return _walk(rows).gap


@dataclass(frozen=True)
class QueueFacts:
    """What `status` shows about a connector's files, from one walk over its rows."""

    walk: _Walk
    pending_files: int
    pending_bytes: int
    oldest_pending_closed_at: float | None
    last_shipped: str | None
    newest_applied: str | None

    @property
    def prefix(self) -> DurablePrefix | None:
        """Where the next walk may start (see `DurablePrefix`)."""
        return self.walk.prefix

    @property
    def gap(self) -> Gap | None:
        return self.walk.gap

    def rpo_exposure_s(self, now: float) -> float | None:
        """now - close time of the newest durable segment with no gap before it; None
        if none."""
        newest = self.walk.newest_durable
        return None if newest is None else age_s(newest.closed_at, now)


def queue_facts(
    rows: Sequence[FileRow],
    start: DurablePrefix | None = None,
    applied_before: str | None = None,
) -> QueueFacts:
    """The queue figures from `rows` in ship order: every row of the connector, or
    only those after `start`, with `applied_before` the newest applied file before
    them (files up to `start` are all durable, so none of them is pending)."""
    walk = _walk(rows, start)
    pending = pending_rows(rows)
    durable = [row.name for row in rows if is_durable(row)]
    applied = [row.name for row in rows if row.state == FileState.APPLIED]
    return QueueFacts(
        walk=walk,
        pending_files=len(pending),
        pending_bytes=sum(row.size for row in pending),
        oldest_pending_closed_at=min((row.closed_at for row in pending), default=None),
        last_shipped=durable[-1] if durable else (start.name if start is not None else None),
        newest_applied=applied[-1] if applied else applied_before,
    )
