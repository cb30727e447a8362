"""A local port forward through a real sshd to a real PostgreSQL: libpq programs
here reach the cluster "at the site" through the SSH link, several at once; a far
end that refuses closes only that connection, cleanly; closing the forward leaves
no thread and no listener behind, and the SSH connection its owner's."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import psycopg
import pytest
from sshd_site import reachable_tmp, running_sshd, site_config

from logship.config.model import SiteConfig
from logship.demo_sandbox import OsUser, PgCluster, free_port
from logship.demo_sandbox.postgres import DEFAULT_BIN_DIR
from logship.errors import OperationFailed
from logship.ship.sftp import open_client
from logship.ship.ssh_forward import LocalForward, local_forward

LABEL = "site dr"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PgCluster]:
    base = reachable_tmp("logship-forward-pg-")
    pg = PgCluster(base / "data", free_port(), OsUser.for_postgres())
    try:
        pg.initdb()
        pg.start()
        yield pg
    finally:
        pg.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def site() -> Iterator[SiteConfig]:
    """A real sshd on loopback, as a site logship connects to."""
    with running_sshd("logship-forward-", OsUser.for_postgres()) as (base, sshd):
        yield site_config(sshd, base)


@pytest.fixture(scope="module")
def client(site: SiteConfig) -> Iterator[paramiko.SSHClient]:
    """An SSH connection to the site, opened as logship opens one."""
    ssh = open_client(site)
    try:
        yield ssh
    finally:
        ssh.close()


def _connect(port: int, user: str, timeout: int = 10) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host="127.0.0.1",
        port=port,
        user=user,
        dbname="postgres",
        autocommit=True,
        connect_timeout=timeout,
    )


def _forward_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("forward-")]


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def test_psycopg_and_psql_reach_the_far_cluster_through_the_forward(
    client: paramiko.SSHClient, cluster: PgCluster
) -> None:
    user = cluster.user.name
    with local_forward(client, "127.0.0.1", cluster.port, label=LABEL) as port:
        assert port != cluster.port
        with _connect(port, user) as conn:
            # sshd at the site made the connection: the server sees its loopback.
            row = conn.execute(
                "SELECT inet_client_addr()::text, current_setting('port')"
            ).fetchone()
            assert row == ("127.0.0.1/32", str(cluster.port))
            # A result of several MB passes whole.
            started = time.monotonic()
            total = conn.execute(
                "SELECT count(*), sum(length(s)) FROM "
                "(SELECT repeat('x', 100) || g AS s FROM generate_series(1, 50000) g) t"
            ).fetchone()
            rows = conn.execute(
                "SELECT repeat('x', 100) || g FROM generate_series(1, 50000) g"
            ).fetchall()
            elapsed = time.monotonic() - started
            assert total is not None and len(rows) == total[0] == 50000
            assert sum(len(r[0]) for r in rows) == total[1]
            print(f"50000 rows ({total[1]} bytes) through the forward in {elapsed:.2f}s")
        psql = subprocess.run(
            [
                str(DEFAULT_BIN_DIR / "psql"),
                "-X",
                "-At",
                "-c",
                "SELECT 6 * 7",
                f"host=127.0.0.1 port={port} user={user} dbname=postgres",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert (psql.returncode, psql.stdout.strip()) == (0, "42"), psql.stderr


def test_two_connections_at_once_are_two_sessions(
    client: paramiko.SSHClient, cluster: PgCluster
) -> None:
    user = cluster.user.name
    transport = client.get_transport()
    assert transport is not None
    with (
        LocalForward(transport, "127.0.0.1", cluster.port, label=LABEL) as forward,
        _connect(forward.local_port, user) as first,
        _connect(forward.local_port, user) as second,
    ):
        assert forward.active == 2
        # The first holds a lock the second cannot take: two live sessions, each
        # answering on its own connection while the other is open.
        assert first.execute("SELECT pg_try_advisory_lock(7)").fetchone() == (True,)
        assert second.execute("SELECT pg_try_advisory_lock(7)").fetchone() == (False,)
        pids = {c.execute("SELECT pg_backend_pid()").fetchone() for c in (first, second)}
        assert len(pids) == 2


def test_closing_the_forward_ends_its_connections_threads_and_listener(
    client: paramiko.SSHClient, cluster: PgCluster
) -> None:
    user = cluster.user.name
    transport = client.get_transport()
    assert transport is not None
    before = _forward_threads()
    forward = LocalForward(transport, "127.0.0.1", cluster.port, label=LABEL)
    port = forward.open()
    conn = _connect(port, user)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert _forward_threads() != before
    forward.close()
    assert _forward_threads() == before
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")  # its connection was ended with the forward
    conn.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    # The SSH connection is still its owner's, and serves the next forward.
    assert transport.is_active()
    with (
        local_forward(client, "127.0.0.1", cluster.port, label=LABEL) as again,
        _connect(again, user) as conn,
    ):
        assert conn.execute("SELECT 2").fetchone() == (2,)
    assert _forward_threads() == before


def test_a_far_end_that_refuses_closes_that_connection_cleanly_and_the_forward_serves_on(
    client: paramiko.SSHClient, cluster: PgCluster
) -> None:
    user = cluster.user.name
    transport = client.get_transport()
    assert transport is not None
    closed_port = free_port()  # nothing listens there
    with (
        LocalForward(transport, "127.0.0.1", closed_port, label=LABEL) as nowhere,
        LocalForward(transport, "127.0.0.1", cluster.port, label=LABEL) as forward,
    ):
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="closed the connection"):
            _connect(nowhere.local_port, user)
        assert time.monotonic() - started < 5  # an answer, not a timeout
        _wait_for(lambda: nowhere.errors, 5, "the refusal to be noted")
        assert "refused at the far end" in nowhere.errors[0]
        assert f"127.0.0.1:{closed_port}" in nowhere.errors[0]
        _wait_for(lambda: nowhere.active == 0, 5, "the refused connection to be forgotten")
        # Other forwards on the same SSH connection are untouched.
        with _connect(forward.local_port, user) as conn:
            assert conn.execute("SELECT 3").fetchone() == (3,)
        # The far server gone and back: refused meanwhile, served again after.
        cluster.stop()
        try:
            with pytest.raises(psycopg.OperationalError):
                _connect(forward.local_port, user)
        finally:
            cluster.start()
        with _connect(forward.local_port, user) as conn:
            assert conn.execute("SELECT 4").fetchone() == (4,)
        assert transport.is_active()


def test_a_lost_ssh_connection_ends_the_forwarded_connections_cleanly(
    site: SiteConfig, cluster: PgCluster
) -> None:
    own = open_client(site)
    transport = own.get_transport()
    assert transport is not None
    before = _forward_threads()
    try:
        with LocalForward(transport, "127.0.0.1", cluster.port, label=LABEL) as forward:
            conn = _connect(forward.local_port, cluster.user.name)
            assert conn.execute("SELECT 7").fetchone() == (7,)
            own.close()  # the link is gone
            with pytest.raises(psycopg.OperationalError):
                conn.execute("SELECT 8")
            conn.close()
            _wait_for(lambda: forward.active == 0, 10, "the connection to be forgotten")
            # A new connection is closed at once, and says why in the forward's errors.
            with pytest.raises(psycopg.OperationalError):
                _connect(forward.local_port, cluster.user.name)
            _wait_for(lambda: forward.errors, 5, "the failure to be noted")
            assert "the SSH connection failed" in forward.errors[-1]
    finally:
        own.close()
    assert _forward_threads() == before


def test_connections_beyond_the_bound_are_closed(
    client: paramiko.SSHClient, cluster: PgCluster
) -> None:
    user = cluster.user.name
    transport = client.get_transport()
    assert transport is not None
    with LocalForward(
        transport, "127.0.0.1", cluster.port, label=LABEL, max_connections=1
    ) as forward:
        with _connect(forward.local_port, user) as first:
            with pytest.raises(psycopg.OperationalError):
                _connect(forward.local_port, user)
            assert "more than 1 connections at once" in forward.errors[-1]
            assert first.execute("SELECT 5").fetchone() == (5,)
        _wait_for(lambda: forward.active == 0, 5, "the first connection to end")
        with _connect(forward.local_port, user) as conn:
            assert conn.execute("SELECT 6").fetchone() == (6,)


def test_a_forward_on_a_unix_socket_lets_only_the_folders_owner_in(
    client: paramiko.SSHClient, cluster: PgCluster, pg_user: OsUser
) -> None:
    """The far PostgreSQL sees every forwarded connection come from its loopback:
    on a Unix socket in a private folder, no other local user can make one."""
    base = reachable_tmp("logship-forward-sock-")
    try:
        folder = base / "s"
        folder.mkdir(mode=0o700)
        pg_user.chown(folder)  # the user pg_rewind or psql runs as
        with local_forward(
            client, "127.0.0.1", cluster.port, label=LABEL, socket_dir=folder
        ) as port:
            assert port == cluster.port
            socket_path = folder / f".s.PGSQL.{port}"
            assert socket_path.is_socket()
            psql = [str(DEFAULT_BIN_DIR / "psql"), "-X", "-At", "-c", "SELECT inet_client_addr()"]
            dsn = f"host={folder} port={port} user={pg_user.name} dbname=postgres"
            shown = pg_user.run([*psql, dsn], cwd=base)
            assert shown.stdout.strip() == "127.0.0.1"  # a TCP client at the far site
            stranger = subprocess.run(
                ["runuser", "-u", "nobody", "--", *psql, dsn],
                cwd=base,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert stranger.returncode != 0
            assert "Permission denied" in stranger.stderr
        assert not socket_path.exists()
        open_folder = base / "open"
        open_folder.mkdir()
        open_folder.chmod(0o755)
        with (
            pytest.raises(OperationFailed, match="only its owner may enter"),
            local_forward(client, "127.0.0.1", 5432, label=LABEL, socket_dir=open_folder),
        ):
            pass
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_host_to_forward_to_is_checked(client: paramiko.SSHClient, tmp_path: Path) -> None:
    transport = client.get_transport()
    assert transport is not None
    for host in ("", "a b", "host\n", "$(id)", "x" * 254):
        with pytest.raises(OperationFailed, match="is not a host to forward to"):
            LocalForward(transport, host, 5432, label=LABEL)
    for port in (0, 65536, True, "5432"):
        with pytest.raises(OperationFailed, match="is not a TCP port"):
            LocalForward(transport, "127.0.0.1", port, label=LABEL)  # type: ignore[arg-type]
