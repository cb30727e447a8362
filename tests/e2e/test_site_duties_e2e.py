"""A restricted site for real (primary, sshd, standby, daemon): the primary's
retention refuses, `retention --at-site` deletes old backups and WAL at the site and
nothing the kept backups or the standby need, and a WAL copy the standby refused is
set aside at the site so that the daemon's re-ship is a new file, then replayed."""

from __future__ import annotations

import json
import os
import time

from site_probes import base_backup, below, close_segment, shipped, site_backups, site_dir, site_wal

from logship.catalog.store import Catalog
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.manifest import ManifestRecord
from logship.spool import kept_path


def test_retention_runs_at_a_restricted_site(restricted: Deployment) -> None:
    dep = restricted
    dep.start_daemon()
    dep.primary.execute("create table t as select g from generate_series(1, 1000) g")
    first = close_segment(dep)
    wait_for(lambda: shipped(dep, first), 60, f"{first} shipped")
    b1 = base_backup(dep, None)
    b2 = base_backup(dep, b1)
    b3 = base_backup(dep, b2)
    start1 = site_backups(dep)[b1].start_wal
    assert start1 is not None
    # A standby restored from the oldest backup: it needs WAL from b1's start on.
    dep.logship("standby", "restore", dep.connector, "--backup", b1)
    dep.wait_replayed(dep.switch_wal(), timeout=120)
    connector_file = dep.config_dir / "connectors" / f"{dep.connector}.toml"
    connector_file.write_text(connector_file.read_text() + "\n[retention]\nkeep_backups = 2\n")
    tombstones = sorted((dep.spool_dir / ".shipped").iterdir())

    # The primary's key may not delete there: one line, exit 3, nothing touched.
    refused = dep.logship("retention", dep.connector, check=False)
    assert refused.returncode == 3, refused.stderr
    assert refused.stderr.strip() == (
        "logship retention: site dr is restricted: run `logship retention --at-site` "
        "at the standby site"
    )
    assert set(site_backups(dep)) == {b1, b2, b3}

    # An upload temp left long ago: the site sweeps it when the daemon asks for
    # `standby status` (every sample), as the primary's key may not.
    stale = site_dir(dep) / "wal" / ".tmp.000000010000000000000099.zst.dead"
    stale.write_bytes(b"cut short")
    os.utime(stale, (time.time() - 7200,) * 2)
    wait_for(lambda: not stale.exists(), 30, "the stale temp swept at the site")

    # At the site, only backups a restore drill proved there make older ones go.
    for backup_id in (b2, b3):
        dep.logship("drill", dep.connector, "--backup", backup_id)
    site_before = site_wal(dep)
    dry_run = dep.logship("retention", "--at-site", dep.connector, "--dry-run", "--json")
    dry = json.loads(dry_run.stdout)
    assert dry["dry_run"] and [b["backup_id"] for b in dry["deleted_backups"]] == [b1]
    assert set(site_backups(dep)) == {b1, b2, b3} and site_before <= site_wal(dep)

    # At the site, as the site: b1 goes, and only the WAL below the standby's redo.
    report = json.loads(dep.logship("retention", "--at-site", dep.connector, "--json").stdout)
    assert set(site_backups(dep)) == {b2, b3}
    assert not (site_dir(dep) / "base" / b1).exists()
    assert report["standby_redo_wal"] == start1 == report["cutoff_wal"]
    gone = below(site_before, start1)
    assert gone and set(report["deleted_wal"]) == gone
    assert site_before - gone <= site_wal(dep)
    assert start1 in site_wal(dep)
    # The primary's spool and catalog are the primary's: nothing removed from the
    # site (the daemon may have shipped more meanwhile).
    assert set(tombstones) <= set((dep.spool_dir / ".shipped").iterdir())

    # The standby replays on, and the oldest kept backup still restores and replays
    # at the site from what is left there (a restore drill).
    dep.primary.execute("insert into t select g from generate_series(1001, 2000) g")
    dep.wait_replayed(dep.switch_wal(), timeout=120)
    assert dep.standby.query("select count(*) from t") == [(2000,)]
    drill = json.loads(dep.logship("drill", dep.connector, "--backup", b2, "--json").stdout)
    assert drill["passed"] and drill["backup_id"] == b2, drill


def _sampled_at(dep: Deployment) -> float:
    """When the daemon last recorded the site's `standby status` (then repaired)."""
    catalog = Catalog(f"sqlite:///{dep.state_dir / 'catalog.db'}")
    try:
        progress = catalog.standby_progress(dep.connector)
        return progress.sampled_at if progress and progress.sampled_at else 0.0
    finally:
        catalog.close()


