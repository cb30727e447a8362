"""Reading what pg_controldata, postmaster.pid, pg_waldump and pg_rewind write, for
the rewind of an old primary (history files: timeline_history.py).

Everything here comes from a data directory or from the other site, so each
parser accepts only strict patterns and bounded sizes, and raises ValueError on
anything else rather than guessing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from logship.engines.postgresql.walnames import lsn_to_int

# pg_controldata prints about 3 KiB.
MAX_CONTROLDATA_CHARS = 64 * 1024
MAX_TIMELINE = 0xFFFFFFFF
MAX_UINT64 = 0xFFFFFFFFFFFFFFFF

_LSN = r"[0-9A-F]{1,8}/[0-9A-F]{1,8}"
_LSN_RE = re.compile(rf"^{_LSN}$")
_DIGITS = re.compile(r"^[0-9]{1,20}$")
_STATE = re.compile(r"^[a-z ]{1,40}$")

#: states after a clean stop (pg_rewind takes them as they are)
CLEAN_STATES = frozenset({"shut down", "shut down in recovery"})
#: states a server leaves when it crashed (pg_rewind runs crash recovery first)
CRASHED_STATES = frozenset(
    {"in production", "in crash recovery", "in archive recovery", "shutting down"}
)


def parse_lsn(text: str) -> int:
    text = text.strip()
    if not _LSN_RE.match(text):
        raise ValueError(f"not an LSN: {text[:40]!r}")
    return lsn_to_int(text)


def _parse_uint(text: str, limit: int, what: str) -> int:
    text = text.strip()
    if not _DIGITS.match(text) or int(text) > limit:
        raise ValueError(f"{what}: not a number in range: {text[:40]!r}")
    return int(text)


def _parse_on_off(text: str, what: str) -> bool:
    value = text.strip()
    if value not in ("on", "off"):
        raise ValueError(f"{what}: expected on or off, got {value[:40]!r}")
    return value == "on"


@dataclass(frozen=True)
class ControlData:
    """The pg_control fields a rewind depends on."""

    system_identifier: int
    state: str
    checkpoint_lsn: int
    redo_lsn: int
    timeline: int
    min_recovery_lsn: int
    wal_log_hints: bool
    checksum_version: int
    segment_size: int
    full_page_writes: bool


_CONTROL_FIELDS = {
    "Database system identifier": "system_identifier",
    "Database cluster state": "state",
    "Latest checkpoint location": "checkpoint_lsn",
    "Latest checkpoint's REDO location": "redo_lsn",
    "Latest checkpoint's TimeLineID": "timeline",
    "Minimum recovery ending location": "min_recovery_lsn",
    "wal_log_hints setting": "wal_log_hints",
    "Data page checksum version": "checksum_version",
    "Bytes per WAL segment": "segment_size",
    "Latest checkpoint's full_page_writes": "full_page_writes",
}


def parse_controldata(text: str) -> ControlData:
    """pg_controldata's output (run with LC_ALL=C: its labels are translated)."""
    if len(text) > MAX_CONTROLDATA_CHARS:
        raise ValueError("pg_controldata output is too long")
    raw: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        field = _CONTROL_FIELDS.get(label.strip()) if sep else None
        if field is not None:
            if field in raw:
                raise ValueError(f"pg_controldata prints {label.strip()!r} twice")
            raw[field] = value.strip()
    missing = sorted(set(_CONTROL_FIELDS.values()) - set(raw))
    if missing:
        raise ValueError(f"pg_controldata output lacks {', '.join(missing)}")
    if not _STATE.match(raw["state"]):
        raise ValueError(f"unexpected cluster state {raw['state'][:40]!r}")
    segment_size = _parse_uint(raw["segment_size"], 1 << 30, "Bytes per WAL segment")
    # initdb allows powers of two from 1 MB to 1 GB.
    if segment_size < (1 << 20) or segment_size & (segment_size - 1):
        raise ValueError(f"Bytes per WAL segment: {segment_size} is not a power of two >= 1 MB")
    timeline = _parse_uint(raw["timeline"], MAX_TIMELINE, "TimeLineID")
    if timeline < 1:
        raise ValueError("TimeLineID 0 is not a timeline")
    return ControlData(
        system_identifier=_parse_uint(raw["system_identifier"], MAX_UINT64, "system identifier"),
        state=raw["state"],
        checkpoint_lsn=parse_lsn(raw["checkpoint_lsn"]),
        redo_lsn=parse_lsn(raw["redo_lsn"]),
        timeline=timeline,
        min_recovery_lsn=parse_lsn(raw["min_recovery_lsn"]),
        wal_log_hints=_parse_on_off(raw["wal_log_hints"], "wal_log_hints setting"),
        checksum_version=_parse_uint(raw["checksum_version"], 255, "checksum version"),
        segment_size=segment_size,
        full_page_writes=_parse_on_off(raw["full_page_writes"], "full_page_writes"),
    )


