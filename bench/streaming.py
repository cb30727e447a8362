"""Streaming WAL over the SSH link: the write penalty, exposure, and loss in drills.

Usage: python bench/streaming.py [--only penalty,exposure,drills] [--quick]

- penalty: primary TPS under `pgbench -c 4` with no DR, with PostgreSQL's own
  streaming replication (async and synchronous) over a direct TCP link, and with
  logship streaming (async and synchronous) over the SSH link, at 0, 10 and
  50 ms RTT through a delay relay;
- exposure: `rpo_exposure_s` as `status --json` reports it, sampled every
  200 ms under the same load, with logship streaming and with archive shipping
  alone;
- drills: 10 disaster drills with async streaming (pgbench plus a ticker
  inserting one timestamped row every 100 ms; the primary stopped with
  `-m immediate`; `logship promote`): the acknowledged ticks lost.

See bench/README.md for what each figure means. Loopback only; everything is
stopped and removed at the end. JSON lines on stdout, progress and a table on
stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from common import (
    PG_BIN,
    Figure,
    Report,
    Stopwatch,
    bench_user,
    environment,
    log,
    median,
    reachable_tempdir,
)
from live import cpu_seconds

from logship.demo_sandbox import OsUser, PgCluster, free_port
from logship.demo_sandbox.deployment import Deployment
from logship.demo_sandbox.procs import child_pids, kill_tree
from logship.manifest import SiteLayout
from testkit.relay import DelayRelay

BENCH = "streaming"
PARTS = ("penalty", "exposure", "drills")
#: the issue's targets
TARGET_ASYNC_RATIO = 0.97
TARGET_SYNC_RTT_MS = 10
TARGET_EXPOSURE_P99_S = 1.0
TARGET_DRILL_LOSS_S = 1.0
#: the walreceiver's name at the primary for PostgreSQL's own standby
NATIVE_APP = "native_standby"
#: the ticker of the drills: one row every TICK_S seconds
TICK_S = 0.1
_TPS = re.compile(r"^tps = ([0-9.]+) ", re.MULTILINE)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil without floats
    return ordered[int(rank) - 1]


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def has_streaming() -> bool:
    """Whether this logship's sandbox can deploy streaming (the `[streaming]` section)."""
    return "streaming" in {f.name for f in dataclasses.fields(Deployment)}


# -- load ----------------------------------------------------------------------------


def pg_env(cluster: PgCluster) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(
        PGHOST="127.0.0.1",
        PGPORT=str(cluster.port),
        PGUSER=cluster.user.name,
        PGDATABASE="postgres",
    )
    return env


def pgbench_args(clients: int, seconds: float) -> list[str]:
    # -n: no vacuum before each run; the tables are vacuumed once after the load.
    return ["-c", str(clients), "-j", str(min(clients, 2)), "-T", str(int(seconds)), "-n"]


def start_pgbench(cluster: PgCluster, *args: str) -> subprocess.Popen[str]:
    """pgbench as the cluster's user, in the background (PgCluster.pgbench blocks)."""
    return subprocess.Popen(
        [*cluster.user.command_prefix(), str(PG_BIN / "pgbench"), *args],
        env=pg_env(cluster),
        cwd=cluster.data_dir.parent,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10) -> None:
    if proc.poll() is None:
        kill_tree(proc.pid)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=timeout)


@dataclass(frozen=True)
class TpsRun:
    """One timed pgbench run and where the machine's CPU went meanwhile (in cores)."""

    tps: float
    busy_cores: float  # the whole machine: both sites share it on loopback
    daemon_cores: float  # logship run and its children (0 without a daemon)
    site_cores: float  # the site's sshd: its sessions and forwarded connections


