"""`standby status`: the standby's own facts, read at the standby site.

The primary's daemon runs this over its SSH link (no database port crosses
sites) and keeps the answer in its catalog, so `status` and `dashboard` never
touch the standby themselves.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from logship import jsonout
from logship.engines.postgresql import facts_check, walnames
from logship.errors import LogshipError, first_line, shown_text
from logship.manifest import SiteLayout
from logship.ship.transport import SiteOutputTooLarge

if TYPE_CHECKING:
    from logship.engines.postgresql.engine import PostgresConnector
    from logship.ship.transport import Transport

STANDBY_QUERY = """
select pg_is_in_recovery(),
       pg_last_wal_replay_lsn()::text,
       extract(epoch from pg_last_xact_replay_timestamp())::float8,
       extract(epoch from now())::float8
"""
HEARTBEAT_QUERY = """
select extract(epoch from beat_at)::float8 from logship.heartbeat where connector = %s
"""
# Works during recovery: on a standby it is the last restartpoint's redo, the
# oldest WAL a restart of the standby would read again.
REDO_QUERY = "select redo_wal_file from pg_control_checkpoint()"
CONTROLDATA_REDO = "Latest checkpoint's REDO WAL file:"
CONTROLDATA_TIMEOUT = 30.0
MAX_REFUSED = 32


@dataclass(frozen=True)
class StandbyFacts:
    connector: str
    measured_at: float
    reachable: bool
    in_recovery: bool | None = None
    replay_lsn: str | None = None
    #: the primary's clock, as written by the heartbeat and replayed here
    heartbeat_at: float | None = None
    #: commit time of the last replayed transaction (fallback without heartbeat)
    replay_timestamp: float | None = None
    last_restored: str | None = None
    restored_at: float | None = None
    promoted: bool = False
    error: str | None = None
    #: the WAL file of the standby's latest checkpoint (restartpoint) redo: the
    #: oldest WAL it still needs; None when not known (see redo_error)
    redo_wal: str | None = None
    redo_error: str | None = None
    #: whether [standby].data_dir exists at the site (None: not known), so "no
    #: standby at all" can be told from "a standby whose needs are unknown"
    data_dir_exists: bool | None = None
    #: files restore-wal refused as corrupt, oldest first (see SiteLayout.refused_dir)
    refused: tuple[str, ...] = ()

    def to_json(self) -> str:
        return jsonout.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> StandbyFacts:
        """The facts of an answer, every field checked (see facts_check): a bad
        field raises BadAnswer, and nothing of that answer is used."""
        return cls.checked(text)[0]

    @classmethod
    def checked(cls, text: str | bytes) -> tuple[StandbyFacts, int]:
        """As from_json, and how many refused names beyond the cap were ignored."""
        raw = facts_check.parse_answer(text)
        values, ignored = facts_check.check_fields(raw, {f.name for f in fields(cls)})
        return cls(**values), ignored


@dataclass(frozen=True)
class StandbyAnswer:
    facts: StandbyFacts
    #: whether logship at the site answered at all
    answered: bool
    #: why an answer that came was dropped (escaped, cut), None when it was good
    bad: str | None = None
    #: refused names beyond the per-answer cap, left for a later answer
    refused_ignored: int = 0

    def __iter__(self) -> Iterator[StandbyFacts | bool]:
        """`facts, answered = ask_standby_status(...)`, as before there was more."""
        return iter((self.facts, self.answered))


def _restored(layout: SiteLayout) -> tuple[str | None, float | None]:
    try:
        marker = json.loads(Path(layout.restored_marker).read_text())
        return str(marker["name"]), float(marker["at"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, None


def _refused(layout: SiteLayout) -> tuple[str, ...]:
    try:
        notes = os.listdir(layout.refused_dir)
    except OSError:
        return ()
    names = (n.removesuffix(".json") for n in notes if n.endswith(".json"))
    return tuple(sorted(n for n in names if walnames.parse(n, allow_partial=True)))[:MAX_REFUSED]


def _data_dir_exists(data_dir: Path | None) -> bool | None:
    if data_dir is None:
        return None
    try:
        data_dir.stat()
    except FileNotFoundError:
        return False
    except OSError:
        return None  # e.g. a parent this user cannot enter: not known
    return True


def _valid_redo(name: object) -> str | None:
    if not isinstance(name, str):
        return None
    parsed = walnames.parse(name)
    return name if parsed is not None and parsed.kind is walnames.WalKind.SEGMENT else None


def controldata_redo(data_dir: Path, bin_dir: Path | None) -> tuple[str | None, str | None]:
    """(redo WAL file, None) from pg_controldata, or (None, why it is not known)."""
    from logship.engines.postgresql.tools import find_program

    try:
        program = find_program(
            "pg_controldata", bin_dir=bin_dir, data_dir=data_dir, setting="[standby].bin_dir"
        )
    except LogshipError as exc:
        return None, str(exc)
    # Its labels are translated; C keeps the one parsed below.
    env = {**os.environ, "LC_ALL": "C"}
    try:
        done = subprocess.run(
            [str(program), str(data_dir)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=CONTROLDATA_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"pg_controldata {data_dir}: {first_line(exc)}"
    for line in done.stdout.splitlines():
        if line.startswith(CONTROLDATA_REDO):
            redo = _valid_redo(line.removeprefix(CONTROLDATA_REDO).strip())
            if redo is not None:
                return redo, None
    reason = done.stderr.strip().splitlines()
    return None, f"pg_controldata {data_dir} exited {done.returncode}: " + (
        reason[-1] if reason else "no REDO WAL file in its output"
    )


def read_connector_standby_facts(
    connector: PostgresConnector, site_root: PurePosixPath
) -> StandbyFacts:
    """`read_standby_facts` for a connector as its config describes its standby."""
    return read_standby_facts(
        connector.name,
        connector.standby.dsn,
        Path(site_root),
        data_dir=connector.standby.data_dir,
        bin_dir=connector.standby.bin_dir,
    )


def read_standby_facts(
    connector: str,
    dsn: str,
    site_root: Path,
    *,
    data_dir: Path | None = None,
    bin_dir: Path | None = None,
) -> StandbyFacts:
    """The standby's facts; with `data_dir`, its redo WAL even when it is down."""
    import psycopg

    layout = SiteLayout.for_connector(site_root.as_posix(), connector)
    last_restored, restored_at = _restored(layout)
    promoted = Path(layout.promoted_marker).exists()
    base = {
        "connector": connector,
        "last_restored": last_restored,
        "restored_at": restored_at,
        "promoted": promoted,
        "data_dir_exists": _data_dir_exists(data_dir),
        "refused": _refused(layout),
    }
    redo: str | None = None
    redo_error: str | None = None
    try:
        with psycopg.connect(dsn, connect_timeout=5, autocommit=True) as conn:
            in_recovery, replay_lsn, replay_ts, now = conn.execute(STANDBY_QUERY).fetchone()
            heartbeat = None
            has_table = conn.execute("select to_regclass('logship.heartbeat')").fetchone()[0]
            if has_table is not None:
                row = conn.execute(HEARTBEAT_QUERY, (connector,)).fetchone()
                heartbeat = row[0] if row else None
            try:
                redo = _valid_redo(conn.execute(REDO_QUERY).fetchone()[0])
            except psycopg.Error as exc:
                # A monitoring role without pg_monitor: pg_controldata may still tell.
                redo_error = first_line(exc)
    except psycopg.Error as exc:
        redo, redo_error = _redo_offline(data_dir, bin_dir, base["data_dir_exists"])
        return StandbyFacts(
            measured_at=time.time(),
            reachable=False,
            error=first_line(exc),
            redo_wal=redo,
            redo_error=redo_error,
            **base,
        )
    if redo is None and data_dir is not None:
        redo, offline_error = _redo_offline(data_dir, bin_dir, base["data_dir_exists"])
        redo_error = offline_error if redo is None else None
    return StandbyFacts(
        measured_at=now,
        reachable=True,
        in_recovery=in_recovery,
        replay_lsn=replay_lsn,
        heartbeat_at=heartbeat,
        replay_timestamp=replay_ts,
        redo_wal=redo,
        redo_error=redo_error,
        **base,
    )


