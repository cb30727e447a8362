"""The read-ahead's beat: whether the hand-over command should wait for the daemon.

With read-ahead the daemon ships files straight from where their producer keeps
them (see logship.ready_source), and the producer's hand-over command (archive-wal)
only confirms them. Waiting for the daemon pays only while it keeps up; a daemon
that is gone, cut off from its site or behind a backlog would hold the producer
for nothing, and the hand-over command copies the file into the spool at once.

The daemon rewrites `<spool>/.read-ahead`: one line, `STATE WAIT_S`; the file's
mtime is the beat. The beat only decides whether to wait, never whether a file is
safe: that is the sha256 tombstone's (see archive_confirm).

Stdlib only, without dataclasses or typing: archive-wal reads it once per segment.
"""

from __future__ import annotations

import os
import time

BEAT_NAME = ".read-ahead"
#: a beat older than this is a daemon that is gone or stuck: nothing to wait for
FRESH_S = 3.0
#: how often an unchanged beat is renewed
RENEW_S = 0.5
#: the link is up and the queue short: a ready file reaches the site within moments
SHIPPING = "shipping"
#: more files queued than the site's connections take at once: the producer would
#: wait behind all of them
BEHIND = "behind"
#: no link, a site that refuses writes, a promoted standby
HELD = "held"
#: the daemon stopped
STOPPED = "stopped"


class Beat:
    """One reading of the beat (a plain class: `typing`'s import alone costs more than
    reading it)."""

    __slots__ = ("at", "state", "wait_s")

    def __init__(self, state: str, wait_s: float, at: float) -> None:
        self.state = state
        self.wait_s = wait_s
        #: when the daemon last renewed it (wall clock, the file's mtime)
        self.at = at

    def worth_waiting(self, now: float) -> bool:
        return self.state == SHIPPING and self.wait_s > 0 and 0 <= now - self.at < FRESH_S


def read_beat(spool_dir: str | os.PathLike[str]) -> Beat | None:
    """The beat at `spool_dir`; None when there is none or it cannot be read."""
    try:
        fd = os.open(os.path.join(spool_dir, BEAT_NAME), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        at = os.fstat(fd).st_mtime
        fields = os.read(fd, 64).decode("ascii", "replace").split()
    finally:
        os.close(fd)
    try:
        return Beat(fields[0], float(fields[1]), at)
    except (IndexError, ValueError):
        return None


class BeatWriter:
    """The daemon's side: rewrites the beat when its state changes, renews it otherwise."""

    def __init__(self, spool_dir: str | os.PathLike[str], wait_s: float) -> None:
        self._path = os.path.join(spool_dir, BEAT_NAME)
        self._wait_s = wait_s
        self._state: str | None = None
        self._renewed = 0.0

    def beat(self, state: str) -> None:
        now = time.monotonic()
        if state == self._state and now - self._renewed < RENEW_S:
            return
        try:
            if state == self._state:
                os.utime(self._path)
            else:
                # Rename over it: archive-wal never reads half a line. Not synced:
                # a beat lost in a crash only makes archive-wal copy instead of wait.
                tmp = f"{self._path}.{os.getpid()}.tmp"
                with open(tmp, "w", encoding="ascii") as out:
                    out.write(f"{state} {self._wait_s:g}\n")
                os.replace(tmp, self._path)
        except FileNotFoundError:
            return  # the spool is not there yet: the first file handed over makes it
        self._state = state
        self._renewed = now
