"""Reading pg_waldump's output: one record per line, and the message it stops with.

pg_waldump is PostgreSQL's own program, but the WAL it reads may be torn at the
end, and its text may change between versions: every line is matched strictly,
a line that does not match is skipped (and counted), and nothing in a line is
trusted beyond what its pattern took. Its timestamps are parsed in UTC, which
the caller's environment (TZ=UTC) makes them.

Without an end LSN, pg_waldump reads until the first record it cannot read and
then exits non-zero with "error in WAL record at ...": that is the normal end of
valid WAL, not a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from logship.engines.postgresql.timeline_history import parse_lsn
from logship.engines.postgresql.walnames import int_to_lsn
from logship.errors import OperationFailed

# rmgr: Transaction len (rec/tot):     34/    34, tx:        726, lsn: 0/03003E90,
#   prev 0/03003DF8, desc: COMMIT 2026-12-08 00:50:01.001975 UTC
_RECORD = re.compile(
    r"^rmgr: (?P<rmgr>[A-Za-z0-9_]{1,32}) +len \(rec/tot\): +(?P<rec>[0-9]{1,10})/ *"
    r"(?P<tot>[0-9]{1,10}), tx: +(?P<xid>[0-9]{1,10}), lsn: (?P<lsn>[0-9A-F]{1,8}/[0-9A-F]{1,8}), "
    r"prev (?P<prev>[0-9A-F]{1,8}/[0-9A-F]{1,8}), desc: (?P<desc>.*)$"
)
_TIMESTAMP = r"(?P<ts>[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}) UTC"
# COMMIT <time>[; ...] and ABORT <time>[; ...]; for a prepared transaction the
# record's own xid is 0 and the transaction's is in the description.
_XACT = re.compile(
    r"^(?P<kind>COMMIT|ABORT)(?:_PREPARED (?P<prepared>[0-9]{1,10}):)? " + _TIMESTAMP + r"(?:;|$)"
)
# error in WAL record at 0/301C908: invalid record length at 0/301C980: wanted 24, got 0
_STOPPED = re.compile(
    r"^pg_waldump: (?:error|fatal): error in WAL record at (?P<at>\S+): (?P<why>.*)$"
)
# asked to start at a point with no valid record there or after it
_NO_RECORD = re.compile(r"^pg_waldump: (?:error|fatal): could not find a valid record after ")
_MISSING_FILE = re.compile(
    r'^pg_waldump: (?:error|fatal): could not find file "(?P<name>[0-9A-F]{24})"'
)
_NEXT_AT = re.compile(r"\bat ([0-9A-F]{1,8}/[0-9A-F]{1,8})\b")
MAX_XID = 0xFFFFFFFF
#: a record cannot be larger than this (XLogRecordMaxSize is 1020 MB)
MAX_RECORD_BYTES = 1 << 30
PAGE_SIZE = 8192  # XLOG_BLCKSZ as PostgreSQL is built everywhere logship runs
SHORT_PAGE_HEADER = 24  # SizeOfXLogShortPHD
LONG_PAGE_HEADER = 40  # SizeOfXLogLongPHD, at the start of each segment
MAXALIGN = 8
#: a longer output line is cut: the fields read all come first
MAX_LINE_BYTES = 64 * 1024
_STDERR_KEPT = 64 * 1024


@dataclass(frozen=True)
class WalRecord:
    rmgr: str
    total_length: int
    xid: int
    lsn: int
    desc: str


@dataclass(frozen=True)
class XactEnd:
    """A transaction's end: a commit (`committed`) or an abort, with its time."""

    xid: int
    committed: bool
    at: datetime | None
    lsn: int


def parse_record(line: str) -> WalRecord | None:
    """One line of pg_waldump's output as a record; None for any other line (the
    "first record is after ..." note, a line of a newer format, garbage)."""
    match = _RECORD.match(line)
    if match is None:
        return None
    total = int(match.group("tot"))
    xid = int(match.group("xid"))
    if total <= 0 or total > MAX_RECORD_BYTES or xid > MAX_XID:
        return None
    return WalRecord(
        rmgr=match.group("rmgr"),
        total_length=total,
        xid=xid,
        lsn=parse_lsn(match.group("lsn")),
        desc=match.group("desc"),
    )


def parse_xact_end(record: WalRecord) -> XactEnd | None:
    """The commit or abort `record` is, or None (another record, or a prepare: a
    prepared transaction ends at its COMMIT_PREPARED or ABORT_PREPARED)."""
    if record.rmgr != "Transaction":
        return None
    match = _XACT.match(record.desc)
    if match is None:
        return None
    prepared = match.group("prepared")
    xid = int(prepared) if prepared is not None else record.xid
    if xid == 0 or xid > MAX_XID:
        return None
    try:
        at = datetime.strptime(match.group("ts"), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC)
    except ValueError:
        at = None  # a date that is no date: the transaction still counts
    return XactEnd(xid=xid, committed=match.group("kind") == "COMMIT", at=at, lsn=record.lsn)


