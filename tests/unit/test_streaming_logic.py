"""Streaming's pure parts: the LSN -> time map, the lease, names, sizes, figures."""

from __future__ import annotations

import json

import pytest
from factories import postgres_connector

from logship.config.sizes import parse_size
from logship.engines.postgresql.status import STREAM_STALE_S, stream_figures
from logship.engines.postgresql.streaming.lease import SyncLease
from logship.engines.postgresql.streaming.primary import LsnClock
from logship.engines.postgresql.streaming.settings import standby_conninfo, standby_name


def test_lsn_clock_gives_the_newest_time_a_flushed_position_covers() -> None:
    clock = LsnClock()
    for at, lsn in ((10.0, 100), (10.25, 200), (10.5, 300)):
        clock.add(at, lsn)
    assert clock.durable_at(99) is None  # older than every sample
    assert clock.durable_at(250) == 10.25
    assert clock.durable_at(300) == 10.5
    # Samples before the answer are no longer needed; later ones still are.
    clock.add(10.75, 400)
    assert clock.durable_at(350) == 10.5


def test_lsn_clock_starts_again_when_positions_go_back_and_stays_bounded() -> None:
    clock = LsnClock(limit=3)
    for n in range(10):
        clock.add(float(n), 100 * n)
    assert clock.durable_at(600) is None  # only the newest three are kept
    clock.add(20.0, 5)  # a restored primary, a new timeline
    assert clock.durable_at(900) == 20.0


def lease(**changes: object) -> bytes:
    entry = {
        "connector": "main",
        "sync_mode": "availability",
        "since": 1_800_000_000.0,
        "written_at": 1_800_000_100.0,
        "holds_until": 1_800_000_110.0,
        "flush_lsn": "0/4A69CF0",
        **changes,
    }
    return json.dumps(entry).encode()


def test_a_lease_round_trips() -> None:
    parsed = SyncLease.from_json(lease(), "main")
    assert SyncLease.from_json(parsed.to_json(), "main") == parsed
    assert SyncLease.from_json(lease(sync_mode="protection", holds_until=None), "main")


@pytest.mark.parametrize(
    "data",
    [
        lease(connector="other"),
        lease(sync_mode="maximum"),
        lease(holds_until=None),
        lease(sync_mode="protection"),
        lease(since="yesterday"),
        lease(written_at=True),
        lease(written_at=float("nan")),
        lease(holds_until=1e300),
        lease(flush_lsn="0/xyz"),
        lease(flush_lsn="12345678901234567/0"),
        b"[1, 2]",
        b"{" + b" " * 5000 + b"}",
        b"not json",
    ],
)
def test_a_hostile_lease_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError):
        SyncLease.from_json(data, "main")


def test_standby_names_are_plain_identifiers_and_never_shared() -> None:
    assert standby_name("main") == "logship_main"
    odd = {standby_name(name) for name in ("Orders.DB", "orders-db", "orders_db", "x" * 64)}
    assert len(odd) == 4
    assert all(len(name) <= 63 and name == name.lower() for name in odd)
    assert all(set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789_") for name in odd)


def test_the_standby_connects_to_the_tunnel_never_to_the_primary() -> None:
    connector = postgres_connector(
        streaming={"enabled": True, "site_port": 6001, "passfile": "/srv/pgpass"}
    )
    conninfo = standby_conninfo(connector)
    assert "host=127.0.0.1" in conninfo and "port=6001" in conninfo
    assert "passfile=/srv/pgpass" in conninfo and "password" not in conninfo.replace("passfile", "")


@pytest.mark.parametrize(
    ("text", "size"), [("4GB", 4 << 30), ("64MB", 64 << 20), ("512kB", 512 << 10), (100, 100)]
)
def test_sizes_read_as_postgresql_writes_them(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "4 GiB", "-1", "0", "1.5GB", True, "4PB"])
def test_bad_sizes_are_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


class Row:
    def __init__(self, **fields: object) -> None:
        self.measured_at = 1000.0
        self.state = "streaming"
        self.flush_lsn = "0/5000000"
        self.durable_at = 999.5
        self.sync_mode = "availability"
        self.slot_retained_bytes = 0
        self.error = None
        self.__dict__.update(fields)


def test_stream_figures_grow_honestly_and_go_down_when_nobody_measures() -> None:
    assert stream_figures(False, Row(), 1000.0).streaming == "off"
    assert stream_figures(True, None, 1000.0).streaming == "down"
    fresh = stream_figures(True, Row(), 1000.2)
    assert fresh.streaming == "streaming" and fresh.exposure_s == pytest.approx(0.7)
    stale = stream_figures(True, Row(), 1000.0 + STREAM_STALE_S + 5)
    assert stale.streaming == "down" and stale.sync_mode is None
    assert stale.exposure_s == pytest.approx(STREAM_STALE_S + 5.5)
