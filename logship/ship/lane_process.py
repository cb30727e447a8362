"""A lane in a process of its own: one more SSH connection that ships whole files.

Threads could not make a second connection pay on a fast link: hashing,
compressing and paramiko's per-packet work all hold the GIL, so two connections
in one process shipped hardly faster than one. A lane process has its own
interpreter; the daemon hands it a spool file and gets the manifest record back.

The two ends speak length-prefixed pickles over the child's stdin and stdout
(both ends are this same logship). The child connects once, ships one file per
request with the same `ship_file` as the daemon's own connection, and exits when
its stdin closes, also when the daemon dies without a word (kill -9).

    python -I -m logship.ship.lane_process [--debug]
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO

from logship import faults
from logship.config.model import SiteConfig
from logship.errors import HostKeyRefused, OperationFailed
from logship.logs import fields, setup_logging
from logship.manifest import ManifestRecord, SiteLayout
from logship.ready_source import SourceReleased
from logship.ship.shipper import ShipConflict, ship_file
from logship.spool import SpoolEntry

log = logging.getLogger("logship.ship")
_LENGTH = struct.Struct(">I")
#: how long a lane process may take to exit once told to, before it is killed
EXIT_WAIT_S = 5.0
#: how often a lane process checks that its daemon is still there
PARENT_CHECK_S = 0.2
DEBUG_FLAG = "--debug"


@dataclass(frozen=True)
class _Ship:
    layout: SiteLayout
    entry: SpoolEntry
    compression: str


@dataclass(frozen=True)
class _Failed:
    """Why the child could not connect or ship; its exception, told in plain data."""

    message: str
    conflict: bool = False
    #: the producer took a read-ahead file back (SourceReleased)
    released: bool = False
    host_key: bool = False
    #: whether the child's SSH connection still stands: a refusal by a live site
    #: is told apart from a lost link by this, as for the daemon's own connection
    alive: bool = True


class LaneFailed(OperationFailed):
    """A lane could not ship a file; the message is the child's."""


