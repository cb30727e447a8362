"""Running pg_rewind on an old primary, as its data dir's owner, and reporting what
it copied, how long it took, and why it failed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from logship.engines.postgresql.rewind_parse import CRASHED_STATES, parse_rewind_line
from logship.engines.postgresql.rewind_target import owner_prefix, read_controldata
from logship.engines.postgresql.secret import dsn_for_child
from logship.engines.postgresql.tools import find_program
from logship.engines.postgresql.walnames import int_to_lsn
from logship.errors import OperationFailed, shown_text

# Files pg_rewind leaves that the caller's standby configuration must know of.
_LEFT_FILES = ("backup_label", "tablespace_map", "postgresql.auto.conf", "standby.signal")
_KEPT_LINES = 40


@dataclass(frozen=True)
class RewindProgress:
    phase: str  # a line of pg_rewind's, e.g. "reading WAL in target", or "copy"
    copied_bytes: int
    total_bytes: int | None


@dataclass
class RewindOutcome:
    """What pg_rewind did. It also copied the source's configuration files
    (postgresql.conf, postgresql.auto.conf with any primary_conninfo, pg_hba.conf):
    the caller writes this site's port and standby settings after it. The
    backup_label it leaves makes the server replay from the last common
    checkpoint's redo point, so that WAL must come by streaming or restore_command.
    """

    dry_run: bool
    #: False when pg_rewind found nothing to do ("no rewind required")
    rewound: bool
    seconds: float
    bytes_copied: int
    #: what pg_rewind planned to copy, and the source's whole data dir, as it said
    bytes_planned: int | None = None
    source_bytes: int | None = None
    #: "pg_rewind" when it printed its totals, "measured" when counted here
    bytes_from: str = "pg_rewind"
    diverged_at: str | None = None
    rewound_from_checkpoint: str | None = None
    left_files: list[str] = field(default_factory=list)
    output_tail: list[str] = field(default_factory=list)
    #: why a dry run did not run pg_rewind at all (None when it ran)
    not_run: str | None = None


ProgressCallback = Callable[[RewindProgress], None]


def _state(data_dir: Path, bin_dir: Path | None) -> str:
    return read_controldata(data_dir, bin_dir).state


def bytes_under(data_dir: Path, since: float = 0.0) -> int:
    """Bytes of the files under `data_dir` written since `since` (not following links)."""
    total = 0
    for root, _dirs, files in os.walk(data_dir):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if st.st_mtime >= since:
                total += st.st_size
    return total


def run_rewind(
    old_data_dir: Path,
    bin_dir: Path | None,
    source_dsn: str,
    *,
    dry_run: bool,
    progress: ProgressCallback | None = None,
    restore_target_wal: bool = False,
    config_file: Path | None = None,
    timeout: float | None = None,
) -> RewindOutcome:
    """Run pg_rewind --progress on the stopped `old_data_dir` from `source_dsn`.

    `restore_target_wal` lets pg_rewind fetch the old primary's missing WAL with its
    restore_command (rewind_safety says when that is needed). `config_file` is the
    server's postgresql.conf when not in the data dir, for what pg_rewind runs of
    the target (crash recovery, restore_command). The standby configuration is the
    caller's to write afterwards.
    """
    data_dir = old_data_dir.resolve()
    report = progress or (lambda _p: None)
    if dry_run and _state(data_dir, bin_dir) in CRASHED_STATES:
        # pg_rewind runs crash recovery on the target even with --dry-run, which
        # would change it: a dry run must not.
        return RewindOutcome(
            dry_run=True,
            rewound=True,
            seconds=0.0,
            bytes_copied=0,
            not_run=(
                f"{data_dir} was not stopped cleanly: pg_rewind --dry-run would run crash "
                "recovery on it first, so it was not run; the real rewind does that itself"
            ),
        )
    program = find_program("pg_rewind", bin_dir=bin_dir, data_dir=data_dir)
    prefix = owner_prefix(data_dir)
    with dsn_for_child(source_dsn, setting="source DSN") as child:
        if prefix:
            _hand_passfile_to_owner(source_dsn, child.dsn, data_dir)
        cmd = [
            *prefix,
            str(program),
            "--target-pgdata",
            str(data_dir),
            "--source-server",
            child.dsn,
            "--progress",
        ]
        if dry_run:
            cmd.append("--dry-run")
        if restore_target_wal:
            cmd.append("--restore-target-wal")
        if config_file is not None:
            cmd.append(f"--config-file={config_file}")
        env = {**os.environ, **child.env, "LC_ALL": "C"}
        started = time.time()
        clock = time.monotonic()
        outcome = RewindOutcome(dry_run=dry_run, rewound=True, seconds=0.0, bytes_copied=0)
        returncode, lines = _follow(cmd, data_dir, env, timeout, outcome, report)
    outcome.seconds = time.monotonic() - clock
    outcome.output_tail = lines[-_KEPT_LINES:]
    if returncode != 0:
        errors = [ln for ln in lines if parse_rewind_line(ln).error]
        last = errors[-1] if errors else (lines[-1] if lines else f"exit {returncode}")
        # pg_rewind changes the target only once it has planned the copy.
        if dry_run or outcome.bytes_planned is None:
            state = f"{data_dir} was not changed"
        else:
            state = (
                f"{data_dir} may be unusable until a rewind succeeds, or it is replaced "
                "by a base backup"
            )
        raise OperationFailed(
            f"pg_rewind of {data_dir} failed after {outcome.seconds:.1f}s: "
            f"{shown_text(last)}; {state}"
        )
    if outcome.rewound and not dry_run and outcome.bytes_planned is None:
        outcome.bytes_copied = bytes_under(data_dir, started)
        outcome.bytes_from = "measured"
    outcome.left_files = [n for n in _LEFT_FILES if (data_dir / n).exists()]
    return outcome


def _hand_passfile_to_owner(source_dsn: str, child_dsn: str, data_dir: Path) -> None:
    """A password file written for the child belongs to this user; pg_rewind runs as
    the data dir's owner, so its private folder is handed over. Only a file written
    here: one the DSN names itself is the user's, and left alone."""
    from psycopg.conninfo import conninfo_to_dict

    given = conninfo_to_dict(source_dsn)
    passfile = conninfo_to_dict(child_dsn).get("passfile")
    if given.get("password") is None or passfile is None or passfile == given.get("passfile"):
        return
    uid = os.stat(data_dir).st_uid
    path = Path(str(passfile))
    for target in (path.parent, path):
        os.chown(target, uid, -1)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _follow(
    cmd: list[str],
    data_dir: Path,
    env: dict[str, str],
    timeout: float | None,
    outcome: RewindOutcome,
    report: ProgressCallback,
) -> tuple[int, list[str]]:
    """Run `cmd`, reading its progress lines into `outcome` as they come."""
    try:
        proc = subprocess.Popen(
            cmd,
            cwd=data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            # Its own process group: a timeout ends runuser and pg_rewind under it.
            start_new_session=True,
        )
    except OSError as exc:
        raise OperationFailed(f"cannot run pg_rewind: {exc}") from None
    timer = None
    if timeout is not None:
        timer = threading.Timer(timeout, _kill_group, (proc,))
        timer.start()
    lines: list[str] = []
    assert proc.stdout is not None
    try:
        for raw in proc.stdout:
            line = raw.rstrip("\n")[:1000]
            lines.append(line)
            del lines[: -_KEPT_LINES * 4]
            event = parse_rewind_line(line)
            if event.copy_total_bytes is not None:
                outcome.bytes_planned = event.copy_total_bytes
                outcome.source_bytes = event.source_total_bytes
            if event.copied_bytes is not None:
                outcome.bytes_copied = event.copied_bytes
                report(RewindProgress("copy", event.copied_bytes, outcome.bytes_planned))
            elif line.startswith("pg_rewind: ") and not event.error:
                report(
                    RewindProgress(
                        line.removeprefix("pg_rewind: "),
                        outcome.bytes_copied,
                        outcome.bytes_planned,
                    )
                )
            if event.diverged_at is not None:
                outcome.diverged_at = int_to_lsn(event.diverged_at)
            if event.checkpoint_at is not None:
                outcome.rewound_from_checkpoint = int_to_lsn(event.checkpoint_at)
            if event.no_rewind_required:
                outcome.rewound = False
        returncode = proc.wait()
    finally:
        if timer is not None:
            timer.cancel()
        if proc.poll() is None:
            _kill_group(proc)
            proc.wait()
    if timeout is not None and returncode < 0:
        lines.append(f"pg_rewind: error: killed after {timeout:g}s")
    return returncode, lines
