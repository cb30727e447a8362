"""Switchover and reinstate on the real path: the write outage, the time, the bytes.

Usage: python bench/switchover.py [--scale 70] [--seconds 60] [--rates 100,400] [--quick]

Two sites on loopback (`TwoSiteDeployment`: PostgreSQL and an sshd at each, a
`logship run` at each), a pgbench database of `--scale` (70: a data directory
of about 1.2 GiB with its WAL).

1. Reinstate by rewind, once per `--rates` entry, on a fresh pair of sites:
   pgbench writes, the primary is stopped `-m immediate` with its site cut off
   (daemon and sshd gone), `logship promote --accept-data-loss` at dr; the old
   primary is started by hand and written by pgbench at that rate for
   `--seconds` (a real divergence), stopped, its site comes back, and `logship
   reinstate` at main rewinds it: the time, the bytes pg_rewind copied against
   the data directory's size.
2. Then, on the same sites, switchover back to main and over to dr again while
   pgbench writes at `--bench-rate` transactions per second: the write outage
   as `logship switchover` prints it (the old primary's stop to the new
   primary's first commit) and the whole command.
3. Reinstate by base backup: the same failover on sites with neither data
   checksums nor wal_log_hints, so that reinstate must rebuild: time and bytes.

Everything is stopped and removed at the end (also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from common import (
    MIB,
    Report,
    bench_user,
    environment,
    log,
    median,
    reachable_tempdir,
)

from logship.demo_sandbox.deployment import wait_for
from logship.demo_sandbox.two_sites import TwoSiteDeployment

BENCH = "switchover"
CONNECTOR = "main"
_OUTAGE = re.compile(r"write outage ([0-9.]+) s")
_FOLLOW = re.compile(r"by (rewind|base backup), [0-9.]+ s, (\d+) bytes copied of a (\d+) byte")
_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_STEP = re.compile(r"^\[\s*[A-Za-z]+\] ([a-z ]+):")


@dataclass(frozen=True)
class Switched:
    outage_s: float
    wall_s: float
    #: seconds from the command's start to each step's line
    steps: dict[str, float]


@dataclass(frozen=True)
class Reinstated:
    method: str
    wall_s: float
    bytes_copied: int
    data_dir_bytes: int
    #: WAL the old primary wrote after it was started by hand
    diverged_bytes: int
    transactions: int
    #: WAL segment files in the new primary's pg_wal as the reinstate began:
    #: PostgreSQL 15's pg_rewind copies every one whole (recycled ones included)
    source_wal_bytes: int
    source_wal_files: int
    #: the command's output, stamped
    output: str


def _interrupted(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _timed(dep: TwoSiteDeployment, site: str, *args: str, timeout: float) -> tuple[float, str]:
    """logship at `site`, each output line stamped as it comes: (wall s, output)."""
    cmd = [*dep.user.command_prefix(), *dep.command_at(site), *args]
    started = time.monotonic()
    lines: list[str] = []
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=dep.root
    )
    # The deadline is enforced from outside: the read below blocks on the pipe.
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(f"{time.monotonic() - started:8.2f} {line.rstrip()}")
        code = proc.wait()
    finally:
        timer.cancel()
    wall = time.monotonic() - started
    output = "\n".join(lines)
    if code != 0:
        raise RuntimeError(f"logship {' '.join(args)} at {site} exited {code}:\n{output[-3000:]}")
    return wall, output


def _step_times(output: str) -> dict[str, float]:
    steps: dict[str, float] = {}
    for line in output.splitlines():
        stamp, _, text = line.strip().partition(" ")
        match = _STEP.match(text)
        if match:
            steps[match.group(1)] = float(stamp)
    return steps


def _in_step(new_primary_lsn: str, dep: TwoSiteDeployment, standby_site: str) -> None:
    dep.cluster(standby_site).wait_until(
        f"select pg_last_wal_replay_lsn() >= '{new_primary_lsn}'::pg_lsn", timeout=300
    )


def _caught_up(dep: TwoSiteDeployment, primary: str, standby: str) -> None:
    ((lsn,),) = dep.cluster(primary).query("select pg_switch_wal()::text")
    _in_step(str(lsn), dep, standby)


def _pgbench_in_background(dep: TwoSiteDeployment, site: str, rate: int) -> threading.Thread:
    """pgbench at `rate` tps against `site` until its server stops taking writes."""

    def bench() -> None:
        # Cut off by the stop, as intended.
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            dep.cluster(site).pgbench("-T", "300", "-c", "2", "-R", str(rate), "-n", timeout=400)

    thread = threading.Thread(target=bench, daemon=True)
    thread.start()
    return thread


def build(root: Path, scale: int, **options: bool) -> TwoSiteDeployment:
    dep = TwoSiteDeployment(root, bench_user(), **options)
    try:
        started = time.monotonic()
        dep.build_primary()
        dep.primary.pgbench("-i", "-s", str(scale), "-q", timeout=1800)
        dep.standby_up()
        for site in ("main", "dr"):
            dep.start_site_daemon(site)
        _caught_up(dep, "main", "dr")
        log(f"  built in {time.monotonic() - started:.0f} s: pgbench -i -s {scale}, standby up")
    except BaseException:
        dep.teardown()
        raise
    return dep


def switchover(dep: TwoSiteDeployment, primary: str, standby: str, rate: int) -> Switched:
    _caught_up(dep, primary, standby)
    bench = _pgbench_in_background(dep, primary, rate)
    # Writes in flight for a while, so the standby trails as it does in use.
    time.sleep(10)
    wall, output = _timed(dep, primary, "switchover", CONNECTOR, timeout=900)
    bench.join(timeout=120)
    match = _OUTAGE.search(output)
    if match is None:
        raise RuntimeError(f"switchover printed no write outage:\n{output}")
    dep.cluster(primary).wait_until("select pg_is_in_recovery()", timeout=120)
    return Switched(float(match.group(1)), wall, _step_times(output))


def _wal_lsn(dep: TwoSiteDeployment) -> int:
    ((lsn,),) = dep.primary.query("select pg_current_wal_lsn() - '0/0'::pg_lsn")
    return int(lsn)


def failover_and_reinstate(
    dep: TwoSiteDeployment, rate: int, seconds: int, bench_rate: int
) -> Reinstated:
    main = dep.primary
    _caught_up(dep, "main", "dr")
    # The disaster: main's site goes while it writes and ships.
    bench = _pgbench_in_background(dep, "main", bench_rate)
    time.sleep(5)
    main.stop(mode="immediate")
    bench.join(timeout=120)
    dep.stop_site_daemon("main")
    dep.sshd_main.stop()
    dep.at("dr", "promote", CONNECTOR, "--accept-data-loss", timeout=600)

    # Started by hand while its site was cut off, the old primary takes writes
    # the new primary never gets.
    main.start()
    before = _wal_lsn(dep)
    done = main.pgbench("-T", str(seconds), "-c", "2", "-R", str(rate), "-n", timeout=seconds + 300)
    diverged = _wal_lsn(dep) - before
    processed = _PROCESSED.search(done.stdout)
    main.stop()
    dep.sshd_main.start()
    dep.start_site_daemon("main")
    wait_for(lambda: (main.data_dir / "logship.fence.json").exists(), 120, "the daemon's fence")

    source_wal = _segments(dep.standby.data_dir / "pg_wal")
    wall, output = _timed(dep, "main", "reinstate", CONNECTOR, timeout=3600)
    match = _FOLLOW.search(output)
    if match is None:
        raise RuntimeError(f"reinstate printed no bytes copied:\n{output}")
    main.wait_until("select pg_is_in_recovery()", timeout=120)
    _caught_up_to(dep)
    return Reinstated(
        method=match.group(1),
        wall_s=wall,
        bytes_copied=int(match.group(2)),
        data_dir_bytes=int(match.group(3)),
        diverged_bytes=diverged,
        source_wal_bytes=sum(source_wal.values()),
        source_wal_files=len(source_wal),
        transactions=int(processed.group(1)) if processed else 0,
        output=output,
    )


def _segments(pg_wal: Path) -> dict[str, int]:
    """WAL segment files in `pg_wal` and their sizes."""
    found = {}
    for path in pg_wal.iterdir():
        with contextlib.suppress(OSError):
            if _SEGMENT.match(path.name) and path.is_file():
                found[path.name] = path.stat().st_size
    return found


def _caught_up_to(dep: TwoSiteDeployment) -> None:
    """main replays what dr writes now, shipped dr -> main."""
    ((lsn,),) = dep.standby.query("select pg_switch_wal()::text")
    dep.primary.wait_until(f"select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn", timeout=600)


def _switch_figures(report: Report, runs: list[Switched]) -> None:
    outages = [run.outage_s for run in runs]
    walls = [run.wall_s for run in runs]
    first = runs[0].steps
    order = ", ".join(f"{name} {at:.1f}" for name, at in first.items() if name != "write outage")
    report.add(
        "switchover_outage_median",
        median(outages),
        "s",
        detail=(
            "as switchover prints it: the old primary's stop to the new primary's first "
            f"commit, pgbench writing; {len(runs)} switchovers (target <= 30 s)"
        ),
        runs=outages,
    )
    report.add("switchover_outage_max", max(outages), "s", detail="the longest of them")
    report.add(
        "switchover_command_median",
        median(walls),
        "s",
        detail=f"the whole command; the first one's steps at s: {order}",
        runs=walls,
    )


def run_rewinds(root: Path, args: argparse.Namespace, report: Report) -> None:
    switches: list[Switched] = []
    try:
        for rate in args.rates:
            # A fresh pair for each rate: each failover starts from the same state.
            log(f"sites with data checksums: pgbench -i -s {args.scale}")
            dep = build(root / f"rewind-{rate}", args.scale)
            try:
                _rewind(dep, rate, args, report)
                # The reinstated old primary takes its role back, and gives it up again.
                for primary, standby in (("dr", "main"), ("main", "dr")):
                    switches.append(switchover(dep, primary, standby, args.bench_rate))
                    log(
                        f"  switchover {primary} -> {standby}: outage "
                        f"{switches[-1].outage_s:.1f} s, command {switches[-1].wall_s:.1f} s"
                    )
            finally:
                dep.teardown()
                shutil.rmtree(dep.root, ignore_errors=True)
    finally:
        if switches:
            _switch_figures(report, switches)


def _rewind(dep: TwoSiteDeployment, rate: int, args: argparse.Namespace, report: Report) -> None:
    done = failover_and_reinstate(dep, rate, args.seconds, args.bench_rate)
    log(
        f"  reinstate after {args.seconds} s at {rate} tps: {done.method}, "
        f"{done.wall_s:.1f} s, {done.bytes_copied} of {done.data_dir_bytes} bytes"
    )
    if done.method != "rewind":
        raise RuntimeError(f"reinstate rebuilt by {done.method}, not by rewind:\n{done.output}")
    size = report.add(
        f"data_dir_r{rate}",
        done.data_dir_bytes / MIB,
        "MiB",
        detail="the old primary's data directory after reinstate",
    )
    report.add(
        f"reinstate_rewind_copied_r{rate}",
        done.bytes_copied / MIB,
        "MiB",
        baseline=size,
        detail=(
            f"pg_rewind after {args.seconds} s of pgbench -R {rate} on the old primary "
            f"({done.transactions} transactions, {done.diverged_bytes / MIB:.0f} MiB "
            "of WAL); WAL files in dr's pg_wal as it began, which pg_rewind copies whole: "
            f"{done.source_wal_files} ({done.source_wal_bytes / MIB:.0f} MiB); "
            "ratio: of the data directory (target <= 0.10)"
        ),
    )
    report.add(
        f"reinstate_rewind_s_r{rate}",
        done.wall_s,
        "s",
        detail="the whole reinstate command: fence, loss report, rewind, start, follow",
    )


def run_base_backup(root: Path, args: argparse.Namespace, report: Report) -> None:
    log(f"sites without checksums or wal_log_hints: pgbench -i -s {args.scale}")
    dep = build(root / "base-backup", args.scale, checksums=False, wal_log_hints=False)
    try:
        rate = args.rates[0]
        done = failover_and_reinstate(dep, rate, args.seconds, args.bench_rate)
        log(f"  reinstate: {done.method}, {done.wall_s:.1f} s, {done.bytes_copied} bytes")
        if done.method != "base backup":
            raise RuntimeError(f"reinstate took {done.method}, not a base backup")
        rewind = next(
            (f for f in report.figures if f.figure == f"reinstate_rewind_s_r{rate}"), None
        )
        report.add(
            "reinstate_base_backup_s",
            done.wall_s,
            "s",
            baseline=rewind,
            detail=(
                f"neither checksums nor wal_log_hints, after {args.seconds} s of pgbench -R "
                f"{rate}: fence, loss report, a base backup at dr, restore, follow"
            ),
        )
        report.add(
            "reinstate_base_backup_bytes",
            done.bytes_copied / MIB,
            "MiB",
            detail=(
                f"the base backup's size, as its record gives it, for a "
                f"{done.data_dir_bytes / MIB:.0f} MiB data directory"
            ),
        )
    finally:
        dep.teardown()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=int, default=70, help="pgbench -i -s (70: about 1.2 GiB with its WAL)"
    )
    parser.add_argument("--seconds", type=int, default=60, help="the old primary's divergence")
    parser.add_argument(
        "--rates", default="100,400", help="tps written during the divergence, one run each"
    )
    parser.add_argument(
        "--bench-rate", type=int, default=100, help="tps pgbench writes across switchovers"
    )
    parser.add_argument(
        "--only", default="rewind,base-backup", help="parts: rewind (with switchovers), base-backup"
    )
    parser.add_argument(
        "--quick", action="store_true", help="pgbench -i -s 5, 10 s of divergence, one rate"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.scale, args.seconds, args.rates = 5, 10, args.rates.split(",")[0]
    args.rates = [int(r) for r in str(args.rates).split(",") if r.strip()]
    args.only = [p.strip() for p in args.only.split(",") if p.strip()]
    if not args.rates or set(args.only) - {"rewind", "base-backup"}:
        parser.error("--rates needs a number; --only takes rewind and base-backup")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: every cluster, daemon and sshd is stopped.
    signal.signal(signal.SIGTERM, _interrupted)
    report = Report(BENCH, environment())
    try:
        with reachable_tempdir() as root:
            if "rewind" in args.only:
                run_rewinds(root, args, report)
            if "base-backup" in args.only:
                run_base_backup(root, args, report)
    finally:
        if report.figures:
            report.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
