"""`logship demo [--dir DIR] [--seconds N]`: the whole cycle in a throwaway sandbox.

Builds the same Deployment the end-to-end tests use (a primary archiving through
logship, a private loopback sshd standing in for the DR site, one config), runs
`logship run`, brings a standby up from a shipped base backup, puts pgbench load on
the primary while showing shipping and replay live, then turns streaming on and puts
the same load on again, and shows the RPO exposure `status` reported during each
load (archive shipping only, then streaming through the SSH link). It compares the
data on both sides, then stops the primary as a disaster would and promotes the
standby with `logship promote`, showing the loss report and the RTO. Everything it
started is stopped again, on success, error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg

from logship.daemon import LOCK_NAME
from logship.demo_sandbox import OsUser, PgCluster
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.demo_sandbox.postgres import DEFAULT_BIN_DIR
from logship.demo_sandbox.procs import child_pids, terminate_and_wait
from logship.demo_sandbox.sshd import DEFAULT_SSHD
from logship.errors import LogshipError, OperationFailed, UsageError
from logship.manifest import SiteLayout
from logship.ui.demo_view import (
    Comparison,
    DemoSnapshot,
    DemoView,
    ExposurePhase,
    ReplayPosition,
    lsn_to_int,
    make_view,
)

MARKER_NAME = ".logship-demo"
ERROR_LOG_NAME = "demo-error.log"
PGBENCH_LOG_NAME = "pgbench.log"
STATUS_LOG_NAME = "status-sampler.log"
# Tight enough that `exposure / RPO` visibly moves during a short load.
DEMO_RPO = "30s"
REFRESH_S = 1.0
# The standby asks for the next segment every 5 s (wal_retrieve_retry_interval) and
# archive_timeout is 10 s: minutes of silence mean something is broken.
CATCH_UP_TIMEOUT_S = 180.0
PGBENCH_SCALE = 4
PGBENCH_CLIENTS = 4
PGBENCH_THREADS = 2
PG_PROGRAMS = ("initdb", "pg_ctl", "pg_basebackup", "pgbench")
COMPARED = (
    ("transactions (count(*) of pgbench_history)", "select count(*) from pgbench_history"),
    (
        "total balance (sum(abalance) of pgbench_accounts)",
        "select sum(abalance) from pgbench_accounts",
    ),
)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_PGBENCH_TPS = re.compile(rb"progress: [\d.]+ s, ([\d.]+) tps")
_PGBENCH_FINAL_TPS = re.compile(rb"^tps = ([\d.]+)", re.M)
# The daemon restarts, opens the tunnel and creates the slot; the standby's
# walreceiver then connects and catches up the last few segments.
STREAM_UP_TIMEOUT_S = 90.0
# Status readings kept for the exposure figures, four a second: a load longer than
# about 17 minutes is summed up by its last 17 minutes.
STATUS_HISTORY = 4096
ARCHIVE_ONLY = "archive shipping only"
STREAMING = "streaming through the SSH link"


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that the cleanup in `finally` still runs."""


def _raise_terminated(_signum: int, _frame: FrameType | None) -> None:
    raise Terminated


# -- before anything is started ---------------------------------------------------------


def preflight() -> None:
    """Fail in one line, before touching the disk, when a needed program is missing."""
    if not DEFAULT_SSHD.exists():
        raise OperationFailed(
            f"OpenSSH server not found ({DEFAULT_SSHD}): "
            "install it with 'apt-get install openssh-server'"
        )
    missing = [name for name in PG_PROGRAMS if not (DEFAULT_BIN_DIR / name).exists()]
    if missing:
        raise OperationFailed(
            f"PostgreSQL 15 programs not found in {DEFAULT_BIN_DIR} ({', '.join(missing)}): "
            "install them with 'apt-get install postgresql-15'"
        )


@dataclass(frozen=True)
class Sandbox:
    path: Path
    # False for a directory the user created empty beforehand: emptied, not removed.
    remove_dir: bool


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _make_dirs(path: Path) -> None:
    """Create `path` and its missing parents as 0755 whatever the umask: PostgreSQL,
    running as another OS user, must traverse all of them."""
    for directory in reversed([p for p in (path, *path.parents) if not p.exists()]):
        directory.mkdir(mode=0o755)
        directory.chmod(0o755)


def _fresh_tmp_dir() -> Path:
    path = Path(tempfile.mkdtemp(prefix="logship-demo-", dir="/tmp"))
    path.chmod(0o755)
    return path


