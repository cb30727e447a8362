"""kill -9 of the daemon at chosen points while PostgreSQL archives under load.

Each crash point (logship.faults) kills the daemon with SIGKILL once; it is
started again with the same environment and must then converge: every
segment PostgreSQL archived is at the site exactly once, bit-identical, with
no temp file left visible as a segment, and the standby replays to the
primary's last LSN.
"""

from __future__ import annotations

import signal

import pytest
from site_checks import all_shipped, check_site

from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.faults import ENV

POINTS = [
    "ship-mid-upload",  # the segment's temp partly written at the site
    "ship-before-record",  # the segment renamed into place, no manifest record yet
    "ship-mid-record",  # the record's temp open at the site
    "ship-before-catalog",  # segment and record durable, the catalog not told
    "ship-before-retire",  # the catalog told, the spool copy not yet removed
]


@pytest.mark.e2e
@pytest.mark.parametrize("point", POINTS)
def test_kill_9_at_a_crash_point_loses_nothing_and_duplicates_nothing(
    deployment: Deployment, point: str
) -> None:
    dep = deployment
    flag = dep.state_dir / "crashed"  # the daemon's user creates it
    crash = {ENV: f"{point}:{flag}"}
    daemon = dep.start_daemon(env=crash)
    dep.primary.pgbench("-i", "-s", "2", "-q")
    dep.switch_wal()
    wait_for(lambda: daemon.poll() is not None, 120, f"the daemon killed at {point}")
    assert flag.exists()
    # runuser reports its child's SIGKILL as 128 + 9.
    assert daemon.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
    dep.stop_daemon()

    dep.start_daemon(env=crash)  # the flag exists: it runs through the point now
    dep.primary.pgbench("-c", "2", "-T", "3", "-n")
    dep.switch_wal()
    wait_for(lambda: all_shipped(dep), 120, "every archived segment shipped")
    assert check_site(dep) >= 3

    dep.standby_up()
    dep.wait_replayed(dep.switch_wal())
    wait_for(lambda: all_shipped(dep), 120, "the last segment shipped")
    check_site(dep)
