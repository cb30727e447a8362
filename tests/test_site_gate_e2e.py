"""End to end through a restricted shipping key: pgbench on the primary, the
daemon and a base backup shipping only through `site-gate` / `site-receive`
(real sshd, no SFTP for that key), the standby replaying what arrived."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from logship.manifest import ManifestRecord, SiteLayout
from logship.sandbox import OsUser
from logship.sandbox.deployment import Deployment, wait_for
from logship.spool import kept_path

pytestmark = pytest.mark.e2e


@pytest.fixture
def restricted(reachable_dir: Path, pg_user: OsUser) -> Iterator[Deployment]:
    dep = Deployment(reachable_dir / "deploy", pg_user, restricted=True)
    try:
        dep.build_primary()
        yield dep
    finally:
        dep.teardown()


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


def test_a_corrupt_segment_at_a_restricted_site_is_shipped_again_once_set_aside(
    restricted: Deployment,
) -> None:
    dep = restricted
    dep.start_daemon()
    dep.standby_up()
    dep.wait_replayed(dep.switch_wal())
    dep.standby.stop()
    dep.primary.execute("create table marker as select 42 as answer")
    ((segment,),) = dep.primary.query("select pg_walfile_name(pg_current_wal_lsn())")
    lsn = dep.switch_wal()
    layout = SiteLayout.for_connector(dep.incoming, dep.connector)
    record_path = Path(layout.record_path(segment))
    wait_for(record_path.exists, 60, f"{segment} shipped")
    record = ManifestRecord.from_json(record_path.read_bytes())
    stored = Path(layout.wal_dir) / record.stored_name
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))  # bit rot at the site
    wait_for(kept_path(dep.spool_dir, segment).exists, 30, "the shipped copy kept")
    dep.standby.start()
    # The daemon cannot replace the site's copy; restore-wal at the site, refusing
    # it, sets it aside under the site's authority, and the good copy follows as a
    # new file, replayed, with the link up all along.
    dep.wait_replayed(lsn, timeout=120)
    assert dep.standby.query("select answer from marker") == [(42,)]
    quarantine = Path(layout.root) / "quarantine"
    (aside,) = [p for p in quarantine.iterdir() if p.name.endswith(record.stored_name)]
    assert aside.read_bytes() == bytes(data)
    assert stored.read_bytes() != bytes(data)
    assert "link lost" not in dep.daemon_log.read_text(errors="replace")
