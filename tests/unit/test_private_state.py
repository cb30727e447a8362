"""logship's own files are its user's alone, whatever the caller's umask: state_dir
0700 and the SQLite catalog 0600, and the daemon tightens looser ones it finds.

Each verb runs through the real CLI, in a child started with umask 022 (what a
login shell or cron usually has).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import cli_run

from logship.catalog.store import Catalog
from logship.demo_sandbox import free_port
from logship.demo_sandbox.deployment import wait_for

SEGMENT = "000000010000000000000003"
LOOSE_UMASK = 0o022


def _config(root: Path) -> Path:
    (root / "connectors").mkdir()
    path = root / "logship.toml"
    path.write_text(
        f"""[logship]
state_dir = "{root / "state"}"

[sites.dr]
host = "127.0.0.1"
port = {free_port()}
user = "logship"
identity_file = "{root / "id"}"
known_hosts = "{root / "known_hosts"}"
root = "/srv/incoming"
connect_timeout = "2s"
"""
    )
    (root / "connectors" / "orders.toml").write_text(
        f"""kind = "postgresql"
site = "dr"
rpo = "60s"
[primary]
dsn = "host=127.0.0.1 port=1 connect_timeout=2"
[standby]
dsn = "host=127.0.0.1 port=2"
data_dir = "{root / "standby"}"
"""
    )
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _logship(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return cli_run.logship(config, *args, env=dict(os.environ), cwd="/", umask=LOOSE_UMASK)


def test_archive_wal_first_makes_a_private_state_dir(tmp_path: Path) -> None:
    config = _config(tmp_path)
    wal = tmp_path / "pg_wal" / SEGMENT
    wal.parent.mkdir()
    wal.write_bytes(b"x" * 1024)
    done = _logship(config, "archive-wal", "orders", str(wal))
    assert done.returncode == 0, done.stderr
    state = tmp_path / "state"
    assert _mode(state) == 0o700
    assert _mode(state / "spool") == 0o700
    assert _mode(state / "spool" / "orders") == 0o700


def test_a_catalog_made_by_a_verb_is_private(tmp_path: Path) -> None:
    config = _config(tmp_path)
    # retention opens (creates) the catalog, then cannot reach the site.
    done = _logship(config, "retention", "orders")
    assert done.returncode != 0
    catalog = tmp_path / "state" / "catalog.db"
    assert catalog.is_file(), done.stderr
    assert _mode(catalog) == 0o600
    assert _mode(tmp_path / "state") == 0o700


def test_daemon_tightens_a_loose_state_dir_and_catalog(tmp_path: Path) -> None:
    config = _config(tmp_path)
    daemon_log = tmp_path / "daemon.log"
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    # A catalog an older logship made under umask 022.
    old = os.umask(LOOSE_UMASK)
    try:
        Catalog(f"sqlite:///{state / 'catalog.db'}").close()
    finally:
        os.umask(old)
    catalog = state / "catalog.db"
    assert _mode(catalog) == 0o644
    with open(daemon_log, "wb") as log:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "logship", "--config", str(config), "run"],
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            umask=LOOSE_UMASK,
        )
    try:
        wait_for(lambda: b'"started"' in daemon_log.read_bytes(), 60, "the daemon to start")
        assert _mode(state) == 0o700
        assert _mode(catalog) == 0o600
        text = daemon_log.read_text()
        assert "tightened permissions" in text
        assert str(catalog) in text
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
