"""Processes the sandbox started: their children, and ending them by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path


def child_pids(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def kill_tree(pid: int) -> None:
    """SIGKILL `pid` and its children (runuser's child is the real daemon)."""
    for target in [*child_pids(pid), pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


def terminate_and_wait(proc: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM (runuser passes it on to its child and waits for it), then SIGKILL
    to the tree when it has not ended within `timeout`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait(timeout=timeout)
