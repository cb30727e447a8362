"""Retention: the plan's rules with plain values, applying it to a local site, and once
for real (primary, sshd, standby) through the CLI."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path, PurePosixPath

import pytest
from factories import backup_record, wal
from offline_config import write_offline_config
from site_probes import base_backup, below, close_segment, shipped, site_backups, site_wal

from logship.catalog.store import Catalog, NewFile
from logship.config.load import load_config
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.engines.postgresql.archive_wal import tombstone_path
from logship.engines.postgresql.engine import RetentionSection
from logship.engines.postgresql.retention import RetentionReport, run_retention
from logship.engines.postgresql.retention_plan import (
    StandbyNeed,
    plan_retention,
    segment_number,
    standby_need,
)
from logship.engines.postgresql.standby_status import StandbyFacts
from logship.manifest import BackupRecord, ManifestRecord, SiteLayout
from logship.ship.localdir import LocalDirTransport

SEG = 16 * 1024 * 1024
DAY = 86400.0
NOW = 1_800_000_000.0
NO_STANDBY = StandbyNeed.absent()


def backup(backup_id: str, age_days: float, start: int | None) -> BackupRecord:
    return backup_record(backup_id, NOW - age_days * DAY, None if start is None else wal(start))


# Four nightly backups: oldest b1 (4 days) starts at segment 10, newest b4 at 40.
BACKUPS = [backup("b1", 4, 10), backup("b2", 3, 20), backup("b3", 2, 30), backup("b4", 1, 40)]
WAL = [wal(n) for n in range(5, 45)]


def policy(keep_backups: int | None = None, keep_within: float | None = None) -> RetentionSection:
    return RetentionSection(keep_backups=keep_backups, keep_within=keep_within)


def ids(records: tuple[BackupRecord, ...]) -> list[str]:
    return [r.backup_id for r in records]


# -- which backups stay ----------------------------------------------------------------


def test_keep_newest_n_and_the_wal_from_the_oldest_kept_start() -> None:
    plan = plan_retention(BACKUPS, [], WAL, policy(keep_backups=2), NOW, NO_STANDBY)
    assert ids(plan.keep) == ["b3", "b4"]
    assert ids(plan.delete_backups) == ["b1", "b2"]
    assert plan.cutoff_wal == wal(30)
    assert "oldest kept backup b3" in plan.cutoff_reason
    assert list(plan.delete_wal) == [wal(n) for n in range(5, 30)]  # oldest first


def test_keep_within_keeps_what_is_younger() -> None:
    plan = plan_retention(BACKUPS, [], WAL, policy(keep_within=2.5 * DAY), NOW, NO_STANDBY)
    assert ids(plan.keep) == ["b3", "b4"]
    assert plan.cutoff_wal == wal(30)


def test_either_rule_keeps_a_backup() -> None:
    # keep_backups alone keeps b4; keep_within alone keeps b3 and b4; together b2..b4.
    plan = plan_retention(
        BACKUPS, [], WAL, policy(keep_backups=3, keep_within=1.5 * DAY), NOW, NO_STANDBY
    )
    assert ids(plan.keep) == ["b2", "b3", "b4"]
    plan = plan_retention(
        BACKUPS, [], WAL, policy(keep_backups=1, keep_within=3.5 * DAY), NOW, NO_STANDBY
    )
    assert ids(plan.keep) == ["b2", "b3", "b4"]
    assert plan.cutoff_wal == wal(20)


def test_the_newest_backup_always_stays() -> None:
    plan = plan_retention(BACKUPS, [], WAL, policy(keep_within=3600), NOW, NO_STANDBY)
    assert ids(plan.keep) == ["b4"]
    assert plan.cutoff_wal == wal(40)


def test_no_rule_set_keeps_everything() -> None:
    plan = plan_retention(BACKUPS, ["x"], WAL, policy(), NOW, NO_STANDBY)
    assert ids(plan.keep) == ["b1", "b2", "b3", "b4"]
    assert not (plan.delete_backups or plan.delete_incomplete or plan.delete_wal)


def test_no_complete_backup_deletes_nothing() -> None:
    plan = plan_retention([], ["20260101T000000Z"], WAL, policy(keep_backups=1), NOW, NO_STANDBY)
    assert not (plan.delete_backups or plan.delete_incomplete or plan.delete_wal)
    assert plan.cutoff_wal is None and "no complete base backup" in plan.cutoff_reason


def test_incomplete_folders_go() -> None:
    plan = plan_retention(
        BACKUPS, ["z-late", "a-early"], WAL, policy(keep_backups=4), NOW, NO_STANDBY
    )
    assert plan.delete_incomplete == ("a-early", "z-late")
    assert not plan.delete_backups
    assert plan.cutoff_wal == wal(10)


# -- which WAL stays -------------------------------------------------------------------


def test_standby_redo_older_than_the_cutoff_lowers_it() -> None:
    need = StandbyNeed.needs_from(wal(12))
    plan = plan_retention(BACKUPS, [], WAL, policy(keep_backups=2), NOW, need)
    assert ids(plan.delete_backups) == ["b1", "b2"]  # backups are not the standby's concern
    assert plan.cutoff_wal == wal(12)
    assert "standby" in plan.cutoff_reason and wal(12) in plan.cutoff_reason
    assert list(plan.delete_wal) == [wal(n) for n in range(5, 12)]


def test_standby_redo_newer_than_the_cutoff_changes_nothing() -> None:
    need = StandbyNeed.needs_from(wal(42))
    plan = plan_retention(BACKUPS, [], WAL, policy(keep_backups=2), NOW, need)
    assert plan.cutoff_wal == wal(30)


def test_a_standby_restored_from_the_oldest_backup_keeps_its_wal() -> None:
    # Restored from b1 and not past its first restartpoint: its redo is b1's start.
    facts = StandbyFacts(
        "orders", NOW, reachable=True, in_recovery=True, redo_wal=wal(10), data_dir_exists=True
    )
    plan = plan_retention(BACKUPS, [], WAL, policy(keep_backups=1), NOW, standby_need(facts))
    assert ids(plan.delete_backups) == ["b1", "b2", "b3"]
    assert plan.cutoff_wal == wal(10)
    assert list(plan.delete_wal) == [wal(n) for n in range(5, 10)]


@pytest.mark.parametrize(
    "facts",
    [
        # down, its data dir there, pg_controldata unusable
        StandbyFacts("orders", NOW, reachable=False, data_dir_exists=True, redo_error="denied"),
        # down, nothing said about its data dir (an older logship at the site)
        StandbyFacts("orders", NOW, reachable=False, last_restored=wal(33)),
        # answering, but no redo (a role without pg_monitor, no pg_controldata)
        StandbyFacts("orders", NOW, reachable=True, in_recovery=True, data_dir_exists=True),
        None,  # not asked at all
    ],
)
def test_unknown_standby_redo_keeps_all_wal(facts: StandbyFacts | None) -> None:
    plan = plan_retention(BACKUPS, [], WAL, policy(keep_backups=2), NOW, standby_need(facts))
    assert ids(plan.delete_backups) == ["b1", "b2"]
    assert plan.cutoff_wal is None and plan.delete_wal == ()
    assert "every WAL file stays" in plan.cutoff_reason and "standby" in plan.cutoff_reason


def test_no_standby_at_all_lets_the_backups_decide() -> None:
    facts = StandbyFacts("orders", NOW, reachable=False, data_dir_exists=False, error="refused")
    assert standby_need(facts) == NO_STANDBY
    plan = plan_retention(BACKUPS, [], WAL, policy(keep_backups=2), NOW, standby_need(facts))
    assert plan.cutoff_wal == wal(30)


def test_a_promoted_standby_keeps_its_wal_but_not_old_backups() -> None:
    facts = StandbyFacts("orders", NOW, reachable=True, in_recovery=False, promoted=True)
    plan = plan_retention(BACKUPS, [], WAL, policy(keep_backups=2), NOW, standby_need(facts))
    assert ids(plan.delete_backups) == ["b1", "b2"]
    assert plan.delete_wal == () and "promoted" in plan.cutoff_reason


def test_backup_without_start_wal_keeps_all_wal() -> None:
    old_style = [backup("b1", 4, None), backup("b2", 3, None), backup("b3", 2, 30)]
    plan = plan_retention(old_style, [], WAL, policy(keep_backups=2), NOW, NO_STANDBY)
    assert ids(plan.delete_backups) == ["b1"]
    assert plan.cutoff_wal is None and plan.delete_wal == ()
    assert "b2 has no start WAL" in plan.cutoff_reason


def test_unreadable_backup_record_keeps_all_wal() -> None:
    plan = plan_retention(
        BACKUPS, [], WAL, policy(keep_backups=2), NOW, NO_STANDBY, unreadable={"b0": "bad json"}
    )
    assert ids(plan.delete_backups) == ["b1", "b2"]
    assert plan.delete_wal == () and "b0" in plan.cutoff_reason


def test_history_files_stay_partial_and_backup_files_follow_their_segment() -> None:
    names = [
        "00000001.history",
        "00000002.history",
        wal(29) + ".00000028.backup",
        wal(30) + ".00000028.backup",
        wal(25) + ".partial",
        wal(31) + ".partial",
        wal(28, timeline=2),  # another timeline, compared by segment number
        wal(30, timeline=2),
        "not-a-wal-name",
        wal(29),
    ]
    plan = plan_retention(BACKUPS, [], names, policy(keep_backups=2), NOW, NO_STANDBY)
    assert set(plan.delete_wal) == {
        wal(29) + ".00000028.backup",
        wal(25) + ".partial",
        wal(28, timeline=2),
        wal(29),
    }


def test_segment_numbers_follow_the_segment_size() -> None:
    # With 1 MiB segments a log file holds 4096 of them, not 256.
    assert segment_number("000000010000000100000000", 1024 * 1024) == 4096
    assert segment_number("000000010000000100000000", SEG) == 256
    assert segment_number("00000001.history", SEG) is None
    names = ["000000010000000000000FFF", "000000010000000100000000"]
    small = [backup("b1", 2, None), replace(backup("b2", 1, None), start_wal=names[1])]
    plan = plan_retention(
        small, [], names, policy(keep_backups=1), NOW, NO_STANDBY, segment_size=1024 * 1024
    )
    assert plan.delete_wal == ("000000010000000000000FFF",)


def test_standby_facts_json_stays_compatible() -> None:
    old = {"connector": "orders", "measured_at": 1.0, "reachable": False, "promoted": False}
    facts = StandbyFacts.from_json(json.dumps(old))
    assert facts.redo_wal is None and facts.data_dir_exists is None
    newer = {**old, "redo_wal": wal(3), "data_dir_exists": True, "added_later": 1}
    assert StandbyFacts.from_json(json.dumps(newer)).redo_wal == wal(3)
    round_trip = StandbyFacts("orders", 2.0, True, redo_wal=wal(4), data_dir_exists=True)
    assert StandbyFacts.from_json(round_trip.to_json()) == round_trip


# -- applying a plan to a local site ---------------------------------------------------


def _put(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _ship(layout: SiteLayout, name: str, size: int = SEG) -> None:
    stored = f"{name}.zst"
    record = ManifestRecord(name, size, "s" * 64, stored, 100, "t" * 64, "zstd", 1.0, 2.0)
    _put(Path(layout.wal_dir / stored), b"z" * 100)
    _put(Path(layout.record_path(name)), record.to_json())


def test_run_retention_on_a_local_site(tmp_path: Path) -> None:
    config_file = write_offline_config(tmp_path, {"orders": "60s"})
    site_root = tmp_path / "site"
    config_file.write_text(config_file.read_text().replace("/srv/incoming", str(site_root)))
    (tmp_path / "connectors" / "orders.toml").write_text(
        (tmp_path / "connectors" / "orders.toml").read_text() + "[retention]\nkeep_backups = 2\n"
    )
    config = load_config(config_file)
    layout = SiteLayout.for_connector(PurePosixPath(site_root), "orders")
    for record in BACKUPS[1:]:
        directory = Path(layout.backup_dir(record.backup_id))
        _put(directory / "base.tar.zst")
        _put(directory / "backup_manifest")
        _put(directory / "backup.json", record.to_json())
    _put(Path(layout.backup_dir("b0-incomplete")) / ".tmp.base.tar.zst.1234")
    for n in range(18, 32):
        _ship(layout, wal(n))
    _put(Path(layout.wal_dir / "00000002.history"))
    _put(Path(layout.wal_dir / wal(17)))  # a file whose record went before it did
    spool = config.spool_dir("orders")
    catalog = Catalog(config.catalog_url)
    try:
        for n in range(17, 32):
            _put(tombstone_path(spool, wal(n)), b"sha\n")
            catalog.add_discovered(NewFile("orders", wal(n), wal(n), SEG, 1.0), 1.0)
            row = catalog.file("orders", wal(n))
            assert row is not None
            catalog.mark_shipped(row.id, "s" * 64, 100, 2.0)
        catalog.start_backup("orders", "b2", 1.0)
        standby = StandbyFacts("orders", NOW, reachable=False, data_dir_exists=False)

        dry = run_retention(
            config,
            "orders",
            LocalDirTransport(),
            catalog,
            standby=standby,
            dry_run=True,
            clock=lambda: NOW,
        )
        assert ids(dry.deleted_backups) == ["b2"] and dry.deleted_incomplete == ("b0-incomplete",)
        assert dry.deleted_wal == tuple(wal(n) for n in range(17, 30))
        assert dry.cutoff_wal == wal(30) and dry.segment_size == SEG
        assert Path(layout.backup_record("b2")).exists()
        assert Path(layout.record_path(wal(18))).exists()

        report = run_retention(
            config,
            "orders",
            LocalDirTransport(),
            catalog,
            standby=standby,
            dry_run=False,
            clock=lambda: NOW,
        )
        assert isinstance(report, RetentionReport)
        assert sorted(os.listdir(layout.base_dir)) == ["b3", "b4"]
        assert report.deleted_backup_bytes == 1000
        assert report.deleted_wal_bytes == 100 * 12  # wal(17) had no record
        left = sorted(os.listdir(layout.wal_dir))
        assert left == [*(f"{wal(n)}.zst" for n in (30, 31)), "00000002.history"]
        assert sorted(os.listdir(layout.manifest_dir)) == [f"{wal(n)}.json" for n in (30, 31)]
        assert sorted(os.listdir(spool / ".shipped")) == [wal(30), wal(31)]
        assert [row.name for row in catalog.files("orders")] == [wal(30), wal(31)]
        assert report.forgotten_catalog_rows == 13
        (row,) = [b for b in catalog.backups("orders") if b.backup_id == "b2"]
        assert row.state == "deleted" and row.deleted_at == NOW
        assert any(e.kind == "retention" for e in catalog.journal(0))
        document = report.to_json()
        assert document["deleted_wal_count"] == 13 and document["cutoff_wal"] == wal(30)
        json.dumps(document)

        again = run_retention(
            config,
            "orders",
            LocalDirTransport(),
            catalog,
            standby=standby,
            dry_run=False,
            clock=lambda: NOW,
        )
        assert not (again.deleted_backups or again.deleted_incomplete or again.deleted_wal)
    finally:
        catalog.close()


# -- for real: primary, sshd, standby, daemon ------------------------------------------


def _site_records(dep: Deployment) -> set[str]:
    return {
        p.name.removesuffix(".json") for p in (dep.incoming / dep.connector / "manifest").iterdir()
    }


def _standby_status(dep: Deployment) -> StandbyFacts:
    result = dep.logship("standby", "status", dep.connector, "--json", check=False)
    return StandbyFacts.from_json(result.stdout)


def _retention(dep: Deployment, *args: str) -> dict:  # type: ignore[type-arg]
    result = dep.logship("retention", dep.connector, "--json", *args)
    assert "\x1b[" not in result.stdout
    return json.loads(result.stdout)


@pytest.mark.e2e
def test_retention_keeps_what_backups_and_a_lagging_standby_need(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.start_daemon()
    dep.primary.execute("create table t as select g from generate_series(1, 1000) g")
    first_segment = close_segment(dep)
    wait_for(lambda: shipped(dep, first_segment), 60, f"{first_segment} shipped")
    b1 = base_backup(dep, None)
    b2 = base_backup(dep, b1)
    b3 = base_backup(dep, b2)
    records = site_backups(dep)
    assert all(records[b].start_wal for b in (b1, b2, b3)), "backups record their start WAL"
    start1, start2 = records[b1].start_wal, records[b2].start_wal
    assert start1 is not None and start2 is not None

    # No standby yet: its data dir does not exist, which is not "unknown".
    facts = _standby_status(dep)
    assert (facts.reachable, facts.data_dir_exists, facts.redo_wal) == (False, False, None)

    # A standby restored from the oldest backup: its redo point is that backup's start.
    dep.logship("standby", "restore", dep.connector, "--backup", b1)
    dep.wait_replayed(dep.switch_wal(), timeout=120)
    connector_file = dep.config_dir / "connectors" / f"{dep.connector}.toml"
    connector_file.write_text(connector_file.read_text() + "\n[retention]\nkeep_backups = 2\n")

    site_before = site_wal(dep)
    human = dep.logship("retention", dep.connector, "--dry-run").stdout
    assert f"would delete backup {b1}" in human and "dry run" in human
    dry = _retention(dep, "--dry-run")
    assert [b["backup_id"] for b in dry["deleted_backups"]] == [b1]
    assert dry["standby_redo_wal"] == start1 == dry["cutoff_wal"]
    assert "standby" in dry["cutoff_reason"]
    assert set(dry["deleted_wal"]) == below(site_before, start1) != set()
    assert set(site_backups(dep)) == {b1, b2, b3}
    assert site_before <= site_wal(dep)  # nothing deleted

    # For real: the oldest backup goes, WAL the standby needs from its redo stays.
    first = _retention(dep)
    assert set(site_backups(dep)) == {b2, b3}
    assert not (dep.incoming / dep.connector / "base" / b1).exists()
    gone = below(site_before, start1)
    assert set(first["deleted_wal"]) == gone
    assert not gone & (site_wal(dep) | _site_records(dep))
    assert site_before - gone <= site_wal(dep)
    tombstones = dep.spool_dir / ".shipped"
    assert not any((tombstones / name).exists() for name in gone)
    assert (tombstones / start1).exists()

    # A restartpoint moves the standby's redo past the second backup's start; then
    # the second backup's start is the cutoff.
    dep.standby.execute("checkpoint")

    def redo_past_second_start() -> bool:
        redo = _standby_status(dep).redo_wal
        return redo is not None and segment_number(redo, SEG) >= segment_number(start2, SEG)

    wait_for(redo_past_second_start, 30, "the standby's redo past the second backup")
    site_before = site_wal(dep)
    second = _retention(dep)
    assert second["cutoff_wal"] == start2 and b2 in second["cutoff_reason"]
    assert second["deleted_backups"] == []
    gone = below(site_before, start2)
    assert set(second["deleted_wal"]) == gone != set()
    assert not gone & (site_wal(dep) | _site_records(dep))
    assert site_before - gone <= site_wal(dep)
    assert start2 in site_wal(dep) and start2 in _site_records(dep)
    assert not any((tombstones / name).exists() for name in gone)
    assert set(site_backups(dep)) == {b2, b3}

    # The standby still replays what ships next.
    dep.primary.execute("insert into t select g from generate_series(1001, 2000) g")
    dep.wait_replayed(dep.switch_wal(), timeout=120)
    assert dep.standby.query("select count(*) from t") == [(2000,)]

    # Stopped, the standby's redo still comes from its data dir (pg_controldata).
    ((redo,),) = dep.standby.query("select redo_wal_file from pg_control_checkpoint()")
    dep.standby.stop(mode="immediate")
    facts = _standby_status(dep)
    assert (facts.reachable, facts.data_dir_exists, facts.redo_wal) == (False, True, redo)
