"""WAL streamed through the SSH link: the standby's walreceiver reaches the primary
only through a port that sshd opens on the site's loopback."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
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


class Ticker(threading.Thread):
    """One timestamped insert every 100 ms; remembers which commits were acknowledged."""

    def __init__(self, dep: Deployment) -> None:
        super().__init__(daemon=True)
        self.dep = dep
        self.acked: list[tuple[int, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with self.dep.primary.connect() as conn:
                n = 0
                while not self.stop.wait(0.1):
                    n += 1
                    (at,) = conn.execute(
                        "insert into ticks values (%s, extract(epoch from clock_timestamp()))"
                        " returning at",
                        (n,),
                    ).fetchone()
                    self.acked.append((n, at))
        except psycopg.Error:
            return  # the primary is gone: what was acknowledged is in `acked`


def pgbench_in_background(dep: Deployment) -> threading.Thread:
    def load() -> None:
        with contextlib.suppress(Exception):  # it ends when the primary is stopped
            dep.primary.pgbench("-c", "4", "-j", "2", "-T", "120", "-n")

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    return thread


def disaster_drill(dep: Deployment) -> tuple[list[tuple[int, float]], list[int], dict]:
    """Load, a ticker, the primary stopped with -m immediate, promote at the site.
    Returns the acknowledged ticks, the ticks the promoted standby holds, and the
    promote record."""
    wait_for(lambda: (r := receiver(dep)) and r[0] == "streaming", 60, "the standby streaming")
    dep.primary.execute("create table ticks (n int primary key, at float8)")
    dep.primary.pgbench("-i", "-s", "2", "-q")
    load = pgbench_in_background(dep)
    ticker = Ticker(dep)
    ticker.start()
    wait_for(lambda: len(ticker.acked) >= 40, 60, "four seconds of ticks")
    dep.primary.stop(mode="immediate")
    ticker.join(30)
    load.join(60)
    promoted = dep.logship("promote", dep.connector, "--timeout", "120", check=False)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    held = [n for (n,) in dep.standby.query("select n from ticks order by n")]
    record = json.loads((dep.incoming / dep.connector / "PROMOTED").read_text())
    return ticker.acked, held, record


@pytest.fixture
def drill_deployment(reachable_dir: Path, pg_user: OsUser, request) -> Iterator[Deployment]:
    dep = Deployment(
        reachable_dir / "deploy", pg_user, streaming=True, check_dsn=True, **request.param
    )
    try:
        dep.build_primary()
        dep.start_daemon()
        dep.standby_up()
        yield dep
    finally:
        dep.teardown()


@pytest.mark.parametrize("drill_deployment", [{}], indirect=True)
def test_async_disaster_drill_loses_at_most_a_second(drill_deployment: Deployment) -> None:
    acked, held, record = disaster_drill(drill_deployment)
    # What the standby holds is a prefix of what the primary committed.
    assert held == list(range(1, len(held) + 1))
    lost = [(n, at) for n, at in acked if n > len(held)]
    assert len(lost) <= 10, f"{len(lost)} acknowledged ticks lost (100 ms each)"
    loss = record["loss"]
    assert loss["streamed_lsn"]
    if lost:
        # The report's window holds the real loss.
        assert loss["window_start"] <= lost[0][1]
        assert loss["window_end"] >= lost[-1][1]


@pytest.mark.parametrize("drill_deployment", [{"synchronous": True}], indirect=True)
def test_synchronous_disaster_drill_loses_no_acknowledged_commit(
    drill_deployment: Deployment,
) -> None:
    dep = drill_deployment
    wait_for(
        lambda: status_entry(dep)["sync_mode"] == "availability", 60, "synchronous mode in force"
    )
    acked, held, record = disaster_drill(dep)
    assert held == list(range(1, len(held) + 1))
    assert [n for n, _ in acked if n > len(held)] == []
    assert record["loss"]["no_acknowledged_loss"], record["loss"]
