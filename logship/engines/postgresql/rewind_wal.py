"""Which of the old primary's WAL a rewind reads, and whether it is all there.

pg_rewind reads the target's WAL backwards from the divergence point to the last
checkpoint before it, then forwards from that checkpoint to the target's end of
WAL, to list the blocks the old primary changed. A segment missing on that path
makes it fail, after it may have run a long time (repmgr#697). This finds that
checkpoint with pg_waldump, lists the segments, and says which are missing from
pg_wal and whether the target's restore_command can fetch them.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from logship.engines.postgresql import walnames
from logship.engines.postgresql.rewind_parse import ControlData, parse_waldump_checkpoints
from logship.engines.postgresql.timeline_history import HistoryEntry

WALDUMP_TIMEOUT_S = 120
RESTORE_TIMEOUT_S = 300
# Checkpoints come at least every max_wal_size; a search further back than this
# means the WAL is not what this module understands.
MAX_SEGMENTS_BACK = 4096

#: runs a command as the data dir's owner: (argv, cwd, timeout) -> completed process
Runner = Callable[[Sequence[str], Path, float], subprocess.CompletedProcess[str]]


def find_divergence(
    target_tli: int,
    target_history: list[HistoryEntry],
    source_tli: int,
    source_history: list[HistoryEntry],
) -> tuple[int, int] | None:
    """(the LSN where the two timelines part, the last common timeline), or None
    when they share no timeline. Like pg_rewind: the last timeline both histories
    hold, ending where the earlier of the two left it."""
    infinite = 1 << 64
    target = [(e.parent_tli, e.switch_lsn) for e in target_history] + [(target_tli, infinite)]
    source = [(e.parent_tli, e.switch_lsn) for e in source_history] + [(source_tli, infinite)]
    common = None
    for (t_tli, t_end), (s_tli, s_end) in zip(target, source, strict=False):
        if t_tli != s_tli:
            break
        common = (min(t_end, s_end), t_tli)
    if common is None or common[0] == infinite:
        return None
    return common


def timeline_of_segment(
    segment: int, segment_size: int, target_tli: int, history: list[HistoryEntry]
) -> int:
    """The timeline whose file holds `segment`, as pg_rewind picks it: the oldest one
    still running at the segment's end (a switch copies the partial segment on)."""
    seg_end = (segment + 1) * segment_size
    for entry in history:
        if entry.switch_lsn >= seg_end:
            return entry.parent_tli
    return target_tli


@dataclass
class WalCheck:
    """What the rewind needs from the old primary's WAL, and what is not there."""

    last_common_checkpoint: int | None = None
    needed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    from_restore_command: list[str] = field(default_factory=list)
    problem: str | None = None
    #: the search for that checkpoint stopped at a missing segment: older ones may
    #: be needed too
    checkpoint_not_found: bool = False


class _WalView:
    """A private folder holding links to pg_wal's segments and segments fetched with
    restore_command, for pg_waldump's one -p directory."""

    def __init__(self, pg_wal: Path, segment_size: int, restore_command: str | None, run: Runner):
        self.pg_wal = pg_wal
        self.segment_size = segment_size
        self.restore_command = restore_command
        self.run = run
        self.dir = Path(tempfile.mkdtemp(prefix="logship-rewind-wal-"))
        self.fetched: list[str] = []

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def local(self, name: str) -> bool:
        try:
            st = os.lstat(self.pg_wal / name)
        except OSError:
            return False
        # A link or a short file is not a segment pg_rewind could use.
        return stat.S_ISREG(st.st_mode) and st.st_size == self.segment_size

    def available(self, name: str) -> bool:
        """Whether `name` can be read, fetching it with restore_command if need be."""
        view = self.dir / name
        if os.path.lexists(view):
            return True
        if self.local(name):
            os.symlink(self.pg_wal / name, view)
            return True
        return self._fetch(name)

    def _fetch(self, name: str) -> bool:
        if not self.restore_command:
            return False
        # Fetched as the data dir's owner (who runs restore_command for the server)
        # into a folder of its own, then handed over to this view.
        inbox = Path(tempfile.mkdtemp(prefix="logship-rewind-fetch-"))
        try:
            if os.geteuid() == 0:
                os.chown(inbox, self.pg_wal.stat().st_uid, -1)
            target = inbox / name
            command = (
                self.restore_command.replace("%%", "\0")
                .replace("%f", name)
                .replace("%p", str(target))
                .replace("%r", name)
                .replace("\0", "%")
            )
            done = self.run(["sh", "-c", command], self.pg_wal.parent, RESTORE_TIMEOUT_S)
            if done.returncode != 0:
                return False
            try:
                st = os.lstat(target)
            except OSError:
                return False
            if not stat.S_ISREG(st.st_mode) or st.st_size != self.segment_size:
                return False
            shutil.move(target, self.dir / name)
            self.fetched.append(name)
            return True
        finally:
            shutil.rmtree(inbox, ignore_errors=True)


