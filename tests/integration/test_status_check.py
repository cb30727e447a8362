"""`status`, `dashboard` and `check` run as the CLI, against a real catalog, a real
PostgreSQL primary and a real sshd (from logship.demo_sandbox)."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import cli_run
import pytest
from cli_run import check_lines, explain
from offline_config import write_offline_config
from status_contract import CONTRACT_FIELDS, MEASURED_FIELDS

from logship.catalog.store import Catalog, NewFile
from logship.demo_sandbox import OsUser
from logship.demo_sandbox.deployment import Deployment
from logship.engines.postgresql.engine import ENGINE
from logship.engines.postgresql.walnames import segment_name

pytestmark = pytest.mark.slow  # left out of the fast subset (README)

REPO = Path(__file__).resolve().parents[2]
SEG = 16 * 1024 * 1024


def _env() -> dict[str, str]:
    env = cli_run.without_config_env()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def logship(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return cli_run.logship(config, *args, timeout=timeout, env=_env())


# -- status ------------------------------------------------------------------------------


@pytest.fixture
def config(reachable_dir: Path) -> Iterator[Path]:
    """Two connectors on one site; nothing runs, so no sshd or PostgreSQL is needed."""
    path = write_offline_config(reachable_dir, make_state=False)
    yield path


def _status_json(config: Path, *args: str) -> dict[str, dict[str, object]]:
    result = logship(config, "status", "--json", *args)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout  # no colour codes for scripts
    document = json.loads(result.stdout)
    assert list(document) == ["connectors"]
    entries = {entry["name"]: entry for entry in document["connectors"]}
    for entry in entries.values():
        assert set(entry) >= set(CONTRACT_FIELDS), entry
    return entries


def test_status_json_before_any_daemon_ran(config: Path) -> None:
    entries = _status_json(config)
    assert sorted(entries) == ["billing", "orders"]
    orders = entries["orders"]
    assert orders["kind"] == "postgresql" and orders["site"] == "dr"
    assert orders["state"] == "ok"
    assert orders["rpo_target_s"] == 60.0 and entries["billing"]["rpo_target_s"] == 300.0
    for unmeasurable in MEASURED_FIELDS:
        assert orders[unmeasurable] is None, unmeasurable
    # status only reads: it must not leave a (root-owned) catalog for the daemon.
    assert not (config.parent / "state").exists()


def test_status_json_with_a_fresh_catalog(config: Path) -> None:
    (config.parent / "state").mkdir(mode=0o700)
    Catalog(f"sqlite:///{config.parent / 'state' / 'catalog.db'}").close()
    orders = _status_json(config, "orders")["orders"]
    assert orders["state"] == "ok"
    assert orders["rpo_exposure_s"] is None
    assert orders["apply_lag_s"] is None
    assert orders["transport_lag_s"] == 0.0
    assert (orders["pending_files"], orders["pending_bytes"]) == (0, 0)
    assert orders["last_shipped"] is None and orders["last_base_backup_at"] is None


def test_status_json_measures_the_catalog(config: Path) -> None:
    (config.parent / "state").mkdir(mode=0o700)
    catalog = Catalog(f"sqlite:///{config.parent / 'state' / 'catalog.db'}")
    now = time.time()
    names = [segment_name(1, n, SEG) for n in range(1, 6)]
    try:
        for age, name in zip((100, 90, 80, 70, 20), names, strict=True):
            new = NewFile("orders", name, ENGINE.ship_order(name), SEG, now - age)
            catalog.add_discovered(new, now)
        rows = {row.name: row for row in catalog.files("orders")}
        for name in names[:2] + names[3:4]:  # 1, 2 and 4 shipped; 3 and 5 pending
            catalog.mark_shipped(rows[name].id, "0" * 64, SEG, now)
        catalog.set_link_state("dr", ["orders", "billing"], True, None, now)
        catalog.start_backup("orders", "b1", now - 3600)
        catalog.finish_backup("orders", "b1", now=now - 3000, size=1, stored_size=1)
    finally:
        catalog.close()

    entries = _status_json(config)
    orders = entries["orders"]
    # Exposure stops at segment 2: segment 3 is not at the site yet.
    assert 90 <= orders["rpo_exposure_s"] < 90 + 60  # type: ignore[operator]
    assert orders["state"] == "breach"
    assert 80 <= orders["transport_lag_s"] < 80 + 60  # type: ignore[operator]
    assert (orders["pending_files"], orders["pending_bytes"]) == (2, 2 * SEG)
    assert orders["last_shipped"] == names[3]
    assert orders["last_applied"] is None
    assert str(orders["last_base_backup_at"]).endswith("Z")
    assert entries["billing"]["pending_files"] == 0  # the catalog exists: 0 is measured

    table = logship(config, "status")
    assert table.returncode == 0, table.stderr
    assert "breach" in table.stdout and names[3] in table.stdout


def test_status_of_an_unknown_connector_is_a_usage_error(config: Path) -> None:
    result = logship(config, "status", "nosuch")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "known: billing, orders" in result.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_dashboard_refreshes_until_ctrl_c(config: Path, sig: int) -> None:
    # A pseudo-terminal, so rich draws live as it does for a person.
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "logship", "--config", str(config), "dashboard"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**_env(), "COLUMNS": "160", "TERM": "xterm"},
        start_new_session=True,
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"billing" not in seen or b"orders" not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no status table drawn: {seen[-2000:]!r}"
            ready, _, _ = select.select([master], [], [], remaining)
            if ready:
                seen += os.read(master, 65536)
        proc.send_signal(sig)
        # Keep reading, as a terminal does: a dashboard whose writes block on a
        # full pty could not finish restoring the screen.
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                with contextlib.suppress(OSError):  # the pty closes with the process
                    os.read(master, 65536)
        assert proc.wait(timeout=1) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


# -- check -------------------------------------------------------------------------------


def test_check_passes_on_a_real_primary_and_sshd(deployment: Deployment) -> None:
    dep = deployment
    result = logship(dep.config_path, "check")
    assert result.returncode == 0, explain(result)
    lines = check_lines(result)
    assert not [line for line in lines.values() if line.startswith("fail")], explain(result)
    for name in (
        "config",
        "state-dir",
        f"spool {dep.connector}",
        "ssh dr",
        "site-root dr",
        f"not-promoted {dep.connector}",
        f"incoming {dep.connector}",
        f"primary {dep.connector}",
        f"wal_level {dep.connector}",
        f"archive_mode {dep.connector}",
        f"archiving {dep.connector}",
        f"archive_timeout {dep.connector}",
        f"spool-owner {dep.connector}",
        f"read-ahead {dep.connector}",
    ):
        assert lines.get(name, "").startswith("ok "), f"{name}\n{explain(result)}"
    assert "set [primary] data_dir" in lines[f"read-ahead {dep.connector}"]
    # The write probe is gone and the spool check created is usable by PostgreSQL.
    assert not [p for p in (dep.incoming / dep.connector).iterdir() if "check" in p.name]
    assert dep.spool_dir.stat().st_uid == dep.user.uid
    assert result.stdout.rstrip().endswith("0 fail")


def test_check_accepts_basic_archive_into_the_spool(reachable_dir: Path, pg_user: OsUser) -> None:
    dep = Deployment(reachable_dir / "deploy", pg_user, archive_via="basic_archive")
    try:
        dep.build_primary()
        result = logship(dep.config_path, "check", dep.connector)
    finally:
        dep.teardown()
    assert result.returncode == 0, explain(result)
    assert check_lines(result)[f"archiving {dep.connector}"].startswith("ok archive_library")


def test_check_judges_the_read_ahead_data_dir(read_ahead: Deployment) -> None:
    dep = read_ahead
    result = logship(dep.config_path, "check", dep.connector)
    assert result.returncode == 0, explain(result)
    line = check_lines(result)[f"read-ahead {dep.connector}"]
    assert line.startswith("ok ships from") and "archive-wal confirms" in line, line

    # Another cluster's folder: the daemon would read WAL that is not this primary's.
    config = dep.config_dir / "connectors" / f"{dep.connector}.toml"
    other = dep.root / "other-pgdata"
    config.write_text(
        config.read_text().replace(f'data_dir = "{dep.primary.data_dir}"', f'data_dir = "{other}"')
    )
    result = logship(dep.config_path, "check", dep.connector)
    assert result.returncode != 0, explain(result)
    line = check_lines(result)[f"read-ahead {dep.connector}"]
    assert line.startswith("fail ") and str(dep.primary.data_dir) in line, line


def test_check_refuses_a_changed_host_key(deployment: Deployment) -> None:
    dep = deployment
    dep.sshd.rotate_host_key()  # the standby "was rebuilt": known_hosts holds other keys
    result = logship(dep.config_path, "check")
    assert result.returncode == 3, explain(result)
    lines = check_lines(result)
    assert lines["ssh dr"].startswith("fail "), explain(result)
    assert "does NOT match" in lines["ssh dr"]
    # Nothing is written to a host that could not be verified.
    assert f"incoming {dep.connector}" not in lines
    assert not (dep.incoming / dep.connector).exists()


def test_check_fails_when_archive_mode_is_off(deployment: Deployment) -> None:
    dep = deployment
    dep.primary.configure({"archive_mode": "off"})
    dep.primary.stop()
    dep.primary.start()
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    failed = [line for line in result.stdout.splitlines() if line.startswith("fail")]
    assert len(failed) == 1, explain(result)
    assert failed[0].startswith(f"fail archive_mode {dep.connector}: archive_mode = off")
