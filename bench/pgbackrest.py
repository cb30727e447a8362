"""logship vs pgBackRest: archive-push of the same WAL to a repository over SSH.

Usage: python bench/pgbackrest.py [--files 64] [--repeat 3] [--quick] [--harness both]

One PostgreSQL 15 cluster makes the WAL and is the stanza pgBackRest archives for.
Two harnesses hand its segments over. With the cluster running, PostgreSQL's own
archiver archives copies of them put back into pg_wal: pgBackRest through
archive_command, logship through basic_archive (or archive-wal) into a running
`logship run`. With the cluster stopped, an emulated archiver runs one command per
segment: pgBackRest synchronous and asynchronous, logship's `archive-wal`, and the
daemon alone. pgBackRest's repository "host" and logship's site are a private sshd
on loopback. See bench/README.md for what each figure means. JSON lines on stdout,
progress and a table on stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import common
import psycopg
from common import MIB, PG_BIN, SEGMENT_SIZE, Figure, Report, log, mean, median
from psycopg import sql
from throughput_vs_sftp import CONNECTOR, Run, _stop, logship_daemon_all

from logship.demo_sandbox import OsUser, PgCluster, SshServer, free_port
from logship.demo_sandbox.osuser import is_root, tail
from logship.engines.postgresql.archive_wal import SHIPPED_DIR

BENCH = "pgbackrest"
STANZA = "bench"
#: the issue's target: logship at least this many times pgBackRest's best async rate
TARGET = 1.5
SCALE = 20
TPCB_BUDGET_S = 240
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")


# -- running as PostgreSQL's user ----------------------------------------------------


def user_env(user: OsUser, **extra: str) -> dict[str, str]:
    """A clean environment like a postmaster's: no PGBACKREST_* or PYTHON* from ours."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": pwd.getpwuid(user.uid).pw_dir,
        "USER": user.name,
        "LOGNAME": user.name,
        "LANG": "C.UTF-8",
        **extra,
    }


