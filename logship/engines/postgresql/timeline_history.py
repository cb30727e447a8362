"""PostgreSQL timeline history files (`0000000N.history`): a strict parser, and the
point where a timeline left another.

A history file reaches us from the other site (the new primary writes it at its
promotion), so everything in it is checked before use: hostile or damaged input
gives one OperationFailed line, never an exception from deep inside, and never a
wrong divergence point. PostgreSQL's own reader (timeline.c) is the model for what
a valid file looks like; this one is stricter where PostgreSQL would accept a
file that cannot be right (timelines or switch points out of order).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logship.engines.postgresql import walnames
from logship.errors import OperationFailed, first_line, shown_text

if TYPE_CHECKING:
    import psycopg

#: far more than any real history (one line per earlier timeline, each well under
#: 200 bytes): the bounds keep a hostile file from costing memory or time
MAX_HISTORY_BYTES = 256 * 1024
MAX_HISTORY_LINES = 4096
#: PostgreSQL reads a line into a MAXPGPATH (1024) buffer
MAX_LINE_BYTES = 1024
MAX_TIMELINE = 0xFFFFFFFF

_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
# The TLI and the switch point are separated by whitespace (PostgreSQL writes a
# tab; its sscanf takes any); the reason, after a tab, is free text.
_ENTRY = re.compile(r"^([0-9]{1,10})[\t ]+([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})(?:\t(.*))?$")
# Control characters other than the tab cannot be in a reason PostgreSQL wrote.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a history file: `parent_tli` was left at `switch_lsn`."""

    parent_tli: int
    switch_lsn: int
    reason: str

    @property
    def switch_lsn_text(self) -> str:
        return walnames.int_to_lsn(self.switch_lsn)


