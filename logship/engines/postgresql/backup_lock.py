"""One base-backup process per connector at a time, across processes.

A manual `base-backup` and a scheduled one must not run together (two backups of
one primary double its I/O for nothing), and retention must not delete the folder
of a backup that is still being written. An flock in state_dir says who is
running; the kernel drops it when that process dies, however it dies, so a lock
found free means any backup still marked "running" in the catalog was killed.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from logship.durable import ensure_private_dir
from logship.errors import OperationFailed

LOCK_DIR = "locks"


def lock_path(state_dir: Path, connector: str) -> Path:
    return state_dir / LOCK_DIR / f"base-backup-{connector}.lock"


@contextmanager
def backup_lock(state_dir: Path, connector: str, *, wait: bool = False) -> Iterator[None]:
    """Hold the connector's backup lock; OperationFailed when busy and not `wait`."""
    path = lock_path(state_dir, connector)
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            raise OperationFailed(
                f"connector {connector}: a base backup is already running (pid {holder}, "
                f"lock {path}); wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the only descriptor releases the flock


def is_backup_running(state_dir: Path, connector: str) -> bool:
    """True when some process holds the connector's backup lock right now."""
    path = lock_path(state_dir, connector)
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
