"""The side each two-sided connector last found to be its primary, at this site.

The databases decide roles; this record only answers while neither can be asked
(a verb that does not connect, a database that is down). Stdlib only.
"""

from __future__ import annotations

import os
from pathlib import Path

from logship.durable import write_chunks_atomically

ROLES_DIR = "roles"
#: a site name is short; anything longer is not one of ours
MAX_RECORD = 256


def record_path(state_dir: Path, connector: str) -> Path:
    return state_dir / ROLES_DIR / connector


def recorded_primary(state_dir: Path, connector: str, sides: list[str]) -> str | None:
    """The recorded primary side, when it is one of `sides`; None otherwise."""
    try:
        fd = os.open(record_path(state_dir, connector), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        raw = os.read(fd, MAX_RECORD + 1)
    finally:
        os.close(fd)
    name = raw.decode("utf-8", errors="replace").strip()
    return name if len(raw) <= MAX_RECORD and name in sides else None


def record_primary(state_dir: Path, connector: str, side: str) -> None:
    path = record_path(state_dir, connector)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_chunks_atomically(path, [side.encode() + b"\n"])