def _redo_offline(
    data_dir: Path | None, bin_dir: Path | None, exists: bool | None
) -> tuple[str | None, str | None]:
    if data_dir is None:
        return None, "the standby does not answer and no data_dir was given"
    if exists is False:
        return None, f"[standby].data_dir {data_dir} does not exist"
    return controldata_redo(data_dir, bin_dir)


def ask_standby_status(
    transport: Transport,
    command: list[str],
    connector: str,
    clock: Callable[[], float],
    timeout: float,
) -> StandbyAnswer:
    """`standby status --json` run at the site over `transport` (SSH): the facts, and
    whether logship there answered at all.

    Without a usable answer (logship missing there, a broken config, a malformed
    answer...) the facts say the standby is unreachable and why; nothing else is
    made up, and nothing of a malformed answer is used.
    """
    argv = [*command, "standby", "status", connector, "--json"]
    bad = None
    try:
        status, out, err = transport.run_command(
            argv, timeout=timeout, limit=facts_check.MAX_ANSWER_BYTES
        )
    except SiteOutputTooLarge:
        status, out, err = -1, b"", b""
        bad = (
            f"malformed `standby status` answer for {connector}: answer: "
            f"larger than {facts_check.MAX_ANSWER_BYTES} bytes"
        )
    if bad is None and (status == 0 or out.strip()):
        try:
            facts, ignored = StandbyFacts.checked(out)
            if facts.connector != connector:
                raise facts_check.BadAnswer("connector", "not the one asked for", facts.connector)
            return StandbyAnswer(facts, True, None, ignored)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            # BadAnswer (a ValueError) names the field; the rest is a check missed.
            bad = f"malformed `standby status` answer for {connector}: {shown_text(str(exc))}"
    if bad is not None:
        error = bad
    else:
        reason = err.decode(errors="replace").strip().splitlines()
        error = f"`standby status` exited {status}: " + (
            shown_text(reason[-1], facts_check.MAX_TEXT) if reason else "no output"
        )
    facts = StandbyFacts(connector=connector, measured_at=clock(), reachable=False, error=error)
    return StandbyAnswer(facts, False, bad)
