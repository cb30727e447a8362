"""Names in a files connector's folders: how any is shown (its temps: logship.temp_names)."""

from __future__ import annotations

import os


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