def run_as(
    user: OsUser, cmd: Sequence[str], *, cwd: Path, env: dict[str, str], timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` as `user` with a plain setuid fork and exec, as the archiver does:
    runuser would add a PAM session, milliseconds per call, to every segment."""
    switch: dict[str, Any] = {}
    if is_root() and user.uid != 0:
        switch = {
            "user": user.uid,
            "group": user.gid,
            "extra_groups": sorted(user.groups() - {user.gid}),
        }
    proc = subprocess.run(
        list(cmd),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **switch,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return proc


@dataclass
class Archiver:
    """PostgreSQL's archiver, emulated, for segments in a stopped cluster's pg_wal: one
    command per .ready segment, oldest first, serially, in the data directory as the
    cluster's user, `pg_wal/NAME` as %p; .ready becomes .done once it exited 0."""

    pgdata: Path
    names: list[str]
    user: OsUser
    #: wall time of each command since the last make_ready
    durations: list[float] = field(default_factory=list)

    @property
    def status_dir(self) -> Path:
        return self.pgdata / "pg_wal" / "archive_status"

    def make_ready(self) -> None:
        self.durations = []
        for name in self.names:
            (self.status_dir / f"{name}.done").unlink(missing_ok=True)
            ready = self.status_dir / f"{name}.ready"
            ready.touch(mode=0o600)
            self.user.chown(ready)

    def archive(self, name: str, command: Sequence[str], env: dict[str, str]) -> None:
        start = time.perf_counter()
        run_as(self.user, [*command, f"pg_wal/{name}"], cwd=self.pgdata, env=env)
        self.durations.append(time.perf_counter() - start)
        os.rename(self.status_dir / f"{name}.ready", self.status_dir / f"{name}.done")

    def archive_all(self, command: Sequence[str], env: dict[str, str]) -> None:
        for name in self.names:
            self.archive(name, command, env)


@dataclass
class Archived(Run):
    """A timed run: the raw bytes handed over, and how long each of the emulated
    archiver's commands took in it, or how long PostgreSQL's archiver took for all."""

    raw_bytes: int = 0
    calls: list[float] = field(default_factory=list)
    archiver_seconds: float = 0.0


# -- the WAL and the cluster it belongs to -------------------------------------------


def _archived(directory: Path) -> list[Path]:
    """Whole segments PostgreSQL archived itself (none cut short by a switch)."""
    return sorted(
        p
        for p in directory.iterdir()
        if _SEGMENT.match(p.name) and p.stat().st_size == SEGMENT_SIZE
    )


def make_wal(
    cluster: PgCluster, archive: Path, count: int, while_running: Callable[[], None]
) -> common.WalSet:
    """`count` segments of `cluster`'s own WAL, as basic_archive copied them into
    `archive`: the masters every run copies or links from. The cluster is left running.

    The load is that of common.real_wal (pgbench -i, then TPC-B), but the cluster is
    kept: pgBackRest only takes WAL whose system identifier is its stanza's, and
    `while_running` (stanza-create) needs the cluster up.
    """
    cluster.initdb()
    cluster.configure(common.wal_generation_settings(archive))
    cluster.start()
    while_running()
    log(f"generating {count} WAL segments: pgbench -i -s {SCALE}")
    cluster.pgbench("-i", "-s", str(SCALE), "-q")
    from_init = {p.name for p in _archived(archive)}
    deadline = time.monotonic() + TPCB_BUDGET_S
    while len(_archived(archive)) < count and time.monotonic() < deadline:
        seconds = max(1, min(15, int(deadline - time.monotonic())))
        cluster.pgbench("-c", "4", "-j", "2", "-T", str(seconds), "-n")
        log(f"  pgbench TPC-B: {len(_archived(archive))}/{count} segments archived")
    for _ in range(64):  # bounded: each round adds about 16 segments at -s 20
        if len(_archived(archive)) >= count:
            break
        cluster.pgbench("-i", "-s", str(SCALE), "-q")
    common.wait_until(lambda: len(_archived(archive)) >= count, 120, f"{count} segments")
    files = _archived(archive)[:count]
    bulk = sum(f.name in from_init for f in files)
    return common.WalSet(
        files,
        f"real WAL of the stanza's PostgreSQL 15 cluster: pgbench -i -s {SCALE} then "
        f"pgbench TPC-B ({bulk} segments archived by the end of the bulk load, "
        f"{len(files) - bulk} after)",
    )


def link_back(cluster: PgCluster, masters: list[Path]) -> None:
    """Stop the cluster cleanly and hard-link the masters back into its pg_wal, for
    the emulated archiver. Links are safe only now: the shutdown checkpoint has
    removed or recycled every archived segment there, and the cluster never runs
    again to recycle (rename and overwrite) one of them."""
    cluster.stop()
    for master in masters:
        target = cluster.data_dir / "pg_wal" / master.name
        target.unlink(missing_ok=True)
        os.link(master, target)


# -- PostgreSQL's own archiver -------------------------------------------------------


class PgArchiver:
    """PostgreSQL's archiver on the running cluster, for copies of the masters put
    back into its pg_wal.

    Copies, never links: once a segment is archived, a checkpoint removes it or
    recycles it (renames it to a future segment, later overwritten), which would
    destroy a master. Between runs every copy is marked .done, so that a checkpoint
    may take it (stage copies it again) but never has it archived; a run turns the
    .done into .ready and wakes the archiver, as PostgreSQL does when segments fill.
    """

    def __init__(
        self, cluster: PgCluster, conn: psycopg.Connection[Any], masters: list[Path]
    ) -> None:
        self.cluster = cluster
        self.conn = conn
        self.masters = masters
        self.names = [m.name for m in masters]
        self.raw_bytes = sum(m.stat().st_size for m in masters)
        self.pg_wal = cluster.data_dir / "pg_wal"
        self.status_dir = self.pg_wal / "archive_status"
        self.library = "basic_archive"  # as make_wal configured it
        self.woken_at = 0.0

    def _one(self, query: str) -> Any:
        row = self.conn.execute(query).fetchone()
        return row[0] if row else None

    def prepare(self, basic_archive_dir: Path) -> None:
        """Once, with the cluster's own WAL archived: nothing to archive but the bench's.

        The redo point must be past every bench segment (so the cluster never reads
        them again), and no timed checkpoint may come between stage and wake-up
        (an idle cluster skips them anyway; this makes sure).
        """
        common.wait_until(
            lambda: not any(self.status_dir.glob("*.ready")), 120, "the cluster's own WAL archived"
        )
        self.set(
            {
                "archive_library": "",
                "archive_command": "",
                "basic_archive.archive_directory": str(basic_archive_dir),
                "checkpoint_timeout": "1d",
            }
        )
        self.conn.execute("CHECKPOINT")
        redo = self._one("SELECT pg_walfile_name(redo_lsn) FROM pg_control_checkpoint()")
        if redo <= self.names[-1]:
            raise RuntimeError(f"redo point in {redo}, not past the bench's {self.names[-1]}")

    def set(self, settings: dict[str, str]) -> None:
        """ALTER SYSTEM and a reload, outside the clock. PostgreSQL 15 reloads both
        archive_command and archive_library, but restarts the archiver for a new
        library: wait for the new one."""
        before = self._one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'")
        for name, value in settings.items():
            self.conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.SQL(name), sql.Literal(value))
            )
        self.conn.execute("SELECT pg_reload_conf()")
        library = settings.get("archive_library", self.library)
        if library != self.library:
            common.wait_until(
                lambda: (
                    self._one("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'")
                    not in (None, before)
                ),
                60,
                "the archiver's restart",
            )
            self.library = library

    def stage(self) -> None:
        """Every copy in pg_wal and marked .done, flushed to disk."""
        for master in self.masters:
            copy = self.pg_wal / master.name
            if not copy.exists():
                shutil.copyfile(master, copy)
                self.cluster.user.chown(copy)
            (self.status_dir / f"{master.name}.ready").unlink(missing_ok=True)
            done = self.status_dir / f"{master.name}.done"
            if not done.exists():
                done.touch(mode=0o600)
                self.cluster.user.chown(done)
        os.sync()

    def counts(self) -> tuple[int, int]:
        row = self.conn.execute("SELECT archived_count, failed_count FROM pg_stat_archiver")
        archived, failed = row.fetchone() or (0, 0)
        return archived, failed

    def wake(self) -> None:
        """.ready for every segment, then the archiver's latch: a reload sets it, and
        the archiver then scans archive_status."""
        self.woken_at = time.time()
        for name in self.names:
            os.rename(self.status_dir / f"{name}.done", self.status_dir / f"{name}.ready")
        self.conn.execute("SELECT pg_reload_conf()")

    def seconds(self) -> float:
        """From the wake-up to the archiver's last success, by PostgreSQL's own clock."""
        last = self._one("SELECT last_archived_time FROM pg_stat_archiver")
        return float(last.timestamp() - self.woken_at)

    def all_done(self) -> bool:
        return {f"{name}.done" for name in self.names} <= set(os.listdir(self.status_dir))

    def wait_done(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not self.all_done():
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the archiver did not finish in {timeout:g}s: pg_stat_archiver "
                    f"{self.counts()}, see {self.cluster.log_file}"
                )
            time.sleep(0.01)

    def verify(self, before: tuple[int, int]) -> None:
        """PostgreSQL's own count: exactly the bench's segments archived, none failed."""
        want = before[0] + len(self.names)
        common.wait_until(lambda: self.counts()[0] >= want, 10, "pg_stat_archiver")
        archived, failed = self.counts()
        if (archived - before[0], failed - before[1]) != (len(self.names), 0):
            raise RuntimeError(
                f"pg_stat_archiver: {archived - before[0]} archived and {failed - before[1]} "
                f"failed for {len(self.names)} segments; the server log ends:\n"
                + tail(self.cluster.log_text())
            )


# -- pgBackRest ----------------------------------------------------------------------


@dataclass(frozen=True)
class Push:
    """One way of running `pgbackrest archive-push`."""

    compress: str
    process_max: int = 0  # 0: synchronous
    #: gzip level of the protocol stream when compress-type is none (pgBackRest's
    #: default is 3, for a remote repository: "none" alone is not uncompressed)
    network_level: int = 0
    #: run by PostgreSQL's own archiver, not the emulated one
    archiver: bool = False

    @property
    def figure(self) -> str:
        harness = "archiver_" if self.archiver else ""
        mode = f"async_p{self.process_max}" if self.process_max else "sync"
        net = f"_net{self.network_level}" if self.network_level else ""
        return f"pgbackrest_{harness}{mode}_{self.compress}{net}"

    def options(self) -> list[str]:
        options = [f"--compress-type={self.compress}"]
        if self.compress == "none":
            options.append(f"--compress-level-network={self.network_level}")
        if self.process_max:
            options += ["--archive-async", f"--process-max={self.process_max}"]
        return options

    def describe(self) -> str:
        mode = (
            f"async, process-max {self.process_max}"
            if self.process_max
            else "synchronous (one SSH connection per call)"
        )
        what = {
            "none": f"compress-type none, compress-level-network {self.network_level}",
            "lz4": "compress-type lz4 (level 1)",
            "zst": "compress-type zst (level 3)",
        }[self.compress]
        if self.network_level:
            what += " (the default: gzip on the SSH protocol stream)"
        return f"pgbackrest archive-push, {mode}, {what}"


PUSHES = (
    Push("none"),
    Push("lz4"),
    *(Push(compress, n) for n in (2, 4) for compress in ("none", "lz4", "zst")),
    Push("none", 2, network_level=3),
)
#: the best of the emulated run (zst, process-max 2) and its lz4 twin
ARCHIVER_PUSHES = (Push("zst", 2, archiver=True), Push("lz4", 2, archiver=True))


class PgBackRest:
    """A pgBackRest "db side" whose repository is on a "repository host": the sshd's
    login user, reached over SSH with host-key checking on. Each side has its own
    config, log and lock folders in `workdir`."""

    def __init__(
        self, exe: str, workdir: Path, server: SshServer, cluster: PgCluster, user: OsUser
    ) -> None:
        self.exe = exe
        self.server = server
        self.cluster = cluster
        self.user = user
        self.workdir = workdir
        workdir.mkdir(mode=0o755)
        self.db = common.private_dir(workdir / "db", user)
        self.repo_side = common.private_dir(workdir / "repo-host", user)
        self.repo = common.private_dir(self.repo_side / "repository", user)
        self.spool = common.private_dir(self.db / "spool", user)
        self.lock_dir = common.private_dir(self.db / "lock", user)
        for side in (self.db, self.repo_side):
            common.private_dir(side / "log", user)
        self.db_config = self.db / "pgbackrest.conf"
        self.repo_config = self.repo_side / "pgbackrest.conf"
        self.env = user_env(user)

    @property
    def wal_root(self) -> Path:
        return self.repo / "archive" / STANZA

    def write_configs(self) -> None:
        ssh = self.workdir / "ssh"
        ssh.write_text(
            "#!/bin/sh\nexec ssh -F /dev/null "
            + shlex.join(common.ssh_client_options(self.server))
            + ' "$@"\n'
        )
        ssh.chmod(0o755)
        self.repo_config.write_text(
            f"[global]\nrepo1-path={self.repo}\n"
            f"log-path={self.repo_side / 'log'}\nlock-path={self.repo_side / 'lock'}\n"
        )
        self.db_config.write_text(
            f"""[global]
repo1-host={self.server.host}
repo1-host-port={self.server.port}
repo1-host-user={self.server.login_user.name}
repo1-host-config={self.repo_config}
repo1-host-cmd={self.exe}
cmd-ssh={ssh}
spool-path={self.spool}
log-path={self.db / "log"}
lock-path={self.lock_dir}

[{STANZA}]
pg1-path={self.cluster.data_dir}
pg1-port={self.cluster.port}
pg1-socket-path={self.cluster.socket_dir}
"""
        )
        for path in (self.repo_config, self.db_config):
            self.user.chown(path)

    def command(self, *args: str) -> list[str]:
        return [self.exe, f"--config={self.db_config}", f"--stanza={STANZA}", *args]

    def run(self, *args: str) -> None:
        run_as(self.user, self.command(*args), cwd=self.cluster.data_dir, env=self.env)

    def _locked(self) -> list[Path]:
        """Lock files a process still holds (flock, as pgBackRest takes them)."""
        held = []
        for path in self.lock_dir.glob("*.lock"):
            try:
                with open(path, "rb") as lock:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        held.append(path)
                    else:
                        fcntl.flock(lock, fcntl.LOCK_UN)
            except FileNotFoundError:
                continue  # released and removed meanwhile
        return held

    def wait_idle(self, timeout: float = 120) -> None:
        """Until the async process, which outlives the last archive-push, has exited."""
        common.wait_until(lambda: not self._locked(), timeout, "pgBackRest's async process")

    def reset(self) -> None:
        """An empty repository (but for the stanza) and spool, flushed to disk."""
        self.wait_idle()
        for version in (p for p in self.wal_root.iterdir() if p.is_dir()):  # 15-1
            for folder in version.iterdir():
                shutil.rmtree(folder)
        common.empty_dir(self.spool)  # also syncs

    def stored(self, names: list[str], compress: str) -> int:
        """Bytes in the repository for `names`; every one of them must be there, and
        compressed as asked (an archiver still running an older command would not)."""
        files = {p.name[:24]: p for p in self.wal_root.glob("*/*/*") if p.is_file()}
        missing = [name for name in names if name not in files]
        if missing:
            raise RuntimeError(f"{len(missing)} segments not in the repository, e.g. {missing[0]}")
        suffix = "" if compress == "none" else f".{compress}"
        if wrong := [files[n].name for n in names if files[n].suffix != suffix]:
            raise RuntimeError(f"{wrong[0]} in the repository is not compress-type {compress}")
        return sum(files[name].stat().st_size for name in names)

    def check_get(self, source: Path) -> None:
        """archive-get one segment back over SSH: it must be the segment pushed."""
        # The cluster's user writes it: a folder of its own, as pg_wal would be.
        into = common.private_dir(self.workdir / "get", self.user)
        self.run("archive-get", source.name, str(into / source.name))
        if (into / source.name).read_bytes() != source.read_bytes():
            raise RuntimeError(f"archive-get of {source.name} returned other bytes")
        shutil.rmtree(into)

    def stop_async(self) -> None:
        """On the way out: let a running async process finish, end it if it will not."""
        with contextlib.suppress(TimeoutError):
            self.wait_idle(60)
            return
        for path in self._locked():
            with contextlib.suppress(OSError, ValueError, KeyError):
                pid = int(json.loads(path.read_text())["pid"])
                # Only a process of ours: its command line names our config.
                if str(self.db_config) in Path(f"/proc/{pid}/cmdline").read_text():
                    os.kill(pid, signal.SIGTERM)


def push_run(pgbr: PgBackRest, archiver: Archiver, push: Push, check: bool) -> Archived:
    pgbr.reset()
    archiver.make_ready()
    os.sync()
    watch = common.Stopwatch()
    archiver.archive_all(pgbr.command(*push.options(), "archive-push"), pgbr.env)
    window = watch.stop()
    pgbr.wait_idle()
    stored = pgbr.stored(archiver.names, push.compress)
    source = archiver.pgdata / "pg_wal" / archiver.names[-1]
    if check:
        pgbr.check_get(source)
    raw = len(archiver.names) * source.stat().st_size
    return Archived.of(window, stored, raw_bytes=raw, calls=archiver.durations)


def push_archiver_run(pgbr: PgBackRest, pg: PgArchiver, push: Push, check: bool) -> Archived:
    """From the archiver's wake-up until it marked the last segment .done."""
    command = shlex.join(pgbr.command(*push.options(), "archive-push"))
    pg.set({"archive_library": "", "archive_command": f"{command} %p"})
    pgbr.reset()
    pg.stage()
    before = pg.counts()
    watch = common.Stopwatch()
    pg.wake()
    pg.wait_done()
    window = watch.stop()
    pgbr.wait_idle()
    pg.verify(before)
    stored = pgbr.stored(pg.names, push.compress)
    if check:
        pgbr.check_get(pg.masters[-1])
    return Archived.of(window, stored, raw_bytes=pg.raw_bytes)


# -- logship -------------------------------------------------------------------------


def give_spool(spool: Path, user: OsUser) -> None:
    """The daemon runs as the bench's user and made its spool; the archiver's commands
    run as PostgreSQL's user, who must own it (and the tombstones' folder)."""
    common.private_dir(spool, user)
    common.private_dir(spool / SHIPPED_DIR, user)


def archive_wal_feed(
    archiver: Archiver, config: Path, pycache: Path
) -> Callable[[Path, Path], None]:
    """logship_daemon_all's feed through the emulated archiver: for each segment one
    `python -m logship archive-wal` from pg_wal, serially, as PostgreSQL's user."""
    command = [sys.executable, "-m", "logship", "--config", str(config), "archive-wal", CONNECTOR]
    # As installed by pip, logship's bytecode is compiled once, not at every call
    # (the dev environment sets PYTHONDONTWRITEBYTECODE): a private cache that the
    # warm-up round fills.
    env = user_env(archiver.user, PYTHONPYCACHEPREFIX=str(pycache))

    def feed(staged: Path, in_spool: Path) -> None:
        spool, name = in_spool.parent, in_spool.name
        if name == archiver.names[0]:
            give_spool(spool, archiver.user)
        archiver.archive(name, command, env)
        if not ((spool / name).exists() or (spool / SHIPPED_DIR / name).exists()):
            raise RuntimeError(f"archive-wal did not put {name} into the daemon's spool {spool}")

    return feed


def logship_run(
    server: SshServer,
    archiver: Archiver,
    files: list[Path],
    root: Path,
    incoming: Path,
    compression: str,
    via_archive_wal: bool,
) -> Archived:
    common.empty_dir(incoming)  # also syncs
    archiver.make_ready()
    os.sync()
    workdir = root / "daemon"
    feed = (
        archive_wal_feed(archiver, workdir / "logship.toml", pycache_dir(root, archiver.user))
        if via_archive_wal
        else os.rename
    )
    # archive-wal runs as PostgreSQL's user and writes into the daemon's private state
    # folder: the daemon runs as that user too, as in production.
    user = archiver.user if via_archive_wal else None
    run = logship_daemon_all(server, files, workdir, incoming, compression, 4, feed=feed, user=user)
    raw = sum(f.stat().st_size for f in files)
    return Archived.of(run, run.stored_bytes, raw_bytes=raw, calls=archiver.durations)


def pycache_dir(root: Path, user: OsUser) -> Path:
    return common.private_dir(root / "pycache", user)


def daemon_spool(root: Path) -> Path:
    """Where logship_daemon_all's daemon under `root` has its spool."""
    return root / "daemon" / "state" / "spool" / CONNECTOR


def check_site(incoming: Path, names: list[str]) -> None:
    at_site = {p.name[:24] for p in (incoming / CONNECTOR / "wal").iterdir()}
    if missing := sorted(set(names) - at_site):
        raise RuntimeError(f"{len(missing)} segments not at the site, e.g. {missing[0]}")


def logship_archiver_run(
    server: SshServer, pg: PgArchiver, root: Path, incoming: Path, compression: str, how: str
) -> Archived:
    """From the archiver's wake-up until the daemon logged the last segment shipped
    (by then every segment is .done too, which is checked). The daemon runs as
    PostgreSQL's user, as in production: the archiver writes into its private state
    folder, and with read-ahead the daemon reads pg_wal itself."""
    read_ahead = how == "archive_wal_read_ahead"
    if how == "basic_archive":
        pg.set({"archive_library": "basic_archive"})  # its directory: the daemon's spool
    else:
        config = root / "daemon" / "logship.toml"
        command = [sys.executable, "-m", "logship", "--config", str(config), "archive-wal"]
        # The archiver has the postmaster's environment, which may forbid bytecode
        # writes: a cache as for the emulated calls (and a pip install).
        cache = f"PYTHONDONTWRITEBYTECODE= PYTHONPYCACHEPREFIX={pycache_dir(root, pg.cluster.user)}"
        command_line = f"{cache} {shlex.join([*command, CONNECTOR])} %p"
        pg.set({"archive_library": "", "archive_command": command_line})
    common.empty_dir(incoming)
    pg.stage()
    before = pg.counts()

    def wake_once(staged: Path, in_spool: Path) -> None:
        # The archiver, not this feed, brings each segment: wake it for all at once.
        if in_spool.name == pg.names[0]:
            give_spool(in_spool.parent, pg.cluster.user)
            pg.wake()

    run = logship_daemon_all(
        server,
        pg.masters,
        root / "daemon",
        incoming,
        compression,
        4,
        feed=wake_once,
        primary=f'data_dir = "{pg.cluster.data_dir}"\n' if read_ahead else "",
        user=pg.cluster.user,
    )
    if not pg.all_done():
        raise RuntimeError("the daemon shipped segments PostgreSQL has not marked archived")
    pg.verify(before)
    check_site(incoming, pg.names)
    return Archived.of(run, run.stored_bytes, raw_bytes=pg.raw_bytes, archiver_seconds=pg.seconds())


LOGSHIP = {
    f"logship_{path}_{compression}_c4": (compression, path == "archive_wal")
    for path in ("archive_wal", "run")
    for compression in ("none", "zstd")
}
LOGSHIP_ARCHIVER = {
    f"logship_archiver_{how}_{compression}_c4": (compression, how)
    for how, compression in (
        ("basic_archive", "zstd"),
        ("basic_archive", "none"),
        ("archive_wal", "zstd"),
        ("archive_wal_read_ahead", "zstd"),
    )
}


# -- rounds and report ---------------------------------------------------------------


def rotate(
    runners: dict[str, Callable[[bool], Archived]],
    repeat: int,
    failed: dict[str, list[str]],
    once: Collection[str] = (),
) -> dict[str, list[Archived]]:
    """Round 0 is a warm-up, not reported: first writes to fresh disk blocks of a VM
    and cold caches made it the slowest by far. Then the order rotates from round to
    round, so no variant always follows another. Each variant's first run is checked
    (an archive-get, where there is one). The variants in `once` run in round 1 only.

    A run that fails its checks is left out and its error kept in `failed`: the next
    run starts from a reset state, and the report says what was left out."""
    runs: dict[str, list[Archived]] = {name: [] for name in runners}
    names = list(runners)
    checked: set[str] = set()
    for round_no in range(repeat + 1):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            if name in once and round_no != 1:
                continue
            try:
                run = runners[name](name not in checked)
            except (RuntimeError, TimeoutError) as exc:
                log(f"round {round_no} {name} failed, left out: {exc}")
                failed.setdefault(name, []).append(str(exc).splitlines()[0])
                continue
            checked.add(name)
            label = f"round {round_no}/{repeat}" if round_no else "warm-up"
            rate = run.raw_bytes / MIB / run.seconds
            log(f"{label} {name}: {run.seconds:.2f}s, {rate:.0f} MiB/s")
            if round_no:
                runs[name].append(run)
    return runs


def archiver_runs(
    pgbr: PgBackRest,
    pg: PgArchiver,
    server: SshServer,
    root: Path,
    incoming: Path,
    repeat: int,
    failed: dict[str, list[str]],
) -> dict[str, list[Archived]]:
    runners: dict[str, Callable[[bool], Archived]] = {
        push.figure: lambda check, p=push: push_archiver_run(pgbr, pg, p, check)
        for push in ARCHIVER_PUSHES
    }
    for name, (compression, how) in LOGSHIP_ARCHIVER.items():
        runners[name] = lambda check, c=compression, h=how: logship_archiver_run(
            server, pg, root, incoming, c, h
        )
    return rotate(runners, repeat, failed)


def emulated_runs(
    pgbr: PgBackRest,
    archiver: Archiver,
    server: SshServer,
    files: list[Path],
    root: Path,
    incoming: Path,
    repeat: int,
    failed: dict[str, list[str]],
) -> dict[str, list[Archived]]:
    # The synchronous pushes pay an SSH connection and a remote pgbackrest per
    # segment, a steady cost: one round on every 4th segment (the same mix of bulk
    # load and TPC-B WAL) is enough, and saves most of the run's time.
    sampled = replace(archiver, names=archiver.names[::4])
    runners: dict[str, Callable[[bool], Archived]] = {
        push.figure: lambda check, p=push: push_run(
            pgbr, archiver if p.process_max else sampled, p, check
        )
        for push in PUSHES
    }
    for name, (compression, via_archive_wal) in LOGSHIP.items():
        runners[name] = lambda check, c=compression, a=via_archive_wal: logship_run(
            server, archiver, files, root, incoming, c, a
        )
    return rotate(runners, repeat, failed, once={p.figure for p in PUSHES if not p.process_max})


def logship_feed(name: str) -> tuple[bool, str]:
    """Whether a logship figure is PostgreSQL's archiver's (else the emulated one's),
    and how its segments reached the daemon's spool."""
    if name in LOGSHIP_ARCHIVER:
        compression, how = LOGSHIP_ARCHIVER[name]
        feed = (
            "archive_library = 'basic_archive' into the daemon's spool"
            if how == "basic_archive"
            else "archive_command = 'python -m logship --config ... archive-wal bench %p'"
        )
        if how == "archive_wal_read_ahead":
            feed += (
                ", read-ahead on ([primary] data_dir: the daemon, as PostgreSQL's user, "
                "ships each .ready segment from pg_wal and archive-wal confirms it)"
            )
        return True, (
            f"compression {compression}; PostgreSQL's archiver on the running cluster, "
            f"{feed}, woken as for pgBackRest"
        )
    compression, via_archive_wal = LOGSHIP[name]
    feed = (
        "one `python -m logship archive-wal` per segment from pg_wal, serially, as "
        "PostgreSQL's user, into the running daemon's spool"
        if via_archive_wal
        else "segments renamed into the running daemon's spool at once (no archive-wal)"
    )
    return False, f"compression {compression}; {feed}"


def report_runs(
    report: Report, runs: dict[str, list[Archived]], failed: dict[str, list[str]]
) -> None:
    def rate(name: str) -> tuple[float, list[float]]:
        rates = [r.raw_bytes / MIB / r.seconds for r in runs[name]]
        return median(rates), rates

    def how_much(name: str) -> str:
        first = runs[name][0]
        rates = rate(name)[1]
        errors = failed.get(name, [])
        left_out = f" ({len(errors)} left out, failed: {errors[0]})" if errors else ""
        return (
            f"{first.raw_bytes // SEGMENT_SIZE} segments, {len(rates)} run(s) "
            f"{min(rates):.0f}-{max(rates):.0f}{left_out}; stored "
            f"{first.stored_bytes / MIB:.0f} MiB (raw/stored "
            f"{first.raw_bytes / first.stored_bytes:.2f}x)"
        )

    def calls(name: str) -> str:
        """Where the time went: in the archiver('s commands), or after its last one."""
        if archiver := [r.archiver_seconds for r in runs[name] if r.archiver_seconds]:
            share = median([r.archiver_seconds / r.seconds for r in runs[name]])
            return f"; the archiver done after {median(archiver):.2f} s, {share:.0%} of the time"
        every = [t for r in runs[name] for t in r.calls]
        if not every:
            return ""
        share = median([sum(r.calls) / r.seconds for r in runs[name]])
        return f"; archive command {mean(every) * 1000:.0f} ms per segment, {share:.0%} of the time"

    pushed: dict[Push, Figure] = {}
    for push in (*PUSHES, *ARCHIVER_PUSHES):
        if not runs.get(push.figure):
            continue
        if push.archiver:
            # Against the same push run by the emulated archiver: what the real one changes.
            baseline = pushed.get(replace(push, archiver=False))
            how = (
                "PostgreSQL's archiver on the running cluster, archive_command = "
                "'pgbackrest ... archive-push %p'; .ready for every segment and a reload to "
                "wake it, until it marked the last .done; pg_stat_archiver counted them all"
            )
        else:
            # Async against the synchronous push of the same compression: the gain.
            baseline = pushed.get(Push(push.compress)) if push.process_max else None
            how = "each call as PostgreSQL's archiver would, until the last returned"
        value, rates = rate(push.figure)
        pushed[push] = report.add(
            push.figure,
            value,
            "MiB/s",
            baseline=baseline,
            detail=f"{push.describe()}; {how}; {how_much(push.figure)}{calls(push.figure)}",
            runs=rates,
        )

    def best(archiver: bool) -> Figure | None:
        figures = [f for p, f in pushed.items() if p.process_max and p.archiver == archiver]
        return max(figures, key=lambda f: f.value, default=None)

    overall = max((f for f in (best(False), best(True)) if f is not None), key=lambda f: f.value)
    target = report.add(
        "target_logship_rate",
        TARGET * overall.value,
        "MiB/s",
        baseline=overall,
        detail=(
            f"the issue's target: logship >= {TARGET}x pgBackRest's best async rate over SSH "
            "(of either harness)"
        ),
    )
    for name in (*LOGSHIP, *LOGSHIP_ARCHIVER):
        if not runs.get(name):
            continue
        archiver, how = logship_feed(name)
        value, rates = rate(name)
        verdict = "meets" if value >= target.value else "misses"
        report.add(
            name,
            value,
            "MiB/s",
            baseline=best(archiver),  # the same harness's
            detail=(
                f"logship run, 4 connections, {how}; until the daemon logged all shipped; "
                f"{how_much(name)}{calls(name)}; {value / overall.value:.2f}x the best "
                f"pgBackRest async ({overall.figure}); {verdict} the {TARGET}x target "
                f"({value / target.value:.2f} of it)"
            ),
            runs=rates,
        )
    for name, measured in runs.items():
        if measured:
            common.add_cpu_figure(report, name, measured, measured[0].raw_bytes)


# -- main ----------------------------------------------------------------------------


def why_unavailable() -> str | None:
    if shutil.which("pgbackrest") is None:
        return "pgbackrest is not installed: run `apt-get install pgbackrest` as root"
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL 15 is not installed in {PG_BIN}: `apt-get install postgresql-15`"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--files", type=int, help="16 MiB segments (default 64, --quick 16)")
    parser.add_argument(
        "--repeat", type=int, help="timed rounds, median reported (default 3, --quick 1)"
    )
    parser.add_argument("--quick", action="store_true", help="a fast check: 16 files, 1 round")
    parser.add_argument(
        "--harness",
        choices=("both", "archiver", "emulated"),
        default="both",
        help="PostgreSQL's own archiver, the emulated one, or both (default)",
    )
    args = parser.parse_args(argv)
    files = args.files if args.files is not None else 16 if args.quick else 64
    repeat = args.repeat if args.repeat is not None else 1 if args.quick else 3
    if files < 1 or repeat < 1:
        parser.error("--files and --repeat must be at least 1")
    if (why := why_unavailable()) is not None:
        log(f"not run: {why}")
        return 1
    signal.signal(signal.SIGTERM, _stop)

    report = Report(BENCH, common.environment())
    exe = shutil.which("pgbackrest")
    assert exe is not None
    version = subprocess.run([exe, "version"], capture_output=True, text=True, check=True)
    report.env["pgbackrest"] = version.stdout.strip()
    user = common.bench_user()
    with (
        common.reachable_tempdir() as root,
        common.ssh_server(root / "sshd", user) as server,
    ):
        cluster = PgCluster(root / "pg" / "pgdata", free_port(), user)
        pgbr = PgBackRest(exe, root / "pgbackrest", server, cluster, user)
        pgbr.write_configs()
        try:
            wal = make_wal(
                cluster,
                common.private_dir(root / "walarchive", user),
                files,
                # Over SSH from the db side, like every archive-push after it.
                lambda: pgbr.run("stanza-create"),
            )
            log(f"{len(wal.files)} files, {wal.total_bytes / MIB:.0f} MiB: {wal.source}")
            report.env["wal"] = wal.source
            incoming = common.private_dir(root / "incoming", user)
            runs: dict[str, list[Archived]] = {}
            failed: dict[str, list[str]] = {}
            if args.harness != "emulated":
                with cluster.connect() as conn:
                    pg = PgArchiver(cluster, conn, wal.files)
                    pg.prepare(daemon_spool(root))
                    runs |= archiver_runs(pgbr, pg, server, root, incoming, repeat, failed)
            if args.harness != "archiver":
                link_back(cluster, wal.files)
                archiver = Archiver(cluster.data_dir, [f.name for f in wal.files], user)
                runs |= emulated_runs(
                    pgbr, archiver, server, wal.files, root, incoming, repeat, failed
                )
            report_runs(report, runs, failed)
        finally:
            pgbr.stop_async()
            cluster.destroy()
    report.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
