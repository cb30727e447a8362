"""Whether a PostgreSQL server runs in a data directory, told honestly.

postmaster.pid alone cannot tell: after a crash it stays behind naming a pid the
kernel may since have given to a stranger, and a postmaster killed outright can
leave backends that still hold the data directory. A process's working directory
can tell: the postmaster and all its children work in the data directory, from
the first instant pg_ctl starts it (before postmaster.pid is even written).
"""

from __future__ import annotations

import os
from pathlib import Path

PID_FILE = "postmaster.pid"
#: postmaster.pid, line 8: "ready" once the server accepts connections
_STATUS_LINE = 7
#: a postmaster.pid is a few hundred bytes; more is not one
_PID_FILE_LIMIT = 4096


def pid_file(data_dir: Path) -> tuple[int, str] | None:
    """(postmaster pid, status) from postmaster.pid; None when there is none or it
    does not start with a pid."""
    try:
        fd = os.open(data_dir / PID_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            raw = os.read(fd, _PID_FILE_LIMIT)
        finally:
            os.close(fd)
        lines = raw.decode("ascii", errors="replace").splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    if pid <= 0:
        return None
    status = lines[_STATUS_LINE].strip() if len(lines) > _STATUS_LINE else ""
    return pid, status


def runs_in(pid: int, data_dir: Path) -> bool:
    """Whether `pid` is alive and works in `data_dir` (as its postmaster does).

    Checking the working directory keeps a stale postmaster.pid (a pid reused after a
    crash) from aiming a signal at a stranger.
    """
    try:
        return os.readlink(f"/proc/{pid}/cwd") == os.path.realpath(data_dir)
    except OSError:
        return False  # gone, a zombie, or another user's process: not ours to stop


def processes_in(data_dir: Path) -> list[int]:
    """This user's processes working in `data_dir`: a postmaster, its children, and
    what they run (restore_command)."""
    target = os.path.realpath(data_dir)
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for name in entries:
        if name.isdigit() and int(name) != os.getpid():
            try:
                if os.readlink(f"/proc/{name}/cwd") == target:
                    found.append(int(name))
            except OSError:
                continue  # gone meanwhile, or not ours
    return found


def running_server(data_dir: Path) -> str | None:
    """Why a server must be taken to run in `data_dir` (None: nothing runs there).

    A postmaster.pid whose process is gone is stale, not a server. One whose process
    is alive but whose working directory this user may not read cannot be told
    apart from a server, so it counts as one.
    """
    found = pid_file(data_dir)
    if found is not None:
        pid = found[0]
        if runs_in(pid, data_dir):
            return f"postmaster pid {pid} runs in it"
        if _alive(pid) and not _cwd_readable(pid):
            return f"postmaster.pid names pid {pid}, alive, whose folder this user cannot see"
    if remaining := processes_in(data_dir):
        pids = ", ".join(str(pid) for pid in sorted(remaining)[:5])
        return f"processes still work in it (pid {pids})"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's: alive
    return True


def _cwd_readable(pid: int) -> bool:
    try:
        os.readlink(f"/proc/{pid}/cwd")
    except PermissionError:
        return False
    except OSError:
        return True  # gone meanwhile: readable enough to know it is not a server
    return True
