"""Read-ahead from pg_wal, end to end: PostgreSQL's archiver with archive-wal against one
OpenSSH sftp session, archive-wal's confirmation per call, and CPU per GiB.

Usage: python bench/read_ahead.py [--scale 100] [--repeat 3] [--quick]

One PostgreSQL 15 cluster makes bulk WAL (`pgbench -i`); copies of its segments are
put back into its pg_wal and handed to its own archiver at once, whose
archive_command is `logship archive-wal`, with a `logship run` shipping to a private
sshd on loopback: with read-ahead (`[primary] data_dir`), with it and
`archive_wait = "0s"`, and without it (the spool copy). The same segments go to the
same sshd in one `sftp -b` session, then `sync`. See bench/README.md for what each
figure means. JSON lines on stdout, progress and a table on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
from common import MIB, Report, log, median, p95
from live import archiver_pid, cpu_seconds, environment_changed
from pgbackrest import Archived, PgArchiver, check_site, link_back, rotate, run_as, user_env
from throughput_vs_sftp import AES_GCM, _json_or_none, _stop, sftp_put_all

from logship.demo_sandbox import OsUser, PgCluster, SshServer, free_port
from logship.demo_sandbox.procs import kill_tree
from logship.engines.postgresql.archive_wal import SHIPPED_DIR

BENCH = "read_ahead"
CONNECTOR = "bench"
#: the issue's targets
TARGET_VS_SFTP = 0.8
TARGET_CONFIRM_P50_MS = 30.0
#: the daemon's connections (logship's default); the clock starts once all are up
CONNECTIONS = 4
#: where the CPU of a logship run went, by process tree
PARTS = ("daemon", "archiver", "site", "postgres", "other")


@dataclass(frozen=True)
class Variant:
    figure: str
    read_ahead: bool
    #: archive_wait, None for logship's default
    archive_wait: str | None = None

    def describe(self) -> str:
        if not self.read_ahead:
            return (
                "read-ahead off (no data_dir): archive-wal's durable spool copy, the daemon "
                "ships the spool"
            )
        wait = "default" if self.archive_wait is None else f'"{self.archive_wait}"'
        return (
            f"read-ahead on ([primary] data_dir; archive_wait {wait}): the daemon ships each "
            ".ready segment from pg_wal, archive-wal confirms it by its tombstone"
        )


VARIANTS = (
    Variant("logship_read_ahead_zstd", True),
    Variant("logship_read_ahead_nowait_zstd", True, "0s"),
    Variant("logship_spool_zstd", False),
)
SFTP = {"sftp_sync_default_cipher": None, "sftp_sync_aes128_gcm": AES_GCM}


@dataclass
class EndToEnd(Archived):
    """One timed run: what Archived holds, the `sync` after sftp, and for logship the
    CPU-seconds of each process tree in the window."""

    sync_seconds: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)
    copied: int = 0  # segments archive-wal copied into the spool (not confirmed)


@dataclass
class Context:
    root: Path
    user: OsUser
    server: SshServer
    cluster: PgCluster
    pg: PgArchiver
    incoming: Path
    pycache: Path

    @property
    def names(self) -> list[str]:
        return self.pg.names


# -- logship's config and daemon -----------------------------------------------------


def write_config(ctx: Context, workdir: Path, variant: Variant) -> Path:
    """logship.toml for this variant, everything under `workdir` owned by PostgreSQL's
    user (the daemon and archive-wal run as it). Defaults but for no standby to ask and
    no spool rescan while timing, as in throughput_vs_sftp's daemon."""
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "connectors").mkdir(parents=True)
    config = workdir / "logship.toml"
    text = common.main_config_text(workdir / "state", ctx.server, ctx.incoming)
    text = text.replace(
        "[sites.dr]\n", 'lag_sample_interval = "1h"\nreconcile_interval = "1h"\n\n[sites.dr]\n'
    )
    config.write_text(text)
    primary = [f'dsn = "{ctx.cluster.socket_dsn()}"']
    if variant.read_ahead:
        primary.append(f'data_dir = "{ctx.cluster.data_dir}"')
    if variant.archive_wait is not None:
        primary.append(f'archive_wait = "{variant.archive_wait}"')
    (workdir / "connectors" / f"{CONNECTOR}.toml").write_text(
        f"""kind = "postgresql"
site = "dr"
rpo = "60s"
compression = "zstd"

[primary]
{chr(10).join(primary)}

[standby]
dsn = "host=/nonexistent port=5433 dbname=postgres"
data_dir = "{ctx.root / "no-standby"}"
"""
    )
    subprocess.run(["chown", "-R", f"{ctx.user.uid}:{ctx.user.gid}", str(workdir)], check=True)
    return config


