"""kill -9 of the daemon at chosen points while PostgreSQL archives under load.

Each crash point (logship.faults) kills the daemon with SIGKILL once; it is
started again with the same environment and must then converge: every
segment PostgreSQL archived is at the site exactly once, bit-identical, with
no temp file left visible as a segment, and the standby replays to the
primary's last LSN.

Each point runs with read-ahead (WAL shipped from pg_wal, archive-wal only
confirming it) and, for a subset, with the spool alone. Throughout, every
segment PostgreSQL counts as archived is either in the spool or durable at the
site with the content PostgreSQL handed over (site_checks.ArchiveGuard).
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest
from read_ahead_run import Arrivals, arrivals, shipping, start, wait_shipping, warm_up
from site_checks import (
    ArchiveGuard,
    all_shipped,
    archived_through,
    audit_site,
    check_site,
    last_archived,
    log_events,
    site_layout,
)

from logship.demo_sandbox import OsUser
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.engines.postgresql.archive_wal import tombstone_path
from logship.engines.postgresql.walnames import is_archivable
from logship.faults import ENV

#: points on the shipping path, the same with either source
SHIP_POINTS = [
    "ship-mid-upload",  # the segment's temp partly written at the site
    "ship-before-record",  # the segment renamed into place, no manifest record yet
    "ship-mid-record",  # the record's temp open at the site
    "ship-before-catalog",  # segment and record durable, the catalog not told
    "ship-before-retire",  # the catalog told, no tombstone yet (archive-wal's proof)
]
#: points only read-ahead reaches
READ_AHEAD_POINTS = [
    "readahead-read-done",  # read from pg_wal, its .ready checked, the upload not renamed
    "readahead-mid-keep",  # shipped, in the catalog, the kept copy half made, no tombstone
]
#: the spool-only runs: the points whose recovery differs (a temp at the site, the
#: re-ship finding the record, the retire after the catalog)
SPOOL_POINTS = SHIP_POINTS

CASES = [
    *[pytest.param(point, True, id=f"read-ahead-{point}") for point in SHIP_POINTS],
    *[pytest.param(point, True, id=f"read-ahead-{point}") for point in READ_AHEAD_POINTS],
    *[pytest.param(point, False, id=f"spool-{point}") for point in SPOOL_POINTS],
]


@pytest.fixture
def crash_deployment(
    request: pytest.FixtureRequest, reachable_dir: Path, pg_user: OsUser
) -> Deployment:
    read_ahead: bool = request.node.callspec.params["read_ahead"]
    dep = Deployment(reachable_dir / "deploy", pg_user, read_ahead=read_ahead)
    request.addfinalizer(dep.teardown)
    dep.build_primary()
    return dep


def assert_converged(dep: Deployment, guard: ArchiveGuard) -> None:
    assert check_site(dep) >= 3
    audit = audit_site(dep)
    assert (audit.missing, audit.corrupt, audit.strays) == ([], [], [])
    events = log_events(dep)
    assert not [e for e in events if "conflict" in str(e.get("event"))], "shipped twice"
    guard.assert_held()


@pytest.mark.e2e
@pytest.mark.parametrize(("point", "read_ahead"), CASES)
def test_kill_9_at_a_crash_point_loses_nothing_and_duplicates_nothing(
    crash_deployment: Deployment, point: str, read_ahead: bool
) -> None:
    dep = crash_deployment
    flag = dep.state_dir / "crashed"  # the daemon's user creates it
    crash = {ENV: f"{point}:{flag}"}
    with ArchiveGuard(dep) as guard:
        if read_ahead:
            warm_up(dep)
            assert dep.stop_daemon() == 0
        # (Without read-ahead the spool is made by the first hand-over.)
        watched = arrivals(dep.spool_dir) if read_ahead else contextlib.nullcontext(Arrivals())
        with watched as copies:
            since = start(dep, crash)
            if read_ahead:
                wait_for(lambda: shipping(dep, since), 60, "the read-ahead beat")
            daemon = dep.daemon
            assert daemon is not None
            dep.primary.pgbench("-i", "-s", "2", "-q")
            dep.switch_wal()
            wait_for(lambda: daemon.poll() is not None, 120, f"the daemon killed at {point}")
        assert flag.exists()
        if read_ahead:
            # No spool copy before the kill: the file it hit was read from pg_wal.
            killed_at = flag.stat().st_mtime
            early = [n for n, t in copies.seen.items() if is_archivable(n) and t < killed_at]
            assert not early, f"{early} were in the spool before the kill"
        # runuser reports its child's SIGKILL as 128 + 9.
        assert daemon.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
        dep.stop_daemon()
        # PostgreSQL archives on while the daemon is down: archive-wal copies.
        dep.primary.pgbench("-c", "2", "-T", "2", "-n")
        dep.switch_wal()

        since = start(dep, crash)  # the flag exists: it runs through the point now
        if read_ahead:
            wait_shipping(dep, since)
        dep.primary.pgbench("-i", "-s", "1", "-q")
        switched = dep.switch_wal()
        wait_for(lambda: archived_through(dep, switched), 120, "the archiver through the switch")
        wait_for(lambda: guard.ok() and all_shipped(dep), 120, "every archived segment shipped")
        if read_ahead:
            sources = {e.get("source") for e in log_events(dep) if e.get("event") == "shipped"}
            assert "read-ahead" in sources, "nothing shipped from pg_wal after the restart"

        dep.standby_up()
        dep.wait_replayed(dep.switch_wal())
        wait_for(lambda: guard.ok() and all_shipped(dep), 120, "the last segment shipped")
        assert_converged(dep, guard)


def archiver_held(dep: Deployment, held: bool) -> None:
    """Make PostgreSQL's archive_command fail (held) or run archive-wal again."""
    setting = "set archive_command = 'false'" if held else "reset archive_command"
    dep.primary.query(f"alter system {setting}")
    dep.primary.query("select pg_reload_conf()")


