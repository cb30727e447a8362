"""A password in a DSN never reaches the daemon's log, `status` or `check`."""

from __future__ import annotations

import pytest
from site_checks import all_shipped

from logship.demo_sandbox.deployment import Deployment, wait_for

SECRET = "pw-Zq81xK-secret"


def _with_password(dep: Deployment, port: int | None = None) -> None:
    """The connector's DSNs carry a password (trust auth ignores it); `port`
    points the primary's at a port where nothing listens, so that errors, which
    quote the connection, are printed too."""
    dep.write_config()
    path = dep.config_dir / "connectors" / f"{dep.connector}.toml"
    text = path.read_text()
    for dsn in (dep.primary.dsn(), dep.standby.dsn()):
        changed = f"{dsn} password={SECRET}"
        if port is not None and dsn == dep.primary.dsn():
            changed = changed.replace(f"port={dep.primary.port}", f"port={port}")
        text = text.replace(f'dsn = "{dsn}"', f'dsn = "{changed}"')
    assert text.count(SECRET) == 2
    path.write_text(text)


@pytest.mark.e2e
def test_no_password_from_a_dsn_reaches_logs_status_or_check(deployment: Deployment) -> None:
    dep = deployment
    _with_password(dep)
    dep.start_daemon()
    dep.primary.execute("create table written as select 1 as x")
    dep.switch_wal()
    wait_for(lambda: all_shipped(dep), 60, "a segment shipped")
    said = [
        dep.logship("status", "--json", check=False),
        dep.logship("status", check=False),
        dep.logship("check", check=False),
    ]
    dep.stop_daemon()
    _with_password(dep, port=1)  # the primary does not answer: errors name the connection
    said += [dep.logship("check", check=False), dep.logship("mark", dep.connector, check=False)]
    for result in said:
        assert SECRET not in result.stdout + result.stderr, result.args
    assert SECRET not in dep.daemon_log.read_text()
