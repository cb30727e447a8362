"""PostgreSQL WAL file names: what is accepted, and the order files must ship in.

Stdlib only: this is imported by `archive-wal` and `restore-wal`, which PostgreSQL
runs once per segment. Records are NamedTuples, not dataclasses: `dataclasses`
imports `inspect`, about 7 ms of each call's start.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple

#: PostgreSQL's wal_segment_size unless initdb was told otherwise
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024

_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_HISTORY = re.compile(r"^[0-9A-F]{8}\.history$")
_BACKUP = re.compile(r"^[0-9A-F]{24}\.[0-9A-F]{8}\.backup$")
_PARTIAL = re.compile(r"^[0-9A-F]{24}\.partial$")


class WalKind(StrEnum):
    SEGMENT = "segment"
    HISTORY = "history"
    BACKUP = "backup"
    PARTIAL = "partial"


class WalName(NamedTuple):
    name: str
    kind: WalKind

    @property
    def timeline(self) -> int:
        return int(self.name[:8], 16)

    @property
    def sort_key(self) -> tuple[int, int, str]:
        """Shipping order: by timeline, a timeline's .history first, then names.

        A standby switching to timeline N asks for N.history before any segment of
        N, so the history file must never be behind those segments.
        """
        return (self.timeline, 0 if self.kind is WalKind.HISTORY else 1, self.name)

    def segment_number(self, segment_size: int) -> int:
        """Position of a segment in the WAL stream (continues across timelines)."""
        if self.kind not in (WalKind.SEGMENT, WalKind.PARTIAL):
            raise ValueError(f"{self.name} is not a WAL segment")
        log_id, seg = int(self.name[8:16], 16), int(self.name[16:24], 16)
        return log_id * (0x1_0000_0000 // segment_size) + seg


def parse(name: str, *, allow_partial: bool = False) -> WalName | None:
    """Classify `name`; None when it is not a name logship may handle.

    Exact patterns (no separators, no dots but the suffix) are what keep a name
    from climbing out of the spool or incoming directory.
    """
    if _SEGMENT.match(name):
        return WalName(name, WalKind.SEGMENT)
    if _HISTORY.match(name):
        return WalName(name, WalKind.HISTORY)
    if _BACKUP.match(name):
        return WalName(name, WalKind.BACKUP)
    if allow_partial and _PARTIAL.match(name):
        return WalName(name, WalKind.PARTIAL)
    return None


def lsn_to_int(lsn: str) -> int:
    """A pg_lsn's text form ("16/B374D848") as a byte position."""
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def int_to_lsn(value: int) -> str:
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segment_name(timeline: int, number: int, segment_size: int) -> str:
    """Inverse of `WalName.segment_number`."""
    per_log = 0x1_0000_0000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def segment_of_lsn(timeline: int, lsn: int, segment_size: int) -> str:
    """The name of the segment holding byte `lsn` on `timeline`."""
    return segment_name(timeline, lsn // segment_size, segment_size)


def is_archivable(name: str) -> bool:
    return parse(name) is not None
