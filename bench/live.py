"""Live shipping under a real pgbench load: segment latency, keep-up, primary overhead.

Usage: python bench/live.py [--only latency|keepup|overhead] [--quick]

One PostgreSQL 15 primary whose archive_command is `logship archive-wal`, one
`logship run` daemon shipping its spool to a private sshd on loopback, and
pgbench writing. See bench/README.md for what each figure means. JSON lines on
stdout, progress and a table on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import common
import psycopg
from common import MIB, PG_BIN, SEGMENT_SIZE, Report, log, mean, median
from psycopg import sql

from logship.config.load import load_config
from logship.demo_sandbox import OsUser, PgCluster, SshServer, free_port
from logship.demo_sandbox.procs import kill_tree
from logship.engines.postgresql.archive_wal import SHIPPED_DIR
from logship.engines.postgresql.standby_status import ask_standby_status
from logship.engines.postgresql.walnames import lsn_to_int
from logship.manifest import ManifestRecord, SiteLayout
from logship.ship.sftp import SftpTransport

BENCH = "live"
CONNECTOR = "bench"
PHASES = ("latency", "keepup", "overhead")
# The targets.
TARGET_P50_S = 0.3
TARGET_P99_S = 1.0
TARGET_BACKLOG = 2
TARGET_TPS_RATIO = 0.97
#: how often the keep-up run samples the backlog
SAMPLE_S = 0.5
#: how often the latency run looks for newly closed segments (archive_status)
CLOSE_POLL_S = 0.05
#: keep-up time series summarized per window of this many seconds
WINDOW_S = 30.0
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_STATUS_FILE = re.compile(r"^([0-9A-F]{24})\.(ready|done)$")
_TPS = re.compile(r"^tps = ([0-9.]+) ", re.MULTILINE)
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): with n values, p99 is the max below n=100."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats
    return ordered[int(rank) - 1]


def add_p50_p99(report: Report, name: str, values: Sequence[float], unit: str, detail: str) -> None:
    """`NAME_p50` (with `detail`) and `NAME_p99` of `values`."""
    report.add(f"{name}_p50", percentile(values, 50), unit, detail=detail)
    report.add(f"{name}_p99", percentile(values, 99), unit)


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


# -- processes -----------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """`pid` and every process below it (children of any of its threads)."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            with contextlib.suppress(OSError):
                todo += [
                    int(c) for c in Path(f"/proc/{current}/task/{tid}/children").read_text().split()
                ]
    return found


