"""RTO of `logship promote`: from the command to a writable database.

Usage: python bench/promote_rto.py [--runs 5]

Each run builds a fresh sandbox (primary, loopback sshd, standby restored from a
shipped base backup), writes with pgbench while logship ships, stops the primary
immediately (the disaster), then promotes the standby. In the same run, on
standbys built the same way, the baseline is PostgreSQL's own
`select pg_promote(wait => true)` with none of logship's checks, drain or report:
the ratio is what the safety costs. Loopback only; everything is stopped and
removed at the end.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from common import Report, bench_user, environment, log, median, p95, reachable_tempdir

from logship.demo_sandbox.deployment import Deployment

_RTO = re.compile(r"RTO ([0-9.]+) s")


def _disaster(root: Path, run: int) -> Deployment:
    dep = Deployment(root / f"run-{run}", bench_user(), check_dsn=True)
    try:
        dep.build_primary()
        dep.start_daemon()
        dep.standby_up()
        dep.primary.pgbench("-i", "-s", "4", "-q")
        dep.primary.pgbench("-c", "4", "-T", "5", "-n")
        dep.wait_replayed(dep.switch_wal(), timeout=120)
        dep.primary.stop(mode="immediate")
    except BaseException:
        dep.teardown()
        raise
    return dep


def _logship_promote(dep: Deployment) -> tuple[float, float]:
    started = time.monotonic()
    result = dep.logship("promote", dep.connector, "--timeout", "120")
    wall = time.monotonic() - started
    reported = _RTO.findall(result.stdout)
    return wall, float(reported[-1]) if reported else wall


def _plain_promote(dep: Deployment) -> float:
    started = time.monotonic()
    dep.standby.execute("select pg_promote(wait => true)")
    dep.standby.execute("create table written_after_promote (n int)")
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="promotes of each kind")
    args = parser.parse_args(argv)
    report = Report("promote_rto", environment())
    walls: list[float] = []
    reported: list[float] = []
    plain: list[float] = []
    with reachable_tempdir() as root:
        for run in range(args.runs * 2):
            dep = _disaster(root, run)
            try:
                # Alternate the two kinds so drift in the machine hits both alike.
                if run % 2 == 0:
                    wall, rto = _logship_promote(dep)
                    walls.append(wall)
                    reported.append(rto)
                    log(f"run {run}: logship promote {wall:.2f} s (reported RTO {rto:.2f} s)")
                else:
                    plain.append(_plain_promote(dep))
                    log(f"run {run}: pg_promote {plain[-1]:.2f} s")
            finally:
                dep.teardown()
    baseline = report.add(
        "pg_promote_median",
        median(plain),
        "s",
        detail="select pg_promote(wait => true) + a write; no checks",
        runs=plain,
    )
    report.add(
        "logship_promote_median",
        median(walls),
        "s",
        baseline=baseline,
        detail="whole command, process start to exit: gates, drain, loss report, promote, fence",
        runs=walls,
    )
    report.add(
        "logship_promote_p95",
        p95(walls),
        "s",
        detail="whole command",
    )
    report.add(
        "logship_reported_rto_median",
        median(reported),
        "s",
        baseline=baseline,
        detail="as promote reports it: command start to a writable database",
        runs=reported,
    )
    report.print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
