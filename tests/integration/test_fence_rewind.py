"""The fence and the forward on reinstate's path, on real PostgreSQL 15 and sshd: a
primary that crashed after a failover and took writes of its own is fenced, then
rewound with pg_rewind from the new primary through a forward over SSH, then
follows it. What this proves about PostgreSQL, for the reinstate that uses them:

- pg_rewind cannot finish a crashed target's recovery while the fence holds
  standby.signal (single-user mode refuses standby mode); starting the fenced
  server once (it recovers read-only) and stopping it cleanly lets it rewind;
- pg_rewind removes the fence (standby.signal, the marker) and copies the new
  primary's postgresql.auto.conf: the rewound directory is fenced again at once,
  and it then holds in recovery, read-only, as a copy of the new primary.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sshd_site import reachable_tmp, running_sshd, site_config

from logship.demo_sandbox import OsUser, PgCluster, free_port
from logship.demo_sandbox.postgres import DEFAULT_BIN_DIR
from logship.engines.postgresql.fence import (
    MARKER_NAME,
    SIGNAL_NAME,
    FenceReason,
    fence,
    fence_state,
    unfence,
)
from logship.ship.sftp import open_client
from logship.ship.ssh_forward import local_forward

pytestmark = pytest.mark.slow  # left out of the fast subset (README)

REASON = FenceReason("main-db", "failover", "dr", 2)


@pytest.fixture
def pair(pg_user: OsUser) -> Iterator[tuple[PgCluster, PgCluster, Path]]:
    """An old primary and a standby of it, promoted: each has taken writes the
    other has not (a real divergence), and the old primary has crashed."""
    base = reachable_tmp("logship-rewind-")
    old = PgCluster(base / "old", free_port(), pg_user)
    new = PgCluster(base / "new", free_port(), pg_user)
    try:
        old.initdb()  # with data checksums: pg_rewind may run
        old.start()
        old.execute(
            "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)"
        )
        new.data_dir.mkdir(mode=0o700)
        pg_user.chown(new.data_dir)
        pg_user.run(
            [
                str(DEFAULT_BIN_DIR / "pg_basebackup"),
                *("-D", str(new.data_dir), "-d", old.dsn(), "-R", "-X", "stream", "-c", "fast"),
            ],
            cwd=base,
        )
        new.configure({"port": str(new.port)})
        new.start()
        new.wait_until("SELECT count(*) = 1000 FROM t")
        new.execute("SELECT pg_promote()")
        new.wait_until("SELECT NOT pg_is_in_recovery()")
        new.execute("INSERT INTO t VALUES (5000)")
        old.execute("INSERT INTO t SELECT generate_series(2001, 2100)")  # to be lost
        old.stop(mode="immediate")
        yield old, new, base
    finally:
        old.destroy()
        new.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_a_crashed_fenced_old_primary_is_rewound_through_the_forward(
    pair: tuple[PgCluster, PgCluster, Path], pg_user: OsUser
) -> None:
    old, new, base = pair
    fence(old.data_dir, REASON)
    # The forward's socket in a folder only pg_rewind's user may enter.
    sockets = base / "forward"
    sockets.mkdir(mode=0o700)
    pg_user.chown(sockets)
    with running_sshd("logship-rewind-ssh-", pg_user) as (site_base, sshd):
        client = open_client(site_config(sshd, site_base))
        try:
            with local_forward(
                client, "127.0.0.1", new.port, label="site dr", socket_dir=sockets
            ) as port:
                rewind = [
                    *pg_user.command_prefix(),
                    str(DEFAULT_BIN_DIR / "pg_rewind"),
                    *("-D", str(old.data_dir), "--source-server"),
                    f"host={sockets} port={port} user={pg_user.name} dbname=postgres",
                ]
                crashed = subprocess.run(
                    rewind, cwd=base, capture_output=True, text=True, timeout=120, check=False
                )
                assert crashed.returncode != 0
                assert "standby mode is not supported by single-user servers" in crashed.stderr
                # Started fenced, it recovers from the crash in recovery (read-only)...
                old.start()
                assert old.query("SELECT pg_is_in_recovery()") == [(True,)]
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    old.execute("INSERT INTO t VALUES (3000)")
                old.stop()  # ...and stops "shut down in recovery", which pg_rewind takes
                started = time.monotonic()
                done = subprocess.run(
                    rewind, cwd=base, capture_output=True, text=True, timeout=300, check=False
                )
                print(f"pg_rewind through the forward: {time.monotonic() - started:.1f}s")
                print(done.stderr.strip().splitlines()[-6:])
                assert done.returncode == 0, done.stderr
        finally:
            client.close()
    # pg_rewind took the fence away with the rest of the old files.
    assert not (old.data_dir / SIGNAL_NAME).exists()
    assert not (old.data_dir / MARKER_NAME).exists()
    assert fence_state(old.data_dir) is None
    # pg_rewind copied the new primary's postgresql.conf too (its port, here).
    old.configure({"port": str(old.port)})
    fence(old.data_dir, REASON)
    old.start()
    assert old.query("SELECT pg_is_in_recovery()") == [(True,)]
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        old.execute("INSERT INTO t VALUES (3000)")
    assert old.query("SELECT count(*) FROM t WHERE id > 2000 AND id < 3000") == [(0,)]
    old.stop()
    # What reinstate does at its end: the fence off, the standby config on.
    assert unfence(old.data_dir)
    (old.data_dir / SIGNAL_NAME).write_text("")
    pg_user.chown(old.data_dir / SIGNAL_NAME)
    with open(old.data_dir / "postgresql.auto.conf", "a") as conf:
        conf.write(f"primary_conninfo = 'host=127.0.0.1 port={new.port} user={pg_user.name}'\n")
    old.start()
    new.execute("INSERT INTO t VALUES (6000)")
    old.wait_until("SELECT count(*) = 1 FROM t WHERE id = 6000")
    assert old.query("SELECT count(*) FROM t") == [(1002,)]
