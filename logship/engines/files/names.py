"""Names in a mirrored tree: the ones the mirror reserves, and how any is shown."""

from __future__ import annotations

import hmac
import os
import secrets

#: a file being written at the site before its atomic rename into place; a
#: leftover one (a cut link) is the mirror's to clean up, never part of the tree
TEMP_PREFIX = b".logship-tmp."
#: this process's key for retry_temp_name: nobody else can compute its names
_TEMP_KEY = secrets.token_bytes(32)


def temp_name() -> bytes:
    """A new temp name for a file written before its rename, in the same folder.

    Unpredictable, and always created exclusively (O_EXCL, SFTP's FXF_EXCL): a
    local user at the site who can write in a mirrored folder cannot plant a
    link at a temp name the mirror is about to open and have it write through
    the link. A leftover of a cut upload is swept once stale (see
    logship.engines.files.receive.Receiver.sweep_stale_temps).
    """
    return TEMP_PREFIX + secrets.token_hex(8).encode()


def retry_temp_name(relative: bytes) -> bytes:
    """The temp for the file at `relative` (the whole relative path) in this process.

    The same on every try, so a retry removes the leftover of an upload cut short
    and writes a new one in its place (over SFTP the site cannot clean up
    itself); keyed with a secret of this process, so nobody at the site can
    name it in advance. Removed first, then created exclusively: a link planted
    in between makes the open fail, never a write through it.
    """
    return TEMP_PREFIX + hmac.new(_TEMP_KEY, relative, "sha256").hexdigest()[:16].encode()


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
