"""The primary site's spool: WAL handed over by PostgreSQL, waiting to ship."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from logship.archive import tombstone_path
from logship.durable import ensure_private_dir, fsync_dir, write_bytes_atomically


@dataclass(frozen=True)
class SpoolEntry:
    connector: str
    path: Path
    size: int
    #: when the file was handed over: its mtime (see logship.archive)
    closed_at: float

    @property
    def name(self) -> str:
        return self.path.name


def entry_for(connector: str, path: Path) -> SpoolEntry | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return SpoolEntry(connector, path, st.st_size, st.st_mtime)


def scan(connector: str, spool_dir: Path, accepts: Callable[[str], bool]) -> list[SpoolEntry]:
    entries = []
    try:
        names = os.listdir(spool_dir)
    except FileNotFoundError:
        return []
    for name in names:
        if accepts(name) and (entry := entry_for(connector, spool_dir / name)) is not None:
            entries.append(entry)
    return entries


def retire(spool_dir: Path, name: str, sha256: str) -> None:
    """Remove a shipped file, leaving its sha256 so a re-push can still be judged."""
    tombstone = tombstone_path(spool_dir, name)
    ensure_private_dir(tombstone.parent)
    write_bytes_atomically(tombstone, sha256.encode() + b"\n")
    (spool_dir / name).unlink(missing_ok=True)
    fsync_dir(spool_dir)
