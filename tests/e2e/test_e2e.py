"""End to end on real parts: pgbench on a primary, logship over a real sshd, a
standby built by base-backup + standby restore replaying through restore-wal."""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from pathlib import Path

from site_probes import shipped
from status_contract import MEASURED_FIELDS

from logship.catalog.store import Catalog
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.engines.postgresql import walnames
from logship.manifest import ManifestRecord


def _pgbench_load(dep: Deployment, seconds: int = 8) -> None:
    dep.primary.pgbench("-i", "-s", "4", "-q")
    dep.primary.pgbench("-c", "4", "-j", "2", "-T", str(seconds), "-n")


def _compare(dep: Deployment) -> None:
    sql = (
        "select (select count(*) from pgbench_history),"
        " (select sum(abalance) from pgbench_accounts)"
    )
    primary = dep.primary.query(sql)
    assert primary[0][0] > 0
    assert dep.standby.query(sql) == primary


def _records(dep: Deployment) -> dict[str, ManifestRecord]:
    manifest = dep.incoming / dep.connector / "manifest"
    return {
        p.name.removesuffix(".json"): ManifestRecord.from_json(p.read_bytes())
        for p in manifest.glob("*.json")
    }


def _spool_sha256(dep: Deployment, name: str) -> str:
    tombstone = dep.spool_dir / ".shipped" / name
    if tombstone.exists():
        return tombstone.read_text().strip()
    return hashlib.sha256((dep.spool_dir / name).read_bytes()).hexdigest()


def test_pgbench_is_replayed_on_the_standby(deployment: Deployment) -> None:
    dep = deployment
    dep.start_daemon()
    dep.standby_up()
    _pgbench_load(dep)
    lsn = dep.switch_wal()
    dep.wait_replayed(lsn, timeout=180)
    _compare(dep)
    # The standby reads from the manifest only: every record matches its file.
    for name, record in _records(dep).items():
        stored = dep.incoming / dep.connector / "wal" / record.stored_name
        assert stored.stat().st_size == record.stored_size, name
        assert record.arrived_at >= record.closed_at
    status = json.loads(dep.logship("status", "--json").stdout)
    (entry,) = status["connectors"]
    assert entry["name"] == dep.connector and entry["last_shipped"] is not None
    # The heartbeat replayed on the standby, read back over SSH: a measured apply lag.
    entry = wait_for(lambda: _status_with_apply_lag(dep), 60, "apply lag measured")
    assert 0 <= entry["apply_lag_s"] < 60
    # Every stage measured: the primary's archiver, the standby's replay, the RTO.
    assert entry["archive_ready_files"] is not None
    assert entry["archive_failed_count"] == 0
    assert entry["primary_measured_at"] and entry["standby_measured_at"]
    assert entry["replay_rate_bps"] and entry["replay_rate_bps"] > 0
    assert entry["rto_estimate_s"] is not None and entry["rto_estimate_s"] >= 0
    assert [key for key in MEASURED_FIELDS if entry[key] is None] == []
    assert entry["state"] in ("ok", "warn")
    assert dep.stop_daemon() == 0  # SIGTERM is a clean stop


def _status_with_apply_lag(dep: Deployment) -> dict | None:  # type: ignore[type-arg]
    (entry,) = json.loads(dep.logship("status", "--json").stdout)["connectors"]
    return entry if entry["apply_lag_s"] is not None else None


def test_kill_9_mid_upload_then_resume(deployment: Deployment) -> None:
    dep = deployment
    dep.compression = "none"  # bigger uploads: a kill lands mid-file more surely
    dep.write_config()
    dep.start_daemon()
    dep.standby_up()
    wal_dir = dep.incoming / dep.connector / "wal"

    # Load in the background while watching the site closely for an upload in
    # flight (a 16 MiB upload is visible as a temp file for tens of milliseconds).
    load = threading.Thread(target=dep.primary.pgbench, args=("-i", "-s", "20", "-q"))
    load.start()
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".tmp.") for p in wal_dir.iterdir()):
        assert time.monotonic() < deadline, "no upload in flight seen within 120 s"
        time.sleep(0.001)
    dep.stop_daemon(signal.SIGKILL)
    load.join()

    # Whatever is visible under a WAL name is complete: the same bytes as the
    # spool copy (or the sha256 its tombstone kept after it was retired).
    visible = [p for p in wal_dir.iterdir() if not p.name.startswith(".tmp.")]
    for path in visible:
        assert walnames.parse(path.name) is not None, f"{path.name} visible at the site"
        expected = _spool_sha256(dep, path.name)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == expected, path.name
    before = {name: rec.sha256 for name, rec in _records(dep).items()}

    dep.start_daemon()
    dep.primary.pgbench("-c", "2", "-T", "3", "-n")
    lsn = dep.switch_wal()
    dep.wait_replayed(lsn, timeout=180)
    _compare(dep)
    after = {name: rec.sha256 for name, rec in _records(dep).items()}
    assert {n: after[n] for n in before} == before  # nothing re-shipped differently
    assert not [p for p in wal_dir.iterdir() if p.name.startswith(".tmp.")]
    # Nothing missing: every segment closed at the primary is at the site.
    spool_left = [p for p in dep.spool_dir.iterdir() if walnames.parse(p.name)]
    wait_for(lambda: not [p for p in spool_left if p.exists()], 60, "spool drained")
    tombstones = {p.name for p in (dep.spool_dir / ".shipped").iterdir()}
    assert tombstones <= set(after)