def parse_lsn(text: str, *, what: str = "LSN") -> int:
    """A pg_lsn's text form ("16/B374D848") as a byte position, strictly: two groups
    of 1-8 hex digits (int() alone would take signs, spaces and underscores)."""
    match = _LSN.match(text)
    if match is None:
        raise OperationFailed(f"{what} {shown_text(text, 60)!r} is not an LSN (like 16/B374D848)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def history_timeline(name: str) -> int:
    """The timeline a history file's name is for; OperationFailed for any other name."""
    parsed = walnames.parse(name)
    if parsed is None or parsed.kind is not walnames.WalKind.HISTORY:
        raise OperationFailed(
            f"{shown_text(name, 80)!r} is not a timeline history file name (like 00000002.history)"
        )
    if parsed.timeline < 2:
        raise OperationFailed(f"{name}: timeline 1 has no history; a history file is for 2 or more")
    return parsed.timeline


def parse_history(
    data: bytes, timeline: int, *, source: str = "history file"
) -> list[HistoryEntry]:
    """The entries of the history file of `timeline`, oldest first.

    Accepted as PostgreSQL does: blank lines and lines whose first non-blank
    character is '#' are skipped. Refused: more than MAX_HISTORY_BYTES or
    MAX_HISTORY_LINES, a NUL or any control character but the tab, text that is not
    UTF-8 outside a reason, timelines not strictly increasing or not below
    `timeline`, switch points not strictly increasing or zero, and no entry at all
    (a timeline above 1 was always branched from one).
    """
    if not 2 <= timeline <= MAX_TIMELINE:
        raise OperationFailed(f"{source}: timeline {timeline} cannot have a history file")
    if len(data) > MAX_HISTORY_BYTES:
        raise OperationFailed(
            f"{source}: {len(data)} bytes, more than the {MAX_HISTORY_BYTES} a history file "
            "can need; it is not a timeline history file"
        )
    if b"\x00" in data:
        raise OperationFailed(f"{source}: holds a NUL byte; it is not a timeline history file")
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    if len(lines) > MAX_HISTORY_LINES:
        raise OperationFailed(
            f"{source}: {len(lines)} lines, more than the {MAX_HISTORY_LINES} allowed"
        )
    entries: list[HistoryEntry] = []
    for number, raw in enumerate(lines, 1):
        where = f"{source} line {number}"
        if len(raw) > MAX_LINE_BYTES:
            raise OperationFailed(f"{where}: longer than {MAX_LINE_BYTES} bytes")
        # Restore point names may be in the server's encoding: only the reason may
        # be something other than UTF-8, and it is kept for display only.
        line = raw.decode("utf-8", errors="replace")
        if raw.endswith(b"\r"):
            line = line[:-1]
        stripped = line.lstrip(" \t\v\f")
        if not stripped or stripped.startswith("#"):
            continue
        entry = _parse_entry(line, where)
        if entry.parent_tli >= timeline:
            raise OperationFailed(
                f"{where}: timeline {entry.parent_tli} is not below {timeline}, whose "
                "history this is; the file is damaged or not this timeline's"
            )
        if entries:
            last = entries[-1]
            if entry.parent_tli <= last.parent_tli:
                raise OperationFailed(
                    f"{where}: timeline {entry.parent_tli} after {last.parent_tli}; timelines "
                    "must increase from line to line"
                )
            if entry.switch_lsn <= last.switch_lsn:
                raise OperationFailed(
                    f"{where}: switch point {entry.switch_lsn_text} is not after "
                    f"{last.switch_lsn_text}; switch points must increase from line to line"
                )
        entries.append(entry)
    if not entries:
        raise OperationFailed(
            f"{source}: no timeline entry; timeline {timeline} must name the one it left"
        )
    return entries


def _parse_entry(line: str, where: str) -> HistoryEntry:
    match = _ENTRY.match(line.lstrip(" \t\v\f"))
    if match is None:
        raise OperationFailed(
            f"{where}: {shown_text(line, 80)!r} is not 'timeline<TAB>LSN<TAB>reason'"
        )
    tli_text, lsn_text, reason = match.group(1), match.group(2), match.group(3) or ""
    tli = int(tli_text)
    if not 1 <= tli <= MAX_TIMELINE:
        raise OperationFailed(f"{where}: timeline {tli_text} is out of range (1-{MAX_TIMELINE})")
    lsn = parse_lsn(lsn_text, what=f"{where}: switch point")
    if lsn == 0:
        raise OperationFailed(f"{where}: switch point 0/0 is not a WAL position")
    if _CONTROL.search(reason):
        raise OperationFailed(f"{where}: the reason holds a control character")
    return HistoryEntry(parent_tli=tli, switch_lsn=lsn, reason=reason)


def read_history_file(path: Path) -> tuple[int, list[HistoryEntry]]:
    """The timeline `path` is the history of, and its entries.

    The name must be a history file name; the file is opened without following a
    link, must be a regular file, and is read no further than the size bound.
    """
    timeline = history_timeline(path.name)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise OperationFailed(
            f"cannot open timeline history {path}: {exc.strerror or exc} "
            "(it must be a regular file, not a link)"
        ) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OperationFailed(f"timeline history {path} is not a regular file")
        chunks: list[bytes] = []
        total = 0
        while total <= MAX_HISTORY_BYTES:
            chunk = os.read(fd, MAX_HISTORY_BYTES + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise OperationFailed(f"cannot read timeline history {path}: {exc}") from None
    finally:
        os.close(fd)
    return timeline, parse_history(b"".join(chunks), timeline, source=str(path))


def read_server_history(
    conn: psycopg.Connection[Any], *, where: str = "the new primary"
) -> tuple[int, list[HistoryEntry]]:
    """The timeline the primary behind `conn` writes, and its history, read over SQL.

    The timeline is the one it inserts WAL on now (pg_control's checkpoint timeline
    lags a promotion until the next checkpoint). The file is read with
    pg_read_binary_file, which the role pg_rewind needs may run, no further than the
    size bound; both are checked as strictly as a file on disk.
    """
    import psycopg

    try:
        row = conn.execute(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL "
            "ELSE pg_walfile_name(pg_current_wal_insert_lsn()) END"
        ).fetchone()
        name = row[0] if row else None
        if not isinstance(name, str):
            raise OperationFailed(
                f"{where} is in recovery: it is no primary yet (promote it first)"
            )
        segment = walnames.parse(name)
        if segment is None or segment.kind is not walnames.WalKind.SEGMENT:
            raise OperationFailed(f"{where} names its WAL {shown_text(name, 40)!r}: no segment")
        timeline = segment.timeline
        if timeline < 2:
            raise OperationFailed(
                f"{where} writes timeline 1, which has no history: it was never promoted"
            )
        history = f"{timeline:08X}.history"
        row = conn.execute(
            "SELECT pg_read_binary_file(%s, 0, %s, true)",
            (f"pg_wal/{history}", MAX_HISTORY_BYTES + 1),
        ).fetchone()
    except psycopg.Error as exc:
        raise OperationFailed(
            f"cannot read the timeline history from {where}: {first_line(exc)} "
            "(the role needs pg_read_binary_file, as pg_rewind's does)"
        ) from None
    data = row[0] if row else None
    if not isinstance(data, bytes):
        raise OperationFailed(f"{where} has no {history} in its pg_wal")
    return timeline, parse_history(data, timeline, source=f"{history} at {where}")


def divergence_point(history: list[HistoryEntry], new_timeline: int, old_timeline: int) -> int:
    """Where `old_timeline` was left on the way to `new_timeline`: the switch LSN in
    the new timeline's history. WAL an old primary on `old_timeline` holds from this
    point on is not on the new timeline.

    OperationFailed when `old_timeline` is not an ancestor of `new_timeline`: then
    the two did not branch from each other and no point can be named.
    """
    if old_timeline == new_timeline:
        raise OperationFailed(
            f"the old primary is on timeline {old_timeline}, the new primary's own: its "
            "history cannot say where they parted (was the standby promoted? if both were, "
            "rebuild the old primary from a base backup)"
        )
    for entry in history:
        if entry.parent_tli == old_timeline:
            return entry.switch_lsn
    ancestors = ", ".join(str(entry.parent_tli) for entry in history) or "none"
    raise OperationFailed(
        f"timeline {old_timeline} of the old primary is not an ancestor of the new "
        f"timeline {new_timeline} (its ancestors: {ancestors}); the two did not branch "
        "from each other: rebuild the old primary from a base backup"
    )