def tps_run(
    cluster: PgCluster, clients: int, seconds: float, dep: Deployment | None = None
) -> TpsRun:
    """One timed pgbench run after a checkpoint, so every run starts alike (the
    first change of each page after a checkpoint logs the whole page)."""
    cluster.execute("checkpoint")
    daemon = dep.daemon.pid if dep is not None and dep.daemon is not None else None
    sshd = dep.sshd.pid if dep is not None else None
    daemon_cpu, site_cpu = cpu_seconds(daemon), cpu_seconds(sshd)
    watch = Stopwatch()
    proc = start_pgbench(cluster, *pgbench_args(clients, seconds))
    try:
        out, err = proc.communicate(timeout=seconds + 180)
    finally:
        stop_process(proc)
    window = watch.stop()
    found = _TPS.search(out)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"pgbench exited {proc.returncode}: {err[-2000:]}")
    return TpsRun(
        tps=float(found.group(1)),
        busy_cores=window.busy_cpu_s / window.seconds,
        daemon_cores=(cpu_seconds(daemon) - daemon_cpu) / window.seconds,
        site_cores=(cpu_seconds(sshd) - site_cpu) / window.seconds,
    )


def load_pgbench(cluster: PgCluster, scale: int) -> None:
    cluster.pgbench("-i", "-s", str(scale), "-q", timeout=900)
    cluster.execute("vacuum analyze")


# -- replication at the primary ------------------------------------------------------


def wait_standby(primary: PgCluster, *, sync: bool, timeout: float = 300) -> None:
    """Until a walsender streams to a standby that has flushed all WAL written so
    far (and is the synchronous one, with `sync`). The same view for PostgreSQL's
    own standby and for logship's, whose walreceiver reaches the primary through
    the SSH tunnel."""
    sync_clause = " and sync_state in ('sync', 'quorum')" if sync else ""
    primary.wait_until(
        "select exists (select 1 from pg_stat_replication where state = 'streaming'"
        f" and flush_lsn >= pg_current_wal_lsn(){sync_clause})",
        timeout=timeout,
    )


def sync_states(primary: PgCluster) -> str:
    """The walsenders' sync states now, for a run's detail ('none' when none)."""
    rows = primary.query("select sync_state from pg_stat_replication order by 1")
    return ",".join(str(state) for (state,) in rows) or "none"


def set_system(cluster: PgCluster, name: str, value: str) -> None:
    with cluster.connect() as conn:
        conn.execute(f"alter system set {name} = '{value}'")
        conn.execute("select pg_reload_conf()")


# -- PostgreSQL's own streaming, as the reference -------------------------------------


def base_settings() -> dict[str, str]:
    """What both kinds of primary share beyond PgCluster's defaults: archiving on,
    as at a logship primary, but to /bin/true (what logship adds is its cost)."""
    return {
        "archive_mode": "on",
        "archive_timeout": "10s",
        "archive_command": "/bin/true",
        "max_wal_size": "2GB",
    }


@dataclass
class NativePair:
    """A primary and a plain standby (`pg_basebackup -R`) whose primary_conninfo
    points at a delay relay in front of the primary's port."""

    primary: PgCluster
    standby: PgCluster
    relay: DelayRelay


@contextlib.contextmanager
def native_pair(root: Path, user: OsUser, scale: int) -> Iterator[NativePair]:
    primary = PgCluster(root / "native-primary" / "pgdata", free_port(), user)
    standby = PgCluster(root / "native-standby" / "pgdata", free_port(), user)
    relay = DelayRelay(("127.0.0.1", primary.port))
    try:
        primary.initdb()
        primary.configure(base_settings())
        primary.start()
        load_pgbench(primary, scale)
        parent = standby.data_dir.parent
        parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        user.chown(parent)
        host, port = relay.address
        conninfo = f"host={host} port={port} user={user.name} application_name={NATIVE_APP}"
        user.run(
            [
                str(PG_BIN / "pg_basebackup"),
                "-D",
                str(standby.data_dir),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-d",
                conninfo,
            ],
            cwd=parent,
            env=pg_env(primary),
            timeout=600,
        )
        standby.configure(
            {"port": str(standby.port), "unix_socket_directories": str(standby.socket_dir)}
        )
        yield NativePair(primary, standby, relay)
    finally:
        for cluster in (standby, primary):
            with contextlib.suppress(Exception):
                cluster.destroy()
        relay.close()


# -- logship deployments -------------------------------------------------------------


