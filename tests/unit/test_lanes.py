"""The lane pool's bookkeeping (pure logic, fake lanes): background connects, a site
that refuses more connections, idle lanes closed. The real lanes are in
test_lane_process.py and test_ship_lanes.py."""

from __future__ import annotations

import threading
from pathlib import PurePosixPath

from logship.config.model import SiteConfig
from logship.demo_sandbox.deployment import wait_for
from logship.manifest import ManifestRecord, SiteLayout
from logship.ship.lanes import Lanes
from logship.spool import SpoolEntry

SITE = SiteConfig(
    name="dr",
    host="127.0.0.1",
    user="logship",
    identity_file="/nonexistent/key",  # type: ignore[arg-type]
    known_hosts="/nonexistent/known_hosts",  # type: ignore[arg-type]
    root=PurePosixPath("/srv/incoming"),
)


class FakeLane:
    def __init__(self) -> None:
        self.closed = False

    @property
    def is_alive(self) -> bool:
        return not self.closed

    def ship(self, layout: SiteLayout, entry: SpoolEntry, compression: str) -> ManifestRecord:
        raise NotImplementedError

    def close(self) -> None:
        self.closed = True


class Connector:
    """Hands out fake lanes; `refuse` makes the next connects fail, `gate` holds
    them until set."""

    def __init__(self) -> None:
        self.made: list[FakeLane] = []
        self.refuse = False
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, site: SiteConfig) -> FakeLane:
        self.gate.wait(10)
        if self.refuse:
            raise OSError("too many connections")
        lane = FakeLane()
        self.made.append(lane)
        return lane


def test_warm_connects_every_lane_in_the_background() -> None:
    connector = Connector()
    connector.gate.clear()
    lanes = Lanes(SITE, connector, 3)
    try:
        lanes.warm()  # returns at once, although no connect can finish yet
        assert connector.made == []
        connector.gate.set()
        wait_for(lambda: len(connector.made) == 3, 10, "three lanes connected")
        # A round's task for a slot finds the lane the warm-up connected there
        # (the three connected side by side, in any order).
        found = [lanes.lane(i) for i in range(3)]
        assert {id(lane) for lane in found} == {id(lane) for lane in connector.made}
        assert len(connector.made) == 3
    finally:
        lanes.shutdown()
    assert all(lane.closed for lane in connector.made)


def test_a_refused_connect_leaves_the_empty_slots_out_for_a_while() -> None:
    connector = Connector()
    lanes = Lanes(SITE, connector, 2)
    try:
        first = lanes.lane(0)
        assert first is not None
        connector.refuse = True
        assert lanes.lane(1) is None
        # Only the connected lane is offered until the retry time has passed.
        assert lanes.usable() == [0]
        assert lanes.lane(1) is None and len(connector.made) == 1
    finally:
        lanes.shutdown()


def test_a_dead_lane_is_replaced_and_idle_lanes_are_closed() -> None:
    connector = Connector()
    lanes = Lanes(SITE, connector, 2)
    try:
        first = lanes.lane(0)
        assert first is not None
        first.close()  # its process died, say
        second = lanes.lane(0)
        assert second is not None and second is not first
        assert lanes.lane(1) is not None
        lanes.close_idle(3600)  # used just now: kept
        assert not any(lane.closed for lane in connector.made[1:])
        lanes.close_idle(0)
        assert all(lane.closed for lane in connector.made)
        assert lanes.usable() == [0, 1]  # empty again, free to connect when needed
    finally:
        lanes.shutdown()