def _send(stream: BinaryIO, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO) -> object:
    """The next message; EOFError when the other end is gone."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError("the other end of the lane closed")
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError("the other end of the lane closed mid-message")
    return pickle.loads(data)


class LaneProcess:
    """The daemon's side of one lane process (used by one thread at a time)."""

    def __init__(self, site: SiteConfig) -> None:
        self.site = site
        env = dict(os.environ)
        if faults.ENV in env:
            # A crash point a lane reaches kills the daemon as well: for the fault
            # suite a lane is part of the daemon, not a helper that may die alone.
            env[faults.WITH_ENV] = str(os.getpid())
        # -I: the import path is the installed logship's alone. With `-m` alone the
        # daemon's working directory would come first on it, and a module planted
        # there would run as the daemon's user. cwd "/": nothing of it is needed.
        argv = [sys.executable, "-I", "-m", "logship.ship.lane_process"]
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            argv.append(DEBUG_FLAG)  # the daemon's --debug: its lanes log alike
        self._child = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            close_fds=True,
            cwd="/",
        )
        assert self._child.stdin is not None and self._child.stdout is not None
        self._to_child: BinaryIO = self._child.stdin
        self._from_child: BinaryIO = self._child.stdout
        self._alive = False
        try:
            _send(self._to_child, site)
            # TCP connect, banner and authentication are each bounded by the
            # connect timeout; the child's own start (imports) comes on top.
            ready = self._answer(deadline=time.monotonic() + 3 * site.connect_timeout + 10)
        except BaseException:
            self.close()
            raise
        if isinstance(ready, _Failed):
            self.close()
            if ready.host_key:
                raise HostKeyRefused(ready.message)
            raise OperationFailed(ready.message)
        assert ready is None, ready
        self._alive = True

    @property
    def pid(self) -> int:
        return self._child.pid

    @property
    def is_alive(self) -> bool:
        return self._alive and self._child.poll() is None

    def ship(self, layout: SiteLayout, entry: SpoolEntry, compression: str) -> ManifestRecord:
        """Ship one spool file through the child, as `ship_file` would here.

        Raises ShipConflict and SourceReleased as `ship_file` does, LaneFailed for anything else
        (`is_alive` tells a refusing site from a lost link or a dead child).
        """
        try:
            _send(self._to_child, _Ship(layout, entry, compression))
            # No deadline of its own: every SFTP request in the child is bounded
            # by the site's io_timeout, and a dead child is an EOF at once.
            answer = self._answer(deadline=None)
        except (OSError, EOFError) as exc:
            self._alive = False
            raise LaneFailed(f"site {self.site.name}: lane process ended: {exc}") from None
        if isinstance(answer, ManifestRecord):
            return answer
        assert isinstance(answer, _Failed), answer
        if answer.conflict:
            raise ShipConflict(answer.message)
        if answer.released:
            raise SourceReleased(answer.message)
        self._alive = answer.alive
        raise LaneFailed(answer.message)

    def _answer(self, deadline: float | None) -> object:
        if deadline is not None:
            ready, _, _ = select.select([self._from_child], [], [], deadline - time.monotonic())
            if not ready:
                raise OperationFailed(
                    f"site {self.site.name}: lane process did not connect in time"
                )
        return _receive(self._from_child)

    def close(self) -> None:
        """Tell the child to go (stdin closed), and kill it when it does not."""
        self._alive = False
        with contextlib.suppress(OSError):
            self._to_child.close()
        try:
            self._child.wait(EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            self._child.kill()
            self._child.wait()
        with contextlib.suppress(OSError):
            self._from_child.close()


# -- the child -------------------------------------------------------------------------


def _failure(exc: BaseException, alive: bool) -> _Failed:
    return _Failed(
        message=str(exc) or type(exc).__name__,
        conflict=isinstance(exc, ShipConflict),
        released=isinstance(exc, SourceReleased),
        host_key=isinstance(exc, HostKeyRefused),
        alive=alive,
    )


def serve(requests: BinaryIO, answers: BinaryIO) -> None:
    # paramiko only here, in the child: the daemon's side needs none of it.
    from logship.ship.gated import connect

    site = _receive(requests)
    assert isinstance(site, SiteConfig)
    try:
        transport = connect(site)  # SFTP, or site-receive at a restricted site
    except Exception as exc:  # told to the daemon, which decides what it means
        _send(answers, _failure(exc, alive=False))
        return
    try:
        _send(answers, None)
        while True:
            try:
                request = _receive(requests)
            except EOFError:
                return  # the daemon is done with this lane (or gone)
            assert isinstance(request, _Ship)
            try:
                record = ship_file(
                    transport, request.layout, request.entry, request.compression, time.time
                )
            except Exception as exc:
                _send(answers, _failure(exc, alive=transport.is_alive))
                continue
            _send(answers, record)
    finally:
        transport.close()


def _exit_with(parent: int) -> None:
    # A daemon killed with -9 closes our stdin, but a file in flight would still
    # be finished first; a lane must not go on writing to the site for a daemon
    # that is gone (and may be restarted, or the standby promoted, meanwhile).
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(1)


def main() -> None:
    # The daemon decides when a lane ends (it closes our stdin, after the file in
    # flight): a Ctrl-C or a service stop sent to the whole group must not cut a
    # file short here while the daemon still waits for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    # stderr is the daemon's log: JSON lines there too, at the daemon's level.
    setup_logging(debug=DEBUG_FLAG in sys.argv[1:])
    # The answers get stdout's pipe to themselves: a stray print from a library
    # goes to stderr (the daemon's log) instead of corrupting a message.
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        serve(sys.stdin.buffer, answers)
    except BrokenPipeError:
        pass  # the daemon went away mid-answer
    except Exception:
        # A bug here: the daemon sees the lane end and drops it; the why is logged.
        log.error("lane process failed", exc_info=True, extra=fields(pid=os.getpid()))
        sys.exit(1)


if __name__ == "__main__":
    # Run as the module by its own name, so that the messages' classes unpickled
    # here are the ones `serve` checks for (not copies in `__main__`).
    from logship.ship import lane_process

    lane_process.main()
