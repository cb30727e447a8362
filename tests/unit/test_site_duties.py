"""A restricted site (`[sites.NAME] restricted = true`) owns what the primary's key
no longer may do there: retention, stale temps, and setting aside a WAL copy that
restore-wal refused. Real files and the real CLI here; the end-to-end runs with
PostgreSQL and sshd are in test_site_duties_e2e.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path, PurePosixPath

import pytest
import zstandard
from cli_run import logship
from factories import backup_record, wal
from offline_config import write_offline_config

from logship.catalog.store import Catalog, NewFile
from logship.config.load import load_config
from logship.engines.postgresql.archive_wal import tombstone_path
from logship.engines.postgresql.drill import DrillResult
from logship.engines.postgresql.retention import run_retention
from logship.engines.postgresql.standby_status import StandbyFacts
from logship.errors import ConfigError
from logship.jobs import run_action
from logship.manifest import BackupRecord, ManifestRecord, SiteLayout
from logship.ship.localdir import LocalDirTransport

SEG = 16 * 1024 * 1024
DAY = 86400.0
HOUR = 3600.0


def _restricted_config(root: Path, site_root: Path, *, restricted: str = "true") -> Path:
    path = write_offline_config(root, {"orders": "60s"})
    text = path.read_text().replace("/srv/incoming", str(site_root))
    path.write_text(text.replace("[sites.dr]\n", f"[sites.dr]\nrestricted = {restricted}\n"))
    connector = root / "connectors" / "orders.toml"
    connector.write_text(connector.read_text() + "[retention]\nkeep_backups = 2\n")
    return path


# -- the config key --------------------------------------------------------------------


def test_restricted_defaults_to_false_and_loads(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    plain = write_offline_config(tmp_path / "plain")
    assert load_config(plain).sites["dr"].restricted is False
    (tmp_path / "r").mkdir()
    config = load_config(_restricted_config(tmp_path / "r", tmp_path / "site"))
    assert config.sites["dr"].restricted is True


def test_restricted_must_be_a_boolean(tmp_path: Path) -> None:
    path = _restricted_config(tmp_path, tmp_path / "site", restricted='"sometimes"')
    result = logship(path, "status")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "sites.dr.restricted" in line and str(path) in line


def test_a_files_connector_cannot_target_a_restricted_site(tmp_path: Path) -> None:
    path = _restricted_config(tmp_path, tmp_path / "site")
    source = tmp_path / "tree"
    source.mkdir()
    files = tmp_path / "connectors" / "docs.toml"
    files.write_text(
        f'kind = "files"\nsite = "dr"\nrpo = "60s"\nsource = "{source}"\n'
        '[standby]\ntarget = "/srv/docs"\n'
    )
    with pytest.raises(ConfigError):
        load_config(path)
    result = logship(path, "status")
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert str(files) in line and "restricted" in line and "replace" in line, line


# -- a local site with old backups, WAL and temps --------------------------------------


def _put(path: Path, data: bytes = b"x", age: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age:
        then = time.time() - age
        os.utime(path, (then, then))


def _drilled(
    layout: SiteLayout, backup_id: str, passed: bool = True, start: int | None = None
) -> None:
    """A restore drill's result for `backup_id`, as the site's drill writes it
    (`start`: the WAL its restored backup_label named)."""
    result = DrillResult(
        "orders",
        backup_id,
        time.time() - 60,
        time.time(),
        passed,
        start_wal=None if start is None else wal(start),
    )
    _put(Path(layout.drill_dir / f"{backup_id}.json"), result.to_json().encode())


def _backup(
    layout: SiteLayout, backup_id: str, age_days: float, start: int, *, drilled: bool = True
) -> None:
    if drilled:
        _drilled(layout, backup_id, start=start)
    record = backup_record(backup_id, time.time() - age_days * DAY, wal(start))
    directory = Path(layout.backup_dir(backup_id))
    _put(directory / "base.tar.zst")
    _put(directory / "backup_manifest")
    _put(directory / "backup.json", record.to_json())


def _ship(layout: SiteLayout, name: str, content: bytes = b"wal") -> ManifestRecord:
    import hashlib

    stored = zstandard.ZstdCompressor().compress(content)
    record = ManifestRecord(
        name=name,
        size=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        stored_name=f"{name}.zst",
        stored_size=len(stored),
        stored_sha256=hashlib.sha256(stored).hexdigest(),
        compression="zstd",
        closed_at=1.0,
        arrived_at=2.0,
    )
    _put(Path(layout.wal_dir / record.stored_name), stored)
    _put(Path(layout.record_path(name)), record.to_json())
    return record


def _old_site(site_root: Path) -> SiteLayout:
    """b2 (3 days, WAL 20), b3 (2 days, 30), b4 (1 day, 40); WAL 18..44 shipped."""
    layout = SiteLayout.for_connector(PurePosixPath(site_root), "orders")
    for backup_id, age, start in (("b2", 3, 20), ("b3", 2, 30), ("b4", 1, 40)):
        _backup(layout, backup_id, age, start)
    for n in range(18, 45):
        _ship(layout, wal(n))
    return layout


def test_scheduled_retention_for_a_restricted_site_deletes_nothing(tmp_path: Path) -> None:
    """It deletes nothing at the site; at the primary it forgets what the site's own
    retention removed (catalog rows, spool tombstones), so they do not pile up."""
    site_root = tmp_path / "site"
    config = load_config(_restricted_config(tmp_path, site_root))
    layout = _old_site(site_root)
    # Refused at the site and set aside (absent for now), older than all that is there.
    _put(Path(layout.refused_note(wal(12))), b"{}")
    before = sorted(p.relative_to(site_root) for p in site_root.rglob("*"))
    spool = config.spool_dir("orders")
    catalog = Catalog(config.catalog_url)
    try:
        for n in range(10, 45):
            _put(tombstone_path(spool, wal(n)), b"sha\n")
            catalog.add_discovered(NewFile("orders", wal(n), wal(n), SEG, 1.0), 1.0)
            row = catalog.file("orders", wal(n))
            assert row is not None
            if n < 44:  # the newest is still waiting to ship
                catalog.mark_shipped(row.id, "s" * 64, 100, 2.0)
        for backup_id in ("b1", "b2", "b9"):
            catalog.start_backup("orders", backup_id, 1.0)
            if backup_id != "b9":  # b9 is still running
                catalog.finish_backup("orders", backup_id, now=2.0)
        outcome = run_action(
            "retention",
            config,
            "orders",
            LocalDirTransport(),
            catalog,
            time.time,
            drill_after_backup=False,
        )
        assert "skipped" in outcome.summary and "--at-site" in outcome.summary, outcome.summary
        assert sorted(p.relative_to(site_root) for p in site_root.rglob("*")) == before
        # Below the oldest WAL at the site and gone from it: forgotten, but the
        # refused one, which is coming back.
        left = [row.name for row in catalog.files("orders")]
        assert left == [wal(12), *(wal(n) for n in range(18, 45))]
        shipped = sorted(p.name for p in (spool / ".shipped").iterdir())
        assert shipped == [wal(12), *(wal(n) for n in range(18, 45))]
        states = {b.backup_id: b.state for b in catalog.backups("orders")}
        assert states == {"b1": "deleted", "b2": "done", "b9": "running"}
    finally:
        catalog.close()


def test_primary_retention_refuses_for_a_restricted_site(tmp_path: Path) -> None:
    site_root = tmp_path / "site"
    path = _restricted_config(tmp_path, site_root)
    _old_site(site_root)
    result = logship(path, "retention", "orders")
    assert result.returncode == 3, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "site dr is restricted: run `logship retention --at-site` at the standby site" in line
    assert (site_root / "orders" / "base" / "b2" / "backup.json").exists()


def test_run_retention_at_site_uses_only_the_site(tmp_path: Path) -> None:
    site_root = tmp_path / "site"
    config = load_config(_restricted_config(tmp_path, site_root))
    layout = _old_site(site_root)
    # Stale and fresh temps, and a folder a backup is still filling or gave up on.
    stale = [
        Path(layout.wal_dir / f".tmp.{wal(45)}.zst.1a2b"),
        Path(layout.manifest_dir / f".tmp.{wal(45)}.json.3c4d"),
        Path(layout.backup_dir("b4") / ".tmp.base.tar.zst.99"),
        Path(layout.root / ".tmp.restored.json.17"),
    ]
    for path in stale:
        _put(path, age=2 * HOUR)
    # A link planted under a temp name: the link goes, never what it points to.
    outside = tmp_path / "precious"
    outside.write_bytes(b"keep me")
    planted = Path(layout.wal_dir / ".tmp.planted")
    planted.symlink_to(outside)
    os.utime(planted, (time.time() - 2 * HOUR,) * 2, follow_symlinks=False)
    stale.append(planted)
    fresh = Path(layout.wal_dir / f".tmp.{wal(46)}.zst.5e6f")
    _put(fresh)
    _put(Path(layout.backup_dir("b9-filling")) / ".tmp.base.tar.zst.12")
    _put(Path(layout.backup_dir("b0-abandoned")) / ".tmp.base.tar.zst.11", age=2 * HOUR)
    os.utime(layout.backup_dir("b0-abandoned"), (time.time() - 2 * HOUR,) * 2)
    state = config.logship.state_dir
    before_state = sorted(state.rglob("*"))
    standby = StandbyFacts("orders", time.time(), reachable=False, data_dir_exists=False)

    report = run_retention(
        config,
        "orders",
        LocalDirTransport(),
        None,
        standby=standby,
        dry_run=False,
        at_site=True,
    )
    assert [b.backup_id for b in report.deleted_backups] == ["b2"]
    assert report.deleted_incomplete == ("b0-abandoned",)
    assert report.deleted_wal == tuple(wal(n) for n in range(18, 30))
    assert sorted(os.listdir(layout.base_dir)) == ["b3", "b4", "b9-filling"]
    assert sorted(os.listdir(layout.manifest_dir)) == [f"{wal(n)}.json" for n in range(30, 45)]
    assert not any(path.exists() for path in stale), [p for p in stale if p.exists()]
    assert fresh.exists() and outside.read_bytes() == b"keep me"
    assert report.swept_temps == len(stale)
    # Nothing of the primary's (catalog, spool) is read or touched at the site.
    assert sorted(state.rglob("*")) == before_state


# -- stale temps swept by `standby status` ---------------------------------------------


def test_standby_status_sweeps_stale_temps(tmp_path: Path) -> None:
    site_root = tmp_path / "site"
    path = _restricted_config(tmp_path, site_root)
    layout = _old_site(site_root)
    stale = Path(layout.wal_dir / f".tmp.{wal(45)}.zst.1a2b")
    _put(stale, age=2 * HOUR)
    fresh = Path(layout.manifest_dir / f".tmp.{wal(45)}.json.1a2b")
    _put(fresh)
    result = logship(path, "standby", "status", "orders", "--json")
    assert json.loads(result.stdout)["reachable"] is False  # no standby: still answers
    assert not stale.exists() and fresh.exists()


# -- restore-wal sets a refused copy aside -----------------------------------------------


def test_restore_wal_moves_a_refused_copy_into_quarantine(tmp_path: Path) -> None:
    site_root = tmp_path / "site"
    path = _restricted_config(tmp_path, site_root)
    layout = SiteLayout.for_connector(PurePosixPath(site_root), "orders")
    name = wal(30)
    record = _ship(layout, name, b"the real segment")
    stored = Path(layout.wal_dir / record.stored_name)
    bad = bytearray(stored.read_bytes())
    bad[-3] ^= 0xFF
    stored.write_bytes(bytes(bad))
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    dest.parent.mkdir()

    result = logship(path, "restore-wal", "orders", name, str(dest))
    assert result.returncode == 1, result.stderr
    assert "refusing" in result.stderr and not dest.exists()
    # The names are free for a new copy; the bad one is kept, timestamped, aside.
    assert not stored.exists() and not Path(layout.record_path(name)).exists()
    quarantine = Path(layout.root / "quarantine")
    kept = sorted(os.listdir(quarantine))
    assert len(kept) == 2, kept
    (aside_wal,) = [k for k in kept if k.endswith(record.stored_name)]
    (aside_record,) = [k for k in kept if k.endswith(f"{name}.json")]
    assert aside_wal[: -len(record.stored_name)] == aside_record[: -len(f"{name}.json")]
    assert (quarantine / aside_wal).read_bytes() == bytes(bad)
    assert oct((quarantine).stat().st_mode & 0o777) == oct(0o700)
    assert json.loads(Path(layout.refused_note(name)).read_text())["name"] == name

    # Shipped again (a new file under the freed names): handed out, note gone.
    _ship(layout, name, b"the real segment")
    result = logship(path, "restore-wal", "orders", name, str(dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == b"the real segment"
    assert not Path(layout.refused_note(name)).exists()
    assert len(os.listdir(quarantine)) == 2


def test_restore_wal_does_not_set_aside_a_copy_it_did_not_read(tmp_path: Path) -> None:
    """A second reader (a drill) refusing the old copy after the good one arrived
    must not move the good one away."""
    from logship.engines.postgresql.restore_wal import quarantine_refused

    site_root = tmp_path / "site"
    layout = SiteLayout.for_connector(PurePosixPath(site_root), "orders")
    name = wal(31)
    _ship(layout, name, b"old")
    stored = Path(layout.wal_dir / f"{name}.zst")
    record = Path(layout.record_path(name))
    seen = [(stored, os.stat(stored)), (record, os.stat(record))]
    # Replaced meanwhile by a new copy (new inodes).
    stored.rename(stored.with_name("old-copy"))
    record.rename(record.with_name("old-record"))
    _ship(layout, name, b"new")
    moved = quarantine_refused(layout, name, seen)
    assert moved == []
    assert stored.exists() and Path(layout.record_path(name)).exists()


def test_retention_at_site_waits_for_a_running_drill(tmp_path: Path) -> None:
    """At the primary, the scheduler never ran retention and a drill of one connector
    together; at the site, cron does not know of drills: the drill's lock tells."""
    import fcntl

    from logship.engines.postgresql.drill import LOCK_NAME

    site_root = tmp_path / "site"
    path = _restricted_config(tmp_path, site_root)
    layout = _old_site(site_root)
    scratch = Path(layout.root / "drill")
    scratch.mkdir(mode=0o700)
    fd = os.open(scratch / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        busy = logship(path, "retention", "--at-site", "orders")
    finally:
        os.close(fd)
    assert busy.returncode == 1, busy.stderr
    (line,) = busy.stderr.strip().splitlines()
    assert "drill" in line and "again" in line, line
    assert Path(layout.backup_record("b2")).exists()

    done = logship(path, "retention", "--at-site", "orders", "--json")
    assert done.returncode == 0, done.stderr
    assert [b["backup_id"] for b in json.loads(done.stdout)["deleted_backups"]] == ["b2"]


def test_retention_at_site_does_not_take_shipped_records_at_their_word(tmp_path: Path) -> None:
    """A compromised primary may add files: records of "newer" backups, never proven by
    a drill at the site, must not make the real ones (and their WAL) go."""
    site_root = tmp_path / "site"
    path = _restricted_config(tmp_path, site_root)
    layout = _old_site(site_root)  # b2, b3, b4: each passed a drill at the site
    _backup(layout, "f5", 0.5, 44, drilled=False)
    _backup(layout, "f6", 0.2, 44, drilled=False)
    _backup(layout, "f7", 0.1, 44)
    _drilled(layout, "f7", passed=False)

    result = logship(path, "retention", "--at-site", "orders", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # keep_backups = 2 among the proven ones: b3 and b4 stay, b2 goes; WAL from b3 on.
    assert [b["backup_id"] for b in report["deleted_backups"]] == ["b2"]
    assert sorted(os.listdir(layout.base_dir)) == ["b3", "b4", "f5", "f6", "f7"]
    assert report["cutoff_wal"] == wal(30)
    assert any("f5, f6, f7" in note for note in report["notes"]), report["notes"]


def test_keep_within_at_site_counts_from_arrival(tmp_path: Path) -> None:
    """A record claiming an old finish cannot make its backup (or an older one) go
    before keep_within has passed on the site's own clock."""
    site_root = tmp_path / "site"
    path = _restricted_config(tmp_path, site_root)
    connector = tmp_path / "connectors" / "orders.toml"
    connector.write_text(
        connector.read_text().replace("keep_backups = 2", 'keep_backups = 1\nkeep_within = "1d"')
    )
    layout = _old_site(site_root)  # records claim 3, 2 and 1 days; arrived just now
    result = logship(path, "retention", "--at-site", "orders", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["deleted_backups"] == []
    assert sorted(os.listdir(layout.base_dir)) == ["b2", "b3", "b4"]


def test_unproven_backups_count_for_nothing_but_older_ones_still_go() -> None:
    from logship.engines.postgresql.engine import RetentionSection
    from logship.engines.postgresql.retention_plan import StandbyNeed, plan_retention

    now = time.time()

    def record(backup_id: str, age_days: float, start: int) -> BackupRecord:
        finished = now - age_days * DAY
        return BackupRecord(
            backup_id, "orders", finished - 60, finished, "base.tar.zst", 1, "x" * 64, 1,
            "zstd", "15", start_wal=wal(start),
        )  # fmt: skip

    backups = [record("b1", 4, 10), record("b2", 3, 20), record("b3", 2, 30)]
    backups.append(record("f4", 1, 44))
    plan = plan_retention(
        backups,
        [],
        [wal(n) for n in range(5, 45)],
        RetentionSection(keep_backups=2),
        now,
        StandbyNeed.absent(),
        unproven={"b1", "f4"},
    )
    # b2 and b3 are the newest proven; f4 is newer, so it may be real: it stays.
    assert [b.backup_id for b in plan.delete_backups] == ["b1"]
    assert [b.backup_id for b in plan.keep] == ["b2", "b3", "f4"]
    assert plan.cutoff_wal == wal(20)


def test_retention_at_site_keeps_wal_from_where_the_drill_started(tmp_path: Path) -> None:
    """A real backup shipped with a forged, later start_wal in its record: the site
    keeps WAL from the start its drill restored (backup_label), not the record's."""
    site_root = tmp_path / "site"
    path = _restricted_config(tmp_path, site_root)
    layout = _old_site(site_root)  # b2 (WAL 20), b3 (30), b4 (40), all drilled
    record_path = Path(layout.backup_record("b3"))
    forged = json.loads(record_path.read_bytes())
    forged["start_wal"] = wal(38)
    record_path.write_text(json.dumps(forged))

    result = logship(path, "retention", "--at-site", "orders", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [b["backup_id"] for b in report["deleted_backups"]] == ["b2"]
    assert report["cutoff_wal"] == wal(30)
    assert sorted(os.listdir(layout.manifest_dir)) == [f"{wal(n)}.json" for n in range(30, 45)]


def test_a_drill_that_recorded_no_start_keeps_every_wal_file(tmp_path: Path) -> None:
    """A passed drill written by an older logship says nothing of where the backup
    starts: nothing tells the site which WAL the backup needs, so all of it stays."""
    site_root = tmp_path / "site"
    path = _restricted_config(tmp_path, site_root)
    layout = _old_site(site_root)
    _drilled(layout, "b3")  # passed, no start_wal

    result = logship(path, "retention", "--at-site", "orders", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [b["backup_id"] for b in report["deleted_backups"]] == ["b2"]
    assert report["cutoff_wal"] is None and report["deleted_wal"] == []
    assert any("b3 recorded no start WAL" in note for note in report["notes"]), report


def test_with_no_backup_proven_at_the_site_every_wal_file_stays(tmp_path: Path) -> None:
    """No drill has passed here: every start_wal is the primary's word alone, so the
    site deletes no WAL on it (and no backup either)."""
    site_root = tmp_path / "site"
    path = _restricted_config(tmp_path, site_root)
    layout = SiteLayout.for_connector(PurePosixPath(site_root), "orders")
    for backup_id, age, start in (("b2", 3, 20), ("b3", 2, 30), ("b4", 1, 40)):
        _backup(layout, backup_id, age, start, drilled=False)
    for n in range(18, 45):
        _ship(layout, wal(n))

    result = logship(path, "retention", "--at-site", "orders", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["deleted_backups"] == [] and report["deleted_wal"] == []
    assert report["cutoff_wal"] is None and "proven" in report["cutoff_reason"], report
    assert len(os.listdir(layout.manifest_dir)) == 27
