"""The files connector's end of the batch stream to `logship tree-receive` at the site.

See logship.engines.files.stream for the format. One receiver process per SSH
connection, started on the first batch; when it cannot start (no logship at
the site, the connector not in the site's config), or breaks, the files
connector ships over SFTP alone.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from collections import deque
from collections.abc import Sequence

import paramiko

from logship.engines.files.stream import COMMIT, landed_line
from logship.jsonin import load_object

#: frames go out in writes of about this size
SEND_CHUNK = 256 * 1024
#: the first line, and each batch's replies (two syncfs at the site), within this
REPLY_TIMEOUT_S = 120.0
#: replies are read from the channel in pieces of up to this size
REPLY_READ = 64 * 1024


class BatchStream:
    def __init__(
        self, channel: paramiko.Channel, argv: list[str], ready_by: float | None = None
    ) -> None:
        self._channel = channel
        self._replies = _Lines(channel)
        self._argv = argv
        self._ready = False
        #: time.monotonic() by which its first line must have come (None: no limit
        #: of its own, the channel's timeout)
        self._ready_by = ready_by

    @classmethod
    def launch(
        cls, client: paramiko.SSHClient, argv: list[str], ready_within: float
    ) -> BatchStream:
        """Start the receiver without waiting for it (it starts while folders are
        made); `wait_ready` tells whether it came up within `ready_within` seconds."""
        ready_by = time.monotonic() + ready_within
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise OSError("the SSH connection is closed")
        channel = transport.open_session()
        channel.settimeout(REPLY_TIMEOUT_S)
        # The site gets a shell string: every argument quoted, none from a file name.
        channel.exec_command(shlex.join(argv))
        return cls(channel, argv, ready_by)

    def wait_ready(self) -> None:
        """Its first line; OSError with its reason when it did not come up in time.

        A receiver that hangs at its start (the site's config on a stuck mount,
        say) must cost the files connector the site's io_timeout, not the two syncfs a
        batch's answer may wait for; receivers started together share the wait.
        """
        if self._ready:
            return
        command = shlex.join(self._argv)
        if self._ready_by is not None:
            self._channel.settimeout(max(0.01, self._ready_by - time.monotonic()))
        try:
            hello = self._line()
        except OSError as exc:
            self._channel.settimeout(0.5)  # whatever it said before it failed, if anything
            stderr = b""
            with contextlib.suppress(OSError, EOFError):
                stderr = self._channel.makefile_stderr("rb").read(2000)
            self.close()
            said = stderr.decode(errors="replace").strip()[-300:] or str(exc)
            raise OSError(f"{command} did not start: {said}") from None
        finally:
            self._channel.settimeout(REPLY_TIMEOUT_S)
        if hello.get("ready") is not True:
            self.close()
            raise OSError(f"{command}: {hello.get('error') or hello}")
        self._ready = True

    def _raw_line(self) -> bytes:
        try:
            line = self._replies.next()
        except TimeoutError as exc:  # socket.timeout
            raise OSError(f"tree-receive did not answer: {exc}") from None
        if not line:
            raise OSError("tree-receive ended")
        return line

    def _line(self) -> dict[str, object]:
        return self._parse(self._raw_line())

    @staticmethod
    def _parse(line: bytes) -> dict[str, object]:
        try:
            return load_object(line, "tree-receive's answer")
        except ValueError:
            raise OSError(f"tree-receive said {line[:200]!r}") from None

    def send_batch(self, frames: Sequence[bytes]) -> None:
        """Send a batch and its commit; `collect` its answers later, in order."""
        out = bytearray()
        for frame in frames:
            out += frame
            if len(out) >= SEND_CHUNK:
                self._channel.sendall(bytes(out))
                out.clear()
        out += COMMIT
        self._channel.sendall(bytes(out))

    def collect(self, count: int) -> list[str | None]:
        """The answers to the oldest batch sent: each file's error, None when it landed."""
        errors: list[str | None] = []
        for index in range(count):
            line = self._raw_line()
            if line == landed_line(index):
                errors.append(None)  # the usual answer, compared rather than parsed
                continue
            reply = self._parse(line)
            if reply.get("i") != index:
                raise OSError(f"tree-receive answered {reply} for file {index}")
            error = reply.get("error")
            errors.append(None if error is None else str(error))
        done = self._line()
        if done.get("done") != count:
            raise OSError(f"tree-receive ended the batch with {done}")
        return errors

    def close(self) -> None:
        try:
            self._channel.shutdown_write()
        finally:
            self._channel.close()


#: the longest reply line taken from tree-receive (a real one is < 1 KiB)
MAX_REPLY_LINE = 64 * 1024


class _Lines:
    """The receiver's reply lines, read from the channel in large pieces: paramiko's
    file readline runs Python per call, and a first sync answers thousands of
    files a second."""

    def __init__(self, channel: paramiko.Channel) -> None:
        self._channel = channel
        self._lines: deque[bytes] = deque()
        self._partial = b""

    def next(self) -> bytes:
        """The next line with its newline; at the end, what is left of one, or b""."""
        while not self._lines:
            piece = self._channel.recv(REPLY_READ)
            if not piece:
                rest, self._partial = self._partial, b""
                return rest
            lines = (self._partial + piece).split(b"\n")
            self._partial = lines.pop()
            if len(self._partial) > MAX_REPLY_LINE:
                # A reply is a short JSON line: this is not tree-receive talking.
                raise OSError(f"tree-receive sent a line longer than {MAX_REPLY_LINE} bytes")
            self._lines.extend(line + b"\n" for line in lines)
        return self._lines.popleft()
