"""WAL streamed through the SSH link: the standby's walreceiver reaches the primary
only through a port that sshd opens on the site's loopback."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from logship.catalog.store import Catalog
from logship.demo_sandbox.deployment import REPLICATION_ROLE, Deployment, wait_for
from logship.demo_sandbox.osuser import OsUser
from logship.engines.postgresql import walnames

MIB = 1 << 20
SEGMENT = 16 * MIB


def status_entry(dep: Deployment) -> dict:
    out = dep.logship("status", "--json", check=False).stdout
    return json.loads(out)["connectors"][0]


def receiver(dep: Deployment) -> tuple | None:
    rows = dep.standby.query("select status, sender_host, sender_port from pg_stat_wal_receiver")
    return rows[0] if rows else None


@contextlib.contextmanager
def streaming_deployment(root: Path, user: OsUser, **options: object) -> Iterator[Deployment]:
    """Primary, daemon and a restored standby, streaming; all stopped on the way out."""
    dep = Deployment(root / "deploy", user, streaming=True, **options)
    try:
        dep.build_primary()
        dep.start_daemon()
        dep.standby_up()
        yield dep
    finally:
        dep.teardown()


@pytest.fixture
def streaming(reachable_dir: Path, pg_user: OsUser) -> Iterator[Deployment]:
    with streaming_deployment(reachable_dir, pg_user) as dep:
        yield dep


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
    shown = dep.logship("status").stdout
    assert "stream streaming" in shown and "async" in shown

    # Streamed WAL never goes through restore-wal, yet its shipped copies count
    # as applied once the standby has replayed past them.
    ((switched,),) = dep.primary.query("select pg_walfile_name(pg_switch_wal())")
    dep.primary.execute("insert into ticks values (2)")
    dep.wait_replayed(dep.switch_wal())
    wait_for(lambda: (status_entry(dep)["last_applied"] or "") >= switched, 30, "applied")
    fetched = json.loads((dep.incoming / dep.connector / "restored.json").read_text())["name"]
    assert fetched < switched

    # The tunnel carries a physical replication connection as the streaming role,
    # nothing else, whatever the primary's pg_hba.conf trusts from the daemon.
    at_site = f"host=127.0.0.1 port={dep.stream_port} sslmode=disable connect_timeout=10"
    for refused in (
        f"{at_site} user=postgres dbname=postgres",
        f"{at_site} user=postgres replication=true",
        f"{at_site} user={REPLICATION_ROLE} dbname=postgres",
    ):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(refused).close()
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"{at_site} user={REPLICATION_ROLE} replication=true").close()
    with psycopg.connect(
        f"{at_site} user={REPLICATION_ROLE} replication=true passfile={dep.replication_passfile}"
    ) as conn:
        assert conn.pgconn.exec_(b"IDENTIFY_SYSTEM").ntuples == 1


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


def pgbench_in_background(dep: Deployment, seconds: int = 120) -> threading.Thread:
    def load() -> None:
        with contextlib.suppress(Exception):  # it ends when the primary is stopped
            dep.primary.pgbench("-c", "4", "-j", "2", "-T", str(seconds), "-n")

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
    """Streaming with the options of the test's parameter, and a TCP check_dsn so
    that promote can see the primary down."""
    with streaming_deployment(reachable_dir, pg_user, check_dsn=True, **request.param) as dep:
        yield dep


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


def primary_lsn(dep: Deployment) -> int:
    ((lsn,),) = dep.primary.query("select pg_current_wal_lsn()::text")
    return walnames.lsn_to_int(lsn)


def commit_in_background(dep: Deployment, n: int = -1) -> threading.Event:
    """One commit on the primary; the event is set once it has returned."""
    done = threading.Event()

    def commit() -> None:
        with contextlib.suppress(psycopg.Error):
            dep.primary.execute(f"insert into ticks values ({n}, 0) on conflict do nothing")
            done.set()

    threading.Thread(target=commit, daemon=True).start()
    return done


@pytest.mark.parametrize(
    "drill_deployment",
    [{"synchronous": True, "fallback_after": "3s", "max_slot_wal_keep": "48MB"}],
    indirect=True,
)
def test_link_cut_falls_back_to_shipping_and_streaming_returns(
    drill_deployment: Deployment,
) -> None:
    dep = drill_deployment
    wait_for(lambda: status_entry(dep)["sync_mode"] == "availability", 60, "synchronous mode")
    dep.primary.execute("create table ticks (n int primary key, at float8)")
    dep.primary.execute("create table filler (n int, pad text)")
    dep.primary.pgbench("-i", "-s", "2", "-q")
    load = pgbench_in_background(dep, seconds=15)
    cut_at = time.time()
    start_lsn = primary_lsn(dep)
    assert dep.sshd.cut()

    # Maximum availability: after fallback_after without the standby, commits go on.
    wait_for(lambda: status_entry(dep)["sync_mode"] == "async", 30, "the drop to async")
    assert commit_in_background(dep).wait(10), "the primary still waits for the absent standby"
    entry = status_entry(dep)
    assert entry["streaming"] == "down"
    # Honest exposure: nothing reached the site since the cut.
    assert entry["rpo_exposure_s"] >= time.time() - cut_at - 2

    # Far more WAL than one segment and than the slot may hold, while the link is cut.
    dep.primary.execute(
        "insert into filler select g, repeat('x', 900) from generate_series(1, 100000) g"
    )
    for _ in range(3):
        dep.primary.execute("checkpoint")
        ((status, held),) = dep.primary.query(
            "select wal_status, pg_current_wal_lsn() - restart_lsn from pg_replication_slots"
        )
        # Between checkpoints WAL piles up anyway; at a checkpoint the slot lets go.
        assert status == "lost" or held is None or held <= 48 * MIB + SEGMENT, (status, held)
    assert primary_lsn(dep) - start_lsn > 3 * SEGMENT
    end_lsn = dep.switch_wal()

    dep.sshd.start()
    # Shipped segments carry the standby past what streaming could no longer give it...
    dep.wait_replayed(end_lsn, timeout=180)
    # ...and streaming and the synchronous mode come back by themselves.
    wait_for(lambda: status_entry(dep)["streaming"] == "streaming", 120, "streaming again")
    wait_for(lambda: status_entry(dep)["sync_mode"] == "availability", 60, "synchronous again")
    load.join(180)
    events = Catalog(f"sqlite:///{dep.state_dir / 'catalog.db'}").journal(cut_at)
    messages = [event.message for event in events]
    assert any("synchronous mode: async" in m for m in messages), messages
    assert any("synchronous mode: availability" in m for m in messages), messages
    # The slot gave up WAL beyond its bound; the standby caught up from the archive.
    assert any("re-created" in m for m in messages), messages


def test_a_restarted_standby_streams_again_and_misses_nothing(streaming: Deployment) -> None:
    dep = streaming
    wait_for(lambda: (r := receiver(dep)) and r[0] == "streaming", 60, "the standby streaming")
    dep.primary.pgbench("-i", "-s", "2", "-q")
    load = pgbench_in_background(dep, seconds=10)
    wait_for(
        lambda: dep.primary.query("select count(*) from pgbench_history")[0][0] > 500,
        30,
        "load under way",
    )
    dep.standby.stop(mode="fast")
    dep.standby.start()
    wait_for(lambda: (r := receiver(dep)) and r[0] == "streaming", 60, "streaming again")
    load.join(60)
    dep.wait_replayed(dep.switch_wal())
    # Every transaction once: none replayed twice, none skipped.
    sql = (
        "select (select count(*) from pgbench_history),"
        " (select sum(abalance) from pgbench_accounts)"
    )
    assert dep.standby.query(sql) == dep.primary.query(sql)


def test_streaming_turned_on_later_needs_no_restore(deployment: Deployment) -> None:
    dep = deployment
    dep.start_daemon()
    dep.standby_up()
    assert receiver(dep) is None  # shipped segments only
    dep.streaming = True
    dep.add_replication_role()
    dep.write_config()
    dep.stop_daemon()
    dep.start_daemon()
    # The daemon's standby sampling brings the running standby's settings in line.
    wait_for(lambda: (r := receiver(dep)) and r[0] == "streaming", 90, "the standby streaming")
    ((slot,),) = dep.standby.query("select current_setting('primary_slot_name')")
    assert slot == "logship_main"


@pytest.mark.parametrize(
    "drill_deployment", [{"synchronous": True, "protection": "protection"}], indirect=True
)
def test_maximum_protection_waits_for_the_standby_for_as_long_as_it_is_away(
    drill_deployment: Deployment,
) -> None:
    dep = drill_deployment
    wait_for(lambda: status_entry(dep)["sync_mode"] == "protection", 60, "maximum protection")
    dep.primary.execute("create table ticks (n int primary key, at float8)")
    assert dep.sshd.cut()
    waiting = commit_in_background(dep, 1)
    # Far longer than maximum availability would wait: the commit does not return.
    assert not waiting.wait(8)
    entry = status_entry(dep)
    assert (entry["sync_mode"], entry["streaming"]) == ("protection", "down")
    dep.sshd.start()
    assert waiting.wait(90), "the commit did not return once the standby was back"
    wait_for(lambda: dep.standby.query("select count(*) from ticks") == [(1,)], 30, "tick 1")


def test_a_slot_left_by_streaming_turned_off_is_dropped(deployment: Deployment) -> None:
    dep = deployment
    dep.primary.execute("select pg_create_physical_replication_slot('logship_main', true)")
    dep.start_daemon()
    wait_for(
        lambda: dep.primary.query("select count(*) from pg_replication_slots") == [(0,)],
        30,
        "the stale slot dropped",
    )
