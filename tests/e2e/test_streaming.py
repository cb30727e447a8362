"""WAL streamed through the SSH link: the standby's walreceiver reaches the primary
only through a port that sshd opens on the site's loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.demo_sandbox.osuser import OsUser


def status_entry(dep: Deployment) -> dict:
    out = dep.logship("status", "--json", check=False).stdout
    return json.loads(out)["connectors"][0]


def receiver(dep: Deployment) -> tuple | None:
    rows = dep.standby.query("select status, sender_host, sender_port from pg_stat_wal_receiver")
    return rows[0] if rows else None


@pytest.fixture
def streaming(reachable_dir: Path, pg_user: OsUser) -> Iterator[Deployment]:
    dep = Deployment(reachable_dir / "deploy", pg_user, streaming=True)
    try:
        dep.build_primary()
        dep.start_daemon()
        dep.standby_up()
        yield dep
    finally:
        dep.teardown()


def test_wal_streams_through_the_ssh_link(streaming: Deployment) -> None:
    dep = streaming
    wait_for(lambda: (r := receiver(dep)) and r[0] == "streaming", 60, "the standby streaming")
    _, host, port = receiver(dep)
    # The standby reaches the primary only through the tunnel's loopback port.
    assert (host, port) == ("127.0.0.1", dep.stream_port)
    dep.primary.execute("create table ticks (n int); insert into ticks values (1)")
    # Faster than archive_timeout could close a segment: it was streamed.
    dep.standby.wait_until("select to_regclass('ticks') is not null", timeout=5)
    entry = wait_for(
        lambda: (e := status_entry(dep))["streaming"] == "streaming" and e, 30, "status streaming"
    )
    assert entry["sync_mode"] == "async"
    assert entry["stream_flush_lsn"]
    assert entry["rpo_exposure_s"] is not None and entry["rpo_exposure_s"] < 2