def choose_sandbox(requested: Path, user: OsUser, view: DemoView) -> Sandbox:
    path = requested.expanduser().absolute()
    if not user.can_reach(_nearest_existing(path.parent)):
        fresh = _fresh_tmp_dir()
        view.info(
            f"{path} is not reachable by the OS user {user.name!r} that runs PostgreSQL: "
            f"using {fresh} instead"
        )
        _mark(fresh)
        return Sandbox(fresh, remove_dir=True)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--dir {path}: exists and is not a directory")
    remove_dir = True
    if path.is_dir() and any(path.iterdir()):
        if not (path / MARKER_NAME).is_file():
            raise UsageError(
                f"--dir {path}: exists, is not empty and is not a logship demo sandbox "
                f"(no {MARKER_NAME}); pick another folder"
            )
        view.info(f"reusing the previous demo sandbox {path} (its old contents are removed)")
        stop_leftovers(path, user)
        _empty(path)
    elif path.is_dir():
        remove_dir = False
    else:
        _make_dirs(path)
    path.chmod(0o755)
    _mark(path)
    return Sandbox(path, remove_dir)


def _mark(path: Path) -> None:
    (path / MARKER_NAME).write_text(
        "A `logship demo` sandbox: `logship demo --dir` may reuse and remove this folder.\n"
    )


def _empty(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; only its parent's wait() is missing.
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _terminate_if_ours(pid_file: Path, needle: str) -> None:
    """SIGTERM the process named in `pid_file`, but only if its command line mentions
    `needle`: after a reboot the pid may belong to anything."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError, IndexError):
        return
    if needle not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not _pid_alive(pid), 30, f"pid {pid} from {pid_file} to exit")


def stop_leftovers(path: Path, user: OsUser) -> None:
    """Stop what a previous demo killed with SIGKILL left running in `path`."""
    old = Deployment(path, user)
    _terminate_if_ours(old.state_dir / LOCK_NAME, str(old.config_path))
    for cluster in (old.standby, old.primary):
        cluster.stop(mode="immediate")
    _terminate_if_ours(old.sshd.pid_file, str(old.sshd.config_file))


# -- while it runs ----------------------------------------------------------------------


def _postmaster_pid(cluster: PgCluster) -> int | None:
    try:
        return int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _one_line(exc: BaseException) -> str:
    """The most telling line of an error: a failed child's message ends with its stderr."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    if not isinstance(exc, LogshipError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text[:300]


class Pgbench:
    """pgbench against the primary as the cluster's OS user, in the background, so the
    live view keeps refreshing and an interrupt can stop it."""

    def __init__(self, cluster: PgCluster, log_file: Path) -> None:
        self.cluster = cluster
        self.log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self, args: Sequence[str]) -> None:
        cmd = [
            *self.cluster.user.command_prefix(),
            str(self.cluster.bin_dir / "pgbench"),
            # Sandbox clusters listen on loopback only.
            *("-h", "127.0.0.1", "-p", str(self.cluster.port), "-U", self.cluster.user.name),
            *args,
            "postgres",
        ]
        # A PGOPTIONS or PGSSLMODE of the caller's must not reach the sandbox cluster.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
        with open(self.log_file, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"$ {subprocess.list2cmdline(cmd)}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.log_file.parent,
                env=env,
            )

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None if still running after `timeout` seconds."""
        assert self._proc is not None
        try:
            return self._proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def _this_run(self, pattern: re.Pattern[bytes]) -> float | None:
        try:
            with open(self.log_file, "rb") as log:
                log.seek(self._log_offset)
                found = pattern.findall(log.read())
        except OSError:
            return None
        return float(found[-1]) if found else None

    def tps(self) -> float | None:
        """The last rate `pgbench -P` reported in this run."""
        return self._this_run(_PGBENCH_TPS)

    def final_tps(self) -> float | None:
        """The rate pgbench reported for its whole run, once it has finished."""
        return self._this_run(_PGBENCH_FINAL_TPS)

    def last_line(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate_and_wait(proc)


StatusReading = tuple[list[dict[str, Any]], str | None]  # (connectors, why there are none)


@dataclass(frozen=True)
class TimedReading:
    #: the wall-clock time the status was computed for
    at: float
    connectors: list[dict[str, Any]]
    error: str | None


def parse_reading(line: bytes) -> TimedReading | None:
    try:
        document = json.loads(line)
        return TimedReading(
            at=float(document["at"]),
            connectors=list(document.get("connectors") or []),
            error=document.get("error"),
        )
    except (ValueError, KeyError, TypeError):
        return None


class StatusPoller:
    """What `logship status --json` shows, several times a second, from one
    long-lived sampler run as the PostgreSQL OS user (status_sampler): a fresh
    `status` process per reading takes seconds to start next to pgbench on a small
    machine, too few readings for the exposure figures of a short load."""

    def __init__(self, dep: Deployment, log_file: Path) -> None:
        self.dep = dep
        self.log_file = log_file
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._changed = threading.Condition()
        self._latest: StatusReading = ([], "waiting for the first `logship status`")
        self._history: deque[TimedReading] = deque(maxlen=STATUS_HISTORY)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        cmd = [
            *self.dep.user.command_prefix(),
            sys.executable,
            *("-m", "logship.demo_sandbox.status_sampler"),
            *("--config", str(self.dep.config_path)),
        ]
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, cwd=self.dep.root
            )
        self._reader = threading.Thread(
            target=self._read, args=(self._proc,), name="demo-status", daemon=True
        )
        self._reader.start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            reading = parse_reading(line)
            if reading is None:
                continue
            with self._changed:
                self._latest = (reading.connectors, reading.error)
                self._history.append(reading)
                self._changed.notify_all()
        with self._changed:
            self._latest = ([], f"the status sampler exited (log {self.log_file})")
            self._changed.notify_all()

    def latest(self) -> StatusReading:
        with self._changed:
            return self._latest

    def fresh(self, timeout: float = 10.0) -> StatusReading:
        """The first reading computed after now (the latest one after `timeout`)."""
        now = time.time()
        with self._changed:
            self._changed.wait_for(
                lambda: bool(self._history) and self._history[-1].at > now, timeout
            )
            return self._latest

    def readings(self, since: float, until: float) -> list[TimedReading]:
        """The readings computed for wall-clock times from `since` to `until`."""
        with self._changed:
            return [r for r in self._history if since <= r.at <= until]

    def stop(self) -> None:
        """Returns once the sampler has exited: none may outlive the sandbox."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate_and_wait(proc)
        if self._reader is not None:
            self._reader.join(timeout=15)
            self._reader = None


