"""With read-ahead, PostgreSQL's archiver never has a segment confirmed that is not
durable at the site, whichever step of shipping it from pg_wal the site is cut at.

The daemon reaches the site's sshd through a relay (testkit.relay). A pause point
(`LOGSHIP_PAUSE_AT`, logship.faults) holds the daemon at one step of shipping the
first segment it reads from pg_wal; the relay then resets every connection and
refuses new ones, and the step goes on against the cut link while pgbench keeps
PostgreSQL archiving. All along (site_checks.ArchiveGuard), every segment with a
.done mark, or up to pg_stat_archiver's last, is in the spool or durable at the
site with the content PostgreSQL handed over. Once the link is back, everything
converges and nothing is lost.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from read_ahead_run import arrivals, shipping, start, warm_up
from site_checks import (
    ArchiveGuard,
    all_shipped,
    archived_through,
    audit_site,
    check_site,
    log_events,
)

from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.engines.postgresql.walnames import is_archivable
from logship.faults import PAUSE_ENV
from logship.read_ahead_beat import HELD, read_beat
from testkit.relay import DelayRelay

STEPS = [
    "ship-mid-upload",  # part of the segment in its temp at the site
    "readahead-read-done",  # all of it read and its .ready checked, not renamed yet
    "ship-before-record",  # renamed into place at the site, no manifest record
    "ship-before-catalog",  # record durable at the site, the catalog not told
    "ship-before-retire",  # the catalog told, no tombstone for archive-wal yet
]


@pytest.fixture
def relayed(read_ahead: Deployment) -> Iterator[tuple[Deployment, DelayRelay]]:
    """The read-ahead deployment reaching its site through a relay on loopback."""
    dep = read_ahead
    relay = DelayRelay((dep.sshd.host, dep.sshd.port))
    try:
        dep.sshd.trust_address(*relay.address)
        dep.site_address = relay.address
        dep.write_config()
        yield dep, relay
    finally:
        dep.stop_daemon(timeout=30)
        relay.close()


def spool_copies(dep: Deployment) -> list[str]:
    return sorted(p.name for p in dep.spool_dir.iterdir() if is_archivable(p.name))


@pytest.mark.e2e
@pytest.mark.parametrize("step", STEPS)
def test_the_archiver_never_confirms_what_the_cut_site_does_not_hold(
    relayed: tuple[Deployment, DelayRelay], step: str
) -> None:
    dep, relay = relayed
    flag = dep.state_dir / "paused"  # the daemon's user creates it
    with ArchiveGuard(dep) as guard:
        warm_up(dep)
        assert dep.stop_daemon() == 0
        with arrivals(dep.spool_dir) as copies:
            since = start(dep, {PAUSE_ENV: f"{step}:{flag}"})
            wait_for(lambda: guard.ok() and shipping(dep, since), 60, "the read-ahead beat")
            dep.primary.pgbench("-i", "-s", "2", "-q")
            dep.switch_wal()
            wait_for(lambda: guard.ok() and flag.exists(), 120, f"the daemon held at {step}")
            relay.cut_off()
            flag.with_name(f"{flag.name}.go").touch()
        # Nothing was in the spool when it stopped: the held segment came from pg_wal.
        held_at = flag.stat().st_mtime
        early = [n for n, t in copies.seen.items() if is_archivable(n) and t < held_at]
        assert not early, f"{early} were in the spool before the step"

        # PostgreSQL archives on with the site cut: archive-wal must copy.
        dep.primary.pgbench("-c", "2", "-T", "3", "-n")
        switched = dep.switch_wal()
        wait_for(
            lambda: guard.ok() and archived_through(dep, switched),
            120,
            "the archiver through the cut",
        )
        guard.ok()
        beat = read_beat(dep.spool_dir)
        assert beat is not None and beat.state == HELD, beat and beat.state
        assert spool_copies(dep), "nothing copied into the spool while the site was cut"

        relay.cut_off(False)
        wait_for(lambda: guard.ok() and all_shipped(dep), 180, "every archived segment shipped")
        assert check_site(dep) >= 3
        audit = audit_site(dep)
        assert (audit.missing, audit.corrupt, audit.strays) == ([], [], [])
        assert not [e for e in log_events(dep) if "conflict" in str(e.get("event"))]
        guard.assert_held()
