"""Read-ahead: files shipped from where their producer keeps them, before hand-over.

PostgreSQL marks a finished WAL segment `pg_wal/archive_status/NAME.ready` and keeps
the segment in pg_wal, unchanged, until its archive_command has taken it. The
daemon ships such a file from there at once, with no copy into the spool; the
hand-over command then only confirms it (see logship.read_ahead_beat).

The mark makes reading there safe: while it exists, the producer neither recycles
nor rewrites the file. So a read that ends with the mark still in place has read
the file exactly as it will be handed over, and a read that does not is thrown
away (`SourceReleased`): by then the hand-over command has made the spool copy,
which ships instead.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from logship.durable import read_chunks
from logship.errors import OperationFailed
from logship.spool import SpoolEntry


class SourceReleased(OperationFailed):
    """The producer took the file back while it was being read: ship the spool copy."""


@dataclass(frozen=True)
class ReadySource:
    connector: str
    #: where the producer keeps the files (pg_wal, its link resolved once)
    files_dir: Path
    #: where it marks them ready (pg_wal/archive_status)
    marks_dir: Path
    #: a ready mark's name is the file's name and this
    mark_suffix: str
    #: the file names that may ship (the engine's own rule)
    accepts: Callable[[str], bool]
    #: how long the hand-over command waits for the read-ahead (0: never)
    wait_s: float

    def mark_of(self, name: str) -> Path:
        return self.marks_dir / f"{name}{self.mark_suffix}"

    def name_of_mark(self, mark_name: str) -> str | None:
        """The file a mark stands for; None for other files and names not accepted."""
        if not mark_name.endswith(self.mark_suffix):
            return None
        name = mark_name.removesuffix(self.mark_suffix)
        return name if self.accepts(name) else None

    def entry(self, name: str) -> SpoolEntry | None:
        """The file, while it is marked ready and is a plain file; None otherwise."""
        if not self.accepts(name) or not self.mark_of(name).exists():
            return None
        path = self.files_dir / name
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            return None
        return SpoolEntry(self.connector, path, st.st_size, st.st_mtime, held_by=self.mark_of(name))

    def ready_names(self) -> list[str]:
        try:
            marks = os.listdir(self.marks_dir)
        except (FileNotFoundError, PermissionError):
            return []
        return [name for mark in marks if (name := self.name_of_mark(mark)) is not None]


def still_held(entry: SpoolEntry) -> None:
    """Raise SourceReleased when `entry` came from its producer and is no longer marked."""
    if entry.held_by is not None and not entry.held_by.exists():
        raise SourceReleased(
            f"{entry.name} was handed over while it was read from {entry.path.parent}; "
            "its spool copy ships instead"
        )


def read_held(entry: SpoolEntry) -> Iterator[bytes]:
    """The file's chunks. Read ahead from its producer, they count only when the
    producer still held it after the last one: SourceReleased otherwise, also when
    it was recycled before it could be opened. Every read of a source goes here."""
    try:
        yield from read_chunks(entry.path)
    except FileNotFoundError:
        still_held(entry)
        raise
    still_held(entry)
