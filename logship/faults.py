"""Crash points for the fault-injection suite: a test makes the process die here.

`LOGSHIP_CRASH_AT=POINT:FLAG` kills the process with SIGKILL (a `kill -9` at a
chosen place, not by timing luck) the first time it reaches POINT while the
file FLAG does not exist; FLAG is created first, so a restarted process with
the same environment goes on. Without the variable a crash point is one
dictionary lookup. Stdlib only: archive-wal goes through here.

`LOGSHIP_PAUSE_AT=POINT:FLAG` holds the process at POINT instead, the first
time it gets there: it creates FLAG and waits until `FLAG.go` exists (for at
most PAUSE_LIMIT_S), so a test can cut the site's link at that very step and
then let the step go on against the cut link.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "LOGSHIP_CRASH_AT"
#: the pid of a process that dies with this one at a crash point (a lane
#: process names the daemon it works for)
WITH_ENV = "LOGSHIP_CRASH_WITH"
PAUSE_ENV = "LOGSHIP_PAUSE_AT"
#: a test that never says go does not hold the process for ever
PAUSE_LIMIT_S = 120.0


def crash_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if spec and _first_time(spec, name):
        if with_pid := os.environ.get(WITH_ENV):
            os.kill(int(with_pid), signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get(PAUSE_ENV)
    if pause and _first_time(pause, name):
        go = pause.partition(":")[2] + ".go"
        deadline = time.monotonic() + PAUSE_LIMIT_S
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.02)


def _first_time(spec: str, name: str) -> bool:
    """True when `spec` (POINT:FLAG) names this point and its flag could be made now."""
    point, _, flag = spec.partition(":")
    if point != name or not flag:
        return False
    try:
        os.close(os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        return False  # reached here before (or the flag cannot be made): go on
    return True