def test_changed_host_key_refuses_to_ship(deployment: Deployment) -> None:
    dep = deployment
    dep.sshd.rotate_host_key()
    dep.start_daemon()
    lsn_before = dep.switch_wal()
    assert lsn_before
    wait_for(lambda: "host key" in dep.daemon_log.read_text(), 60, "host key refusal logged")
    catalog = Catalog(f"sqlite:///{dep.state_dir / 'catalog.db'}")
    try:  # and journaled once, for the dashboard's events
        refusals = [e for e in catalog.journal(0) if "host key refused" in e.message]
        assert len(refusals) == 1
    finally:
        catalog.close()
    assert not _records(dep)
    status = json.loads(dep.logship("status", "--json").stdout)
    assert status["connectors"][0]["state"] == "down"
    check = dep.logship("check", check=False)
    assert check.returncode == 3, check.stdout + check.stderr


def test_corrupted_file_is_refused_and_the_standby_waits(deployment: Deployment) -> None:
    dep = deployment
    dep.start_daemon()
    dep.standby_up()
    lsn = dep.switch_wal()
    dep.wait_replayed(lsn)
    # Stop shipping, then close one more segment and corrupt it at the site.
    dep.primary.execute("create table marker as select 42 as answer")
    ((segment,),) = dep.primary.query("select pg_walfile_name(pg_current_wal_lsn())")
    lsn = dep.switch_wal()
    wait_for(lambda: shipped(dep, segment), 60, f"{segment} shipped")
    dep.stop_daemon()
    record = _records(dep)[segment]
    stored = dep.incoming / dep.connector / "wal" / record.stored_name
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))

    standby_log = dep.standby.data_dir / "logship-standby.log"
    wait_for(
        lambda: "checksum mismatch" in standby_log.read_text(), 60, "restore-wal refusal logged"
    )
    # Still a standby, still waiting, and it never replayed the bad segment.
    assert dep.standby.query("select pg_is_in_recovery()") == [(True,)]
    assert dep.standby.query("select pg_last_wal_replay_lsn() < %s::pg_lsn", (lsn,)) == [(True,)]
    assert dep.standby.query("select to_regclass('marker') is null") == [(True,)]

    # restore-wal set the bad copy and its record aside, so that a re-ship is a
    # new file, never a replacement.
    site = dep.incoming / dep.connector
    dest = site / "wal" / record.stored_name
    assert not dest.exists()
    (aside,) = (site / "quarantine").glob(f"*.{record.stored_name}")
    assert aside.read_bytes() == bytes(data)
    # A good copy arrives (re-shipped by hand here, record last): replay goes on.
    good = Path(dep.root / "good")
    data[len(data) // 2] ^= 0xFF
    good.write_bytes(bytes(data))
    good.replace(dest)
    (record_aside,) = (site / "quarantine").glob(f"*.{segment}.json")
    record_aside.replace(site / "manifest" / f"{segment}.json")
    dep.wait_replayed(lsn)
    assert dep.standby.query("select answer from marker") == [(42,)]


def test_basic_archive_module_feeds_the_same_spool(reachable_dir: Path, pg_user) -> None:  # type: ignore[no-untyped-def]
    dep = Deployment(reachable_dir / "deploy", pg_user, archive_via="basic_archive")
    try:
        dep.build_primary()
        dep.start_daemon()
        dep.primary.execute("create table t as select generate_series(1, 1000) as n")
        ((segment,),) = dep.primary.query("select pg_walfile_name(pg_current_wal_lsn())")
        dep.switch_wal()
        wait_for(lambda: shipped(dep, segment), 60, f"{segment} shipped via basic_archive")
        record = _records(dep)[segment]
        assert record.size == 16 * 1024 * 1024
        assert record.closed_at <= record.arrived_at
    finally:
        dep.teardown()
