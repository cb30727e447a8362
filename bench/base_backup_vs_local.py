"""`logship base-backup` over SSH vs `pg_basebackup -Ft` to local disk.

Usage: python bench/base_backup_vs_local.py [--scale 100] [--runs 3]

One PostgreSQL 15 cluster filled once with `pgbench -i -s SCALE`, one private sshd
on loopback standing in for the DR site. Each round backs the same cluster up
with every variant, in an order that rotates from round to round: the baselines
write `pg_basebackup -Ft` to a local folder (`-X fetch`, as logship uses, and
`-X stream`), logship runs its CLI (`logship base-backup`) as the PostgreSQL user
with compression zstd (the default) and none. See bench/README.md for what each
figure means. JSON lines on stdout, progress and a table on stderr.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import common
from common import MIB, PG_BIN, Report, log, median

from logship.demo_sandbox import OsUser, PgCluster, SshServer, free_port
from logship.manifest import BackupRecord

BENCH = "base_backup_vs_local"
TARGET_RATIO = 1.3  # the target: logship at most 1.3x the local pg_basebackup
LOCAL_VARIANTS = {"local-fetch": "fetch", "local-stream": "stream"}
LOGSHIP_VARIANTS = {"logship-zstd": "zstd", "logship-none": "none"}
VARIANTS = (*LOCAL_VARIANTS, *LOGSHIP_VARIANTS)
_CLI_SECONDS = re.compile(r" in ([0-9.]+)s, sha256 ")


@dataclass(frozen=True)
class Run:
    seconds: float  # wall time of the command, process start to exit
    cpu_seconds: float  # user + system time of the command and its children
    raw_bytes: int  # tar bytes pg_basebackup produced
    stored_bytes: int  # bytes that ended up at the destination
    reported_seconds: float | None = None  # what `logship base-backup` printed


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Wall time, CPU time (children) and stdout of one command that must exit 0."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        cmd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, proc.stdout


# -- the primary and the site --------------------------------------------------------


def fill_cluster(cluster: PgCluster, scale: int) -> None:
    cluster.initdb()
    # Room for the bulk load's WAL without forced checkpoints; the backups ignore it.
    cluster.configure({"max_wal_size": "4GB", "checkpoint_timeout": "30min"})
    cluster.start()
    started = time.monotonic()
    cluster.pgbench("-i", "-s", str(scale), "-q", timeout=max(600, 20 * scale))
    # Written out now, so the first backup's checkpoint is not the expensive one.
    cluster.execute("checkpoint")
    size = cluster.query("select pg_database_size('postgres')")[0][0]
    log(f"pgbench -i -s {scale}: {time.monotonic() - started:.0f}s, database {size / MIB:,.0f} MiB")


def write_config(directory: Path, server: SshServer, incoming: Path, cluster: PgCluster) -> Path:
    """logship.toml and one connector per compression, like a real primary's."""
    (directory / "connectors").mkdir(parents=True)
    directory.chmod(0o755)
    (directory / "connectors").chmod(0o755)
    config = directory / "logship.toml"
    config.write_text(common.main_config_text(directory / "state", server, incoming))
    for compression in LOGSHIP_VARIANTS.values():
        (directory / "connectors" / f"bench-{compression}.toml").write_text(
            f"""kind = "postgresql"
site = "dr"
rpo = "60s"
compression = "{compression}"

[primary]
dsn = "{cluster.dsn()}"
bin_dir = "{PG_BIN}"

[standby]
dsn = "host=127.0.0.1 port=5433 dbname=postgres"
data_dir = "/var/lib/postgresql/15/standby"
"""
        )
    # The CLI runs as the PostgreSQL user, which must be able to read all of it.
    for path in directory.rglob("*.toml"):
        path.chmod(0o644)
    return config


# -- the variants --------------------------------------------------------------------


def local_backup(cluster: PgCluster, user: OsUser, dest: Path, wal_method: str) -> Run:
    """`pg_basebackup -Ft` into an empty local folder; it fsyncs what it wrote."""
    cmd = [
        *user.command_prefix(),
        str(PG_BIN / "pg_basebackup"),
        "-d",
        cluster.dsn(),
        "-D",
        str(dest),
        "-F",
        "t",
        "-X",
        wal_method,
        "--checkpoint=fast",
        "--no-password",
    ]
    seconds, cpu, _ = timed(cmd)
    tars = sorted(dest.glob("*.tar"))
    if not any(t.name == "base.tar" for t in tars):
        raise RuntimeError(f"pg_basebackup left no base.tar in {dest}")
    raw = sum(t.stat().st_size for t in tars)
    return Run(seconds, cpu, raw, sum(p.stat().st_size for p in dest.iterdir()))


def logship_backup(
    user: OsUser, config: Path, connector: str, incoming: Path, env: dict[str, str]
) -> Run:
    """`logship base-backup CONNECTOR` as the PostgreSQL user: the whole CLI."""
    cmd = [
        *user.command_prefix(),
        sys.executable,
        "-m",
        "logship",
        "--config",
        str(config),
        "base-backup",
        connector,
    ]
    seconds, cpu, stdout = timed(cmd, env)
    records = list((incoming / connector / "base").glob("*/backup.json"))
    if len(records) != 1:
        raise RuntimeError(f"expected one backup record under {incoming / connector}: {records}")
    record = BackupRecord.from_json(records[0].read_bytes())
    found = _CLI_SECONDS.search(stdout)
    return Run(
        seconds,
        cpu,
        record.size,
        record.stored_size,
        float(found.group(1)) if found else None,
    )


