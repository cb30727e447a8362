"""A fenced old primary on a real PostgreSQL 15: started by hand with pg_ctl, it
comes up in recovery, refuses writes and its log says why; unfenced, it starts as
a primary again with its own settings as they were."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from logship.demo_sandbox import OsUser, PgCluster, free_port
from logship.engines.postgresql.fence import (
    AUTO_CONF_NAME,
    BEGIN_LINE,
    MARKER_NAME,
    SIGNAL_NAME,
    FenceReason,
    fence,
    fence_state,
    unfence,
)
from logship.engines.postgresql.postmaster import pid_file, processes_in
from logship.errors import SafetyRefusal

REASON = FenceReason("main-db", "failover", "dr", 2)
#: settings a standby logship restored, or the user, left in postgresql.auto.conf:
#: the fence must win over each of them
LEFT_OVER = {
    "restore_command": "'cp /nowhere/%f %p'",
    "primary_conninfo": "'host=127.0.0.1 port=1'",
    "hot_standby": "'off'",
    "recovery_target_time": "'2000-01-01 00:00:00+00'",
    "recovery_target_action": "'promote'",
}


@pytest.fixture
def cluster(reachable_dir: Path, pg_user: OsUser) -> Iterator[PgCluster]:
    """A stopped former primary holding one table with one row."""
    pg = PgCluster(reachable_dir / "data", free_port(), pg_user)
    try:
        pg.initdb()
        pg.start()
        pg.execute("CREATE TABLE ticks (id int PRIMARY KEY); INSERT INTO ticks VALUES (1)")
        pg.stop()
        yield pg
    finally:
        pg.destroy()


def _wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _auto_conf(pg: PgCluster) -> bytes:
    return (pg.data_dir / AUTO_CONF_NAME).read_bytes()


def test_a_fenced_old_primary_started_by_hand_refuses_writes_and_says_why(
    cluster: PgCluster,
) -> None:
    with open(cluster.data_dir / AUTO_CONF_NAME, "a") as conf:
        conf.writelines(f"{name} = {value}\n" for name, value in LEFT_OVER.items())
    fence(cluster.data_dir, REASON)
    cluster.start()  # pg_ctl start, as someone would by hand
    assert cluster.query("SELECT pg_is_in_recovery()") == [(True,)]
    assert cluster.query("SELECT id FROM ticks") == [(1,)]  # the old data stays readable
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction, match="read-only transaction"):
        cluster.execute("INSERT INTO ticks VALUES (2)")
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        cluster.execute("CREATE TABLE other (id int)")
    _wait_for(
        lambda: "`logship reinstate main-db`" in cluster.log_text(),
        30,
        "the fence's reason in the server log",
    )
    line = next(li for li in cluster.log_text().splitlines() if "logship fence:" in li)
    assert "site dr is the primary now (timeline 2)" in line
    # No setting left in the file let it promote or follow someone.
    assert cluster.query("SHOW primary_conninfo") == [("",)]
    assert cluster.query("SHOW recovery_target_time") == [("",)]
    assert cluster.query("SELECT pg_is_in_recovery()") == [(True,)]
    state = fence_state(cluster.data_dir)
    assert state is not None and state.intact and state.reason == REASON


def test_fence_refuses_a_running_server(cluster: PgCluster) -> None:
    cluster.start()
    before = _auto_conf(cluster)
    with pytest.raises(SafetyRefusal, match="a PostgreSQL server runs there"):
        fence(cluster.data_dir, REASON)
    assert _auto_conf(cluster) == before
    assert not (cluster.data_dir / SIGNAL_NAME).exists()
    assert not (cluster.data_dir / MARKER_NAME).exists()


def test_a_crashed_primary_with_a_stale_pid_file_is_fenced(cluster: PgCluster) -> None:
    cluster.start()
    found = pid_file(cluster.data_dir)
    assert found is not None
    os.kill(found[0], signal.SIGKILL)  # the postmaster dies; its backends follow
    _wait_for(lambda: not processes_in(cluster.data_dir), 30, "the server's processes to end")
    # PostgreSQL itself takes a zombie for a live postmaster: wait for it to be reaped.
    _wait_for(lambda: not _exists(found[0]), 30, "the dead postmaster to be reaped")
    assert (cluster.data_dir / "postmaster.pid").exists()  # stale, left behind
    fence(cluster.data_dir, REASON)
    cluster.start()  # crash recovery, then recovery that waits for WAL
    assert cluster.query("SELECT pg_is_in_recovery()") == [(True,)]
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        cluster.execute("INSERT INTO ticks VALUES (2)")


def test_unfence_lets_it_start_as_a_primary_with_its_settings_as_they_were(
    cluster: PgCluster,
) -> None:
    before = _auto_conf(cluster)
    names = sorted(p.name for p in cluster.data_dir.iterdir())
    fence(cluster.data_dir, REASON)
    fence(cluster.data_dir, FenceReason("main-db", "switchover", "dr", 3))  # idempotent
    assert _auto_conf(cluster).count(BEGIN_LINE.encode()) == 1
    cluster.start()
    assert cluster.query("SELECT pg_is_in_recovery()") == [(True,)]
    with pytest.raises(SafetyRefusal):
        unfence(cluster.data_dir)  # not while it runs
    cluster.stop()
    assert unfence(cluster.data_dir)
    assert _auto_conf(cluster) == before
    assert sorted(p.name for p in cluster.data_dir.iterdir()) == names
    cluster.start()
    assert cluster.query("SELECT pg_is_in_recovery()") == [(False,)]
    cluster.execute("INSERT INTO ticks VALUES (2)")


def test_alter_system_on_a_fenced_server_keeps_the_fence_and_unfence_keeps_its_setting(
    cluster: PgCluster,
) -> None:
    fence(cluster.data_dir, REASON)
    cluster.start()
    # ALTER SYSTEM works in recovery; it rewrites postgresql.auto.conf without comments.
    cluster.execute("ALTER SYSTEM SET work_mem = '7MB'")
    assert BEGIN_LINE.encode() not in _auto_conf(cluster)
    cluster.stop()
    state = fence_state(cluster.data_dir)
    assert state is not None and state.intact
    cluster.start()
    assert cluster.query("SELECT pg_is_in_recovery()") == [(True,)]
    cluster.stop()
    unfence(cluster.data_dir)
    assert b"logship fence" not in _auto_conf(cluster)
    cluster.start()
    assert cluster.query("SELECT pg_is_in_recovery(), current_setting('work_mem')") == [
        (False, "7MB")
    ]
