"""Names in a mirrored tree: the ones the mirror reserves, and how any is shown."""

from __future__ import annotations

import os
import secrets

#: a file being written at the site before its atomic rename into place; a
#: leftover one (a cut link) is the mirror's to clean up, never part of the tree
TEMP_PREFIX = b".logship-tmp."


def temp_name() -> bytes:
    """A new temp name for a file written before its rename, in the same folder.

    Unpredictable, and always created exclusively (O_EXCL, SFTP's FXF_EXCL): a
    local user at the site who can write in a mirrored folder cannot plant a
    link at a temp name the mirror is about to open and have it write through
    the link. A leftover of a cut upload is swept once stale (see
    logship.tree.receive.Receiver.sweep_stale_temps).
    """
    return TEMP_PREFIX + secrets.token_hex(8).encode()


def is_temp_name(path: bytes) -> bool:
    """True when the last component of `path` (bytes, "/"-separated) is a temp name."""
    return path.rpartition(b"/")[2].startswith(TEMP_PREFIX)


def show_path(path: bytes) -> str:
    """A path for people: decoded as the OS would, with what cannot be shown escaped.

    A newline in a name must not break a report line, and an invalid UTF-8 byte
    shows as \\xNN rather than a replacement character that hides which byte it is.
    Backslashes are doubled so the escapes stay unambiguous.
    """
    out = []
    for char in os.fsdecode(path):
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: a byte that is not UTF-8
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char == "\\":
            out.append("\\\\")
        elif not char.isprintable():
            out.append(char.encode("unicode_escape").decode("ascii"))
        else:
            out.append(char)
    return "".join(out)
