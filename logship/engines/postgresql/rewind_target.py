"""The old primary's side of a rewind: its pg_control, its live settings, whether it
runs, its timeline history; and running its programs as its data dir's owner."""

from __future__ import annotations

import os
import pwd
import subprocess
from collections.abc import Sequence
from pathlib import Path

from logship.engines.postgresql.rewind_parse import (
    ControlData,
    parse_controldata,
)
from logship.engines.postgresql.standby_restore import run_tool
from logship.engines.postgresql.timeline_history import HistoryEntry, read_history_file
from logship.engines.postgresql.tools import find_program
from logship.errors import OperationFailed, shown_text

TOOL_TIMEOUT_S = 60


# -- running as the data dir's owner -----------------------------------------------------


def owner_prefix(data_dir: Path) -> list[str]:
    """The argv prefix that runs a program as `data_dir`'s owner, as PostgreSQL must."""
    try:
        uid = os.stat(data_dir).st_uid
    except OSError as exc:
        raise OperationFailed(f"cannot reach the data dir {data_dir}: {exc.strerror}") from None
    if uid == os.geteuid():
        return []
    if os.geteuid() != 0:
        raise OperationFailed(
            f"{data_dir} belongs to uid {uid}, not to this user: run as its owner or as root"
        )
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        raise OperationFailed(f"{data_dir} belongs to uid {uid}, which has no account") from None
    return ["runuser", "-u", name, "--"]


def run_as_owner(
    data_dir: Path, argv: Sequence[str], cwd: Path, timeout: float
) -> subprocess.CompletedProcess[str]:
    # Tools' messages are translated; the parsers read the C ones.
    return run_tool(
        [*owner_prefix(data_dir), *argv],
        cwd,
        timeout,
        env={**os.environ, "LC_ALL": "C"},
        name=argv[0],
    )


def _tool_error(done: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (done.stderr or done.stdout).splitlines() if ln.strip()]
    return shown_text(lines[-1]) if lines else f"exit {done.returncode}"


# -- the old primary ---------------------------------------------------------------------


def read_controldata(data_dir: Path, bin_dir: Path | None) -> ControlData:
    program = find_program("pg_controldata", bin_dir=bin_dir, data_dir=data_dir)
    done = run_as_owner(data_dir, [str(program), str(data_dir)], data_dir, TOOL_TIMEOUT_S)
    if done.returncode != 0:
        raise OperationFailed(f"pg_controldata {data_dir} failed: {_tool_error(done)}")
    try:
        return parse_controldata(done.stdout)
    except ValueError as exc:
        raise OperationFailed(f"pg_controldata {data_dir}: {exc}") from None


def live_setting(
    data_dir: Path, bin_dir: Path | None, name: str, config_file: Path | None = None
) -> str:
    """`name` as the server would start with it (postgres -C reads postgresql.conf,
    its includes and postgresql.auto.conf)."""
    program = find_program("postgres", bin_dir=bin_dir, data_dir=data_dir)
    argv = [str(program), "-C", name, "-D", str(data_dir)]
    if config_file is not None:
        argv += ["-c", f"config_file={config_file}"]
    done = run_as_owner(data_dir, argv, data_dir, TOOL_TIMEOUT_S)
    if done.returncode != 0:
        raise OperationFailed(f"postgres -C {name} in {data_dir} failed: {_tool_error(done)}")
    lines = done.stdout.splitlines()
    return lines[0].strip() if lines else ""


def read_target_history(data_dir: Path, timeline: int) -> list[HistoryEntry]:
    """The old primary's own timeline history (none on timeline 1)."""
    if timeline == 1:
        return []
    _, history = read_history_file(data_dir / "pg_wal" / f"{timeline:08X}.history")
    return history
