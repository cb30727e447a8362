"""The restore drill: prove that a shipped base backup plus the WAL after it rebuilds
a working database, and measure how long that takes (the rebuild RTO).

Runs at the standby site as the OS user that runs the standby PostgreSQL. The backup
is restored into a scratch folder exactly as `standby restore` would (sha256 while
extracting, then pg_verifybackup), started as a throwaway server that replays every
shipped segment through `restore-wal --no-mark` and then ends recovery on its own
(recovery.signal), queried over a private Unix socket, stopped and removed. The real
standby, its data dir and its progress note (restored.json) are never touched.

The result is written to `<site root>/<connector>/drills/<backup id>.json`, so the
primary's daemon can read it over SFTP as well as from `logship drill --json`.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import pwd
import shlex
import shutil
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from logship import jsonout
from logship.config.model import Config
from logship.durable import ensure_private_dir, write_bytes_atomically
from logship.engines.postgresql import walnames
from logship.engines.postgresql.base_backup import label_start_wal, postgres_connector
from logship.engines.postgresql.engine import PostgresConnector
from logship.engines.postgresql.postmaster import pid_file, processes_in, runs_in
from logship.engines.postgresql.standby_restore import (
    LATEST,
    ProgressCallback,
    RestoreProgress,
    check_restore_command_runs,
    find_server_tools,
    local_peer_hba,
    locate_backup,
    prepare_data_dir,
    restore_command,
    restore_verified,
    run_tool,
    start_server,
    write_recovery_config,
)
from logship.engines.postgresql.tools import find_program, quote_conf_string
from logship.errors import (
    ConfigError,
    LogshipError,
    OperationFailed,
    SafetyRefusal,
    UsageError,
    first_line,
)
from logship.jsonin import load_object
from logship.manifest import BackupRecord, SiteLayout

if TYPE_CHECKING:
    import psycopg

#: default scratch folder under the connector's site folder
SCRATCH_NAME = "drill"
#: per-run folders inside the scratch folder; only names like these are ever removed
RUN_PREFIX = "run-"
LOCK_NAME = ".lock"
DATA_NAME = "data"
LOG_NAME = "postgresql.log"
WRITER = "logship drill"
#: a Unix socket path is at most 107 bytes (sun_path holds 108 with the final NUL)
MAX_SOCKET_PATH = 107
POLL_S = 0.1
STOP_TIMEOUT_S = 60
KILL_WAIT_S = 10.0
# postmaster.pid, line 8: "ready" once the server accepts connections. With
# hot_standby off that is only after recovery ended ("standby" before it).
_READY = "ready"

# Phases reported: "extract", "verify", "configure", "replay", "query", "cleanup".


@dataclass(frozen=True)
class DrillResult:
    """What one drill proved; the same JSON on stdout (`--json`) and at the site."""

    connector: str
    backup_id: str | None
    started_at: float
    finished_at: float
    passed: bool
    #: extract + sha256 + pg_verifybackup of the base backup
    restore_s: float | None = None
    #: start of the scratch server until recovery ended and it accepted connections
    replay_s: float | None = None
    #: the segment replay ended in, and the newest one at the site when replay began
    replayed_to_wal: str | None = None
    newest_shipped_wal: str | None = None
    #: first column of the query's first row, as PostgreSQL prints it
    query_result: str | None = None
    error: str | None = None
    #: the WAL file replay started in, read from the backup_label this drill restored:
    #: what the site itself saw the backup need, unlike the start_wal the primary
    #: wrote into its record (retention at the site keeps WAL from here on)
    start_wal: str | None = None

    @property
    def rebuild_s(self) -> float | None:
        """The measured time to rebuild a standby from this backup and the shipped WAL."""
        if self.restore_s is None or self.replay_s is None:
            return None
        return self.restore_s + self.replay_s

    def to_json(self) -> str:
        return jsonout.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> DrillResult:
        try:
            raw = load_object(text, "drill result")
        except ValueError as exc:
            raise ValueError(f"not a drill result ({exc})") from None
        # A newer logship at the standby site may add fields; the known ones suffice.
        known = {field.name for field in fields(cls)}
        try:
            return cls(**{key: value for key, value in raw.items() if key in known})
        except TypeError as exc:
            raise ValueError(f"not a drill result ({exc})") from None


# -- pure pieces -------------------------------------------------------------------------


def scratch_root(configured: Path | None, layout: SiteLayout, data_dir: Path) -> Path:
    """The drill's scratch folder: `[drill].scratch_dir`, else `<site>/<connector>/drill`.

    Refused when it is, lies inside or lies above the real standby's data dir: the
    drill creates and deletes whole folders there.
    """
    scratch = (
        configured if configured is not None else Path(layout.root / SCRATCH_NAME)
    ).absolute()
    data = data_dir.absolute()
    # Both as written and with symlinks resolved: either spelling may hide the overlap.
    for a, b in ((scratch, data), (Path(os.path.realpath(scratch)), Path(os.path.realpath(data)))):
        if a == b or b in a.parents:
            raise SafetyRefusal(
                f"drill scratch folder {scratch} is inside the standby's data dir {data_dir} "
                "([standby].data_dir): set [drill].scratch_dir to a folder of its own"
            )
        if a in b.parents:
            raise SafetyRefusal(
                f"drill scratch folder {scratch} holds the standby's data dir {data_dir} "
                "([standby].data_dir): set [drill].scratch_dir to a folder of its own"
            )
    return scratch


def run_dir_for(scratch: Path, pid: int) -> Path:
    return scratch / f"{RUN_PREFIX}{pid}"


def check_socket_path(run_dir: Path) -> None:
    """PostgreSQL cannot create its socket under a path longer than sun_path allows."""
    longest = run_dir / ".s.PGSQL.65535"
    if len(os.fsencode(longest)) > MAX_SOCKET_PATH:
        raise ConfigError(
            f"[drill].scratch_dir: the drill's socket path {longest} would be longer than "
            f"{MAX_SOCKET_PATH} bytes, the limit for Unix sockets; set [drill].scratch_dir "
            "to a shorter path"
        )


def segment_position(name: str) -> str:
    """A segment's place in the WAL stream without its timeline: its last 16 hex digits.

    Both halves are fixed-width upper-case hex, so these compare as strings exactly
    as the segment numbers compare, whatever the segment size.
    """
    return name[8:24]


def newest_segment(names: Iterable[str]) -> str | None:
    """The segment furthest along among `names`; history, backup and partial files and
    anything that is not a WAL name are ignored."""
    best: str | None = None
    for name in names:
        parsed = walnames.parse(name)
        if parsed is None or parsed.kind is not walnames.WalKind.SEGMENT:
            continue
        key = (segment_position(name), name[:8])
        if best is None or key > (segment_position(best), best[:8]):
            best = name
    return best


def newest_shipped_segment(manifest_dir: Path) -> str | None:
    """The newest segment with a manifest record (a record means the file is complete)."""
    try:
        entries = os.listdir(manifest_dir)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise OperationFailed(
            f"cannot read {manifest_dir} (permission denied): run the drill as the OS user "
            "that receives the shipped files and runs the standby PostgreSQL"
        ) from None
    return newest_segment(
        entry.removesuffix(".json") for entry in entries if entry.endswith(".json")
    )


def replay_reached(replayed_to: str, newest_shipped: str | None) -> bool:
    """Whether replay got at least as far as the newest shipped segment."""
    return newest_shipped is None or segment_position(replayed_to) >= segment_position(
        newest_shipped
    )


def end_of_replay(history: str) -> tuple[int, int]:
    """(timeline, LSN) where replay ended, from the history file of the timeline that
    ending recovery created: its last line is the parent timeline and the switch point."""
    last: tuple[int, int] | None = None
    for line in history.splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        if len(parts) < 2:
            raise ValueError(f"not a timeline history line: {line!r}")
        last = (int(parts[0]), walnames.lsn_to_int(parts[1]))
    if last is None:
        raise ValueError("empty timeline history")
    return last


def last_replayed_segment(history: str, segment_size: int) -> str:
    """The segment holding the last WAL byte replayed before the timeline switch."""
    timeline, lsn = end_of_replay(history)
    # The switch point is the end of the last record replayed. After a WAL switch it
    # is exactly a segment boundary, and that record lay in the segment before it.
    return walnames.segment_of_lsn(timeline, max(lsn - 1, 0), segment_size)


def drill_settings(
    run_dir: Path,
    data_dir: Path,
    port: int,
    python: str,
    config_path: Path,
    connector: str,
    this_site: str | None = None,
) -> list[tuple[str, str]]:
    """(name, postgresql.conf literal) pairs for the scratch copy's postgresql.auto.conf."""
    line = restore_command(python, config_path, connector, mark=False, this_site=this_site)
    return [
        # No TCP listener at all; the port only names the socket in the private run folder.
        ("port", str(port)),
        ("listen_addresses", "''"),
        ("unix_socket_directories", quote_conf_string(str(run_dir))),
        ("unix_socket_permissions", "0700"),
        # A backup's postgresql.conf may point these elsewhere (Debian keeps them in /etc).
        ("hba_file", quote_conf_string(str(data_dir / "pg_hba.conf"))),
        ("ident_file", quote_conf_string(str(data_dir / "pg_ident.conf"))),
        ("restore_command", quote_conf_string(line)),
        ("recovery_target_timeline", "'latest'"),
        # Off: the server accepts connections only once recovery has ended.
        ("hot_standby", "off"),
        # Nothing from the scratch copy may reach the site or the primary: not its new
        # timeline's history file, not a cleanup of "old" WAL, not a replication link.
        ("archive_mode", "off"),
        ("archive_command", "''"),
        ("archive_library", "''"),
        ("archive_cleanup_command", "''"),
        ("recovery_end_command", "''"),
        ("primary_conninfo", "''"),
        ("primary_slot_name", "''"),
        ("synchronous_standby_names", "''"),
        # Certificates are for TCP clients, and there are none.
        ("ssl", "off"),
        # The server's messages go to the run folder's log, which failures quote.
        ("logging_collector", "off"),
        ("cluster_name", "'logship-drill'"),
    ]


