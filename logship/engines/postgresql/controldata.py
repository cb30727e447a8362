"""pg_controldata of a data directory, read as facts (stopped or running server)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from logship.engines.postgresql import walnames
from logship.engines.postgresql.tools import find_program
from logship.errors import OperationFailed, first_line

CONTROLDATA_TIMEOUT_S = 30
#: pg_controldata prints a few dozen short lines; more is not its output
MAX_OUTPUT = 64 * 1024


@dataclass(frozen=True)
class ControlFacts:
    #: "shut down", "shut down in recovery", "in production", "in archive recovery", ...
    state: str
    checkpoint_lsn: int
    checkpoint_timeline: int
    redo_lsn: int
    segment_size: int
    system_identifier: str

    @property
    def checkpoint_segment(self) -> str:
        """The WAL segment holding the latest checkpoint record."""
        return walnames.segment_of_lsn(
            self.checkpoint_timeline, self.checkpoint_lsn, self.segment_size
        )

    @property
    def redo_segment(self) -> str:
        return walnames.segment_of_lsn(self.checkpoint_timeline, self.redo_lsn, self.segment_size)


def parse(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in text[:MAX_OUTPUT].splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def read_control(data_dir: Path, bin_dir: Path | None, setting: str) -> ControlFacts:
    program = find_program("pg_controldata", bin_dir=bin_dir, data_dir=data_dir, setting=setting)
    # Its labels are translated; C keeps the ones parsed here.
    try:
        done = subprocess.run(
            [str(program), str(data_dir)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env={**os.environ, "LC_ALL": "C"},
            timeout=CONTROLDATA_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OperationFailed(f"pg_controldata {data_dir}: {first_line(exc)}") from None
    if done.returncode != 0:
        raise OperationFailed(
            f"pg_controldata {data_dir} exited {done.returncode}: "
            f"{first_line(done.stderr) or 'no message'}"
        )
    fields = parse(done.stdout)
    try:
        return ControlFacts(
            state=fields["Database cluster state"],
            checkpoint_lsn=walnames.lsn_to_int(fields["Latest checkpoint location"]),
            checkpoint_timeline=int(fields["Latest checkpoint's TimeLineID"]),
            redo_lsn=walnames.lsn_to_int(fields["Latest checkpoint's REDO location"]),
            segment_size=int(fields["Bytes per WAL segment"]),
            system_identifier=fields["Database system identifier"],
        )
    except (KeyError, ValueError) as exc:
        raise OperationFailed(
            f"pg_controldata {data_dir}: unexpected output ({first_line(exc)})"
        ) from None
