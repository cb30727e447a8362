"""stdin as the site's receivers read it: framed batches from sshd, in large reads."""

from __future__ import annotations

import contextlib
import fcntl
from typing import IO

#: stdin is read in pieces of up to this size, and its pipe (from sshd) grown to it
FRAMES_BUFFER = 1024 * 1024


def frames_in(fd: int) -> IO[bytes]:
    """stdin with a large buffer: Python's default 8 KiB made a read(2), and a
    wakeup of sshd on the other end, every 8 KiB of a batch."""
    with contextlib.suppress(OSError):  # not a pipe, or a smaller limit here
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, FRAMES_BUFFER)
    return open(fd, "rb", buffering=FRAMES_BUFFER, closefd=False)