# -- the scratch server's process --------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def stop_scratch_server(pg_ctl: Path | None, data_dir: Path) -> bool:
    """Stop the server running in `data_dir`, if any; True once nothing runs there.

    `pg_ctl stop -m immediate` first (a scratch copy needs no clean shutdown), then
    SIGKILL to whatever still works in that folder.
    """
    if not processes_in(data_dir):
        return True
    found = pid_file(data_dir)
    if pg_ctl is not None and found is not None and runs_in(found[0], data_dir):
        cmd = [str(pg_ctl), "-D", str(data_dir), "-m", "immediate", "-w"]
        with contextlib.suppress(OperationFailed):
            run_tool(
                [*cmd, "-t", str(STOP_TIMEOUT_S), "stop"], data_dir, timeout=STOP_TIMEOUT_S + 30
            )
    deadline = time.monotonic() + KILL_WAIT_S
    while remaining := processes_in(data_dir):
        if time.monotonic() >= deadline:
            return False
        for pid in remaining:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(POLL_S)
    return True


def remove_run(pg_ctl: Path | None, run_dir: Path) -> bool:
    """Stop the run's server and delete the run folder; False (folder kept) when a
    server there could not be stopped: deleting files under a live server helps no one."""
    if not stop_scratch_server(pg_ctl, run_dir / DATA_NAME):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not run_dir.exists()


