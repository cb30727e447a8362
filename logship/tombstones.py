"""Tombstones: the sha256 a shipped file had, kept in its spool once it left it.

The daemon writes one when a file is durable at the site (logship.spool); a
re-push is judged by it, and archive-wal confirms a file read ahead by it.
Stdlib only, and only `os`: archive-wal reads it once per segment.
"""

from __future__ import annotations

import os

SHIPPED_DIR = ".shipped"


def shipped_sha256(spool_dir: str | os.PathLike[str], name: str) -> str | None:
    """The sha256 its tombstone recorded when `name` was shipped; None if it was not."""
    try:
        fd = os.open(os.path.join(spool_dir, SHIPPED_DIR, name), os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        return os.read(fd, 256).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