@contextlib.contextmanager
def deployment(
    root: Path,
    user: OsUser,
    *,
    streaming: bool,
    synchronous: bool = False,
    relayed: bool = False,
    check_dsn: bool = False,
) -> Iterator[tuple[Deployment, DelayRelay | None]]:
    """A primary shipping to a loopback site, its standby restored and running.

    With `relayed` the daemon reaches the site's sshd through a delay relay (the
    SSH link carries both the shipped segments and the streamed WAL)."""
    options: dict[str, Any] = {"check_dsn": check_dsn}
    if streaming:
        options.update(streaming=True, synchronous=synchronous)
    dep = Deployment(root, user, **options)
    relay = DelayRelay((dep.sshd.host, dep.sshd.port)) if relayed else None
    try:
        if relay is not None:
            dep.site_address = relay.address
        dep.build_primary()
        if relay is not None:
            dep.sshd.trust_address(*relay.address)
        dep.start_daemon()
        dep.standby_up()
        yield dep, relay
    finally:
        dep.teardown()
        if relay is not None:
            relay.close()


def set_rtt(relay: DelayRelay, rtt_ms: float) -> None:
    """The relay holds every chunk `delay_s` in each direction: half the RTT."""
    relay.delay_s = rtt_ms / 2000


# -- part 1: the write penalty --------------------------------------------------------


@dataclass
class PenaltyRuns:
    #: variant -> RTT in ms -> each run
    runs: dict[str, dict[int, list[TpsRun]]] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)

    def add(self, variant: str, rtt: int, run: TpsRun, note: str = "") -> None:
        self.runs.setdefault(variant, {}).setdefault(rtt, []).append(run)
        if note:
            self.notes.setdefault(variant, []).append(f"{rtt} ms: {note}")
        log(
            f"  {variant} at {rtt} ms RTT: {run.tps:,.0f} tps; cores busy "
            f"{run.busy_cores:.2f} (daemon {run.daemon_cores:.2f}, site sshd "
            f"{run.site_cores:.2f}) {note}".rstrip()
        )

    def tps(self, variant: str, rtt: int | None = None) -> list[float]:
        per_rtt = self.runs.get(variant, {})
        chosen = per_rtt.values() if rtt is None else [per_rtt.get(rtt, [])]
        return [run.tps for runs in chosen for run in runs]

    def cpu(self, variant: str, rtt: int) -> str:
        """Medians of the run's CPU split, for a figure's detail."""
        runs = self.runs.get(variant, {}).get(rtt, [])
        if not runs:
            return ""
        split = f"machine busy {median([r.busy_cores for r in runs]):.2f} cores"
        if variant.startswith("logship"):
            split += (
                f" (daemon {median([r.daemon_cores for r in runs]):.2f}, "
                f"site sshd {median([r.site_cores for r in runs]):.2f})"
            )
        return split


def native_round(pair: NativePair, rtt: int, args: argparse.Namespace, runs: PenaltyRuns) -> None:
    primary, standby = pair.primary, pair.standby
    set_rtt(pair.relay, rtt)
    # No DR: no standby at all, archiving to /bin/true as in every variant.
    standby.stop()
    set_system(primary, "synchronous_standby_names", "")
    runs.add("no_dr", rtt, tps_run(primary, args.clients, args.seconds))
    standby.start()
    wait_standby(primary, sync=False)
    runs.add("native_async", rtt, tps_run(primary, args.clients, args.seconds))
    set_system(primary, "synchronous_standby_names", NATIVE_APP)
    wait_standby(primary, sync=True)
    run = tps_run(primary, args.clients, args.seconds)
    runs.add("native_sync", rtt, run, f"(after: {sync_states(primary)})")
    set_system(primary, "synchronous_standby_names", "")


def logship_round(
    variant: str,
    dep: Deployment,
    relay: DelayRelay,
    rtt: int,
    args: argparse.Namespace,
    runs: PenaltyRuns,
) -> None:
    set_rtt(relay, rtt)
    wait_standby(dep.primary, sync=variant == "logship_sync")
    run = tps_run(dep.primary, args.clients, args.seconds, dep)
    runs.add(variant, rtt, run, f"(after: {sync_states(dep.primary)})")