def failed_archiving(dep: Deployment) -> int:
    ((count,),) = dep.primary.query("select failed_count from pg_stat_archiver")
    return int(count)


def untombstoned(dep: Deployment) -> list[str]:
    """Files at the site (a manifest record) with no tombstone in the spool."""
    layout = site_layout(dep)
    records = [p.name.removesuffix(".json") for p in Path(layout.manifest_dir).glob("*.json")]
    return sorted(name for name in records if not tombstone_path(dep.spool_dir, name).exists())


@pytest.mark.e2e
def test_kill_9_before_the_tombstone_and_again_while_a_restart_writes_it(
    read_ahead: Deployment,
) -> None:
    """Killed between the catalog and the tombstone, with the segment still marked
    ready (the archiver has not got to it): the next run finds it shipped and writes
    the tombstone itself, and a kill -9 just before that write changes nothing.
    archive-wal then confirms it by that tombstone, with no spool copy."""
    dep = read_ahead
    before_retire = {ENV: f"ship-before-retire:{dep.state_dir / 'crashed-retire'}"}
    restart = {ENV: f"readahead-restart-tombstone:{dep.state_dir / 'crashed-restart'}"}
    with ArchiveGuard(dep) as guard:
        warm_up(dep)
        # The archiver fails from here on: every new segment stays marked ready.
        failed = failed_archiving(dep)
        archiver_held(dep, True)
        dep.primary.query("create table held (n int)")
        dep.switch_wal()
        wait_for(lambda: failed_archiving(dep) > failed, 60, "the archiver failing")
        assert dep.stop_daemon() == 0

        daemon = dep.start_daemon(env=before_retire)
        dep.primary.pgbench("-i", "-s", "2", "-q")
        dep.switch_wal()
        wait_for(lambda: daemon.poll() is not None, 120, "the daemon killed before a tombstone")
        dep.stop_daemon()
        pending = untombstoned(dep)
        assert pending, "no segment shipped without its tombstone"

        daemon = dep.start_daemon(env=restart)
        wait_for(lambda: daemon.poll() is not None, 120, "the daemon killed writing a tombstone")
        dep.stop_daemon()
        assert (dep.state_dir / "crashed-restart").exists()
        assert set(untombstoned(dep)) & set(pending), "the tombstone was written anyway"

        dep.start_daemon(env=restart)  # through the point now
        wait_for(lambda: not set(untombstoned(dep)) & set(pending), 60, "the tombstones")
        with arrivals(dep.spool_dir) as copies:
            archiver_held(dep, False)
            wait_for(lambda: guard.ok() and all_shipped(dep), 120, "every archived segment shipped")
            wait_for(lambda: last_archived(dep) >= max(pending), 60, "the archiver through them")
        assert not copies.names & set(pending), "archive-wal copied what was shipped"

        dep.standby_up()
        dep.wait_replayed(dep.switch_wal())
        wait_for(lambda: guard.ok() and all_shipped(dep), 120, "the last segment shipped")
        assert_converged(dep, guard)