@dataclass(frozen=True)
class CheckpointRecord:
    lsn: int
    redo_lsn: int
    timeline: int


_CHECKPOINT_DESC = re.compile(
    rf"^CHECKPOINT_(?:SHUTDOWN|ONLINE) redo ({_LSN}); tli ([0-9]{{1,10}});"
)


def parse_waldump_checkpoints(text: str) -> list[CheckpointRecord]:
    """The checkpoint records in pg_waldump's output; other lines are ignored."""
    from logship.engines.postgresql.waldump import parse_record

    found = []
    for line in text.splitlines():
        record = parse_record(line)
        match = _CHECKPOINT_DESC.match(record.desc) if record and record.rmgr == "XLOG" else None
        if record is not None and match is not None:
            found.append(
                CheckpointRecord(
                    lsn=record.lsn,
                    redo_lsn=parse_lsn(match.group(1)),
                    timeline=_parse_uint(match.group(2), MAX_TIMELINE, "checkpoint timeline"),
                )
            )
    return found


@dataclass(frozen=True)
class RewindLine:
    """What one line of pg_rewind's --progress output says (None: not that kind)."""

    copy_total_bytes: int | None = None
    source_total_bytes: int | None = None
    copied_bytes: int | None = None
    diverged_at: int | None = None
    checkpoint_at: int | None = None
    no_rewind_required: bool = False
    error: str | None = None


_NEED_COPY = re.compile(
    r"need to copy ([0-9]{1,15}) MB \(total source directory size is ([0-9]{1,15}) MB\)"
)
_COPIED = re.compile(r"([0-9]{1,18})/([0-9]{1,18}) kB \([0-9]{1,3}%\) copied")
_DIVERGED = re.compile(rf"servers diverged at WAL location ({_LSN}) on timeline [0-9]+")
_REWIND_FROM = re.compile(rf"rewinding from last common checkpoint at ({_LSN}) on timeline")
MB = 1024 * 1024


def parse_rewind_line(line: str) -> RewindLine:
    line = line.strip()[:1000]
    if match := _NEED_COPY.search(line):
        return RewindLine(
            copy_total_bytes=int(match.group(1)) * MB,
            source_total_bytes=int(match.group(2)) * MB,
        )
    if match := _COPIED.search(line):
        return RewindLine(copied_bytes=int(match.group(1)) * 1024)
    if match := _DIVERGED.search(line):
        return RewindLine(diverged_at=parse_lsn(match.group(1)))
    if match := _REWIND_FROM.search(line):
        return RewindLine(checkpoint_at=parse_lsn(match.group(1)))
    if line.endswith("no rewind required"):
        return RewindLine(no_rewind_required=True)
    if line.startswith(("pg_rewind: error:", "pg_rewind: fatal:")):
        return RewindLine(error=line.removeprefix("pg_rewind: "))
    return RewindLine()
