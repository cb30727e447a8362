"""Real PostgreSQL clusters and sshd servers from logship.demo_sandbox (no mocks)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sshd_site import reachable_tmp

from logship.demo_sandbox import OsUser, PgCluster, SshServer, free_port
from logship.demo_sandbox.osuser import is_root
from logship.demo_sandbox.postgres import quote_conf_value


@pytest.fixture
def tmp_dir() -> Iterator[Path]:
    path = reachable_tmp("logship-sandbox-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_user() -> OsUser:
    return OsUser.for_postgres()


@pytest.fixture(scope="module")
def cluster(pg_user: OsUser) -> Iterator[PgCluster]:
    base = reachable_tmp("logship-sandbox-pg-")
    pg = PgCluster(base / "pg" / "data", free_port(), pg_user)
    try:
        pg.initdb()
        pg.configure({"cluster_name": "it's a \\ test"})
        pg.start()
        yield pg
    finally:
        pg.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def sshd(tmp_dir: Path, pg_user: OsUser) -> Iterator[SshServer]:
    with SshServer(tmp_dir / "ssh", pg_user) as server:
        yield server


def _ssh_true(server: SshServer, user: OsUser) -> subprocess.CompletedProcess[str]:
    cmd = [
        *user.command_prefix(),
        "ssh",
        "-i",
        str(server.client_key),
        "-o",
        f"UserKnownHostsFile={server.known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        "-p",
        str(server.port),
        f"{user.name}@{server.host}",
        "true",
    ]
    return subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False
    )


# -- osuser / ports ----------------------------------------------------------------------


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_command_prefix(pg_user: OsUser) -> None:
    if is_root():
        assert pg_user.name == "postgres"
        assert pg_user.command_prefix() == ["runuser", "-u", "postgres", "--"]
        assert OsUser.from_name("root").command_prefix() == []
    else:
        assert pg_user.command_prefix() == []


def test_can_reach_follows_ancestor_modes(tmp_dir: Path, pg_user: OsUser) -> None:
    inner = tmp_dir / "closed" / "inner"
    inner.mkdir(parents=True)
    (inner / "file").write_text("x")
    assert pg_user.can_reach(tmp_dir)
    (tmp_dir / "closed").chmod(0o755)
    assert pg_user.can_reach(inner / "file")
    assert not pg_user.can_reach(tmp_dir / "missing")
    if pg_user.uid != 0 and pg_user.uid != os.stat(tmp_dir).st_uid:
        (tmp_dir / "closed").chmod(0o700)
        assert not pg_user.can_reach(inner / "file")
        assert not pg_user.can_reach(tmp_dir / "closed")
        pg_user.chown(tmp_dir / "closed")
        assert pg_user.can_reach(inner / "file")


# -- postgres ----------------------------------------------------------------------------


def test_quote_conf_value() -> None:
    assert quote_conf_value("plain") == "'plain'"
    assert quote_conf_value("it's") == "'it''s'"
    assert quote_conf_value("a\\b") == "'a\\\\b'"
    with pytest.raises(ValueError, match="newline"):
        quote_conf_value("two\nlines")


def test_cluster_answers_queries(cluster: PgCluster) -> None:
    assert cluster.is_running()
    assert cluster.query("select 1") == [(1,)]
    assert cluster.query("select %s::int + 1", (41,)) == [(42,)]
    assert cluster.query("show data_checksums") == [("on",)]
    assert cluster.query("show wal_level") == [("replica",)]
    assert cluster.query("show cluster_name") == [("it's a \\ test",)]
    assert cluster.query("select current_user") == [(cluster.user.name,)]
    assert f"port={cluster.port}" in cluster.dsn()


def test_cluster_socket_dsn(cluster: PgCluster) -> None:
    with psycopg.connect(cluster.socket_dsn(), autocommit=True) as conn:
        row = conn.execute("select inet_server_addr() is null").fetchone()
    # A Unix-socket connection has no server address.
    assert row == (True,)


def test_cluster_execute_and_wait_until(cluster: PgCluster) -> None:
    cluster.execute("create table t_wait (x int); insert into t_wait values (1)")
    cluster.wait_until("select count(*) = 1 from t_wait", timeout=10)
    with pytest.raises(TimeoutError):
        cluster.wait_until("select false", timeout=0.3)


def test_pgbench(cluster: PgCluster) -> None:
    cluster.pgbench("-i", "-s", "1", "-q")
    assert cluster.query("select count(*) from pgbench_accounts") == [(100000,)]
    result = cluster.pgbench("-t", "20", "-c", "2", "-n")
    assert "number of transactions actually processed: 40" in result.stdout


def test_pgbench_failure_reports_stderr(cluster: PgCluster) -> None:
    with pytest.raises(RuntimeError, match="no_such_db"):
        cluster.pgbench("-i", "no_such_db")


def test_cluster_log(cluster: PgCluster) -> None:
    assert "database system is ready to accept connections" in cluster.log_text()


def test_cluster_context_manager_cleans_up(tmp_dir: Path, pg_user: OsUser) -> None:
    data_dir = tmp_dir / "cm" / "data"
    with PgCluster(data_dir, free_port(), pg_user) as pg:
        assert pg.is_running()
        assert pg.query("select 2") == [(2,)]
        assert (data_dir.parent / "sock").is_dir()
    assert not pg.is_running()
    assert not data_dir.exists()
    assert not (tmp_dir / "cm").exists()
    pg.stop()  # stopping a cluster that is gone is not an error


def test_cluster_start_failure_shows_log(tmp_dir: Path, pg_user: OsUser) -> None:
    pg = PgCluster(tmp_dir / "bad" / "data", free_port(), pg_user)
    try:
        pg.initdb()
        pg.configure({"shared_buffers": "not-a-size"})
        with pytest.raises(RuntimeError) as info:
            pg.start(timeout=20)
        message = str(info.value)
        assert "pg_ctl" in message
        assert "shared_buffers" in message
    finally:
        pg.destroy()


# -- sshd --------------------------------------------------------------------------------


def test_ssh_login_and_host_key_rotation(sshd: SshServer, pg_user: OsUser) -> None:
    ok = _ssh_true(sshd, pg_user)
    assert ok.returncode == 0, ok.stderr + sshd.log_text()
    assert "Accepted publickey" in sshd.log_text()

    old_pid = sshd.pid
    sshd.rotate_host_key()
    assert sshd.pid != old_pid
    refused = _ssh_true(sshd, pg_user)
    assert refused.returncode != 0
    assert "Host key verification failed" in refused.stderr, refused.stderr


def test_sshd_files_are_usable_by_login_user(sshd: SshServer, pg_user: OsUser) -> None:
    for path, mode in (
        (sshd.client_key, 0o600),
        (sshd.authorized_keys, 0o600),
        (sshd.known_hosts, 0o644),
    ):
        st = path.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (pg_user.uid, mode), path
    lines = sshd.known_hosts.read_text().splitlines()
    assert lines
    assert all(line.startswith(f"[127.0.0.1]:{sshd.port} ") for line in lines)


def test_sshd_stop_frees_port(tmp_dir: Path, pg_user: OsUser) -> None:
    server = SshServer(tmp_dir / "ssh", pg_user)
    server.start()
    assert server.is_running()
    server.stop()
    assert not server.is_running()
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError):
        sock.connect((server.host, server.port))


def test_missing_sshd_binary(tmp_dir: Path, pg_user: OsUser) -> None:
    server = SshServer(tmp_dir / "ssh", pg_user, sshd=Path("/nonexistent/sshd"))
    with pytest.raises(RuntimeError, match="apt-get install openssh-server"):
        server.start()
