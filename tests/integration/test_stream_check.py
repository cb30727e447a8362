"""`check` with [streaming] enabled, against a real primary and a real sshd: the
forward the site allows, the primary's replication settings, and a login through
the tunnel as the standby's walreceiver would make it."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_run import check_lines, explain, logship
from psycopg.conninfo import make_conninfo

from logship.demo_sandbox.deployment import REPLICATION_ROLE, Deployment, wait_for
from logship.demo_sandbox.osuser import OsUser

pytestmark = pytest.mark.slow  # left out of the fast subset (README)

STREAM_LINES = (
    "stream-primary",
    "wal_senders",
    "replication_slots",
    "max_slot_wal_keep_size",
    "replication-role",
    "stream-forward",
    "stream-login",
    "stream-password",
)


@pytest.fixture
def streaming(reachable_dir: Path, pg_user: OsUser) -> Iterator[Deployment]:
    dep = Deployment(reachable_dir / "deploy", pg_user, streaming=True, synchronous=True)
    try:
        dep.build_primary()
        yield dep
    finally:
        dep.teardown()


def _fails(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [line for line in result.stdout.splitlines() if line.startswith("fail")]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _hba_first(dep: Deployment, rule: str) -> None:
    hba = dep.primary.data_dir / "pg_hba.conf"
    hba.write_text(rule + "\n" + hba.read_text(encoding="utf-8"), encoding="utf-8")
    dep.primary.execute("select pg_reload_conf()")


def every_stream_line_ok(dep: Deployment) -> dict[str, str]:
    """`check` passes, each streaming line included; its lines by name."""
    result = logship(dep.config_path, "check")
    assert result.returncode == 0, explain(result)
    lines = check_lines(result)
    for check in (*STREAM_LINES, "synchronous"):
        assert lines.get(f"{check} {dep.connector}", "").startswith("ok "), (
            f"{check}\n{explain(result)}"
        )
    return lines


def test_check_proves_the_forward_the_settings_and_the_login(streaming: Deployment) -> None:
    dep = streaming
    lines = every_stream_line_ok(dep)
    assert "(the primary)" in lines[f"stream-login {dep.connector}"]
    assert "without its password is refused" in lines[f"stream-password {dep.connector}"]
    # The check's own forward is gone: the port is free for the daemon.
    assert not _listening(dep.stream_port)


def test_check_passes_while_the_running_daemon_holds_the_port(streaming: Deployment) -> None:
    dep = streaming
    dep.start_daemon()
    wait_for(lambda: _listening(dep.stream_port), 60, "the daemon's tunnel listening at the site")
    result = logship(dep.config_path, "check")
    assert result.returncode == 0, explain(result)
    lines = check_lines(result)
    forward = lines[f"stream-forward {dep.connector}"]
    assert forward.startswith("ok ") and "already listened on" in forward, explain(result)
    assert lines[f"stream-login {dep.connector}"].startswith("ok "), explain(result)
    # The daemon made its slot, within the bound it set.
    slots = lines[f"replication_slots {dep.connector}"]
    assert slots.startswith("ok slot logship_main holds"), explain(result)


def test_check_passes_with_the_standby_streaming_in_synchronous_mode(
    streaming: Deployment,
) -> None:
    dep = streaming
    dep.start_daemon()
    dep.standby_up()
    wait_for(
        lambda: dep.primary.query("show synchronous_standby_names") == [("logship_main",)],
        90,
        "the standby streaming and synchronous mode in force",
    )
    lines = every_stream_line_ok(dep)
    assert "this standby's" in lines[f"wal_senders {dep.connector}"]
    assert "(this standby)" in lines[f"synchronous {dep.connector}"]


def test_check_fails_clearly_when_the_site_forbids_forwarding(streaming: Deployment) -> None:
    dep = streaming
    dep.sshd.allow_tcp_forwarding("no")
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    failed = _fails(result)
    assert len(failed) == 1, explain(result)
    assert failed[0].startswith(f"fail stream-forward {dep.connector}: "), explain(result)
    assert "AllowTcpForwarding remote" in failed[0]
    assert f"127.0.0.1:{dep.stream_port}" in failed[0]
    # Nothing to log in through: no claim about the role either way.
    assert f"stream-login {dep.connector}" not in check_lines(result)


def test_a_replication_role_that_needs_no_password_is_warned_of(streaming: Deployment) -> None:
    dep = streaming
    _hba_first(dep, f"host replication {REPLICATION_ROLE} 127.0.0.1/32 trust")
    result = logship(dep.config_path, "check")
    assert result.returncode == 0, explain(result)
    line = check_lines(result)[f"stream-password {dep.connector}"]
    assert line.startswith("warn ") and "WITHOUT a password" in line, explain(result)
    assert f"127.0.0.1:{dep.stream_port}" in line


def test_a_wrong_password_fails_with_what_to_fix(streaming: Deployment) -> None:
    dep = streaming
    dep.replication_passfile.write_text(f"*:*:*:{REPLICATION_ROLE}:not-the-password\n")
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    line = check_lines(result)[f"stream-login {dep.connector}"]
    assert line.startswith("fail ") and "password authentication failed" in line, explain(result)
    assert str(dep.replication_passfile) in line


def test_a_passfile_libpq_would_ignore_fails_with_the_chmod(streaming: Deployment) -> None:
    dep = streaming
    dep.replication_passfile.chmod(0o644)
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    line = check_lines(result)[f"stream-login {dep.connector}"]
    assert line.startswith("fail ") and "chmod 600" in line, explain(result)


def test_a_missing_pg_hba_line_fails_with_the_line_to_add(streaming: Deployment) -> None:
    dep = streaming
    _hba_first(dep, f"host replication {REPLICATION_ROLE} 127.0.0.1/32 reject")
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    line = check_lines(result)[f"stream-login {dep.connector}"]
    assert line.startswith("fail "), explain(result)
    assert f"host replication {REPLICATION_ROLE} 127.0.0.1/32 scram-sha-256" in line


def _listeners(port: int) -> set[str]:
    """The local addresses (hex, as /proc shows them) listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as rows:
            next(rows)
            for row in rows:
                local, state = row.split()[1], row.split()[3]
                address, _, hex_port = local.partition(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def test_the_tunnel_listens_on_the_sites_loopback_only(streaming: Deployment) -> None:
    dep = streaming
    dep.start_daemon()
    wait_for(lambda: _listeners(dep.stream_port), 60, "the daemon's tunnel listening at the site")
    # 127.0.0.1 in /proc's byte order; no wildcard or other address beside it.
    assert _listeners(dep.stream_port) == {"0100007F"}


@pytest.fixture
def restricted_streaming(reachable_dir: Path, pg_user: OsUser) -> Iterator[Deployment]:
    """Streaming to a restricted site: the key's forced command is site-gate, and
    `permitlisten` gives it the tunnel's port and no other."""
    dep = Deployment(reachable_dir / "deploy", pg_user, streaming=True, restricted=True)
    try:
        dep.build_primary()
        yield dep
    finally:
        dep.teardown()


def test_check_logs_in_through_a_restricted_sites_gate(restricted_streaming: Deployment) -> None:
    dep = restricted_streaming
    result = logship(dep.config_path, "check")
    assert result.returncode == 0, explain(result)
    lines = check_lines(result)
    for check in (*STREAM_LINES, "stream-key"):
        assert lines.get(f"{check} {dep.connector}", "").startswith("ok "), (
            f"{check}\n{explain(result)}"
        )


def test_a_restricted_key_that_may_open_connections_from_the_site_fails(
    restricted_streaming: Deployment,
) -> None:
    dep = restricted_streaming
    dep.sshd.allow_tcp_forwarding("yes")  # local forwarding too: the site's default
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    failed = _fails(result)
    assert len(failed) == 1, explain(result)
    assert failed[0].startswith(f"fail stream-key {dep.connector}: "), explain(result)
    assert "AllowTcpForwarding remote" in failed[0]


def test_a_restricted_key_without_permitlisten_fails_with_the_key_option(
    restricted_streaming: Deployment,
) -> None:
    dep = restricted_streaming
    # The same forced command, without the key's leave to listen.
    found = re.search(r'command="([^"]+)"', dep.sshd.authorized_keys.read_text())
    assert found is not None
    dep.sshd.restrict_client_key(found.group(1))
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    failed = _fails(result)
    assert len(failed) == 1 and "stream-forward" in failed[0], explain(result)
    assert f'permitlisten="127.0.0.1:{dep.stream_port}"' in failed[0]


def test_a_primary_role_that_may_not_steer_the_primary_fails_with_the_grants(
    streaming: Deployment,
) -> None:
    dep = streaming
    dep.primary.execute(
        "create role logship_daemon login; grant pg_read_all_settings to logship_daemon"
    )
    connector_file = dep.config_dir / "connectors" / f"{dep.connector}.toml"
    dsn = dep.primary.dsn()
    weaker = make_conninfo(dsn, user="logship_daemon")
    connector_file.write_text(
        connector_file.read_text().replace(f'dsn = "{dsn}"', f'dsn = "{weaker}"')
    )
    result = logship(dep.config_path, "check")
    assert result.returncode == 1, explain(result)
    lines = check_lines(result)
    assert "not a superuser" in lines[f"stream-primary {dep.connector}"], explain(result)
    bound = lines[f"max_slot_wal_keep_size {dep.connector}"]
    assert bound.startswith("fail ") and "ALTER SYSTEM SET max_slot_wal_keep_size" in bound
    sync = lines[f"synchronous {dep.connector}"]
    assert sync.startswith("fail ") and "GRANT ALTER SYSTEM ON PARAMETER" in sync, explain(result)
    # The grants the lines name are enough.
    dep.primary.execute(
        "grant alter system on parameter synchronous_standby_names, max_slot_wal_keep_size "
        "to logship_daemon; grant execute on function pg_reload_conf() to logship_daemon"
    )
    lines = check_lines(logship(dep.config_path, "check"))
    assert lines[f"max_slot_wal_keep_size {dep.connector}"].startswith("ok "), lines
    assert lines[f"synchronous {dep.connector}"].startswith("ok "), lines
