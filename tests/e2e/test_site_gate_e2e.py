"""End to end through a restricted shipping key: pgbench on the primary, the
daemon and a base backup shipping only through `site-gate` / `site-receive`
(real sshd, no SFTP for that key), the standby replaying what arrived."""

from __future__ import annotations

import json
import os
import stat
from typing import Any

from logship.demo_sandbox.deployment import Deployment, wait_for


def test_pgbench_ships_to_a_restricted_site_and_is_replayed(restricted: Deployment) -> None:
    dep = restricted
    authorized = dep.sshd.authorized_keys.read_text()
    assert authorized.startswith('restrict,command="') and "site-gate --site dr" in authorized
    dep.standby_up()  # the base backup goes through site-receive too
    dep.start_daemon()
    dep.primary.pgbench("-i", "-s", "4", "-q")
    dep.primary.pgbench("-c", "4", "-j", "2", "-T", "8", "-n")
    lsn = dep.switch_wal()
    dep.wait_replayed(lsn, timeout=180)
    sql = (
        "select (select count(*) from pgbench_history),"
        " (select sum(abalance) from pgbench_accounts)"
    )
    primary = dep.primary.query(sql)
    assert primary[0][0] > 0
    assert dep.standby.query(sql) == primary
    # Everything shipped is final: read-only, linked once, no temp left over.
    wal = dep.incoming / dep.connector / "wal"
    names = os.listdir(wal)
    assert names and not [n for n in names if n.startswith(".tmp.")]
    for name in names:
        info = (wal / name).lstat()
        assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o400, name
    # The daemon measured the standby through the gate (`standby status`).
    entry = wait_for(lambda: _with_apply_lag(dep), 60, "apply lag measured")
    assert 0 <= entry["apply_lag_s"] < 60 and entry["standby_measured_at"]
    # Nothing in the daemon's log says restricted mode refused it something.
    assert "refused" not in dep.daemon_log.read_text(errors="replace")
    assert dep.stop_daemon() == 0


def _with_apply_lag(dep: Deployment) -> dict[str, Any] | None:
    (entry,) = json.loads(dep.logship("status", "--json").stdout)["connectors"]
    return entry if entry["apply_lag_s"] is not None else None