class Probe:
    """Reads what the live view shows: `status --json`, the site's manifest, both LSNs."""

    def __init__(self, dep: Deployment) -> None:
        self.dep = dep
        self.manifest_dir = Path(
            str(SiteLayout.for_connector(str(dep.incoming), dep.connector).manifest_dir)
        )
        self.poller = StatusPoller(dep, dep.root / STATUS_LOG_NAME)

    def shipped(self) -> int:
        try:
            return sum(1 for p in self.manifest_dir.iterdir() if p.name.endswith(".json"))
        except OSError:
            return 0

    @staticmethod
    def lsn(cluster: PgCluster, sql: str) -> str | None:
        try:
            rows = cluster.query(sql)
        except psycopg.Error:
            return None  # not started yet, or restarting: shown as such
        return str(rows[0][0]) if rows and rows[0][0] is not None else None

    def replay(self) -> ReplayPosition:
        return ReplayPosition(
            primary_lsn=self.lsn(self.dep.primary, "select pg_current_wal_lsn()::text"),
            standby_lsn=self.lsn(self.dep.standby, "select pg_last_wal_replay_lsn()::text"),
        )

    def snapshot(
        self, phase: str, elapsed_s: float, planned_s: float | None, *, fresh: bool = False
    ) -> DemoSnapshot:
        """`fresh` waits for a status read now instead of the poller's latest one."""
        connectors, error = self.poller.fresh() if fresh else self.poller.latest()
        return DemoSnapshot(
            phase=phase,
            elapsed_s=elapsed_s,
            planned_s=planned_s,
            connectors=connectors,
            status_error=error,
            shipped=self.shipped(),
            replay=self.replay(),
        )


# -- the demo ---------------------------------------------------------------------------


