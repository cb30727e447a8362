"""A restricted site's whole life on the real path: the primary's key is the
`site-gate` forced command in sshd's authorized_keys, and with it the daemon ships
pgbench WAL, a base backup goes through `site-receive`, the daemon's schedule runs
a restore drill at the site through the gate, `retention --at-site` trims the site,
and after the primary is lost `logship promote` at the site succeeds while the
returning daemon reads the PROMOTED marker through the gate and ships nothing more.

The drilled backup's record carries a forged, later start WAL (what a compromised
primary could ship alongside a real backup): retention at the site must still keep
every WAL file that backup needs, from the start its drill actually restored.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from site_probes import site_dir

from logship.demo_sandbox import OsUser
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.engines.postgresql.drill import DrillResult
from logship.manifest import BackupRecord


@pytest.fixture
def restricted(reachable_dir: Path, pg_user: OsUser) -> Iterator[Deployment]:
    # check_dsn: promote at the site can tell that the primary is really down.
    dep = Deployment(reachable_dir / "deploy", pg_user, restricted=True, check_dsn=True)
    try:
        dep.build_primary()
        yield dep
    finally:
        dep.teardown()


def _backups(dep: Deployment) -> dict[str, BackupRecord]:
    return {
        p.parent.name: BackupRecord.from_json(p.read_bytes())
        for p in (site_dir(dep) / "base").glob("*/backup.json")
    }


def _has_wal(dep: Deployment, name: str) -> bool:
    return (site_dir(dep) / "manifest" / f"{name}.json").exists() and any(
        (site_dir(dep) / "wal" / stored).exists() for stored in (name, f"{name}.zst")
    )


def _close_segment(dep: Deployment) -> str:
    """Switch WAL and wait until the closed segment is at the site."""
    ((name,),) = dep.primary.query("select pg_walfile_name(pg_switch_wal())")
    wait_for(lambda: _has_wal(dep, str(name)), 60, f"{name} shipped")
    return str(name)


def _number(segment: str) -> int:
    return int(segment[8:], 16)  # one timeline here: its place in the WAL stream


def _entry(dep: Deployment) -> dict[str, Any]:
    (entry,) = json.loads(dep.logship("status", "--json").stdout)["connectors"]
    return entry


def _cron_at(moment: float) -> str:
    """A 6-field cron (seconds first) firing once, at `moment` (UTC)."""
    at = datetime.fromtimestamp(moment, UTC)
    return f"{at.second} {at.minute} {at.hour} {at.day} {at.month} *"


def _site_files(dep: Deployment) -> dict[str, list[str]]:
    return {d: sorted(p.name for p in (site_dir(dep) / d).iterdir()) for d in ("wal", "manifest")}


def test_ship_backup_drill_retention_and_promote_through_a_restricted_key(
    restricted: Deployment,
) -> None:
    dep = restricted
    authorized = dep.sshd.authorized_keys.read_text()
    assert authorized.startswith('restrict,command="') and "site-gate --site dr" in authorized

    # Shipping: the daemon ships pgbench's WAL; a standby from a first backup replays it.
    dep.primary.pgbench("-i", "-s", "2", "-q")
    dep.start_daemon()
    dep.standby_up()
    dep.primary.pgbench("-c", "2", "-j", "2", "-T", "3", "-n")
    dep.wait_replayed(dep.switch_wal())
    (b1,) = _backups(dep)

    # A second base backup through the gate; the WAL it needs follows.
    wait_for(lambda: int(time.time()) > int(_backups(dep)[b1].started_at), 5, "the next second")
    dep.logship("base-backup", dep.connector)
    (b2,) = set(_backups(dep)) - {b1}
    real_start = _backups(dep)[b2].start_wal
    assert real_start is not None
    # A checkpoint two segments on: the standby's next restartpoint lands there.
    _close_segment(dep)
    dep.primary.pgbench("-c", "2", "-j", "2", "-T", "2", "-n")
    _close_segment(dep)
    dep.primary.execute("checkpoint")
    _close_segment(dep)
    # As a compromised primary could have shipped it: the real backup, but a record
    # claiming it starts far later than it does (root rewrites the read-only file).
    forged_start = f"{real_start[:16]}{int(real_start[16:], 16) + 0x40:08X}"
    record_path = site_dir(dep) / "base" / b2 / "backup.json"
    forged = json.loads(record_path.read_bytes())
    forged["start_wal"] = forged_start
    record_path.write_text(json.dumps(forged))

    # A drill as the daemon's schedule runs it: over SSH, through the forced command.
    assert dep.stop_daemon() == 0
    due = float(int(time.time()) + 8)
    (dep.config_dir / "schedules").mkdir(exist_ok=True)
    (dep.config_dir / "schedules" / "drill.toml").write_text(
        f'action = "drill"\nconnectors = ["{dep.connector}"]\ncron = "{_cron_at(due)}"\n'
    )
    dep.start_daemon()
    wait_for(lambda: _entry(dep)["drill_state"], 300, "the scheduled drill")
    entry = _entry(dep)
    assert entry["drill_state"] == "passed" and entry["last_job_error"] is None, entry
    drilled = DrillResult.from_json((site_dir(dep) / "drills" / f"{b2}.json").read_bytes())
    assert drilled.passed and drilled.backup_id == b2
    assert drilled.start_wal == real_start  # from the backup_label it restored

    # The standby's redo point moves on (a restartpoint) past b2's real start and
    # the segment after it, which b2's own tar does not hold: only b2 needs them now.
    dep.wait_replayed(dep.switch_wal())
    dep.standby.execute("checkpoint")
    ((redo,),) = dep.standby.query("select redo_wal_file from pg_control_checkpoint()")
    assert _number(redo) >= _number(real_start) + 2, (real_start, redo)

    # Retention at the site, as the site: b1 goes, and only WAL below b2's real start.
    connector_file = dep.config_dir / "connectors" / f"{dep.connector}.toml"
    connector_file.write_text(connector_file.read_text() + "\n[retention]\nkeep_backups = 1\n")
    report = json.loads(dep.logship("retention", "--at-site", dep.connector, "--json").stdout)
    assert set(_backups(dep)) == {b2}, report
    assert report["cutoff_wal"] == real_start, report
    assert report["deleted_wal"], report
    assert all(_number(n[:24]) < _number(real_start) for n in report["deleted_wal"]), report
    assert _has_wal(dep, real_start)
    # The backup still restores and replays at the site from what is left there.
    after = json.loads(dep.logship("drill", dep.connector, "--backup", b2, "--json").stdout)
    assert after["passed"], after

    # The disaster: the primary stops dead and its daemon with it; promote at the site.
    dep.wait_replayed(dep.switch_wal())
    dep.primary.stop(mode="immediate")
    assert dep.stop_daemon() == 0
    promoted = dep.logship("promote", dep.connector, "--timeout", "120", check=False)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert "you lose at most" in promoted.stdout
    assert dep.standby.query("select pg_is_in_recovery()") == [(False,)]
    before = _site_files(dep)

    # The old primary comes back, daemon and all: through the gate it reads the
    # site's PROMOTED marker and ships nothing into the promoted standby.
    dep.primary.start()
    dep.start_daemon()
    dep.primary.execute("create table after_return as select 1 as x")
    ((segment,),) = dep.primary.query("select pg_walfile_name(pg_current_wal_lsn())")
    dep.switch_wal()
    wait_for(lambda: (dep.spool_dir / segment).exists(), 60, f"{segment} archived to the spool")
    wait_for(
        lambda: "standby promoted: shipping stopped" in dep.daemon_log.read_text(),
        60,
        "the daemon says why it does not ship",
    )
    wait_for(lambda: _entry(dep)["pending_files"], 60, "the new segment held back")
    assert _site_files(dep) == before
    assert dep.stop_daemon() == 0
