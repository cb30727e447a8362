"""A command's output at the site, read with bounds.

stdout and stderr are drained together: a command that floods one while the
other stays open must not hold the reader until its timeout, and neither may grow
the primary's memory past its cap.
"""

from __future__ import annotations

import contextlib
import threading
import time

import paramiko

from logship.ship.transport import ERROR_LIMIT, SiteOutputTooLarge

PIECE = 64 * 1024
#: stderr read and dropped past ERROR_LIMIT before the command counts as runaway
STDERR_DROP_LIMIT = 64 * 1024 * 1024


def drain(
    channel: paramiko.Channel, limit: int, timeout: float, what: str
) -> tuple[int, bytes, bytes]:
    """(exit status, stdout, stderr's first ERROR_LIMIT bytes) of the command on
    `channel`. More than `limit` bytes of stdout: SiteOutputTooLarge, channel
    closed. No byte and no end for `timeout` seconds: TimeoutError, as before."""
    out = bytearray()
    err = bytearray()
    dropped = 0
    quiet_since = time.monotonic()
    # Woken by data on either stream or by the channel's end. Not select() on the
    # channel: that gives it a pipe which paramiko closes on close() while its
    # transport thread may still be writing to it for data that keeps arriving (a
    # flood cut at the cap), and that thread's EBADF ends the whole connection.
    arrived = threading.Event()
    channel.in_buffer.set_event(arrived)
    channel.in_stderr_buffer.set_event(arrived)
    try:
        while True:
            # Cleared before looking: anything arriving after the look sets it again.
            arrived.clear()
            progressed = False
            while channel.recv_ready():
                out += channel.recv(PIECE)
                progressed = True
                if len(out) > limit:
                    raise SiteOutputTooLarge(
                        f"{what} printed more than {limit} bytes; stopped reading "
                        "(is the site's `command` logship?)"
                    )
            while channel.recv_stderr_ready():
                piece = channel.recv_stderr(PIECE)
                progressed = True
                # Only its last line is ever quoted: beyond the cap it is read and
                # dropped, so the command is not held up by a full window...
                room = max(0, ERROR_LIMIT - len(err))
                err += piece[:room]
                dropped += max(0, len(piece) - room)
                if dropped > STDERR_DROP_LIMIT:  # ...unless it never stops
                    raise SiteOutputTooLarge(
                        f"{what} printed more than {STDERR_DROP_LIMIT} bytes on stderr; "
                        "stopped reading"
                    )
            # A channel closed under us (the daemon stopping cuts its link to end a
            # drill) ends the command too: its exit status is then -1.
            if (channel.eof_received or channel.closed) and not channel.recv_ready():
                if not channel.recv_stderr_ready():
                    break
                continue
            now = time.monotonic()
            if progressed:
                quiet_since = now
            elif now - quiet_since > timeout:
                raise TimeoutError(f"{what}: no output for {timeout:g}s")
            else:
                arrived.wait(min(0.5, timeout))
    except BaseException:
        # The reason to stop is what counts: a link that breaks while the channel
        # closes (a site cutting an over-long command) must not replace it.
        with contextlib.suppress(Exception):
            channel.close()
        raise
    return channel.recv_exit_status(), bytes(out), bytes(err)