def remove_stale_runs(scratch: Path, bin_dir: Path | None) -> None:
    """Remove run folders a killed drill left behind (the caller holds the lock)."""
    try:
        entries = list(scratch.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith(RUN_PREFIX) and entry.is_dir() and not entry.is_symlink():
            try:  # the pg_ctl of that copy's own major version, when there is one
                pg_ctl: Path | None = find_program(
                    "pg_ctl", bin_dir=bin_dir, data_dir=entry / DATA_NAME
                )
            except LogshipError:
                pg_ctl = None  # SIGKILL alone still ends a scratch server
            remove_run(pg_ctl, entry)


@contextlib.contextmanager
def scratch_lock(scratch: Path) -> Iterator[None]:
    """One drill at a time per scratch folder; the kernel drops the lock with its holder,
    so whatever run folder is found under a free lock belongs to a drill that died."""
    try:
        ensure_private_dir(scratch)
        fd = os.open(scratch / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise OperationFailed(f"cannot use drill scratch folder {scratch}: {exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OperationFailed(
                f"another drill is running in {scratch}; wait for it to finish"
            ) from None
        yield
    finally:
        os.close(fd)


def _server_log_reason(log_file: Path) -> str:
    """The line of the server log that says why it stopped (its last FATAL or PANIC)."""
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no server log)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "FATAL:" in line or "PANIC:" in line:
            return line
    return lines[-1] if lines else "(empty server log)"


def _restore_wal_complaint(log_file: Path) -> str | None:
    """restore-wal's last refusal or error, as the server logged it (its stderr)."""
    marker = "logship restore-wal:"
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found = [line[line.index(marker) :].strip() for line in text.splitlines() if marker in line]
    return found[-1] if found else None


# -- the drill ---------------------------------------------------------------------------


class _Deadline:
    """`[drill].timeout` for the whole drill, checked between and inside steps."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self, during: str) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise OperationFailed(
                f"the drill did not finish within [drill].timeout = {self.seconds:g}s "
                f"(while {during})"
            )
        return left


@dataclass
class _Facts:
    """What a drill found out so far; kept when a later step fails."""

    backup_id: str | None = None
    restore_s: float | None = None
    replay_s: float | None = None
    replayed_to_wal: str | None = None
    newest_shipped_wal: str | None = None
    query_result: str | None = None
    start_wal: str | None = None


class _Drill:
    def __init__(
        self,
        config: Config,
        connector: PostgresConnector,
        layout: SiteLayout,
        scratch: Path,
        clock: Callable[[], float],
        python: str,
        report: ProgressCallback,
    ) -> None:
        self.config = config
        self.connector = connector
        self.layout = layout
        self.scratch = scratch
        self.clock = clock
        self.python = python
        self.report = report
        self.os_user = pwd.getpwuid(os.geteuid()).pw_name
        self.deadline = _Deadline(connector.drill.timeout)

    def _phase(self, phase: str) -> None:
        self.report(RestoreProgress(phase, 0, None))

    def run(self, facts: _Facts, run_dir: Path) -> None:
        connector = self.connector
        setting = f"connector {connector.name}: [standby].bin_dir"
        remove_stale_runs(self.scratch, connector.standby.bin_dir)
        archive, record = locate_backup(self.layout, connector.name, facts.backup_id)
        facts.backup_id = record.backup_id
        check_restore_command_runs(self.python)
        tools = find_server_tools(
            connector.standby.bin_dir, record, setting, ("pg_verifybackup", "pg_ctl")
        )
        try:
            run_dir.mkdir(mode=0o700)
        except OSError as exc:
            raise OperationFailed(
                f"cannot create the drill's run folder {run_dir}: {exc}"
            ) from None
        run_dir.chmod(0o700)  # mkdir's mode is filtered by the umask
        failed = False
        try:
            self._restore_and_replay(facts, archive, record, tools, run_dir)
        except BaseException:
            failed = True
            raise
        finally:
            self._phase("cleanup")
            removed = remove_run(tools["pg_ctl"], run_dir)
            if not removed and not failed:
                raise OperationFailed(
                    f"could not stop the drill's scratch server in {run_dir}; stop it "
                    f"(pg_ctl -D {run_dir / DATA_NAME} stop -m immediate) and remove the folder"
                )

    def _restore_and_replay(
        self,
        facts: _Facts,
        archive: Path,
        record: BackupRecord,
        tools: dict[str, Path],
        run_dir: Path,
    ) -> None:
        data_dir = run_dir / DATA_NAME
        log_file = run_dir / LOG_NAME
        prepare_data_dir(data_dir)
        began = self.clock()
        restore_verified(
            archive,
            record,
            data_dir,
            tools["pg_verifybackup"],
            self.report,
            check_deadline=lambda: self.deadline.left("restoring the backup"),
        )
        facts.restore_s = self.clock() - began
        facts.start_wal = _label_start_wal(data_dir)

        self._phase("configure")
        port = _free_port()
        settings = drill_settings(
            run_dir,
            data_dir,
            port,
            self.python,
            self.config.path.absolute(),
            self.connector.name,
            self.config.this_site if self.connector.sides is not None else None,
        )
        write_recovery_config(
            data_dir,
            settings,
            header=f"# logship drill of backup {record.backup_id} (later lines win)",
            # recovery.signal, not standby.signal: replay what is there, then end recovery.
            signal_name="recovery.signal",
            hba=local_peer_hba(
                self.os_user, f"Written by {WRITER}: a scratch copy.", replication=False
            ),
            replace_hba=True,
            writer=WRITER,
        )

        self._phase("replay")
        facts.newest_shipped_wal = newest_shipped_segment(Path(self.layout.manifest_dir))
        began = self.clock()
        start_server(
            tools["pg_ctl"],
            data_dir,
            log_file,
            timeout_s=max(1, math.ceil(self.deadline.left("starting the scratch server"))),
            # A data_directory line in the backup's postgresql.conf would otherwise send
            # this server into another directory (perhaps the real standby's).
            options=shlex.join(["-c", f"data_directory={data_dir}"]),
            what="the drill's scratch server",
        )
        with self._wait_until_recovered(data_dir, run_dir, port, log_file) as conn:
            facts.replay_s = self.clock() - began
            self._phase("query")
            facts.replayed_to_wal = self._replayed_to(conn, data_dir)
            facts.query_result = self._query(conn)
        if not replay_reached(facts.replayed_to_wal, facts.newest_shipped_wal):
            complaint = _restore_wal_complaint(log_file)
            raise OperationFailed(
                f"replay stopped at {facts.replayed_to_wal}, the site has WAL up to "
                f"{facts.newest_shipped_wal}: a gap or a refused file"
                + (f" ({complaint})" if complaint else "")
            )

    @contextlib.contextmanager
    def _wait_until_recovered(
        self, data_dir: Path, run_dir: Path, port: int, log_file: Path
    ) -> Iterator[psycopg.Connection[Any]]:
        """A connection, as soon as recovery has ended (replay done, new timeline)."""
        import psycopg

        while True:
            found = pid_file(data_dir)
            if found is None or not runs_in(found[0], data_dir):
                complaint = _restore_wal_complaint(log_file)
                raise OperationFailed(
                    f"the scratch server stopped during replay: {_server_log_reason(log_file)}"
                    + (f" ({complaint})" if complaint else "")
                )
            if found[1] == _READY:
                try:
                    conn = psycopg.connect(
                        host=str(run_dir),
                        port=port,
                        user=self.os_user,
                        dbname="postgres",
                        connect_timeout=10,
                        autocommit=True,
                        application_name=WRITER,
                    )
                except psycopg.OperationalError:
                    pass  # ready an instant before it listens: ask again
                else:
                    with conn:
                        yield conn
                    return
            self.deadline.left("replaying the shipped WAL")
            time.sleep(POLL_S)

    def _replayed_to(self, conn: psycopg.Connection[Any], data_dir: Path) -> str:
        """The segment replay ended in, from the new timeline's history file."""
        row = conn.execute(
            "select substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8),"
            " pg_current_wal_lsn()::text,"
            " (select bytes_per_wal_segment from pg_control_init())"
        ).fetchone()
        assert row is not None
        timeline, current_lsn, segment_size = int(row[0], 16), str(row[1]), int(row[2])
        history = data_dir / "pg_wal" / f"{timeline:08X}.history"
        try:
            return last_replayed_segment(history.read_text(encoding="ascii"), segment_size)
        except (OSError, ValueError):
            # Ending archive recovery always starts a timeline, so this is a fallback
            # only: the new timeline begins inside the last replayed segment.
            return walnames.segment_of_lsn(timeline, walnames.lsn_to_int(current_lsn), segment_size)

    def _query(self, conn: psycopg.Connection[Any]) -> str | None:
        import psycopg

        query = self.connector.drill.query
        left_ms = max(1, int(self.deadline.left("running the query") * 1000))
        try:
            conn.execute(f"set statement_timeout = {left_ms}")
            with conn.cursor() as cur:
                cur.execute(query)  # the operator's own SQL, from the config file
                result = cur.pgresult
                if cur.description is None or result is None or result.ntuples == 0:
                    return None
                # The text PostgreSQL itself sends, not a Python rendering of it.
                value = result.get_value(0, 0)
        except psycopg.Error as exc:
            raise OperationFailed(
                f"the query failed on the drilled copy ([drill].query {query!r}): {first_line(exc)}"
            ) from None
        return None if value is None else bytes(value).decode("utf-8", errors="replace")


def _label_start_wal(data_dir: Path) -> str | None:
    """Where replay of the restored copy starts, from its backup_label: the label any
    restore of this tar starts from; None when there is no readable one."""
    try:
        label = (data_dir / "backup_label").read_bytes()[: 1 << 16]
    except OSError:
        return None
    start = label_start_wal(label)
    return start if start is not None and walnames.parse(start) is not None else None


def write_drill_result(layout: SiteLayout, result: DrillResult) -> Path:
    """`<drill_dir>/<backup id>.json`, complete or absent, and durable on return."""
    assert result.backup_id is not None
    directory = Path(layout.drill_dir)
    ensure_private_dir(directory)
    final = directory / f"{result.backup_id}.json"
    write_bytes_atomically(final, result.to_json().encode() + b"\n")
    return final


def run_drill(
    config: Config,
    connector_name: str,
    backup_id: str | None,
    *,
    clock: Callable[[], float] = time.time,
    python: str = sys.executable,
    progress_callback: ProgressCallback | None = None,
) -> DrillResult:
    """Drill `backup_id` (None or "latest": the newest) of `connector_name`.

    A drill that ran and failed is a result with `passed` False and `error`, written
    to the site like a passed one. Exceptions are reserved for drills that could not
    run at all: wrong user, unknown connector, bad config, another drill running.
    `python` is the interpreter the scratch server's restore_command runs logship with.
    """
    if os.geteuid() == 0:
        raise UsageError(
            "drill must run as the OS user that runs the standby PostgreSQL, not root "
            "(for example: runuser -u postgres -- logship drill ...)"
        )
    connector = postgres_connector(config, connector_name)
    layout = SiteLayout.for_connector(config.site_of(connector).root, connector.name)
    scratch = scratch_root(connector.drill.scratch_dir, layout, connector.standby.data_dir)
    run_dir = run_dir_for(scratch, os.getpid())
    check_socket_path(run_dir)
    report = progress_callback or (lambda _progress: None)
    drill = _Drill(config, connector, layout, scratch, clock, python, report)
    facts = _Facts(backup_id=None if backup_id == LATEST else backup_id)
    with scratch_lock(scratch):
        started_at = clock()
        error: str | None = None
        try:
            drill.run(facts, run_dir)
        except (UsageError, ConfigError):
            raise  # not a drill result: the command line or the config needs fixing
        except LogshipError as exc:
            error = first_line(exc)
        except Exception as exc:
            error = f"{type(exc).__name__}: {first_line(exc)}"
        result = DrillResult(
            connector=connector.name,
            started_at=started_at,
            finished_at=clock(),
            passed=error is None,
            error=error,
            **asdict(facts),
        )
        if result.backup_id is None:
            return result  # no backup to file it under
        try:
            write_drill_result(layout, result)
        except OSError as exc:
            # The primary reads the drill from there: unrecorded, it did not pass.
            unrecorded = f"cannot record the result in {layout.drill_dir}: {exc}"
            return DrillResult(**{**asdict(result), "passed": False, "error": error or unrecorded})
        return result