def archive_wal_command(config: Path) -> list[str]:
    """archive-wal as the README's archive_command runs it: the `logship` script beside
    this interpreter (no runpy: a few ms less per call than `python -m logship`)."""
    script = Path(sys.executable).parent / "logship"
    logship = [str(script)] if script.exists() else [sys.executable, "-m", "logship"]
    return [*logship, "--config", str(config), "archive-wal", CONNECTOR]


class Daemon:
    """`logship run` as PostgreSQL's user (it reads pg_wal); its JSON log read as it grows."""

    def __init__(self, config: Path, user: OsUser) -> None:
        self.config = config
        self.user = user
        self.log_path = config.parent / "daemon.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._offset = 0
        self._partial = b""
        self._events: list[dict[str, Any]] = []

    @property
    def spool(self) -> Path:
        return self.config.parent / "state" / "spool" / CONNECTOR

    @property
    def pid(self) -> int | None:
        """The daemon itself, not runuser in front of it."""
        if self._proc is None:
            return None
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children")
            return int(children.read_text().split()[0])
        return self._proc.pid

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every `name` event logged so far; only what was appended since the last call
        is read, so polling costs little CPU in the timed window."""
        try:
            with open(self.log_path, "rb") as src:
                src.seek(self._offset)
                chunk = src.read()
        except FileNotFoundError:
            chunk = b""
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        self._events += [e for e in map(_json_or_none, (x.decode() for x in lines)) if e]
        return [e for e in self._events if e.get("event") == name]

    def shipped(self) -> dict[str, dict[str, Any]]:
        return {str(e["file"]): e for e in self.events("shipped")}

    def start(self) -> None:
        cmd = [*self.user.command_prefix(), sys.executable, "-m", "logship"]
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                [*cmd, "--config", str(self.config), "run"],
                stdout=out,
                stderr=out,
                cwd=self.config.parent,
            )
        self.user.chown(self.log_path)

        def up() -> bool:
            self.check()
            lanes = len(self.events("lane connected"))
            return bool(self.events("connected")) and lanes >= CONNECTIONS - 1

        common.wait_until(up, 60, "the daemon and its lanes connected")

    def check(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"logship run exited {self._proc.returncode}: see {self.log_path}")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        pid = self.pid_of(proc)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # in-flight uploads finish, then it exits
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait(10)

    @staticmethod
    def pid_of(proc: subprocess.Popen[bytes]) -> int:
        with contextlib.suppress(OSError, ValueError, IndexError):
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            return int(children.read_text().split()[0])
        return proc.pid


@contextlib.contextmanager
def running(daemon: Daemon) -> Iterator[Daemon]:
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


class TreeCpu:
    """CPU-seconds of each process tree of the pipeline over a window; `other` is the
    rest of the machine's busy time (the kernel's own work, this script, other work)."""

    def __init__(self, ctx: Context, daemon: Daemon) -> None:
        pid_file = ctx.cluster.data_dir / "postmaster.pid"
        self._pids = {
            "daemon": daemon.pid,
            "archiver": archiver_pid(ctx.cluster),
            "site": ctx.server.pid,
            "postmaster": int(pid_file.read_text().split()[0]),
        }
        self._start = self._snapshot()

    def _snapshot(self) -> dict[str, float]:
        values = {name: cpu_seconds(pid) for name, pid in self._pids.items()}
        values["machine"] = common.machine_cpu()[0]
        return values

    def stop(self) -> dict[str, float]:
        end = self._snapshot()
        used = {k: end[k] - self._start[k] for k in end}
        # The archiver (and the archive-wal calls it reaped) runs below the postmaster.
        used["postgres"] = used.pop("postmaster") - used["archiver"]
        machine = used.pop("machine")
        used["other"] = max(0.0, machine - sum(used.values()))
        return used


# -- the timed runs ------------------------------------------------------------------


def logship_run(
    ctx: Context, variant: Variant, check: bool, profile: Path | None = None
) -> EndToEnd:
    """From the archiver's wake-up (every segment .ready at once) until the daemon logged
    the last one shipped: durable at the site, its manifest record written. With
    `profile`, py-spy samples the daemon and its lanes into that file (collapsed stacks)."""
    config = write_config(ctx, ctx.root / "runs" / variant.figure, variant)
    cache = f"PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX={ctx.pycache}"
    ctx.pg.set(
        {
            "archive_library": "",
            "archive_command": f"{cache} {shlex.join(archive_wal_command(config))} %p",
        }
    )
    common.empty_dir(ctx.incoming)
    ctx.pg.stage()  # also syncs
    daemon = Daemon(config, ctx.user)
    names = set(ctx.names)
    with running(daemon):
        # The spool, and the tombstones' folder, belong to PostgreSQL's user.
        common.private_dir(daemon.spool / SHIPPED_DIR, ctx.user)
        before = ctx.pg.counts()
        spy = start_py_spy(daemon, profile) if profile is not None else None
        cpu = TreeCpu(ctx, daemon)
        watch = common.Stopwatch()
        ctx.pg.wake()
        deadline = time.monotonic() + 600
        in_spool: set[str] = set()

        def poll(done: Callable[[], bool], what: str) -> None:
            while not done():
                # archive-wal's copies stay in the spool until shipped: seen at this
                # rate, they tell how many segments it copied rather than confirmed.
                with contextlib.suppress(FileNotFoundError):
                    in_spool.update(os.listdir(daemon.spool))
                daemon.check()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what} took over 600 s: see {daemon.log_path}")
                time.sleep(0.01)

        poll(lambda: names <= daemon.shipped().keys(), "shipping")
        window = watch.stop()
        parts = cpu.stop()
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes its file and exits
            spy.wait(60)
        poll(ctx.pg.all_done, "the archiver")
        archiver_seconds = ctx.pg.seconds()
        ctx.pg.verify(before)
    shipped = daemon.shipped()
    check_site(ctx.incoming, ctx.names)
    stored = sum(int(shipped[n].get("stored_bytes", 0)) for n in ctx.names)
    copied = len(in_spool & names)
    return EndToEnd.of(
        window,
        stored,
        raw_bytes=ctx.pg.raw_bytes,
        archiver_seconds=archiver_seconds,
        parts=parts,
        copied=copied,
    )


def sftp_run(ctx: Context, cipher: str | None, check: bool) -> EndToEnd:
    """One `sftp -b` session putting every segment, then `sync`: the data durable at
    the site, as logship's is when its clock stops."""
    common.empty_dir(ctx.incoming)  # also syncs
    dest = common.private_dir(ctx.incoming / "sftp", ctx.user)
    batch = ctx.root / "sftp.batch"
    watch = common.Stopwatch()
    run = sftp_put_all(ctx.server, ctx.pg.masters, dest, batch, cipher)
    synced = time.perf_counter()
    subprocess.run(["sync"], check=True)
    sync_seconds = time.perf_counter() - synced
    window = watch.stop()
    landed = {p.name: p.stat().st_size for p in dest.iterdir()}
    if landed != {m.name: m.stat().st_size for m in ctx.pg.masters}:
        raise RuntimeError(f"sftp left {len(landed)} files at the site, not every segment whole")
    return EndToEnd.of(
        window, ctx.pg.raw_bytes, run.cipher, raw_bytes=ctx.pg.raw_bytes, sync_seconds=sync_seconds
    )