def _corrupt_next_segment(dep: Deployment) -> tuple[str, str, ManifestRecord, bytes]:
    """A restricted site with the standby stopped; the next segment (holding a new
    table) shipped and a byte of it flipped at the site: (segment, the LSN past it,
    its record, the bad bytes)."""
    dep.start_daemon()
    dep.standby_up()
    dep.wait_replayed(dep.switch_wal())
    dep.standby.stop()
    dep.primary.execute("create table marker as select 42 as answer")
    ((segment,),) = dep.primary.query("select pg_walfile_name(pg_current_wal_lsn())")
    lsn = dep.switch_wal()
    record_path = site_dir(dep) / "manifest" / f"{segment}.json"
    wait_for(record_path.exists, 60, f"{segment} shipped")
    record = ManifestRecord.from_json(record_path.read_bytes())
    stored = site_dir(dep) / "wal" / record.stored_name
    bad = bytearray(stored.read_bytes())
    bad[len(bad) // 2] ^= 0xFF
    stored.write_bytes(bytes(bad))
    wait_for(kept_path(dep.spool_dir, segment).exists, 30, "the shipped copy kept in the spool")
    return str(segment), lsn, record, bytes(bad)


def _events(dep: Deployment, name: str, segment: str) -> list[dict[str, object]]:
    lines = dep.daemon_log.read_text().splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    return [e for e in events if e.get("event") == name and e.get("file") == segment]


def _site_error(dep: Deployment) -> str:
    catalog = Catalog(f"sqlite:///{dep.state_dir / 'catalog.db'}")
    try:
        status = catalog.site_status("dr")
        return (status.error if status else None) or ""
    finally:
        catalog.close()


def test_a_refused_copy_is_set_aside_and_shipped_again(restricted: Deployment) -> None:
    dep = restricted
    segment, lsn, record, bad = _corrupt_next_segment(dep)
    record_path = site_dir(dep) / "manifest" / f"{segment}.json"
    stored = site_dir(dep) / "wal" / record.stored_name

    # restore-wal at the site, as the standby runs it, refuses the bad copy.
    probe = dep.root / "standby-site" / "probe"
    refused = dep.logship("restore-wal", dep.connector, segment, str(probe), check=False)
    assert refused.returncode == 1 and "refusing" in refused.stderr, refused.stderr
    assert not probe.exists()
    # The bad copy is kept aside at the site, as it was.
    quarantine = site_dir(dep) / "quarantine"
    aside = sorted(os.listdir(quarantine))
    (aside_wal,) = [n for n in aside if n.endswith(record.stored_name)]
    assert [n for n in aside if n.endswith(f"{segment}.json")]
    assert (quarantine / aside_wal).read_bytes() == bad

    # The daemon ships it again as a new file, once: while it waits for the
    # standby, later samples leave it be (this key could not ship over it).
    wait_for(record_path.exists, 60, f"{segment} shipped again")
    landed = time.time()
    wait_for(lambda: _sampled_at(dep) > landed + 3, 60, "three more samples")
    assert stored.read_bytes() != bad
    note = site_dir(dep) / "refused" / f"{segment}.json"
    assert note.exists(), "restore-wal, not the daemon, removes the note"
    reshipped = _events(dep, "re-shipped", segment)
    assert len(reshipped) == 1, reshipped

    dep.standby.start()
    dep.wait_replayed(lsn)
    assert dep.standby.query("select answer from marker") == [(42,)]
    assert not note.exists()


def test_a_refused_copy_the_site_cannot_set_aside_is_reported(restricted: Deployment) -> None:
    dep = restricted
    segment, lsn, record, bad = _corrupt_next_segment(dep)
    stored = site_dir(dep) / "wal" / record.stored_name
    record_path = site_dir(dep) / "manifest" / f"{segment}.json"
    # Where the site sets copies aside is taken (by a file): restore-wal cannot.
    quarantine = site_dir(dep) / "quarantine"
    quarantine.write_bytes(b"")
    probe = dep.root / "standby-site" / "probe"
    refused = dep.logship("restore-wal", dep.connector, segment, str(probe), check=False)
    assert refused.returncode == 1, refused.stderr
    assert "could not move it aside" in refused.stderr, refused.stderr

    # The restricted key may not ship over it: the daemon says what to do instead.
    def reported() -> str | None:
        error = _site_error(dep)
        return error if segment in error and "could not set the bad copy aside" in error else None

    error = wait_for(reported, 60, "the stuck copy reported")
    assert str(quarantine) in error, error
    assert stored.read_bytes() == bad and not _events(dep, "re-shipped", segment)

    # Done as it says, by hand at the site: the copy ships again and is replayed.
    quarantine.unlink()
    quarantine.mkdir(mode=0o700)
    dep.user.chown(quarantine)
    stored.rename(quarantine / stored.name)
    record_path.rename(quarantine / record_path.name)
    wait_for(record_path.exists, 60, f"{segment} shipped again")
    dep.standby.start()
    dep.wait_replayed(lsn)
    assert dep.standby.query("select answer from marker") == [(42,)]
    wait_for(lambda: segment not in _site_error(dep), 30, "the report cleared")
