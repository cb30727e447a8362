"""The primary site's spool: WAL handed over by PostgreSQL, waiting to ship."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from logship.durable import ensure_private_dir, fsync_dir, write_bytes_atomically
from logship.engines.postgresql import walnames
from logship.engines.postgresql.archive_wal import copy_into, tombstone_path
from logship.faults import crash_point
from logship.temp_names import is_temp_name, temp_beside

#: shipped files kept until the standby has restored them: a copy found corrupt at
#: the site can be shipped again
KEPT_DIR = ".kept"
#: a temp in the kept folder this old was left by a crash
STALE_TEMP_S = 60.0


@dataclass(frozen=True)
class SpoolEntry:
    connector: str
    path: Path
    size: int
    #: when the file was handed over: its mtime (see logship.engines.postgresql.archive_wal)
    closed_at: float
    #: read where its producer keeps it (read-ahead, see logship.ready_source): the
    #: mark whose presence means the producer has not taken the file back yet
    held_by: Path | None = None

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


def kept_path(spool_dir: Path, name: str) -> Path:
    """Where a shipped file's copy waits until the standby has restored it."""
    return spool_dir / KEPT_DIR / name


def write_tombstone(spool_dir: Path, name: str, sha256: str) -> None:
    """Record that `name` is durable at the site with this sha256: archive-wal's
    proof for confirming it, and a re-push's for judging it."""
    tombstone = tombstone_path(spool_dir, name)
    ensure_private_dir(tombstone.parent)
    write_bytes_atomically(tombstone, sha256.encode() + b"\n")


def retire(spool_dir: Path, name: str, sha256: str, *, keep: bool) -> None:
    """Take a shipped file out of the queue, leaving its sha256 so a re-push can still
    be judged; with `keep`, the file itself moves aside (see prune_kept)."""
    write_tombstone(spool_dir, name, sha256)
    spooled = spool_dir / name
    # Read ahead from its producer, a file has no spool copy: its kept copy, if any,
    # was made by keep_copy and stays.
    if keep and spooled.exists():
        kept = kept_path(spool_dir, name)
        ensure_private_dir(kept.parent)
        # A link and an unlink, not a rename: inotify reports a rename out of the
        # watched folder as an unpaired move, which watchdog holds back for half a
        # second, and every spool event queued behind it (the next segment) waits.
        try:
            kept.unlink(missing_ok=True)
            os.link(spooled, kept)
        except FileNotFoundError:
            pass
        else:
            fsync_dir(kept.parent)
    spooled.unlink(missing_ok=True)
    fsync_dir(spool_dir)


def keep_copy(spool_dir: Path, entry: SpoolEntry) -> None:
    """Keep a copy of a file shipped from its producer (read-ahead), as `retire`
    keeps a spool file, for as long as the producer still held it after the copy.

    Not synced: a kept copy only serves a re-ship, which checks it against the
    sha256 shipped first, and a copy lost in a crash is reported as missing then.
    """
    kept = kept_path(spool_dir, entry.name)
    ensure_private_dir(kept.parent)
    tmp = temp_beside(kept)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            copy_into(entry.path, out.fileno())
        crash_point("readahead-mid-keep")
        if entry.held_by is not None and entry.held_by.exists():
            os.replace(tmp, kept)
    except FileNotFoundError:
        pass  # handed over and recycled meanwhile: the spool copy was made then
    finally:
        tmp.unlink(missing_ok=True)


def prune_kept(spool_dir: Path, restored_upto: str | None, max_bytes: int) -> int:
    """Drop kept copies the standby no longer needs, then the oldest beyond
    `max_bytes`; returns how many were dropped.

    A segment at or before `restored_upto` (the last one the standby was handed,
    checksum verified) cannot be asked for again by that standby.
    """
    folder = spool_dir / KEPT_DIR
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return 0
    kept: list[tuple[float, int, Path]] = []
    dropped = 0
    for name in names:
        path = folder / name
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        if is_temp_name(name):
            # A kept copy cut off half made (a crash in keep_copy, which takes
            # moments): nothing will finish it.
            if time.time() - st.st_mtime > STALE_TEMP_S:
                path.unlink(missing_ok=True)
                dropped += 1
            continue
        parsed = walnames.parse(name)
        restored = (
            restored_upto is not None
            and parsed is not None
            and parsed.kind is walnames.WalKind.SEGMENT
            and name <= restored_upto
        )
        if restored:
            path.unlink(missing_ok=True)
            dropped += 1
        else:
            kept.append((st.st_mtime, st.st_size, path))
    total = sum(size for _, size, _ in kept)
    for _, size, path in sorted(kept):
        if total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
        dropped += 1
    return dropped
