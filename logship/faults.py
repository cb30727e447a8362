"""Crash points for the fault-injection suite: a test makes the process die here.

`LOGSHIP_CRASH_AT=POINT:FLAG` kills the process with SIGKILL (a `kill -9` at a
chosen place, not by timing luck) the first time it reaches POINT while the
file FLAG does not exist; FLAG is created first, so a restarted process with
the same environment goes on. Without the variable a crash point is one
dictionary lookup. Stdlib only: archive-wal goes through here.
"""

from __future__ import annotations

import os
import signal

ENV = "LOGSHIP_CRASH_AT"
#: the pid of a process that dies with this one at a crash point (a lane
#: process names the daemon it works for)
WITH_ENV = "LOGSHIP_CRASH_WITH"


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, _, flag = spec.partition(":")
    if point != name or not flag:
        return
    try:
        os.close(os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        return  # crashed here before (or the flag cannot be made): go on
    if with_pid := os.environ.get(WITH_ENV):
        os.kill(int(with_pid), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