class Demo:
    def __init__(self, sandbox: Sandbox, user: OsUser, seconds: int, view: DemoView) -> None:
        self.sandbox = sandbox
        self.seconds = seconds
        self.view = view
        # check_dsn: promote, run "at the DR site", can see that the primary is down.
        self.dep = Deployment(sandbox.path, user, rpo=DEMO_RPO, check_dsn=True, read_ahead=True)
        self.pgbench = Pgbench(self.dep.primary, sandbox.path / PGBENCH_LOG_NAME)
        self.probe = Probe(self.dep)
        # What we started, so that the end can prove none of it is still running.
        self.started: dict[str, int] = {}
        self.doing = "starting"

    @contextlib.contextmanager
    def _step(self, text: str) -> Iterator[Callable[[str], None]]:
        self.doing = text
        with self.view.step(text) as handle:

            def detail(value: str) -> None:
                handle.detail = value

            yield detail

    def _record(self, name: str, pid: int | None) -> int | None:
        if pid is not None:
            self.started[name] = pid
        return pid

    def _check_daemon(self) -> None:
        daemon = self.dep.daemon
        code = None if daemon is None else daemon.poll()
        if daemon is None or code is not None:
            raise OperationFailed(f"logship run exited with code {code}; log {self.dep.daemon_log}")

    # -- phases -------------------------------------------------------------------------

    def build(self) -> None:
        dep = self.dep
        with self._step("building the sandbox: loopback sshd, primary PostgreSQL, config") as d:
            dep.build_primary()
            sshd = self._record("sshd", dep.sshd.pid)
            primary = self._record("primary PostgreSQL", _postmaster_pid(dep.primary))
            d(
                f"sshd pid {sshd} on {dep.sshd.host}:{dep.sshd.port}, "
                f"primary pid {primary} on port {dep.primary.port}"
            )
        with self._step("starting `logship run`, the shipping daemon") as d:
            daemon = dep.start_daemon()
            self._record("logship run", daemon.pid)
            # Status reads only the catalog: started now, it has an answer by the load.
            self.probe.poller.start()
            self._record("status sampler", self.probe.poller.pid)
            d(f"pid {daemon.pid}, log {dep.daemon_log}")
        with self._step("taking a base backup over SSH and restoring the standby from it") as d:
            dep.standby_up()
            self._check_daemon()
            # runuser's child is the daemon itself; by now it has surely been forked.
            for child in child_pids(self.started["logship run"]):
                self._record(f"logship run's child {child}", child)
            standby = self._record("standby PostgreSQL", _postmaster_pid(dep.standby))
            d(
                f"standby pid {standby} on port {dep.standby.port}, "
                "replaying through `logship restore-wal`"
            )

    def _show_until(
        self,
        update: Callable[[DemoSnapshot], None],
        phase: Callable[[], str],
        planned_s: float | None,
        done: Callable[[DemoSnapshot], bool],
        *,
        pause: Callable[[float], object] = time.sleep,
        last_fresh: bool = False,
    ) -> None:
        """Refresh the view once per REFRESH_S until `done` says so; `pause` may return
        early when what is awaited has happened."""
        started = time.monotonic()
        while True:
            tick = time.monotonic()
            snap = self.probe.snapshot(phase(), tick - started, planned_s)
            self._check_daemon()
            if done(snap):
                if last_fresh:
                    # The frame left on screen should not show a second-old status.
                    snap = self.probe.snapshot(phase(), tick - started, planned_s, fresh=True)
                update(snap)
                return
            update(snap)
            pause(max(0.0, REFRESH_S - (time.monotonic() - tick)))

    def _load(
        self,
        update: Callable[[DemoSnapshot], None],
        args: Sequence[str],
        label: str,
        planned: int | None,
    ) -> None:
        self.doing = label
        self.pgbench.start(args)

        def phase() -> str:
            tps = self.pgbench.tps()
            return label if tps is None else f"{label}: {tps:.0f} tps"

        def finished(_snap: DemoSnapshot) -> bool:
            code = self.pgbench.wait(0)
            if code not in (None, 0):
                raise OperationFailed(
                    f"pgbench exited with code {code}: {self.pgbench.last_line()} "
                    f"(log {self.pgbench.log_file})"
                )
            return code == 0

        self._show_until(update, phase, planned, finished, pause=self.pgbench.wait)

    def _measured_load(self, update: Callable[[DemoSnapshot], None], label: str) -> ExposurePhase:
        """pgbench's write load, and what `status` reported about exposure meanwhile."""
        since = time.time()
        self._load(
            update,
            [
                *("-c", str(PGBENCH_CLIENTS), "-j", str(PGBENCH_THREADS)),
                *("-T", str(self.seconds), "-P", "1", "-n"),
            ],
            f"{label}: pgbench -T {self.seconds}, {PGBENCH_CLIENTS} clients writing",
            self.seconds,
        )
        entries = [
            next((e for e in reading.connectors if e.get("name") == self.dep.connector), {})
            for reading in self.probe.poller.readings(since, time.time())
        ]
        return ExposurePhase(
            label=label,
            exposures=tuple(e.get("rpo_exposure_s") for e in entries),
            streaming=tuple(e.get("streaming") for e in entries),
            sync_modes=tuple(e.get("sync_mode") for e in entries),
            tps=self.pgbench.final_tps(),
        )

    def load_and_catch_up(self, label: str, *, initialise: bool) -> ExposurePhase:
        with self.view.live() as update:
            if initialise:
                self._load(
                    update,
                    ["-i", "-s", str(PGBENCH_SCALE), "-q"],
                    f"pgbench -i -s {PGBENCH_SCALE}: loading {PGBENCH_SCALE * 100_000} accounts",
                    None,
                )
            phase = self._measured_load(update, label)
            # pg_switch_wal()'s own answer is where the closed segment ends; the current
            # LSN could already be past it and wait for archive_timeout.
            ((target,),) = self.dep.primary.query("select pg_switch_wal()::text")
            caught_up = f"catching up: WAL switched at {target}, standby replaying to it"
            self.doing = caught_up
            started = time.monotonic()

            def replayed(snap: DemoSnapshot) -> bool:
                lsn = snap.replay.standby_lsn
                if lsn is not None and lsn_to_int(lsn) >= lsn_to_int(str(target)):
                    return True
                if time.monotonic() - started > CATCH_UP_TIMEOUT_S:
                    raise OperationFailed(
                        f"the standby did not replay up to {target} within "
                        f"{CATCH_UP_TIMEOUT_S:.0f}s (it is at {lsn or 'unknown'}); "
                        f"standby log {self.dep.standby.log_file}"
                    )
                return False

            self._show_until(update, lambda: caught_up, None, replayed, last_fresh=True)
        return phase

    def stream(self) -> None:
        """Streaming turned on in the running deployment, then awaited: the second
        load is measured with the standby streaming, not still connecting."""
        dep = self.dep
        with self._step(
            "turning streaming on: [streaming] enabled in the connector's config and "
            "`logship run` restarted; the daemon points the standby at the tunnel"
        ) as d:
            dep.enable_streaming()
            daemon = dep.daemon
            assert daemon is not None
            self._record("logship run (streaming)", daemon.pid)

            def streaming() -> bool:
                self._check_daemon()
                # runuser's child is the daemon itself; by now it has surely been forked.
                for child in child_pids(daemon.pid):
                    self._record(f"logship run's child {child}", child)
                connectors, _error = self.probe.poller.fresh()
                return any(
                    e.get("name") == dep.connector and e.get("streaming") == "streaming"
                    for e in connectors
                )

            try:
                wait_for(streaming, STREAM_UP_TIMEOUT_S, "`logship status` to show streaming")
            except TimeoutError as exc:
                raise OperationFailed(
                    f"{exc}; daemon log {dep.daemon_log}, standby log {dep.standby.log_file}"
                ) from None
            d(
                f"daemon pid {daemon.pid}; the standby streams from "
                f"127.0.0.1:{dep.stream_port}, which sshd listens on at the DR site"
            )

    def compare(self) -> Comparison:
        self.doing = "comparing the primary with the standby"
        rows = []
        for what, sql in COMPARED:
            ((primary,),) = self.dep.primary.query(sql)
            ((standby,),) = self.dep.standby.query(sql)
            rows.append((what, primary, standby))
        result = Comparison(rows)
        self.view.comparison(result)
        return result

    def promote(self) -> None:
        """The disaster: the primary vanishes, and the standby is promoted, checked."""
        with self._step(
            "disaster: stopping the primary immediately, then `logship promote` at the DR site"
        ) as detail:
            self.dep.primary.stop(mode="immediate")
            result = self.dep.logship("promote", self.dep.connector, "--timeout", "120")
            detail("the standby is the primary now, and shipping into it is fenced off")
        for line in result.stdout.splitlines():
            # The loss report and the achieved RTO: what the on-call engineer reads.
            if any(key in line for key in ("] loss", "] promote:", "] record:")):
                self.view.info(line.split("] ", 1)[-1])

    # -- the end ------------------------------------------------------------------------

    def _still_running(self) -> list[str]:
        return [
            f"{name} (pid {pid})" for name, pid in self.started.items() if pid and _pid_alive(pid)
        ]

    def _stop_all(self) -> None:
        """Idempotent: each part does nothing when already stopped."""
        self.pgbench.stop()
        self.probe.poller.stop()
        self.dep.teardown()
        # pg_ctl stop returns once postmaster.pid is gone, a moment before the process
        # itself: poll briefly rather than report a false leftover.
        try:
            wait_for(lambda: not self._still_running(), 15, "stopped processes to exit")
        except TimeoutError:
            left = ", ".join(self._still_running())
            raise OperationFailed(f"still running after cleanup: {left}") from None

    def teardown(self) -> str | None:
        """Stop everything; None when nothing we started is still running."""
        # A second Ctrl-C or SIGTERM here would strand servers: ignored until everything
        # is down (children inherit the ignore, so pg_ctl stop is not cut short either).
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            with self._step("stopping pgbench, the daemon, both clusters and sshd"):
                self._stop_all()
        except Exception:
            # The view may be what failed (stdout closed by `| head`) before anything
            # was stopped, or a stop hit a transient error: stopping is idempotent, so
            # one more plain try, and only its failure counts.
            try:
                self._stop_all()
            except Exception as exc:
                self._log_error(exc)
                return _one_line(exc)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return None

    def _log_error(self, exc: BaseException) -> None:
        with contextlib.suppress(OSError), open(self.sandbox.path / ERROR_LOG_NAME, "a") as log:
            log.write(f"while {self.doing}:\n{''.join(traceback.format_exception(exc))}\n")

    def _logs(self) -> str:
        dep = self.dep
        logs = {
            "daemon": dep.daemon_log,
            "primary": dep.primary.log_file,
            "standby": dep.standby.log_file,
            "sshd": dep.sshd.log_file,
            "pgbench": self.pgbench.log_file,
            "status": self.probe.poller.log_file,
            "error": self.sandbox.path / ERROR_LOG_NAME,
        }
        return ", ".join(f"{name} {path}" for name, path in logs.items() if path.exists())

    def _remove_sandbox(self) -> None:
        if self.sandbox.remove_dir:
            shutil.rmtree(self.sandbox.path)
        else:
            _empty(self.sandbox.path)

    def run(self) -> int:
        started = time.monotonic()
        self.view.info(
            f"logship demo in {self.sandbox.path}: primary site, DR site and sshd all on "
            "127.0.0.1; everything is stopped and removed at the end"
        )
        failure: str | None = None
        interrupted: BaseException | None = None
        previous_term = signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            self.build()
            phases = [self.load_and_catch_up(ARCHIVE_ONLY, initialise=True)]
            self.stream()
            phases.append(self.load_and_catch_up(STREAMING, initialise=False))
            self.view.exposure(phases)
            result = self.compare()
            if not result.matched:
                failure = (
                    "pgbench committed no transaction to compare"
                    if result.equal
                    else "the standby's data differs from the primary's"
                )
            else:
                self.promote()
        except (KeyboardInterrupt, Terminated) as exc:
            interrupted = exc
        except Exception as exc:
            failure = f"{self.doing}: {_one_line(exc)}"
            self._log_error(exc)
        finally:
            try:
                left = self.teardown()
            finally:
                signal.signal(signal.SIGTERM, previous_term)
        took = time.monotonic() - started
        if left is not None:
            # Removing folders under a live server would hide it, not stop it.
            failure = f"{failure}; and stopping failed: {left}" if failure else left
        if failure is not None:
            self.view.error(f"logship demo: {failure}")
            self.view.info(f"sandbox kept at {self.sandbox.path}; logs: {self._logs()}")
            return 1
        self._remove_sandbox()
        gone = "removed" if self.sandbox.remove_dir else "emptied"
        if interrupted is not None:
            self.view.info(f"interrupted: everything stopped, {self.sandbox.path} {gone}")
            if isinstance(interrupted, KeyboardInterrupt):
                raise interrupted
            return 128 + signal.SIGTERM
        self.view.info(f"everything stopped, {self.sandbox.path} {gone}; the demo took {took:.0f}s")
        return 0


def run(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        raise UsageError(f"--seconds must be a positive number, not {args.seconds}")
    preflight()
    view = make_view()
    user = OsUser.for_postgres()
    sandbox = choose_sandbox(Path(args.dir), user, view)
    # pgbench -T takes whole seconds.
    return Demo(sandbox, user, max(1, math.ceil(args.seconds)), view).run()