def cpu_seconds(pid: int | None) -> float:
    """CPU time (user + system) of `pid` and its descendants, with the children they
    have already reaped: short-lived children (archive_command, `standby status` at
    the site) count too."""
    if pid is None:
        return 0.0
    total = 0
    for proc in _descendants(pid):
        try:
            stat = Path(f"/proc/{proc}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / _CLK_TCK


#: the parts CpuMeter reports, in cores
CPU_PARTS = ("postgres", "pgbench", "archive_command", "daemon", "site", "other", "idle")


class CpuMeter:
    """Where the machine's CPU went during a run, in cores: this benchmark's processes
    by role, `other` for everything else that kept a core busy (other work on the
    machine), and `idle`."""

    def __init__(self, setup: Setup, daemon: Daemon) -> None:
        self.setup = setup
        self.daemon = daemon
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def _snapshot(self) -> dict[str, float]:
        busy, idle = common.machine_cpu()
        postgres = cpu_seconds(self._postmaster)
        archiver = cpu_seconds(self._archiver)
        mine = os.times()
        return {
            "machine": busy,
            "idle": idle,
            # archive_command runs below the archiver, which runs below the postmaster.
            "postgres": postgres - archiver,
            "archive_command": archiver,
            # pgbench is the one child this script waits for during a run.
            "pgbench": mine.children_user + mine.children_system,
            "self": mine.user + mine.system,
            "daemon": cpu_seconds(self.daemon.pid),
            "site": cpu_seconds(self.setup.server.pid),
        }

    def start(self) -> None:
        pid_file = self.setup.cluster.data_dir / "postmaster.pid"
        self._postmaster = int(pid_file.read_text().split()[0])
        self._archiver = archiver_pid(self.setup.cluster)
        self._t0 = time.monotonic()
        self._start = self._snapshot()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        end = self._snapshot()
        cores = {k: (end[k] - self._start[k]) / wall for k in end}
        ours = sum(cores[k] for k in cores if k not in ("machine", "idle"))
        cores["other"] = max(0.0, cores["machine"] - ours)
        return cores


def describe_cpu(cores: dict[str, float]) -> str:
    parts = ", ".join(f"{name} {cores[name]:.2f}" for name in CPU_PARTS)
    return f"CPU in cores of {os.cpu_count()}: {parts}"


class Children:
    """Every process this script starts outside the sandbox helpers, so each can be
    stopped by its PID on any exit."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def add(self, proc: subprocess.Popen[Any]) -> subprocess.Popen[Any]:
        self._procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                kill_tree(proc.pid)  # runuser's child first, then runuser
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        self._procs.clear()


CHILDREN = Children()


# -- the primary, the site and the daemon --------------------------------------------


@dataclass
class Setup:
    root: Path
    user: OsUser
    server: SshServer
    cluster: PgCluster
    config: Path
    state: Path
    incoming: Path
    handover_log: Path
    timed_command: str  # archive_command that also notes handover and return times
    plain_command: str  # archive_command as in production

    @property
    def spool(self) -> Path:
        return self.state / "spool" / CONNECTOR

    @property
    def archive_status(self) -> Path:
        return self.cluster.data_dir / "pg_wal" / "archive_status"

    @property
    def layout(self) -> SiteLayout:
        return SiteLayout.for_connector(self.incoming, CONNECTOR)

    def record(self, name: str) -> ManifestRecord | None:
        try:
            return ManifestRecord.from_json(Path(self.layout.record_path(name)).read_bytes())
        except FileNotFoundError:
            return None


def write_config(
    root: Path,
    server: SshServer,
    state: Path,
    incoming: Path,
    cluster: PgCluster,
    pycache: Path,
    keep_shipped_mib: int | None,
    read_ahead: bool = False,
) -> Path:
    """logship.toml with one postgresql connector, as a real primary's, readable by
    the PostgreSQL user (archive-wal and the daemon run as it). With `read_ahead`,
    `[primary] data_dir` names the cluster: the daemon ships each `.ready` segment
    from pg_wal and archive-wal confirms it."""
    directory = root / "config"
    (directory / "connectors").mkdir(parents=True)
    directory.chmod(0o755)
    (directory / "connectors").chmod(0o755)
    config = directory / "logship.toml"
    # The site runs logship too (`standby status`, every lag_sample_interval), as
    # in a real deployment: that call runs on the shipping thread, so it belongs
    # in the latency figures. An SSH session starts with a clean environment, so
    # the bytecode cache is named here (see primary_and_site).
    site_command = ["env", f"PYTHONPYCACHEPREFIX={pycache}", sys.executable, "-m", "logship"]
    config.write_text(
        common.main_config_text(state, server, incoming)
        + f"command = {json.dumps([*site_command, '--config', str(config)])}\n"
    )
    # No standby is built: its DSN reaches nothing and its data dir does not
    # exist, so `standby status` answers "unreachable" at once. The heartbeat
    # stays on (the default): its one write a second is part of the daemon's
    # cost to the primary.
    (directory / "connectors" / f"{CONNECTOR}.toml").write_text(
        f"""kind = "postgresql"
site = "dr"
rpo = "60s"
compression = "zstd"
{"" if keep_shipped_mib is None else f"keep_shipped_mib = {keep_shipped_mib}"}

[primary]
dsn = "{cluster.socket_dsn()}"
bin_dir = "{PG_BIN}"
{f'data_dir = "{cluster.data_dir}"' if read_ahead else ""}

[standby]
dsn = "host=/nonexistent port=5433 dbname=postgres"
data_dir = "{root / "no-standby"}"
"""
    )
    for path in directory.rglob("*.toml"):
        path.chmod(0o644)
    return config


def timed_archive_command(root: Path, logship: list[str], handover_log: Path) -> str:
    """An archive_command that runs archive-wal between two clock readings.

    archive-wal takes its close time after Python has started; the shell's reading
    is the moment PostgreSQL handed the segment over. It costs a few ms per segment
    (a shell and two `date`), used only where latency is measured.
    """
    script = root / "config" / "archive-timed.sh"
    script.write_text(
        "#!/bin/sh\n"
        "handed_over=$(date +%s.%N)\n"
        f'{shlex.join(logship)} "$1"\n'
        "status=$?\n"
        f'echo "$2 $handed_over $(date +%s.%N) $status" >> {shlex.quote(str(handover_log))}\n'
        "exit $status\n"
    )
    script.chmod(0o755)
    return f"{shlex.quote(str(script))} %p %f"


class Daemon:
    """`logship run` as the PostgreSQL user (it shares the spool with archive-wal);
    its JSON log is read as it grows."""

    def __init__(self, setup: Setup, log_path: Path, nice: int = 0) -> None:
        self.setup = setup
        self.log_path = log_path
        self.nice = nice
        #: settings that differ from a default deployment, named in the report
        self.variant = [f"logship run at nice {nice}"] if nice else []
        self._proc: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._partial = b""
        self.events: list[dict[str, Any]] = []

    @property
    def note(self) -> str:
        """For the report: how the daemon ran, when not as it would by default."""
        return "".join(f"; {v}" for v in self.variant)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The daemon itself, not runuser in front of it."""
        if self._proc is None:
            return None
        children = _descendants(self._proc.pid)[1:]
        return children[0] if children else self._proc.pid

    def start(self) -> None:
        if self.running:
            return
        since = len(self.read())
        cmd = [
            # Every thread inherits it, unlike setpriority() on a running process.
            *(["nice", "-n", str(self.nice)] if self.nice else []),
            *self.setup.user.command_prefix(),
            sys.executable,
            "-m",
            "logship",
            "--config",
            str(self.setup.config),
            "run",
        ]
        with open(self.log_path, "ab") as out:
            self._proc = CHILDREN.add(
                subprocess.Popen(cmd, stdout=out, stderr=out, cwd=self.setup.root)
            )

        def connected() -> bool:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"logship run exited {self._proc.returncode}: see {self.log_path}"
                )
            return any(e.get("event") == "connected" for e in self.read()[since:])

        common.wait_until(connected, 60, "the daemon connected to the site")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # SIGTERM to the daemon itself: in-flight uploads finish, then it exits 0.
        target = _descendants(proc.pid)[1:2] or [proc.pid]
        with contextlib.suppress(ProcessLookupError):
            os.kill(target[0], signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait(10)

    def read(self) -> list[dict[str, Any]]:
        """Every event logged so far (the log is only ever appended to)."""
        try:
            with open(self.log_path, "rb") as src:
                src.seek(self._offset)
                chunk = src.read()
        except FileNotFoundError:
            return self.events
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                value = json.loads(line)
            except ValueError:
                continue  # a traceback line, say: kept in the log file
            if isinstance(value, dict):
                self.events.append(value)
        return self.events

    def shipped(self) -> dict[str, float]:
        """File name -> when the daemon logged it shipped (durable at the site)."""
        return {
            str(e["file"]): _log_time(str(e["ts"]))
            for e in self.read()
            if e.get("event") == "shipped"
        }


def _log_time(ts: str) -> float:
    """A log line's `ts` (UTC, milliseconds) as POSIX seconds."""
    parsed = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")
    return parsed.replace(tzinfo=dt.UTC).timestamp()


# -- PostgreSQL ----------------------------------------------------------------------


def set_conf(cluster: PgCluster, **settings: str) -> None:
    """ALTER SYSTEM and reload: archive_command and synchronous_commit change at runtime."""
    with cluster.connect() as conn:
        for name, value in settings.items():
            _load_module_of(conn, name)
            conn.execute(
                sql.SQL("alter system set {} = {}").format(_setting(name), sql.Literal(value))
            )
        conn.execute("select pg_reload_conf()")
    # The archiver and new sessions read it on their next loop; a moment is plenty.
    time.sleep(0.5)


def reset_conf(cluster: PgCluster, *names: str) -> None:
    with cluster.connect() as conn:
        for name in names:
            _load_module_of(conn, name)
            conn.execute(sql.SQL("alter system reset {}").format(_setting(name)))
        conn.execute("select pg_reload_conf()")
    time.sleep(0.5)


def _load_module_of(conn: psycopg.Connection[Any], name: str) -> None:
    """A module's setting is known to ALTER SYSTEM once the module is loaded."""
    if "." in name:
        conn.execute(sql.SQL("load {}").format(sql.Literal(name.split(".")[0])))


def _setting(name: str) -> sql.Composable:
    """A setting's name; a module's (`basic_archive.archive_directory`) as prefix.name."""
    return sql.SQL(".").join(sql.Identifier(part) for part in name.split("."))


def current_lsn(cluster: PgCluster) -> int:
    return lsn_to_int(str(cluster.query("select pg_current_wal_lsn()::text")[0][0]))


def wal_syncs(cluster: PgCluster) -> tuple[int, float]:
    """WAL fsyncs so far and the ms they took (track_wal_io_timing is on)."""
    count, ms = cluster.query("select wal_sync, wal_sync_time from pg_stat_wal")[0]
    return int(count), float(ms)


def archiver_pid(cluster: PgCluster) -> int | None:
    rows = cluster.query("select pid from pg_stat_activity where backend_type = 'archiver'")
    return int(rows[0][0]) if rows else None


def start_pgbench(cluster: PgCluster, *args: str) -> subprocess.Popen[str]:
    """pgbench as the cluster's user, in the background (PgCluster.pgbench blocks)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST="127.0.0.1",
        PGPORT=str(cluster.port),
        PGUSER=cluster.user.name,
        PGDATABASE="postgres",
    )
    cmd = [*cluster.user.command_prefix(), str(PG_BIN / "pgbench"), *args]
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=cluster.data_dir.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return CHILDREN.add(proc)


def pgbench_tps(proc: subprocess.Popen[str], timeout: float) -> float:
    out, err = proc.communicate(timeout=timeout)
    found = _TPS.search(out)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"pgbench exited {proc.returncode}: {err[-2000:]}")
    return float(found.group(1))


def pgbench_args(clients: int, seconds: int) -> list[str]:
    # -n: no vacuum before the run; the tables are vacuumed once after the load.
    return ["-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), "-n"]


# -- the backlog ---------------------------------------------------------------------


def ready_segments(setup: Setup) -> set[str]:
    """Segments PostgreSQL closed and has not yet handed to archive_command."""
    try:
        names = os.listdir(setup.archive_status)
    except FileNotFoundError:
        return set()
    return {n[:24] for n in names if n.endswith(".ready") and _SEGMENT.match(n[:24])}


def shipped_segments(setup: Setup) -> set[str]:
    """Segments with a tombstone: durable at the site. With read-ahead a segment
    shipped from pg_wal keeps its `.ready` until archive-wal confirms it."""
    try:
        names = os.listdir(setup.spool / SHIPPED_DIR)
    except FileNotFoundError:
        return set()
    return {n for n in names if _SEGMENT.match(n)}


def spool_segments(setup: Setup) -> set[str]:
    """Segments handed over and not yet shipped: the daemon retires a file from the
    spool once it is durable at the site and recorded."""
    try:
        names = os.listdir(setup.spool)
    except FileNotFoundError:
        return set()
    return {n for n in names if _SEGMENT.match(n)}


def wait_drained(setup: Setup, daemon: Daemon | None, timeout: float = 300) -> float:
    """Until PostgreSQL has handed over every closed segment and, with a daemon,
    the spool is empty; returns how long that took."""
    start = time.monotonic()

    def drained() -> bool:
        if daemon is not None and not daemon.running and daemon.pid is not None:
            raise RuntimeError(f"logship run stopped: see {daemon.log_path}")
        return not ready_segments(setup) and (daemon is None or not spool_segments(setup))

    common.wait_until(drained, timeout, "the archiver and the daemon to catch up")
    return time.monotonic() - start


def closed_segments(
    setup: Setup, skip: set[str] | frozenset[str] = frozenset()
) -> dict[str, float]:
    """Segment -> when PostgreSQL closed it: the mtime of its archive_status file
    (.ready is created at the segment's end and renamed to .done, mtime kept)."""
    closed: dict[str, float] = {}
    try:
        names = os.listdir(setup.archive_status)
    except FileNotFoundError:
        return closed
    for name in names:
        match = _STATUS_FILE.match(name)
        if match and match.group(1) not in skip:
            with contextlib.suppress(FileNotFoundError):
                closed[match.group(1)] = (setup.archive_status / name).stat().st_mtime
    return closed


def catalog_copy(setup: Setup, dest: Path) -> sqlite3.Connection:
    """A private copy of the daemon's SQLite catalog, taken while no daemon runs:
    opening the live one as root could leave root-owned -wal/-shm files behind."""
    for suffix in ("", "-wal"):
        source = setup.state / f"catalog.db{suffix}"
        if source.exists():
            shutil.copyfile(source, dest.with_name(dest.name + suffix))
    return sqlite3.connect(dest)


# -- phase 3: latency ----------------------------------------------------------------


def standby_sample_times(setup: Setup, calls: int = 5) -> list[float]:
    """Seconds one standby sample takes, as the daemon's site worker makes it: it
    runs `standby status` at the site over the shipping connection, on the shipping
    thread, every lag_sample_interval; a segment closed meanwhile waits for it."""
    config = load_config(setup.config)
    transport = SftpTransport(config.sites["dr"])
    try:
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            ask_standby_status(transport, config.sites["dr"].command, CONNECTOR, time.time, 20)
            times.append(time.perf_counter() - start)
        return times
    finally:
        transport.close()


@dataclass
class Segment:
    name: str
    closed_by_pg: float | None  # .ready created
    handed_over: float  # archive_command started
    returned: float  # archive-wal returned
    close_time: float  # archive-wal's recorded close time (spool mtime)
    arrived: float  # data file durable at the site (manifest record)
    shipped: float  # the daemon's `shipped` event
    queued: float | None = None  # catalog discovered_at
    marked: float | None = None  # catalog shipped_at

    def steps(self) -> dict[str, float]:
        """Where this segment's time went, in order (seconds). The daemon sees the
        segment when archive-wal links it into the spool, before archive-wal's
        directory fsync and exit: the steps follow the segment, not archive_command."""
        steps = {"startup": self.close_time - self.handed_over}
        if self.queued is not None and self.marked is not None:
            steps.update(
                queued=self.queued - self.close_time,
                upload=self.arrived - self.queued,
                record=self.marked - self.arrived,
                retire=self.shipped - self.marked,
            )
        return steps


def describe_steps(segment: Segment) -> str:
    return ", ".join(f"{k} {v * 1000:.0f}" for k, v in segment.steps().items())


def run_latency(setup: Setup, daemon: Daemon, report: Report, seconds: int, clients: int) -> None:
    log(f"latency: pgbench -c {clients} for {seconds}s, archive_command timed, daemon running")
    samples = standby_sample_times(setup)
    report.add(
        "standby_sample",
        median(samples) * 1000,
        "ms",
        detail=f"one `standby status` over SSH as the site worker runs it, median of "
        f"{len(samples)} with no load; the site worker asks every lag_sample_interval "
        f"({load_config(setup.config).logship.lag_sample_interval:g} s), on a helper "
        "thread beside shipping",
        runs=[t * 1000 for t in samples],
    )
    set_conf(setup.cluster, archive_command=setup.timed_command)
    daemon.start()
    wait_drained(setup, daemon)
    setup.cluster.execute("checkpoint")
    before = set(closed_segments(setup))
    setup.handover_log.write_text("")
    load = os.getloadavg()[0]
    meter = CpuMeter(setup, daemon)
    meter.start()
    lsn0, t0 = current_lsn(setup.cluster), time.time()
    bench = start_pgbench(setup.cluster, *pgbench_args(clients, seconds))
    closed: dict[str, float] = {}
    # .done files go at checkpoints: note each close time while the run lasts.
    while bench.poll() is None:
        closed.update(closed_segments(setup, skip=before | closed.keys()))
        time.sleep(CLOSE_POLL_S)
    tps = pgbench_tps(bench, 60)
    t1, lsn1 = time.time(), current_lsn(setup.cluster)
    cores = meter.stop()
    drain = wait_drained(setup, daemon)
    daemon.stop()

    handovers: dict[str, tuple[float, float]] = {}
    failures = 0
    for line in setup.handover_log.read_text().splitlines():
        name, start, end, status = line.split()
        if status != "0":
            failures += 1
        elif t0 <= float(start) <= t1 and _SEGMENT.match(name):
            handovers[name] = (float(start), float(end))
    shipped = daemon.shipped()
    db = catalog_copy(setup, setup.root / "catalog-latency.db")
    rows = {
        name: (queued, marked)
        for name, queued, marked in db.execute(
            "select name, discovered_at, shipped_at from spool_files where connector = ?",
            (CONNECTOR,),
        )
    }
    db.close()
    segments: list[Segment] = []
    for name, (start, end) in sorted(handovers.items()):
        record = setup.record(name)
        if record is None or name not in shipped:
            raise RuntimeError(f"{name} was handed over but never shipped: see {daemon.log_path}")
        queued, marked = rows.get(name, (None, None))
        segments.append(
            Segment(
                name,
                closed.get(name),
                start,
                end,
                record.closed_at,
                record.arrived_at,
                shipped[name],
                queued,
                marked,
            )
        )
    if not segments:
        raise RuntimeError("no segment was closed during the latency run: run it longer")
    report_latency(
        report,
        segments,
        tps,
        (lsn1 - lsn0) / (t1 - t0),
        clients,
        seconds,
        load,
        failures,
        drain,
        cores,
        daemon.note,
    )


def report_latency(
    report: Report,
    segments: list[Segment],
    tps: float,
    wal_rate: float,
    clients: int,
    seconds: int,
    load: float,
    failures: int,
    drain: float,
    cores: dict[str, float],
    note: str,
) -> None:
    n = len(segments)
    total = [s.shipped - s.handed_over for s in segments]
    p50, p99 = percentile(total, 50), percentile(total, 99)
    run = (
        f"pgbench -c {clients} {seconds}s: {tps:,.0f} tps, WAL {wal_rate / MIB:.1f} MiB/s "
        f"({wal_rate / SEGMENT_SIZE:.2f} segments/s); {n} segments; load {load:.2f}"
    )
    report.add(
        "latency_p50",
        p50,
        "s",
        detail=f"handover to archive_command -> `shipped` logged; target <= {TARGET_P50_S} s: "
        f"{met(p50 <= TARGET_P50_S)}; {run}{note}",
        runs=total,
    )
    report.add(
        "latency_p99",
        p99,
        "s",
        detail=f"nearest rank over {n}; target <= {TARGET_P99_S} s: {met(p99 <= TARGET_P99_S)}",
    )
    slowest = max(segments, key=lambda s: s.shipped - s.handed_over)
    report.add(
        "latency_max",
        max(total),
        "s",
        detail=f"mean {mean(total):.3f} s; the slowest, in ms: {describe_steps(slowest)}",
    )
    report.add("latency_segments", n, "segments", detail=f"{failures} archive_command failures")
    own = [s.shipped - s.close_time for s in segments]
    add_p50_p99(
        report,
        "latency_from_logship_close",
        own,
        "s",
        f"from archive-wal's close time (spool mtime, as status measures); "
        f"p99 {percentile(own, 99):.3f} s",
    )
    from_pg = [s.shipped - s.closed_by_pg for s in segments if s.closed_by_pg is not None]
    if from_pg:
        add_p50_p99(
            report,
            "latency_from_pg_close",
            from_pg,
            "s",
            f"from the .ready file's mtime (segment finished); p99 "
            f"{percentile(from_pg, 99):.3f} s; {len(from_pg)} of {n} segments seen",
        )
    archive = [(s.returned - s.handed_over) * 1000 for s in segments]
    add_p50_p99(
        report,
        "archive_command",
        archive,
        "ms",
        "handover -> archive-wal returned (a shell and `date` included)",
    )
    # Where the time goes, per segment, as medians (ms).
    steps: dict[str, list[float]] = {}
    for segment in segments:
        for name, seconds in segment.steps().items():
            steps.setdefault(name, []).append(seconds)
    parts = {k: median(v) * 1000 for k, v in steps.items()}
    report.add(
        "latency_startup_p50",
        parts["startup"],
        "ms",
        detail="handover -> archive-wal's close time (shell, interpreter start, imports, config)",
    )
    if "queued" in parts:
        report.add(
            "latency_queued_p50",
            parts["queued"],
            "ms",
            detail="archive-wal's close time -> the daemon's catalog row (copy, fsync, link, "
            "inotify, ingest commit)",
        )
        report.add(
            "latency_upload_p50",
            parts["upload"],
            "ms",
            detail="catalog row -> data durable at the site (wake, read, zstd, sha256, "
            "upload, fsync, rename)",
        )
    if "record" in parts:
        report.add(
            "latency_record_p50",
            parts["record"],
            "ms",
            detail="data durable -> catalog says shipped (manifest record, catalog commit)",
        )
        report.add(
            "latency_retire_p50",
            parts["retire"],
            "ms",
            detail="catalog says shipped -> `shipped` logged (tombstone, spool retire, fsyncs)",
        )
    report.add(
        "latency_daemon_cpu",
        cores["daemon"] * 100,
        "% of a core",
        detail=f"logship run over the run; {describe_cpu(cores)}; drained {drain:.1f} s "
        f"after pgbench ended",
    )
    log(
        "latency: medians ms "
        + ", ".join(f"{k} {v:.0f}" for k, v in parts.items())
        + f"; total p50 {p50:.3f} s p99 {p99:.3f} s max {max(total):.3f} s"
    )


# -- phase 4: keep-up ----------------------------------------------------------------

#: what makes pgbench write WAL fastest here. Commits do not wait for their flush.
#: The first change of a page after a checkpoint logs the whole 8 kB page, so a
#: checkpoint every 30 s keeps those full-page images coming: with the default
#: 5 minutes the rate fell from about 24 to 1.5 MiB/s within a minute of one.
KEEPUP_SETTINGS = {"synchronous_commit": "off", "checkpoint_timeout": "30s"}


@dataclass
class Sample:
    at: float
    ready: int
    spool: int
    backlog: int
    lsn: int


def wait_archiver_switched(setup: Setup, timeout: float = 180) -> None:
    """Until a segment closed now is archived: a new archive_library takes effect
    when the postmaster restarts the archiver, which can take up to a minute."""
    with setup.cluster.connect() as conn:
        conn.execute("create table if not exists archiver_probe (n int)")
        conn.execute("insert into archiver_probe values (1)")
        row = conn.execute("select pg_walfile_name(pg_switch_wal())").fetchone()
        closed = str(row[0]) if row else ""
        deadline = time.monotonic() + timeout
        while True:
            done = conn.execute("select last_archived_wal from pg_stat_archiver").fetchone()
            if done and done[0] is not None and str(done[0]) >= closed:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"the archiver did not archive {closed} in {timeout:.0f}s")
            time.sleep(0.2)


def run_keepup(
    setup: Setup,
    daemon: Daemon,
    report: Report,
    seconds: int,
    clients: int,
    archive_library: bool = False,
    read_ahead: bool = False,
) -> None:
    settings = dict(KEEPUP_SETTINGS)
    how = "archive_command = archive-wal"
    if read_ahead:
        how += (
            ", read-ahead on (the daemon ships .ready segments from pg_wal; backlog = "
            ".ready not yet tombstoned + spool)"
        )
    if archive_library:
        # PostgreSQL's own module writes each segment into the spool: no process
        # per segment, so .ready waits only for a file copy.
        settings["archive_library"] = "basic_archive"
        settings["basic_archive.archive_directory"] = str(setup.spool)
        how = "archive_library = basic_archive into the spool"
    log(f"keep-up: pgbench -c {clients} {settings} for {seconds}s, every {SAMPLE_S}s")
    try:
        # The daemon first: it makes the spool, which basic_archive needs to exist
        # (after three failures PostgreSQL's archiver waits a minute).
        daemon.start()
        set_conf(setup.cluster, archive_command=setup.plain_command, **settings)
        if archive_library:
            wait_archiver_switched(setup)
        wait_drained(setup, daemon)
        setup.cluster.execute("checkpoint")
        shipped_before = set(daemon.shipped())
        load = os.getloadavg()[0]
        meter = CpuMeter(setup, daemon)
        meter.start()
        samples: list[Sample] = []
        with setup.cluster.connect() as conn:

            def sample() -> Sample:
                row = conn.execute("select pg_current_wal_lsn()::text").fetchone()
                ready, spool = ready_segments(setup), spool_segments(setup)
                # With read-ahead a .ready segment may already be durable at the site
                # (tombstoned), waiting only for archive-wal's confirmation.
                waiting = ready - shipped_segments(setup) if read_ahead else ready
                # A segment is in both between archive-wal's link into the spool and
                # PostgreSQL renaming .ready to .done: the union counts it once.
                lsn = lsn_to_int(str(row[0])) if row else 0
                return Sample(time.time(), len(ready), len(spool), len(waiting | spool), lsn)

            samples.append(sample())
            bench = start_pgbench(setup.cluster, *pgbench_args(clients, seconds))
            next_at = time.monotonic()
            while bench.poll() is None:
                next_at += SAMPLE_S
                time.sleep(max(0.0, next_at - time.monotonic()))
                samples.append(sample())
                if not daemon.running:
                    raise RuntimeError(f"logship run stopped: see {daemon.log_path}")
            tps = pgbench_tps(bench, 60)
            samples.append(sample())
        cores = meter.stop()
        t0, t1 = samples[0].at, samples[-1].at
        with open(setup.root / "keepup-samples.jsonl", "w") as out:
            out.writelines(json.dumps(asdict(s)) + "\n" for s in samples)
        drain = wait_drained(setup, daemon)
        daemon.stop()
    finally:
        # Not to hide the error that got here, if any.
        with contextlib.suppress(Exception):
            reset_conf(setup.cluster, *settings)
    shipped = {k: v for k, v in daemon.shipped().items() if k not in shipped_before}
    db = catalog_copy(setup, setup.root / "catalog-keepup.db")
    closed_at = dict(
        db.execute("select name, closed_at from spool_files where connector = ?", (CONNECTOR,))
    )
    history = db.execute(
        "select max(rpo_exposure_s), max(transport_lag_s), max(pending_files), count(*) "
        "from lag_samples where connector = ? and at between ? and ?",
        (CONNECTOR, t0, t1),
    ).fetchone()
    db.close()
    lags = [at - closed_at[name] for name, at in shipped.items() if name in closed_at]
    report_keepup(
        report,
        samples,
        tps,
        clients,
        load,
        drain,
        lags,
        history,
        cores,
        f"; {how}{daemon.note}",
    )


def report_keepup(
    report: Report,
    samples: list[Sample],
    tps: float,
    clients: int,
    load: float,
    drain: float,
    lags: list[float],
    history: tuple[Any, ...],
    cores: dict[str, float],
    note: str,
) -> None:
    t0, t1 = samples[0].at, samples[-1].at
    rate = (samples[-1].lsn - samples[0].lsn) / (t1 - t0)
    # The fastest 10 s, from the sampled LSNs.
    span = max(1, int(10 / SAMPLE_S))
    peak = max(
        (
            (samples[i + span].lsn - samples[i].lsn) / (samples[i + span].at - samples[i].at)
            for i in range(len(samples) - span)
        ),
        default=rate,
    )
    report.add(
        "keepup_wal_rate",
        rate / MIB,
        "MiB/s",
        detail=f"pg_current_wal_lsn over {t1 - t0:.0f} s; pgbench -c {clients} "
        f"synchronous_commit=off, checkpoint_timeout=30s: {tps:,.0f} tps; fastest 10 s "
        f"{peak / MIB:.1f} MiB/s; load {load:.2f}",
    )
    report.add("keepup_segments_per_s", rate / SEGMENT_SIZE, "segments/s")
    values = [s.backlog for s in samples]
    worst = max(values)
    over = sum(1 for v in values if v > TARGET_BACKLOG) * SAMPLE_S
    spread = {k: sum(1 for v in values if v == k) for k in sorted(set(values))}
    windows: list[int] = []
    start = t0
    while start < t1:
        inside = [s.backlog for s in samples if start <= s.at < start + WINDOW_S]
        if inside:
            windows.append(max(inside))
        start += WINDOW_S
    report.add(
        "keepup_backlog_max",
        worst,
        "segments",
        detail=f".ready + spool, {len(values)} samples every {SAMPLE_S} s; target never above "
        f"{TARGET_BACKLOG}: {met(worst <= TARGET_BACKLOG)}; runs = max per {WINDOW_S:.0f} s"
        f"{note}",
        runs=windows,
    )
    report.add(
        "keepup_backlog_p99",
        percentile(values, 99),
        "segments",
        detail="samples by backlog: " + ", ".join(f"{k}: {n}" for k, n in spread.items()),
    )
    report.add(
        "keepup_backlog_mean",
        mean(values),
        "segments",
        detail=f"mean .ready {mean([s.ready for s in samples]):.2f}, "
        f"mean spool {mean([s.spool for s in samples]):.2f}",
    )
    report.add(
        "keepup_ready_max",
        max(s.ready for s in samples),
        "segments",
        detail="the most .ready files at once: segments PostgreSQL's archiver had not yet "
        "seen confirmed (pg_wal keeps them), shipped or not",
    )
    high = [s for s in samples if s.backlog > TARGET_BACKLOG]
    # Which side was behind: PostgreSQL's archiver (.ready) or the daemon (spool).
    where = (
        f"then .ready {mean([s.ready for s in high]):.1f} and spool "
        f"{mean([s.spool for s in high]):.1f} on average"
        if high
        else "none"
    )
    report.add(
        "keepup_time_over_target",
        over,
        "s",
        detail=f"sampled time with more than {TARGET_BACKLOG} segments waiting ({where}); "
        f"drained {drain:.1f} s after pgbench ended",
    )
    if lags:
        add_p50_p99(
            report,
            "keepup_latency",
            lags,
            "s",
            f"archive-wal's close time -> `shipped` logged, {len(lags)} segments; "
            f"p99 {percentile(lags, 99):.3f} s, max {max(lags):.3f} s",
        )
    worst_exposure, worst_transport, worst_pending, count = history
    if count and worst_transport is not None:
        report.add(
            "keepup_status_worst_transport_lag",
            worst_transport,
            "s",
            detail=f"the daemon's own lag history over the run ({count} samples, each the "
            f"worst of its window): worst transport_lag_s; most pending_files {worst_pending}; "
            f"worst rpo_exposure_s {worst_exposure} (it counts the open segment's age too)",
        )
    report.add(
        "keepup_daemon_cpu",
        cores["daemon"] * 100,
        "% of a core",
        detail=f"logship run over the run; {describe_cpu(cores)}",
    )
    report.add(
        "keepup_other_work_cpu",
        cores["other"],
        "cores",
        detail="CPU that processes outside this benchmark kept busy during the run",
    )
    log(
        f"keep-up: {rate / MIB:.1f} MiB/s, backlog max {worst}, p99 {percentile(values, 99)}, "
        f"per {WINDOW_S:.0f} s {windows}"
    )


# -- phase 5: primary overhead -------------------------------------------------------


@dataclass
class OverheadRun:
    mode: str
    tps: float
    wal_rate: float
    shipped: int
    cores: dict[str, float]
    wal_sync_ms: float  # PostgreSQL's mean WAL fsync time (pg_stat_wal)


MODES = {
    "logship": "archive_command = archive-wal, `logship run` running",
    "baseline": "archive_command = '/bin/true', no daemon",
    "archive-only": "archive_command = archive-wal, no daemon",
}


def overhead_run(
    setup: Setup, daemon: Daemon, mode: str, clients: int, seconds: int
) -> OverheadRun:
    # What the last run left is archived, and shipped, the way that run would have,
    # before the mode changes: no run ships another's segments.
    if spool_segments(setup):
        daemon.start()
    wait_drained(setup, daemon if daemon.running else None)
    command = "/bin/true" if mode == "baseline" else setup.plain_command
    set_conf(setup.cluster, archive_command=command)
    if mode == "logship":
        daemon.start()
    else:
        daemon.stop()
    wait_drained(setup, None)
    setup.cluster.execute("checkpoint")
    time.sleep(1)  # the checkpoint's own writes settle before the clock starts
    shipped_before = len(daemon.shipped())
    meter = CpuMeter(setup, daemon)
    meter.start()
    lsn0, t0, syncs0 = current_lsn(setup.cluster), time.time(), wal_syncs(setup.cluster)
    tps = pgbench_tps(start_pgbench(setup.cluster, *pgbench_args(clients, seconds)), seconds + 120)
    t1, lsn1, syncs1 = time.time(), current_lsn(setup.cluster), wal_syncs(setup.cluster)
    cores = meter.stop()
    wall = t1 - t0
    syncs = syncs1[0] - syncs0[0]
    return OverheadRun(
        mode,
        tps,
        (lsn1 - lsn0) / wall,
        len(daemon.shipped()) - shipped_before,
        cores,
        (syncs1[1] - syncs0[1]) / syncs if syncs else 0.0,
    )


def run_overhead(
    setup: Setup,
    daemon: Daemon,
    report: Report,
    pairs: int,
    seconds: int,
    clients: int,
    attribute: bool,
) -> None:
    modes = ["logship", "baseline", *(["archive-only"] if attribute else [])]
    log(f"overhead: {pairs} rounds of {', '.join(modes)}, pgbench -c {clients} {seconds}s each")
    reset_conf(setup.cluster, *KEEPUP_SETTINGS)
    load = os.getloadavg()[0]
    runs: dict[str, list[OverheadRun]] = {m: [] for m in modes}
    for round_no in range(pairs):
        # The order turns each round (ABBA for two), so drift hits every mode alike.
        order = modes[round_no % len(modes) :] + modes[: round_no % len(modes)]
        if len(modes) == 2 and round_no % 2:
            order = list(reversed(modes))
        for mode in order:
            run = overhead_run(setup, daemon, mode, clients, seconds)
            runs[mode].append(run)
            log(
                f"  round {round_no + 1}/{pairs} {mode}: {run.tps:,.0f} tps, "
                f"WAL {run.wal_rate / MIB:.1f} MiB/s, shipped {run.shipped}, WAL fsync "
                f"{run.wal_sync_ms:.2f} ms; {describe_cpu(run.cores)}"
            )
    if spool_segments(setup):
        daemon.start()
        wait_drained(setup, daemon)
    daemon.stop()
    report_overhead(report, runs, clients, seconds, load, daemon.note)


def report_overhead(
    report: Report,
    runs: dict[str, list[OverheadRun]],
    clients: int,
    seconds: int,
    load: float,
    note: str,
) -> None:
    def describe(mode: str) -> str:
        done = runs[mode]
        cores = {k: median([r.cores[k] for r in done]) for k in CPU_PARTS}
        return (
            f"{MODES[mode]}; medians of runs: WAL {median([r.wal_rate for r in done]) / MIB:.1f} "
            f"MiB/s, mean WAL fsync {median([r.wal_sync_ms for r in done]):.2f} ms, "
            f"{describe_cpu(cores)}"
        )

    baseline_tps = [r.tps for r in runs["baseline"]]
    baseline = report.add(
        "overhead_tps_baseline",
        median(baseline_tps),
        "tps",
        detail=f"pgbench -c {clients} {seconds}s, median of {len(baseline_tps)}; "
        f"{describe('baseline')}; load {load:.2f}",
        runs=baseline_tps,
    )
    logship_tps = [r.tps for r in runs["logship"]]
    ratio = median(logship_tps) / median(baseline_tps)
    report.add(
        "overhead_tps_logship",
        median(logship_tps),
        "tps",
        baseline=baseline,
        detail=f"{describe('logship')}; shipped {sum(r.shipped for r in runs['logship'])}; "
        f"target ratio >= {TARGET_TPS_RATIO}: {met(ratio >= TARGET_TPS_RATIO)}{note}",
        runs=logship_tps,
    )
    # Runs next to each other in time are the fairest comparison: one ratio per round.
    pairs = [a.tps / b.tps for a, b in zip(runs["logship"], runs["baseline"], strict=True)]
    report.add(
        "overhead_tps_ratio_per_round",
        median(pairs),
        "x",
        detail=f"median of logship/baseline within each round; "
        f"rounds {min(pairs):.3f}-{max(pairs):.3f}",
        runs=pairs,
    )
    if "archive-only" in runs:
        only = [r.tps for r in runs["archive-only"]]
        report.add(
            "overhead_tps_archive_only",
            median(only),
            "tps",
            baseline=baseline,
            detail=describe("archive-only"),
            runs=only,
        )


# -- main ----------------------------------------------------------------------------


@contextlib.contextmanager
def environment_changed(**changes: str | None) -> Iterator[None]:
    """os.environ with `changes` (None: unset) while the block runs."""
    saved = {name: os.environ.get(name) for name in changes}

    def apply(values: dict[str, str | None]) -> None:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    apply(changes)
    try:
        yield
    finally:
        apply(saved)


@contextlib.contextmanager
def primary_and_site(
    scale: int, keep_shipped_mib: int | None, read_ahead: bool = False
) -> Iterator[Setup]:
    user = common.bench_user()
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(common.reachable_tempdir("logship-live-"))
        # archive-wal runs as a new process per segment: like a pip install, it
        # should find its bytecode compiled, which PYTHONDONTWRITEBYTECODE (set in
        # the dev environment) would prevent. PostgreSQL and the daemon inherit this;
        # `python -m bench` runs other benchmarks after this one in the same process.
        pycache = common.private_dir(root / "pycache", user)
        stack.enter_context(
            environment_changed(PYTHONDONTWRITEBYTECODE=None, PYTHONPYCACHEPREFIX=str(pycache))
        )
        server = stack.enter_context(common.ssh_server(root / "sshd", user))
        incoming = common.private_dir(root / "incoming", user)
        state = common.private_dir(root / "state", user)
        cluster = PgCluster(root / "primary" / "pgdata", free_port(), user)
        stack.callback(cluster.destroy)
        config = write_config(
            root, server, state, incoming, cluster, pycache, keep_shipped_mib, read_ahead
        )
        logship = [
            sys.executable,
            "-m",
            "logship",
            "--config",
            str(config),
            "archive-wal",
            CONNECTOR,
        ]
        handover_log = root / "handover.log"
        handover_log.touch(mode=0o644)
        user.chown(handover_log)
        setup = Setup(
            root=root,
            user=user,
            server=server,
            cluster=cluster,
            config=config,
            state=state,
            incoming=incoming,
            handover_log=handover_log,
            timed_command=timed_archive_command(root, logship, handover_log),
            plain_command=f"{shlex.join(logship)} %p",
        )
        cluster.initdb()
        cluster.configure(
            {
                "archive_mode": "on",
                "archive_command": setup.plain_command,
                # pg_stat_wal's fsync times: whether logship slows PostgreSQL's commits
                # through the disk rather than the CPU.
                "track_wal_io_timing": "on",
            }
        )
        cluster.start()
        started = time.monotonic()
        cluster.pgbench("-i", "-s", str(scale), "-q")
        cluster.execute("vacuum analyze")
        cluster.execute("checkpoint")
        log(f"pgbench -i -s {scale}: {time.monotonic() - started:.0f}s")
        yield setup


def save_artifacts(setup: Setup, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for path in [
        setup.root / "daemon.log",
        setup.handover_log,
        setup.cluster.log_file,
        setup.root / "keepup-samples.jsonl",
        *setup.root.glob("catalog-*.db"),
    ]:
        if path.exists():
            shutil.copyfile(path, dest / path.name)
    log(f"artifacts in {dest}")


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanups


def code_version() -> str:
    """The commit the product code comes from, and any uncommitted change to it (named
    by a hash of the diff, so that a change during the run shows)."""
    repo = Path(__file__).resolve().parents[1]

    def git(*args: str) -> str:
        cmd = ["git", "-C", str(repo), *args]
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    changed = [line[3:] for line in git("status", "--porcelain", "--", "logship").splitlines()]
    if not changed:
        return head
    diff = hashlib.sha256(git("diff", "HEAD", "--", "logship").encode()).hexdigest()[:12]
    return f"{head} + uncommitted changes (diff {diff}) to {', '.join(changed)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--only", action="append", choices=PHASES, help="run only this part (repeatable)"
    )
    parser.add_argument("--quick", action="store_true", help="short runs: a check, not figures")
    parser.add_argument("--scale", type=int, default=20, help="pgbench -i -s (default 20)")
    parser.add_argument(
        "--clients", type=int, default=4, help="pgbench clients, latency and overhead"
    )
    parser.add_argument("--latency-seconds", type=int, default=120)
    parser.add_argument("--keepup-seconds", type=int, default=300)
    parser.add_argument("--keepup-clients", type=int, default=8)
    parser.add_argument(
        "--archive-library",
        action="store_true",
        help="keep-up with archive_library = 'basic_archive' writing into the spool "
        "instead of archive_command = archive-wal",
    )
    parser.add_argument(
        "--read-ahead",
        action="store_true",
        help="[primary] data_dir set: the daemon ships .ready segments from pg_wal and "
        "archive-wal confirms them (every part)",
    )
    parser.add_argument("--overhead-runs", type=int, default=6, help="rounds of each mode")
    parser.add_argument("--overhead-seconds", type=int, default=30)
    parser.add_argument(
        "--overhead-attribute",
        action="store_true",
        help="also archive-wal without the daemon, to tell the two costs apart",
    )
    parser.add_argument(
        "--daemon-nice",
        type=int,
        default=0,
        help="run logship run at this nice level (negative needs root): does CPU priority "
        "change latency, keep-up or overhead?",
    )
    parser.add_argument(
        "--keep-shipped-mib",
        type=int,
        help="the connector's keep_shipped_mib (default: not set, so logship's default)",
    )
    parser.add_argument(
        "--artifacts",
        type=Path,
        help="copy the daemon log, the archive_command times, the catalog copies and the "
        "PostgreSQL log into this folder before cleaning up",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.latency_seconds, args.keepup_seconds = 20, 30
        args.overhead_runs, args.overhead_seconds = 2, 10
    phases = args.only or list(PHASES)
    signal.signal(signal.SIGTERM, _stop)

    env = common.environment()
    env["code"] = code_version()
    report = Report(BENCH, env)
    try:
        with primary_and_site(args.scale, args.keep_shipped_mib, args.read_ahead) as setup:
            daemon = Daemon(setup, setup.root / "daemon.log", args.daemon_nice)
            if args.read_ahead:
                daemon.variant.append("read-ahead on ([primary] data_dir)")
            if args.keep_shipped_mib is not None:
                daemon.variant.append(f"keep_shipped_mib = {args.keep_shipped_mib}")
            try:
                if "latency" in phases:
                    run_latency(setup, daemon, report, args.latency_seconds, args.clients)
                if "keepup" in phases:
                    run_keepup(
                        setup,
                        daemon,
                        report,
                        args.keepup_seconds,
                        args.keepup_clients,
                        archive_library=args.archive_library,
                        read_ahead=args.read_ahead,
                    )
                if "overhead" in phases:
                    run_overhead(
                        setup,
                        daemon,
                        report,
                        args.overhead_runs,
                        args.overhead_seconds,
                        args.clients,
                        args.overhead_attribute,
                    )
            except BaseException:
                tail = setup.root / "daemon.log"
                if tail.exists():
                    log(
                        "daemon log (last lines):\n"
                        + "\n".join(tail.read_text().splitlines()[-15:])
                    )
                raise
            finally:
                daemon.stop()
                CHILDREN.stop_all()
                if args.artifacts is not None:
                    save_artifacts(setup, args.artifacts)
    finally:
        CHILDREN.stop_all()
    if code_version() != env["code"]:
        log(f"the product code changed during the run: now {code_version()}")
    report.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