def report_penalty(report: Report, runs: PenaltyRuns, args: argparse.Namespace) -> None:
    base_runs = runs.tps("no_dr")
    if not base_runs:
        return
    load = f"pgbench -c {args.clients} -j {min(args.clients, 2)} -T {int(args.seconds)} -n"
    baseline = report.add(
        "tps_no_dr",
        median(base_runs),
        "tps",
        detail=f"{load}, -s {args.scale}; no standby, archive_command /bin/true; "
        f"median of {len(base_runs)} (one in each RTT's turn); "
        f"{runs.cpu('no_dr', args.rtts[0])} at {args.rtts[0]} ms",
        runs=base_runs,
    )
    what = {
        "native_async": "PostgreSQL's own async streaming, direct TCP through the relay",
        "native_sync": "PostgreSQL's own synchronous streaming (synchronous_standby_names), "
        "direct TCP through the relay",
        "logship_async": "logship streaming, async, over the SSH link through the relay",
        "logship_sync": "logship streaming, synchronous, over the SSH link through the relay",
    }
    figures: dict[tuple[str, int], Figure] = {}
    for variant, describe in what.items():
        for rtt in args.rtts:
            values = runs.tps(variant, rtt)
            if not values:
                continue
            value = median(values)
            write_time = baseline.value / value - 1 if value else float("inf")
            detail = (
                f"{describe}, {rtt} ms RTT; write time {write_time:+.0%} against no DR; "
                f"{runs.cpu(variant, rtt)}"
            )
            if variant == "logship_async":
                ok = value / baseline.value >= TARGET_ASYNC_RATIO
                detail += f"; target >= {TARGET_ASYNC_RATIO}x no DR: {met(ok)}"
            figures[variant, rtt] = report.add(
                f"tps_{variant}_{rtt}ms",
                value,
                "tps",
                baseline=baseline,
                detail=detail,
                runs=values,
            )
    for rtt in args.rtts:
        native, ours = figures.get(("native_sync", rtt)), figures.get(("logship_sync", rtt))
        if native is None or ours is None:
            continue
        detail = f"logship synchronous against PostgreSQL's own synchronous at {rtt} ms RTT"
        if rtt == TARGET_SYNC_RTT_MS:
            detail += f"; target >= 1x: {met(ours.value >= native.value)}"
        report.add(
            f"sync_logship_vs_native_{rtt}ms",
            ours.value,
            "tps",
            baseline=native,
            detail=detail,
        )
    for variant, notes in runs.notes.items():
        log(f"{variant}: sync states after each run: {'; '.join(notes)}")


def run_penalty(root: Path, args: argparse.Namespace, report: Report) -> None:
    """Every variant is set up first and stays up; then, round by round and RTT by
    RTT, each runs in turn, so drift in the machine hits all of them alike."""
    runs = PenaltyRuns()
    user = bench_user()
    with contextlib.ExitStack() as stack:
        log(f"PostgreSQL's own streaming: primary, pgbench -i -s {args.scale}, pg_basebackup -R")
        pair = stack.enter_context(native_pair(root / "native", user, args.scale))
        logship: dict[str, tuple[Deployment, DelayRelay]] = {}
        if not has_streaming():
            log("this logship's sandbox has no streaming: logship variants skipped")
        else:
            for variant in ("logship_async", "logship_sync"):
                log(f"{variant}: primary, sshd behind a delay relay, daemon, standby restored")
                dep, relay = stack.enter_context(
                    deployment(
                        root / variant,
                        user,
                        streaming=True,
                        synchronous=variant == "logship_sync",
                        relayed=True,
                    )
                )
                assert relay is not None
                load_pgbench(dep.primary, args.scale)
                logship[variant] = (dep, relay)
        for round_no in range(1, args.rounds + 1):
            for rtt in args.rtts:
                log(f"round {round_no}/{args.rounds}, {rtt} ms RTT")
                native_round(pair, rtt, args, runs)
                for variant, (dep, relay) in logship.items():
                    logship_round(variant, dep, relay, rtt, args, runs)
    report_penalty(report, runs, args)


# -- part 2: exposure under load -----------------------------------------------------