def record_end(lsn: int, total_length: int, segment_size: int) -> int:
    """Where the record at `lsn` of `total_length` bytes ends, and the next would
    start: its bytes continue past each page header they cross, and the next record
    starts MAXALIGNed."""
    position, remaining = lsn, total_length
    while remaining > 0:
        page_end = (position // PAGE_SIZE + 1) * PAGE_SIZE
        taken = min(remaining, page_end - position)
        position += taken
        remaining -= taken
        if remaining > 0:
            header = LONG_PAGE_HEADER if page_end % segment_size == 0 else SHORT_PAGE_HEADER
            position = page_end + header
    return (position + MAXALIGN - 1) // MAXALIGN * MAXALIGN


@dataclass(frozen=True)
class WaldumpStop:
    """How pg_waldump stopped, from its last error line."""

    #: it met a record it could not read: the end of valid WAL
    end_of_wal: bool
    #: it asked for a segment file that is not there
    missing_segment: str | None
    #: where the next record would have been, when the message says
    next_lsn: int | None
    message: str


def parse_stop(stderr: str) -> WaldumpStop:
    """pg_waldump's stop, from its standard error (its last error line counts)."""
    errors = [line for line in stderr.splitlines() if line.startswith("pg_waldump: ")]
    last = errors[-1] if errors else ""
    stopped = _STOPPED.match(last)
    if stopped is not None:
        next_lsn = None
        found = _NEXT_AT.search(stopped.group("why"))
        if found is not None:
            next_lsn = parse_lsn(found.group(1))
        return WaldumpStop(True, None, next_lsn, last)
    if _NO_RECORD.match(last):
        return WaldumpStop(True, None, None, last)
    missing = _MISSING_FILE.match(last)
    if missing is not None:
        return WaldumpStop(False, missing.group("name"), None, last)
    return WaldumpStop(False, None, None, last or stderr.strip())


@dataclass
class WalScan:
    """What the lines of one pg_waldump run add up to: records from `start` on are
    counted; any record shows whether `boundary` is where one begins or ends."""

    start: int
    segment_size: int
    cap: int
    boundary: int | None = None
    boundary_seen: bool = False
    records: int = 0
    commits: int = 0
    aborts: int = 0
    end: int = 0
    unparsed: int = 0
    first_commit_at: datetime | None = None
    last_commit_at: datetime | None = None
    listed: list[XactEnd] = field(default_factory=list)
    #: pg_waldump's exit status and the end of its standard error
    returncode: int | None = None
    stderr: str = ""

    def add_line(self, line: str) -> None:
        record = parse_record(line)
        if record is None:
            self.unparsed += 1
            return
        ends_at = record_end(record.lsn, record.total_length, self.segment_size)
        if not self.boundary_seen and self.boundary is not None:
            self.boundary_seen = self._is_boundary(record.lsn, ends_at)
        if record.lsn < self.start:
            return
        self.records += 1
        self.end = max(self.end, ends_at)
        ended = parse_xact_end(record)
        if ended is not None:
            self._add_xact(ended)

    def _is_boundary(self, lsn: int, ends_at: int) -> bool:
        boundary = self.boundary
        if boundary is None or boundary in (lsn, ends_at):
            return boundary is not None
        if boundary % PAGE_SIZE:
            return False
        # A record right after the header of a page that starts at the boundary:
        # nothing continued onto that page, so a record ended where it starts.
        header = LONG_PAGE_HEADER if boundary % self.segment_size == 0 else SHORT_PAGE_HEADER
        return lsn == boundary + header

    def _add_xact(self, ended: XactEnd) -> None:
        if not ended.committed:
            self.aborts += 1
            return
        self.commits += 1
        if ended.at is not None:
            # Commit times are not in WAL order to the microsecond: take the extremes.
            if self.first_commit_at is None or ended.at < self.first_commit_at:
                self.first_commit_at = ended.at
            if self.last_commit_at is None or ended.at > self.last_commit_at:
                self.last_commit_at = ended.at
        if len(self.listed) < self.cap:
            self.listed.append(ended)


def scan_wal(
    waldump: Path,
    pg_wal: Path,
    timeline: int,
    start: int,
    *,
    count_from: int,
    boundary: int | None,
    segment_size: int,
    cap: int,
    timeout_s: float,
) -> WalScan:
    """Run pg_waldump over `pg_wal` from `start` on `timeline` to the end of valid
    WAL, adding its lines up as they come (its output is not held in memory):
    records from `count_from` on are counted."""
    scan = WalScan(count_from, segment_size, cap, boundary=boundary)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "PG"))}
    # Untranslated messages (they are parsed) and timestamps in UTC.
    env.update(LC_ALL="C", LANG="C", TZ="UTC")
    cmd = [
        str(waldump),
        *("--path", str(pg_wal), "--timeline", str(timeline), "--start", int_to_lsn(start)),
    ]
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env
            )
        except OSError as exc:
            raise OperationFailed(f"cannot run {waldump}: {exc.strerror or exc}") from None
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout_s, kill)
        timer.start()
        with proc:  # closes its output and waits for it, however this ends
            try:
                if proc.stdout is not None:  # always: it was asked for
                    _read_lines(proc.stdout, scan)
                proc.wait()  # the timer still kills it if it hangs here
            finally:
                timer.cancel()
                if proc.poll() is None:
                    proc.kill()
        if timed_out.is_set():
            raise OperationFailed(f"pg_waldump over {pg_wal} did not finish within {timeout_s:g} s")
        err.seek(0, os.SEEK_END)
        err.seek(max(0, err.tell() - _STDERR_KEPT))
        scan.stderr = err.read().decode("utf-8", errors="replace")
        scan.returncode = proc.returncode
    return scan


def _read_lines(stream: IO[bytes], scan: WalScan) -> None:
    while raw := stream.readline(MAX_LINE_BYTES):
        if not raw.endswith(b"\n"):
            # An over-long line: the fields read come first, the rest is skipped.
            while (rest := stream.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass
        scan.add_line(raw.decode("utf-8", errors="replace").rstrip("\n"))