def cli_env(workdir: Path, user: OsUser) -> dict[str, str]:
    """As installed by pip, logship's bytecode is compiled once, not at every run.

    The PostgreSQL user may not be able to write __pycache__ beside the sources (a
    checkout owned by root), and the dev environment may set
    PYTHONDONTWRITEBYTECODE: a private cache that the warm-up round fills.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(common.private_dir(workdir / "pycache", user))
    return env


def backup_runs(
    cluster: PgCluster,
    server: SshServer,
    root: Path,
    user: OsUser,
    runs: int,
    warmup: int,
) -> dict[str, list[Run]]:
    incoming = common.private_dir(root / "incoming", user)
    local = common.private_dir(root / "local", user)
    config = write_config(root / "config", server, incoming, cluster)
    common.private_dir(root / "config" / "state", user)
    env = cli_env(root, user)
    runners: dict[str, Callable[[], Run]] = {
        name: (lambda m=method: local_backup(cluster, user, local / "backup", m))
        for name, method in LOCAL_VARIANTS.items()
    }
    for name, compression in LOGSHIP_VARIANTS.items():
        runners[name] = lambda c=compression: logship_backup(
            user, config, f"bench-{c}", incoming, env
        )
    results: dict[str, list[Run]] = {name: [] for name in VARIANTS}
    # Warm-up rounds are not reported. Then the order rotates from round to round,
    # so that no variant always runs first or always follows the same one.
    for round_no in range(warmup + runs):
        shift = round_no % len(VARIANTS)
        for name in VARIANTS[shift:] + VARIANTS[:shift]:
            # Nothing left over from the last run, and no dirty pages of it either.
            common.empty_dir(incoming)
            common.empty_dir(local)
            run = runners[name]()
            timed_no = round_no - warmup + 1
            label = f"round {timed_no}/{runs}" if timed_no > 0 else "warm-up"
            log(
                f"{label} {name}: {run.seconds:.2f}s, {run.raw_bytes / MIB / run.seconds:.0f} "
                f"MiB/s, {run.stored_bytes / MIB:,.0f} MiB stored, cpu {run.cpu_seconds:.1f}s"
            )
            if timed_no > 0:
                results[name].append(run)
    common.empty_dir(incoming)
    common.empty_dir(local)
    return results


# -- the report ----------------------------------------------------------------------


def report_runs(report: Report, results: dict[str, list[Run]], scale: int) -> None:
    def seconds(name: str) -> list[float]:
        return [r.seconds for r in results[name]]

    def facts(name: str) -> str:
        runs = results[name]
        raw = median([r.raw_bytes for r in runs])
        cpu = median([r.cpu_seconds for r in runs])
        secs = seconds(name)
        return (
            f"runs {min(secs):.2f}-{max(secs):.2f}s; {raw / MIB:,.0f} MiB of tar; "
            f"client cpu {cpu:.1f}s"
        )

    fetch = report.add(
        "pg_basebackup_local_fetch",
        median(seconds("local-fetch")),
        "s",
        detail=f"pg_basebackup -Ft -X fetch --checkpoint=fast, local disk; {facts('local-fetch')}",
        runs=seconds("local-fetch"),
    )
    stream = report.add(
        "pg_basebackup_local_stream",
        median(seconds("local-stream")),
        "s",
        baseline=fetch,
        detail=f"the same with -X stream (base.tar + pg_wal.tar); {facts('local-stream')}",
        runs=seconds("local-stream"),
    )
    for name, compression in LOGSHIP_VARIANTS.items():
        value = median(seconds(name))
        ratio = value / fetch.value
        verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
        reported = [r.reported_seconds for r in results[name] if r.reported_seconds is not None]
        inside = f"; the CLI reports {median(reported):.1f}s after start-up" if reported else ""
        report.add(
            f"logship_base_backup_{compression}",
            value,
            "s",
            baseline=fetch,
            detail=(
                f"logship base-backup CLI, compression {compression}, loopback sshd, whole "
                f"command; target <= {TARGET_RATIO}x: {verdict}; {value / stream.value:.2f}x "
                f"-X stream{inside}; {facts(name)}"
            ),
            runs=seconds(name),
        )
    for name in VARIANTS:
        rates = [r.raw_bytes / MIB / r.seconds for r in results[name]]
        report.add(
            f"{name.replace('-', '_')}_rate",
            median(rates),
            "MiB/s",
            detail=f"raw tar bytes / wall time (pgbench scale {scale})",
            runs=rates,
        )
    for name in LOGSHIP_VARIANTS:
        run = results[name][0]
        report.add(
            f"{name.replace('-', '_')}_stored",
            run.stored_bytes / MIB,
            "MiB",
            detail=(
                f"shipped file; raw tar {run.raw_bytes / MIB:,.0f} MiB, "
                f"compression ratio {run.raw_bytes / run.stored_bytes:.1f}x"
            ),
        )


# -- main ----------------------------------------------------------------------------


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the cleanups below


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--scale", type=int, default=100, help="pgbench -i scale (default 100: about 1.5 GiB)"
    )
    parser.add_argument(
        "--runs", type=int, default=3, help="timed backups per variant; median reported"
    )
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds before the timed ones (default 1)"
    )
    args = parser.parse_args(argv)
    if args.scale < 1 or args.runs < 1 or args.warmup < 0:
        parser.error("--scale and --runs must be at least 1, --warmup at least 0")
    signal.signal(signal.SIGTERM, _stop)

    env = common.environment()
    report = Report(BENCH, env)
    user = common.bench_user()
    with common.reachable_tempdir() as root:
        cluster = PgCluster(root / "primary" / "pgdata", free_port(), user)
        try:
            fill_cluster(cluster, args.scale)
            with common.ssh_server(root / "sshd", user) as server:
                results = backup_runs(cluster, server, root, user, args.runs, args.warmup)
        finally:
            cluster.destroy()
        report_runs(report, results, args.scale)
    report.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