def start_py_spy(daemon: Daemon, out: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("py-spy") or "py-spy"
    cmd = [exe, "record", "--pid", str(daemon.pid), "--subprocesses", "--format", "raw"]
    spy = subprocess.Popen(
        [*cmd, "--rate", "250", "--output", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1)  # attaching takes a moment; the samples start with the run
    return spy


def _frame(text: str) -> str:
    """`func (path/to/module.py:123)` as `func (module.py)`."""
    name, _, where = text.partition(" (")
    return f"{name} ({Path(where.rsplit(':', 1)[0]).name})" if where else name


def summarize_profile(path: Path, top: int = 20) -> str:
    """The functions the daemon's samples were in most (self, and with what they called),
    from py-spy's collapsed stacks (`frame;frame;... count`)."""
    own: dict[str, int] = {}
    within: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            within[frame] = within.get(frame, 0) + n

    def ranked(counts: dict[str, int]) -> str:
        best = sorted(counts.items(), key=lambda kv: -kv[1])[:top]
        return "\n".join(f"  {n / total:6.1%}  {name}" for name, n in best)

    return f"{total} samples\nself:\n{ranked(own)}\nwith callees:\n{ranked(within)}"


# -- archive-wal per call ------------------------------------------------------------


def confirm_calls(ctx: Context, calls: int) -> dict[str, list[float]]:
    """archive-wal's time per call (ms) for a segment the read-ahead has already shipped,
    and, interleaved, for the same segment with read-ahead off (the durable spool copy).

    The cluster is stopped and the masters are linked into its pg_wal (pgbackrest.py's
    emulated harness); a read-ahead daemon ships them all from their .ready files and
    stops. Then each call runs as the archiver runs it, serially, as PostgreSQL's user,
    with no daemon running for either kind: the call's own cost."""
    link_back(ctx.cluster, ctx.pg.masters)
    names = ctx.names[:calls]
    status = ctx.cluster.data_dir / "pg_wal" / "archive_status"
    for name in names:
        (status / f"{name}.done").unlink(missing_ok=True)
        ready = status / f"{name}.ready"
        ready.touch(mode=0o600)
        ctx.user.chown(ready)
    on = write_config(ctx, ctx.root / "calls" / "on", Variant("on", True))
    off = write_config(ctx, ctx.root / "calls" / "off", Variant("off", False))
    shipper = Daemon(on, ctx.user)
    with running(shipper):
        common.private_dir(shipper.spool / SHIPPED_DIR, ctx.user)
        common.wait_until(
            lambda: set(names) <= shipper.shipped().keys(), 600, "the read-ahead shipped them"
        )
    common.private_dir(Daemon(off, ctx.user).spool, ctx.user)
    env = user_env(ctx.user, PYTHONPYCACHEPREFIX=str(ctx.pycache))
    commands = {"on": archive_wal_command(on), "off": archive_wal_command(off)}
    times: dict[str, list[float]] = {"on": [], "off": []}
    for n, name in enumerate(names):
        # Interleaved, the order turning each call, so drift hits both alike.
        for kind in ("on", "off") if n % 2 == 0 else ("off", "on"):
            start = time.perf_counter()
            run_as(ctx.user, [*commands[kind], f"pg_wal/{name}"], cwd=ctx.cluster.data_dir, env=env)
            times[kind].append((time.perf_counter() - start) * 1000)
    spool_copies = [p for p in shipper.spool.iterdir() if p.name in set(names)]
    if spool_copies:
        raise RuntimeError(f"archive-wal copied {spool_copies[0].name} although it was shipped")
    return times


# -- the report ----------------------------------------------------------------------


def report_runs(
    report: Report,
    runs: dict[str, list[EndToEnd]],
    failed: dict[str, list[str]],
    wal: str,
) -> None:
    def seconds(name: str) -> list[float]:
        return [r.seconds for r in runs[name]]

    def spread(name: str) -> str:
        errors = failed.get(name, [])
        left_out = f"; {len(errors)} left out, failed: {errors[0]}" if errors else ""
        values = seconds(name)
        return f"{len(values)} run(s) {min(values):.2f}-{max(values):.2f} s{left_out}"

    figures = {}
    for name, cipher in SFTP.items():
        if not runs.get(name):
            continue
        done = runs[name]
        figures[name] = report.add(
            name,
            median(seconds(name)),
            "s",
            detail=f"one `sftp -b` session, cipher {done[0].cipher or cipher}, plain put of every "
            f"segment, then `sync` ({median([r.sync_seconds for r in done]):.2f} s of it); "
            f"{spread(name)}; {wal}",
            runs=seconds(name),
        )
    sftp = list(figures.values())
    baseline = figures.get("sftp_sync_default_cipher") or (sftp[0] if sftp else None)
    fastest = min(sftp, key=lambda f: f.value, default=None)
    for variant in VARIANTS:
        name = variant.figure
        if not runs.get(name):
            continue
        done = runs[name]
        value = median(seconds(name))
        ratio = value / baseline.value if baseline else float("nan")
        verdict = (
            f"target <= {TARGET_VS_SFTP}x sftp: {'met' if ratio <= TARGET_VS_SFTP else 'NOT met'}"
        )
        against_fastest = (
            f"; {value / fastest.value:.2f}x {fastest.figure}" if fastest is not None else ""
        )
        parts = {k: median([r.parts[k] for r in done]) for k in PARTS}
        gib = done[0].raw_bytes / (1024 * MIB)
        split = ", ".join(f"{k} {v / gib:.2f}" for k, v in parts.items())
        first = done[0]
        report.add(
            name,
            value,
            "s",
            baseline=baseline,
            detail=f"{variant.describe()}; PostgreSQL's archiver woken with every segment "
            f".ready, until the daemon logged the last shipped; {verdict}{against_fastest}; "
            f"the archiver done after {median([r.archiver_seconds for r in done]):.2f} s "
            f"(its last .done); archive-wal copied {median([r.copied for r in done]):.0f} of "
            f"{first.raw_bytes // common.SEGMENT_SIZE} into the spool; CPU-s per GiB by "
            f"process tree: {split}; raw/stored {first.raw_bytes / first.stored_bytes:.1f}x; "
            f"{spread(name)}",
            runs=seconds(name),
        )
    for name, measured in runs.items():
        if measured:
            common.add_cpu_figure(report, name, measured, measured[0].raw_bytes)


def report_calls(report: Report, times: dict[str, list[float]]) -> None:
    on, off = times["on"], times["off"]
    p50 = median(on)
    off_fig = report.add(
        "archive_wal_copy_p50",
        median(off),
        "ms",
        detail=f"read-ahead off: archive-wal's durable spool copy, {len(off)} calls "
        f"interleaved with the confirmations, no daemon running; p95 {p95(off):.1f} ms",
        runs=off,
    )
    report.add(
        "archive_wal_confirm_p50",
        p50,
        "ms",
        baseline=off_fig,
        detail=f"read-ahead had shipped the segment: archive-wal hashes it and finds the "
        f"tombstone's sha256, exit 0, no copy; {len(on)} calls as PostgreSQL's user, serially; "
        f"target <= {TARGET_CONFIRM_P50_MS:.0f} ms: "
        f"{'met' if p50 <= TARGET_CONFIRM_P50_MS else 'NOT met'}",
        runs=on,
    )
    report.add("archive_wal_confirm_p95", p95(on), "ms", detail="nearest rank")
    report.add("archive_wal_copy_p95", p95(off), "ms", detail="nearest rank")


# -- main ----------------------------------------------------------------------------


def bulk_wal(cluster: PgCluster, archive: Path, scale: int, files: int | None) -> common.WalSet:
    """The whole segments `pgbench -i -s scale` wrote, as basic_archive copied them out."""
    cluster.initdb()
    cluster.configure(common.wal_generation_settings(archive))
    cluster.start()
    started = time.monotonic()
    log(f"bulk WAL: pgbench -i -s {scale}")
    cluster.pgbench("-i", "-s", str(scale), "-q", timeout=1800)
    common.wait_until(
        lambda: not any(cluster.data_dir.glob("pg_wal/archive_status/*.ready")),
        300,
        "the load archived",
    )
    whole = [p for p in sorted(archive.iterdir()) if p.stat().st_size == common.SEGMENT_SIZE]
    chosen = whole[:files] if files else whole
    log(f"  {len(chosen)} segments in {time.monotonic() - started:.0f} s")
    return common.WalSet(chosen, f"real WAL, PostgreSQL 15: pgbench -i -s {scale} (bulk load)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", type=int, help="pgbench -i -s (default 100, --quick 30)")
    parser.add_argument("--files", type=int, help="use at most this many segments")
    parser.add_argument("--repeat", type=int, help="timed rounds (default 3, --quick 1)")
    parser.add_argument("--calls", type=int, default=48, help="archive-wal calls of each kind")
    parser.add_argument("--quick", action="store_true", help="scale 30, 1 round, 16 calls")
    parser.add_argument(
        "--only", choices=("end-to-end", "calls"), action="append", help="one part (repeatable)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="after the timed rounds, one more read-ahead run (not reported) with py-spy "
        "sampling the daemon and its lanes; its collapsed stacks and a summary go here",
    )
    args = parser.parse_args(argv)
    scale = args.scale or (30 if args.quick else 100)
    repeat = args.repeat or (1 if args.quick else 3)
    calls = 16 if args.quick and args.calls == 48 else args.calls
    parts = args.only or ["end-to-end", "calls"]
    if not (common.PG_BIN / "initdb").exists():
        log(f"not run: PostgreSQL 15 is not installed in {common.PG_BIN}")
        return 1
    signal.signal(signal.SIGTERM, _stop)
    report = Report(BENCH, common.environment())
    user = common.bench_user()
    with contextlib.ExitStack() as stack:
        root = stack.enter_context(common.reachable_tempdir("logship-read-ahead-"))
        pycache = common.private_dir(root / "pycache", user)
        # As installed by pip, archive-wal finds its bytecode compiled; PostgreSQL and
        # the daemon inherit this.
        stack.enter_context(
            environment_changed(PYTHONDONTWRITEBYTECODE=None, PYTHONPYCACHEPREFIX=str(pycache))
        )
        server = stack.enter_context(common.ssh_server(root / "sshd", user))
        cluster = PgCluster(root / "pg" / "pgdata", free_port(), user)
        stack.callback(cluster.destroy)
        wal = bulk_wal(cluster, common.private_dir(root / "masters", user), scale, args.files)
        report.env["wal"] = (
            f"{wal.source}: {len(wal.files)} segments, {wal.total_bytes / MIB:.0f} MiB"
        )
        conn = stack.enter_context(cluster.connect())
        pg = PgArchiver(cluster, conn, wal.files)
        pg.prepare(root / "masters")
        ctx = Context(
            root, user, server, cluster, pg, common.private_dir(root / "incoming", user), pycache
        )
        if "end-to-end" in parts:
            runners: dict[str, Callable[[bool], Archived]] = {
                name: lambda check, c=cipher: sftp_run(ctx, c, check)
                for name, cipher in SFTP.items()
            }
            for variant in VARIANTS:
                runners[variant.figure] = lambda check, v=variant: logship_run(ctx, v, check)
            failed: dict[str, list[str]] = {}
            runs = rotate(runners, repeat, failed)
            report_runs(report, runs, failed, report.env["wal"])  # type: ignore[arg-type]
            if args.profile is not None:
                args.profile.mkdir(parents=True, exist_ok=True)
                stacks = args.profile / "daemon-stacks.txt"
                logship_run(ctx, VARIANTS[0], False, profile=stacks)
                summary = summarize_profile(stacks)
                (args.profile / "summary.txt").write_text(summary + "\n")
                log(f"profile of the daemon in one read-ahead run:\n{summary}")
        if "calls" in parts:
            conn.close()
            report_calls(report, confirm_calls(ctx, calls))
    report.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
