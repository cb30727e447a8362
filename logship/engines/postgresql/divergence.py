"""What a stopped old primary holds past the point where the new primary's timeline
branched off: the loss report of `reinstate`, and a copy of that WAL set aside.

After a failover, commits the old primary made past the divergence point are not
on the new primary, and a rewind or a new base backup throws them away. Before
that happens, `loss_report` names them (an LSN range, a time window, the
transactions from pg_waldump's COMMIT records) and `wal_aside.copy_aside` keeps
the WAL segments that hold them, so that they can still be extracted by hand.

The old primary must be stopped: its pg_wal is read as it is on disk.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from logship.engines.postgresql import walnames
from logship.engines.postgresql.timeline_history import MAX_TIMELINE
from logship.engines.postgresql.tools import find_program
from logship.engines.postgresql.waldump import WalScan, XactEnd, parse_stop, scan_wal
from logship.errors import OperationFailed, SafetyRefusal, shown_text

#: transactions kept in a report; all of them are counted
DEFAULT_LISTED = 1000
DEFAULT_TIMEOUT_S = 1800.0
MIN_SEGMENT_SIZE = 1 << 20
MAX_SEGMENT_SIZE = 1 << 30


@dataclass(frozen=True)
class DivergenceReport:
    """The WAL an old primary holds past the divergence point, and what it commits."""

    data_dir: Path
    timeline: int
    divergence_lsn: int
    #: where reading began: the divergence point, or, when the old primary has
    #: already removed the segment holding it, the start of its first later one
    read_from_lsn: int
    #: the end of valid WAL: where the next record would have started
    end_lsn: int
    segment_size: int
    #: the segment files holding WAL past the divergence point, in order
    segments: tuple[str, ...]
    records: int
    commits: int
    aborts: int
    first_commit_at: datetime | None
    last_commit_at: datetime | None
    #: the first `listed_cap` commits, in WAL order
    transactions: tuple[XactEnd, ...]
    listed_cap: int
    #: pg_waldump's last message: why it stopped
    end_message: str
    #: lines of pg_waldump's output that were not records
    unparsed_lines: int = 0
    pg_waldump: str = ""

    @property
    def complete(self) -> bool:
        """False when WAL right past the divergence point is already gone."""
        return self.read_from_lsn == self.divergence_lsn

    @property
    def wal_bytes(self) -> int:
        return max(0, self.end_lsn - self.divergence_lsn)

    def to_json(self) -> dict[str, Any]:
        return {
            "data_dir": str(self.data_dir),
            "timeline": self.timeline,
            "divergence_lsn": _lsn(self.divergence_lsn),
            "read_from_lsn": _lsn(self.read_from_lsn),
            "end_lsn": _lsn(self.end_lsn),
            "complete": self.complete,
            "wal_bytes": self.wal_bytes,
            "segment_size": self.segment_size,
            "segments": list(self.segments),
            "records": self.records,
            "commits": self.commits,
            "aborts": self.aborts,
            "first_commit_at": _iso(self.first_commit_at),
            "last_commit_at": _iso(self.last_commit_at),
            "transactions_listed": len(self.transactions),
            "transactions_cap": self.listed_cap,
            "transactions": [
                {"xid": t.xid, "committed_at": _iso(t.at), "lsn": _lsn(t.lsn)}
                for t in self.transactions
            ],
            "end_message": self.end_message,
            "unparsed_lines": self.unparsed_lines,
            "pg_waldump": self.pg_waldump,
        }

    def summary_lines(self, *, shown: int = 5) -> list[str]:
        """A few lines for a terminal."""
        lines = [
            f"WAL past the divergence point on timeline {self.timeline}: "
            f"{_lsn(self.divergence_lsn)} to {_lsn(self.end_lsn)} ({self.wal_bytes} bytes, "
            f"{self.records} records)"
        ]
        if not self.complete:
            lines.append(
                f"  incomplete: WAL from {_lsn(self.divergence_lsn)} to "
                f"{_lsn(self.read_from_lsn)} was already recycled by the old primary's "
                "checkpoints (the shipped WAL archive may still hold it)"
            )
        window = ""
        if self.first_commit_at is not None and self.last_commit_at is not None:
            window = f", committed {_iso(self.first_commit_at)} to {_iso(self.last_commit_at)}"
        lines.append(f"transactions lost: {self.commits} commits{window}; {self.aborts} aborts")
        for txn in self.transactions[:shown]:
            lines.append(
                f"  xid {txn.xid} committed {_iso(txn.at) or 'at an unknown time'} "
                f"(lsn {_lsn(txn.lsn)})"
            )
        if self.commits > shown:
            lines.append(f"  ... and {self.commits - min(shown, len(self.transactions))} more")
        if self.segments:
            lines.append(
                f"WAL segments holding them: {self.segments[0]} .. {self.segments[-1]} "
                f"({len(self.segments)} files)"
            )
        return lines


def _lsn(value: int) -> str:
    return walnames.int_to_lsn(value)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="microseconds")


# -- finding the WAL -----------------------------------------------------------------------


def _timeline_segments(pg_wal: Path, timeline: int) -> dict[str, int]:
    """Name -> file size of the segment files of `timeline` in pg_wal.

    Only names matching the strict segment pattern count; a link or anything but
    a regular file under such a name is refused, not followed.
    """
    found: dict[str, int] = {}
    try:
        entries = list(os.scandir(pg_wal))
    except OSError as exc:
        raise OperationFailed(f"cannot list {pg_wal}: {exc.strerror or exc}") from None
    for entry in entries:
        parsed = walnames.parse(entry.name)
        if parsed is None or parsed.kind is not walnames.WalKind.SEGMENT:
            continue
        if parsed.timeline != timeline:
            continue
        st = entry.stat(follow_symlinks=False)
        if not stat.S_ISREG(st.st_mode):
            raise SafetyRefusal(
                f"{pg_wal / entry.name} is not a regular file (a link?); logship reads "
                "WAL segments only as files: replace it by the file it stands for"
            )
        found[entry.name] = st.st_size
    return found


def _segment_size(pg_wal: Path, sizes: set[int]) -> int:
    if len(sizes) != 1:
        raise OperationFailed(
            f"{pg_wal}: segment files of different sizes ({', '.join(map(str, sorted(sizes)))}); "
            "a damaged or partly copied pg_wal"
        )
    size = sizes.pop()
    if not MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE or size & (size - 1):
        raise OperationFailed(
            f"{pg_wal}: segment files of {size} bytes; PostgreSQL's are a power of two "
            "from 1 MB to 1 GB"
        )
    return size


def loss_report(
    data_dir: Path,
    bin_dir: Path | None,
    old_timeline: int,
    divergence_lsn: int,
    *,
    listed: int = DEFAULT_LISTED,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> DivergenceReport:
    """What the stopped old primary in `data_dir` holds on `old_timeline` from
    `divergence_lsn` on, read with pg_waldump from its pg_wal."""
    if not 1 <= old_timeline <= MAX_TIMELINE:
        raise OperationFailed(f"timeline {old_timeline} is out of range (1-{MAX_TIMELINE})")
    if divergence_lsn <= 0:
        raise OperationFailed("the divergence point 0/0 is not a WAL position")
    if listed < 0:
        raise ValueError("listed must be 0 or more")
    pg_wal = data_dir / "pg_wal"
    by_name = _timeline_segments(pg_wal, old_timeline)
    if not by_name:
        raise OperationFailed(
            f"{pg_wal} holds no WAL segment of timeline {old_timeline}: is that the old "
            "primary's timeline, and its data directory?"
        )
    segment_size = _segment_size(pg_wal, set(by_name.values()))
    present = sorted(
        walnames.WalName(name, walnames.WalKind.SEGMENT).segment_number(segment_size)
        for name in by_name
    )
    first_segment = divergence_lsn // segment_size
    later = [number for number in present if number >= first_segment]
    if not later:
        raise _beyond_the_wal(pg_wal, old_timeline, divergence_lsn, present[-1], segment_size)
    waldump = find_program("pg_waldump", bin_dir=bin_dir, data_dir=data_dir)
    if later[0] == first_segment:
        # The point must be a record boundary in this WAL: the standby replayed the
        # old primary's records up to it. Reading from the start of its segment (of
        # the one before, when it starts a segment) shows the record ending there.
        read_from, boundary = divergence_lsn, divergence_lsn
        scan_from = first_segment * segment_size
        if scan_from == divergence_lsn and first_segment - 1 in present:
            scan_from -= segment_size
    else:
        # Its old primary's checkpoints recycled the segment holding the point.
        read_from = scan_from = later[0] * segment_size
        boundary = None
    scan = scan_wal(
        waldump,
        pg_wal,
        old_timeline,
        scan_from,
        count_from=read_from,
        boundary=boundary,
        segment_size=segment_size,
        cap=listed,
        timeout_s=timeout_s,
    )
    end_message = _check_stop(scan, pg_wal, present, segment_size)
    if boundary is not None and not scan.boundary_seen:
        raise SafetyRefusal(
            f"the divergence point {_lsn(divergence_lsn)} is not where a record begins or "
            f"ends in {pg_wal} (timeline {old_timeline}): the history file does not describe "
            "this old primary; its losses cannot be named: rebuild it from a base backup"
        )
    end = max(scan.end, read_from)
    # The segments holding a byte of [read_from, end): none when nothing was read.
    segments = tuple(
        walnames.segment_name(old_timeline, number, segment_size)
        for number in present
        if read_from < end and read_from // segment_size <= number <= (end - 1) // segment_size
    )
    return DivergenceReport(
        data_dir=data_dir,
        timeline=old_timeline,
        divergence_lsn=divergence_lsn,
        read_from_lsn=read_from,
        end_lsn=end,
        segment_size=segment_size,
        segments=segments,
        records=scan.records,
        commits=scan.commits,
        aborts=scan.aborts,
        first_commit_at=scan.first_commit_at,
        last_commit_at=scan.last_commit_at,
        transactions=tuple(scan.listed),
        listed_cap=listed,
        end_message=shown_text(end_message),
        unparsed_lines=scan.unparsed,
        pg_waldump=str(waldump),
    )


def _beyond_the_wal(
    pg_wal: Path, timeline: int, point: int, last_segment: int, segment_size: int
) -> SafetyRefusal:
    last = walnames.segment_name(timeline, last_segment, segment_size)
    return SafetyRefusal(
        f"the divergence point {_lsn(point)} lies past the WAL of timeline {timeline} in "
        f"{pg_wal} (its last segment is {last}): the history file does not describe this "
        "old primary; its losses cannot be named: rebuild it from a base backup"
    )


def _check_stop(scan: WalScan, pg_wal: Path, present: list[int], segment_size: int) -> str:
    """pg_waldump's last message when it stopped at the end of valid WAL; refused
    otherwise."""
    if scan.returncode == 0:
        return "pg_waldump read to its end"
    stop = parse_stop(scan.stderr)
    if stop.end_of_wal:
        return stop.message
    if stop.missing_segment is not None:
        wanted = walnames.WalName(stop.missing_segment, walnames.WalKind.SEGMENT)
        if wanted.segment_number(segment_size) > present[-1]:
            return stop.message  # the WAL ends where the last segment file ends
        raise OperationFailed(
            f"{pg_wal} lacks segment {stop.missing_segment} between others of its "
            "timeline: the WAL past the divergence point cannot be read through"
        )
    raise OperationFailed(f"pg_waldump over {pg_wal} failed: {shown_text(stop.message)}")