def check_target_wal(
    data_dir: Path,
    control: ControlData,
    target_history: list[HistoryEntry],
    divergence_lsn: int,
    *,
    waldump: Path,
    restore_command: str | None,
    run: Runner,
) -> WalCheck:
    """The segments pg_rewind will read in `data_dir`'s WAL and which are missing."""
    size = control.segment_size
    check = WalCheck()
    view = _WalView(data_dir / "pg_wal", size, restore_command, run)
    if os.geteuid() == 0:
        # pg_waldump runs as the data dir's owner and must read the private view.
        os.chown(view.dir, data_dir.stat().st_uid, -1)

    def name_of(segment: int) -> str:
        tli = timeline_of_segment(segment, size, control.timeline, target_history)
        return walnames.segment_name(tli, segment, size)

    def need(segment: int) -> bool:
        name = name_of(segment)
        if name not in check.needed:
            check.needed.append(name)
        if view.available(name):
            return True
        if name not in check.missing:
            check.missing.append(name)
        return False

    try:
        end_lsn = max(control.checkpoint_lsn, control.min_recovery_lsn)
        if control.checkpoint_lsn < divergence_lsn:
            # The old primary stopped before the fork: pg_rewind reads its last
            # checkpoint record only, to see whether it ends at the fork.
            need(control.checkpoint_lsn // size)
            check.needed.sort()
            check.from_restore_command = list(view.fetched)
            return check
        fork_segment = divergence_lsn // size
        segment = fork_segment
        while check.last_common_checkpoint is None:
            if fork_segment - segment > MAX_SEGMENTS_BACK:
                check.problem = (
                    f"no checkpoint within {MAX_SEGMENTS_BACK} segments before the divergence point"
                )
                break
            if segment < 0:
                break
            if not need(segment):
                check.checkpoint_not_found = True
                break
            start = max(segment * size, 1)
            stop = min((segment + 1) * size, divergence_lsn)
            if start >= stop:
                # The fork is a segment's first byte (after a WAL switch): nothing of
                # this segment is common, the checkpoint is further back.
                segment -= 1
                continue
            done = run(
                [
                    str(waldump),
                    "--path",
                    str(view.dir),
                    "--timeline",
                    str(timeline_of_segment(segment, size, control.timeline, target_history)),
                    "--start",
                    walnames.int_to_lsn(start),
                    "--end",
                    walnames.int_to_lsn(stop),
                    "--rmgr",
                    "XLOG",
                ],
                view.dir,
                WALDUMP_TIMEOUT_S,
            )
            before = [c for c in parse_waldump_checkpoints(done.stdout) if c.lsn < divergence_lsn]
            if before:
                check.last_common_checkpoint = max(c.lsn for c in before)
            elif done.returncode != 0 and "could not find a valid record" not in done.stderr:
                last = done.stderr.strip().splitlines()
                check.problem = f"pg_waldump could not read {name_of(segment)}: " + (
                    last[-1][:300] if last else f"exit {done.returncode}"
                )
                break
            segment -= 1
        # From the fork to the end is read whatever the search found; from the
        # checkpoint to the fork only when it found one.
        first = fork_segment
        if check.last_common_checkpoint is not None:
            first = check.last_common_checkpoint // size
        for seg in range(first, end_lsn // size + 1):
            need(seg)
        check.needed.sort()
        check.missing.sort()
        check.from_restore_command = sorted(view.fetched)
        return check
    finally:
        view.close()
