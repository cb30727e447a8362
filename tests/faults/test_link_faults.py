"""Link faults between the primary and the site, on a real network path.

The daemon reaches the site's sshd across a veth pair into a private network
namespace, rate-limited with `tc tbf`, through a user-space relay that adds
delay, stalls (a black hole: nothing moves, nobody is told) or resets the
connection mid-file. Afterwards every archived segment is at the site once,
bit-identical, and no temp is ever visible as a segment.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from link_site import behind_relay
from site_checks import all_shipped, check_site, log_events, site_layout, status_entry

from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.temp_names import is_temp_name
from testkit.netns import SiteLink, why_unavailable
from testkit.relay import DelayRelay

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(why_unavailable() is not None, reason=str(why_unavailable())),
]


@pytest.fixture
def linked(deployment: Deployment) -> Iterator[tuple[Deployment, SiteLink, DelayRelay]]:
    """The deployment with its site behind a namespace link and a relay."""
    with behind_relay(deployment) as (link, relay):
        yield deployment, link, relay


def _uploading(dep: Deployment) -> bool:
    """A segment's temp is at the site with some bytes in it: mid-file."""
    wal_dir = Path(site_layout(dep).wal_dir)
    if not wal_dir.is_dir():
        return False
    return any(is_temp_name(p.name) and p.stat().st_size > 0 for p in wal_dir.iterdir())


def _mid_upload(dep: Deployment, link: SiteLink) -> None:
    """Start shipping 16 MiB segments (no compression) over a 40 Mbit/s link, which
    takes seconds each, and return once one is half way to the site."""
    dep.compression = "none"
    dep.write_config()
    link.shape(mbit=40)
    dep.start_daemon()
    dep.primary.pgbench("-i", "-s", "2", "-q")
    dep.switch_wal()
    wait_for(lambda: _uploading(dep), 120, "an upload in progress")


def test_a_slow_far_link_ships_everything(
    linked: tuple[Deployment, SiteLink, DelayRelay],
) -> None:
    dep, link, relay = linked
    link.shape(mbit=50)
    relay.delay_s = 0.025  # 50 ms round trip
    dep.start_daemon()
    dep.primary.pgbench("-i", "-s", "2", "-q")
    dep.switch_wal()
    wait_for(lambda: all_shipped(dep), 180, "every archived segment shipped")
    assert check_site(dep) >= 2
    assert relay.bytes_up > 1024 * 1024, "the site was reached some other way"


def test_a_connection_reset_mid_file_is_retried_cleanly(
    linked: tuple[Deployment, SiteLink, DelayRelay],
) -> None:
    dep, link, relay = linked
    _mid_upload(dep, link)
    assert relay.cut() >= 1
    wait_for(lambda: all_shipped(dep), 240, "every archived segment shipped after the reset")
    assert check_site(dep) >= 2
    events = [e.get("event") for e in log_events(dep)]
    assert "link lost" in events, events
    assert "connected" in events[events.index("link lost") :], "it never reconnected"


def test_a_stalled_link_is_declared_down_and_recovers(
    linked: tuple[Deployment, SiteLink, DelayRelay],
) -> None:
    """A black hole gives no error at all: only a timeout can notice it."""
    dep, link, relay = linked
    dep.rpo = "5s"
    dep.io_timeout = "5s"
    _mid_upload(dep, link)
    relay.stall()
    try:
        # io_timeout is 5 s: a reply overdue, or data unacknowledged, that long.
        wait_for(lambda: status_entry(dep)["state"] == "down", 30, "the stalled link reported down")
    finally:
        relay.stall(False)
    wait_for(lambda: all_shipped(dep), 240, "every archived segment shipped after the stall")
    assert check_site(dep) >= 2
    wait_for(lambda: status_entry(dep)["state"] != "down", 60, "the link back up")
