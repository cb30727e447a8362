"""Keeping logship's own files private: state_dir 0700, a SQLite catalog 0600.

The catalog names every shipped file and its sha256, the spool holds the WAL
itself: nothing there is for group or other. Files made by an older logship, or
by a verb run before the daemon under a loose umask, are tightened when the
daemon starts, and only when they are ours (chmod of another user's file would
fail, and is not ours to decide).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from logship.durable import DIR_MODE, FILE_MODE

#: what SQLite keeps next to its database file
_SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


@dataclass(frozen=True)
class Tightened:
    path: Path
    old_mode: int
    new_mode: int


def sqlite_database(url: str) -> Path | None:
    """The file of a SQLite catalog URL; None for another database or memory."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return None
    if not parsed.drivername.startswith("sqlite") or not parsed.database:
        return None
    if parsed.database == ":memory:" or parsed.database.startswith("file:"):
        return None
    return Path(parsed.database)


def _tighten(path: Path, wanted: int, kind: int) -> Tightened | None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    # A link or a foreign file is left alone: chmod would follow or fail.
    if stat.S_IFMT(st.st_mode) != kind or st.st_uid != os.geteuid():
        return None
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~wanted & 0o7777 == 0:
        return None
    new_mode = mode & wanted
    path.chmod(new_mode)
    return Tightened(path, mode, new_mode)


def tighten_state(state_dir: Path, catalog_url: str) -> list[Tightened]:
    """chmod go-rwx on state_dir and a SQLite catalog's files that are ours."""
    done = [_tighten(state_dir, DIR_MODE, stat.S_IFDIR)]
    database = sqlite_database(catalog_url)
    if database is not None:
        done += [
            _tighten(database.with_name(database.name + suffix), FILE_MODE, stat.S_IFREG)
            for suffix in _SQLITE_COMPANIONS
        ]
    return [item for item in done if item is not None]
