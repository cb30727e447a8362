"""Names the mirror reserves inside a standby tree."""

from __future__ import annotations

#: a file being written at the site before its atomic rename into place; a
#: leftover one (a cut link) is the mirror's to clean up, never part of the tree
TEMP_PREFIX = b".logship-tmp."


def is_temp_name(path: bytes) -> bool:
    """True when the last component of `path` (bytes, "/"-separated) is a temp name."""
    return path.rpartition(b"/")[2].startswith(TEMP_PREFIX)