class StatusSampler:
    """`logship.demo_sandbox.status_sampler` as the logship user (the catalog's
    owner): what `status --json` prints, computed by one long-lived process every
    `interval`. A CLI process per sample would cost more CPU than the interval and
    compete with the load being measured. `samples` are this connector's entries,
    each with `sampled_at`."""

    def __init__(self, dep: Deployment, interval: float) -> None:
        self.connector = dep.connector
        self.samples: list[dict[str, Any]] = []
        self._proc = subprocess.Popen(
            [
                *dep.user.command_prefix(),
                sys.executable,
                "-m",
                "logship.demo_sandbox.status_sampler",
                "--config",
                str(dep.config_path),
                "--interval",
                str(interval),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=dep.root,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                reading = json.loads(line)
                for entry in reading.get("connectors", []):  # none in a failed reading
                    if entry.get("name") == self.connector:
                        self.samples.append({**entry, "sampled_at": reading.get("at")})

    def stop(self) -> list[dict[str, Any]]:
        # SIGTERM to the sampler itself, not runuser (which re-raises it on itself).
        for pid in child_pids(self._proc.pid) or [self._proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            kill_tree(self._proc.pid)
            self._proc.wait(timeout=10)
        self._reader.join(10)
        if not self.samples:
            err = self._proc.stderr.read() if self._proc.stderr else ""
            raise RuntimeError(f"status sampler exited {self._proc.returncode}: {err[-2000:]}")
        return self.samples


def exposure_run(dep: Deployment, args: argparse.Namespace, *, streaming: bool) -> list[float]:
    if streaming:
        wait_standby(dep.primary, sync=False)
    dep.primary.execute("checkpoint")
    sampler = StatusSampler(dep, args.sample_interval)
    bench = start_pgbench(dep.primary, *pgbench_args(args.clients, args.exposure_seconds))
    try:
        bench.communicate(timeout=args.exposure_seconds + 180)
    finally:
        stop_process(bench)
        samples = sampler.stop()
    values = [s["rpo_exposure_s"] for s in samples if s.get("rpo_exposure_s") is not None]
    states: dict[str, int] = {}
    for sample in samples:
        state = str(sample.get("streaming", "n/a"))
        states[state] = states.get(state, 0) + 1
    log(
        f"  {len(samples)} samples, {len(values)} with an exposure; streaming states: "
        + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))
    )
    if not values:
        raise RuntimeError("no sample carried rpo_exposure_s")
    return values


def run_exposure(root: Path, args: argparse.Namespace, report: Report) -> None:
    user = bench_user()
    exposure: dict[str, list[float]] = {}
    variants = [("archive_only", False)]
    if has_streaming():
        variants.append(("streaming", True))
    else:
        log("this logship's sandbox has no streaming: exposure with streaming skipped")
    for name, streaming in variants:
        log(f"exposure, {name}: pgbench -c {args.clients} for {args.exposure_seconds:g} s")
        with deployment(root / f"exposure-{name}", user, streaming=streaming) as (dep, _):
            load_pgbench(dep.primary, args.scale)
            exposure[name] = exposure_run(dep, args, streaming=streaming)
    sampled = f"rpo_exposure_s from status --json every {args.sample_interval:g} s"
    load = f"pgbench -c {args.clients} {args.exposure_seconds:g} s"
    base = exposure["archive_only"]
    base_p50 = report.add(
        "exposure_archive_only_p50",
        percentile(base, 50),
        "s",
        detail=f"archive shipping alone (archive_timeout 10s); {sampled}; {load}; "
        f"{len(base)} samples",
    )
    base_p99 = report.add("exposure_archive_only_p99", percentile(base, 99), "s")
    ours = exposure.get("streaming")
    if ours is None:
        return
    report.add(
        "exposure_streaming_p50",
        percentile(ours, 50),
        "s",
        baseline=base_p50,
        detail=f"logship streaming, async; {sampled}; {load}; {len(ours)} samples",
    )
    p99 = percentile(ours, 99)
    report.add(
        "exposure_streaming_p99",
        p99,
        "s",
        baseline=base_p99,
        detail=f"target <= {TARGET_EXPOSURE_P99_S:g} s: {met(p99 <= TARGET_EXPOSURE_P99_S)}",
    )


# -- part 3: disaster drills ---------------------------------------------------------


class Ticker(threading.Thread):
    """One row every TICK_S: (id, the client's clock before the insert). A tick
    counts as acknowledged once its commit returned, with the time it did."""

    def __init__(self, dsn: str) -> None:
        super().__init__(name="ticker", daemon=True)
        self._dsn = dsn
        self._halt = threading.Event()
        #: id -> (sent at, acknowledged at)
        self.acked: dict[int, tuple[float, float]] = {}
        self.error: str | None = None

    def run(self) -> None:
        try:
            with psycopg.connect(self._dsn, autocommit=True) as conn:
                next_at = time.monotonic()
                tick = 0
                while not self._halt.is_set():
                    tick += 1
                    sent = time.time()
                    conn.execute("insert into ticks (id, at) values (%s, %s)", (tick, sent))
                    self.acked[tick] = (sent, time.time())
                    next_at += TICK_S
                    self._halt.wait(max(0.0, next_at - time.monotonic()))
        except psycopg.Error as exc:  # the primary stopping under it: the disaster
            self.error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


@dataclass(frozen=True)
class Drill:
    acked: int  # ticks acknowledged by the primary
    lost: int  # of those, missing on the promoted standby
    lost_s: float  # sent time of the newest acknowledged tick - of the newest one kept
    prefix: bool  # the standby's ticks are exactly 1..n
    window: bool | None  # every lost tick committed inside the loss report's window
    bound_s: float | None  # the loss report's bound


def drill_once(root: Path, args: argparse.Namespace, number: int, mode: str) -> Drill:
    streaming = mode != "archive"
    where = root / f"drill-{number}"
    with deployment(
        where, bench_user(), streaming=streaming, synchronous=mode == "sync", check_dsn=True
    ) as (dep, _):
        dep.primary.pgbench("-i", "-s", "4", "-q")
        dep.primary.execute("create table ticks (id bigint primary key, at double precision)")
        # Every drill starts from a standby that has replayed the table and the load.
        dep.wait_replayed(dep.switch_wal(), timeout=300)
        if streaming:
            wait_standby(dep.primary, sync=mode == "sync")
        bench = start_pgbench(dep.primary, *pgbench_args(args.clients, args.drill_seconds + 300))
        ticker = Ticker(dep.primary.dsn())
        ticker.start()
        try:
            # The load's length, not a wait for a condition.
            time.sleep(args.drill_seconds)
            dep.primary.stop(mode="immediate")
            # The disaster takes the primary's host, logship's daemon with it.
            dep.stop_daemon(sig=signal.SIGKILL)
        finally:
            ticker.stop()
            stop_process(bench)
        promoted = dep.logship(
            "promote", dep.connector, "--timeout", "120", "--accept-data-loss", check=False
        )
        if promoted.returncode != 0:
            raise RuntimeError(f"promote failed:\n{promoted.stdout[-3000:]}{promoted.stderr}")
        kept = [int(i) for (i,) in dep.standby.query("select id from ticks order by id")]
        marker = Path(SiteLayout.for_connector(str(dep.incoming), dep.connector).promoted_marker)
        loss = json.loads(marker.read_text()).get("loss", {})
    acked = ticker.acked
    newest_kept = max(kept, default=0)
    lost_ids = [i for i in acked if i > newest_kept]
    newest_acked = max(acked, default=0)
    lost_s = 0.0
    if lost_ids:
        kept_at = acked[newest_kept][0] if newest_kept in acked else acked[min(acked)][0]
        lost_s = acked[newest_acked][0] - kept_at
    start, end = loss.get("window_start"), loss.get("window_end")
    window = None
    if start is not None and end is not None:
        window = all(acked[i][1] >= start and acked[i][0] <= end for i in lost_ids)
    return Drill(
        acked=len(acked),
        lost=len(lost_ids),
        lost_s=lost_s,
        prefix=kept == list(range(1, len(kept) + 1)),
        window=window,
        bound_s=loss.get("bound_s"),
    )


DRILL_MODES = {
    "async": "async streaming",
    "sync": "synchronous streaming",
    "archive": "archive shipping alone",
}


def run_drills(root: Path, args: argparse.Namespace, report: Report) -> None:
    mode = args.drill_mode
    if mode != "archive" and not has_streaming():
        log("this logship's sandbox has no streaming: drills with archive shipping alone")
        mode = "archive"
    how = DRILL_MODES[mode]
    # The figures are the async ones; the others are named by their mode.
    name = "drill" if mode == "async" else f"drill_{mode}"
    drills: list[Drill] = []
    for number in range(1, args.drills + 1):
        log(f"drill {number}/{args.drills} ({how}): load {args.drill_seconds:g} s, then the crash")
        drill = drill_once(root, args, number, mode)
        drills.append(drill)
        log(
            f"  {drill.acked} ticks acknowledged, {drill.lost} lost ({drill.lost_s:.2f} s); "
            f"prefix {drill.prefix}; loss report bound {drill.bound_s} s, "
            f"contains the loss: {drill.window}"
        )
    lost_s = [d.lost_s for d in drills]
    worst = max(lost_s)
    prefixes = sum(d.prefix for d in drills)
    windows = sum(bool(d.window) for d in drills)
    setup = (
        f"{how}; pgbench -c {args.clients} plus a tick every {TICK_S * 1000:.0f} ms for "
        f"{args.drill_seconds:g} s, pg_ctl stop -m immediate, logship promote"
    )
    report.add(
        f"{name}_loss_max",
        worst,
        "s",
        detail=f"{setup}; {len(drills)} drills; target <= {TARGET_DRILL_LOSS_S:g} s: "
        f"{met(worst <= TARGET_DRILL_LOSS_S)}",
        runs=lost_s,
    )
    report.add(f"{name}_loss_p50", percentile(lost_s, 50), "s")
    report.add(
        f"{name}_lost_ticks_max",
        max(d.lost for d in drills),
        "ticks",
        detail="acknowledged ticks missing on the promoted standby",
        runs=[d.lost for d in drills],
    )
    bounds = [d.bound_s for d in drills if d.bound_s is not None]
    report.add(
        f"{name}_loss_report_bound_max",
        max(bounds) if bounds else float("nan"),
        "s",
        detail=f"promote's loss report; its window held every lost tick in {windows} of "
        f"{len(drills)} drills; the standby's ticks were a prefix of the primary's in "
        f"{prefixes} of {len(drills)}",
        runs=bounds,
    )


# -- main ----------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}"
    )
    parser.add_argument("--quick", action="store_true", help="seconds per run, 2 drills")
    parser.add_argument("--seconds", type=float, default=25, help="each penalty run")
    parser.add_argument("--rtts", default="0,10,50", help="RTTs in ms, comma-separated")
    parser.add_argument("--rounds", type=int, default=1, help="penalty runs of each variant")
    parser.add_argument("--clients", type=int, default=4, help="pgbench clients")
    parser.add_argument("--scale", type=int, default=10, help="pgbench -i -s")
    parser.add_argument("--exposure-seconds", type=float, default=30)
    parser.add_argument("--sample-interval", type=float, default=0.2)
    parser.add_argument("--drills", type=int, default=10)
    parser.add_argument("--drill-seconds", type=float, default=10, help="load before the crash")
    parser.add_argument(
        "--drill-mode",
        choices=sorted(DRILL_MODES),
        default="async",
        help="how the drills' standby is fed (async streaming by default)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.exposure_seconds = 5, 10
        args.drills, args.drill_seconds = 2, 4
    args.rtts = [int(v) for v in args.rtts.split(",") if v.strip()]
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(args.only) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; known: {', '.join(PARTS)}")
    return args


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: every cluster, sshd and relay is stopped.
    signal.signal(signal.SIGTERM, _interrupted)
    report = Report(BENCH, environment())
    parts = {"penalty": run_penalty, "exposure": run_exposure, "drills": run_drills}
    try:
        with reachable_tempdir() as root:
            for part in PARTS:
                if part in args.only:
                    parts[part](root, args, report)
    finally:
        if report.figures:
            report.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
