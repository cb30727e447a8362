"""schedules/*.toml in the daemon: cron in a time zone, catching up a missed run, drills.

Real runs use a 6-field cron (seconds first) a few seconds ahead, so a test waits
seconds for the trigger rather than up to a minute.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest

from logship.catalog.models import ScheduledJob
from logship.catalog.store import Catalog
from logship.config.model import ScheduleConfig
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.manifest import BackupRecord
from logship.schedule import missed_run

pytestmark = pytest.mark.slow  # left out of the fast subset (README)

NOW = 1_790_000_000.0


def _schedule(**overrides: Any) -> ScheduleConfig:
    settings: dict[str, Any] = {
        "name": "nightly",
        "action": "base-backup",
        "connectors": ["main"],
        "cron": "30 2 * * *",
        "misfire_grace": 3600,
    }
    return ScheduleConfig(**(settings | overrides))


def _row(schedule: ScheduleConfig, **fields: Any) -> ScheduledJob:
    row = ScheduledJob(name="nightly/main", connector="main", job="base-backup")
    row.trigger = schedule.trigger_key
    row.next_run_at = fields.get("next_run_at")
    row.last_started_at = fields.get("last_started_at")
    return row


def test_missed_run_only_within_grace_and_for_the_same_trigger() -> None:
    schedule = _schedule()
    planned = NOW - 600
    assert missed_run(_row(schedule, next_run_at=planned), schedule, NOW) == planned
    # Not yet due, never planned, or no row at all: nothing was missed.
    assert missed_run(_row(schedule, next_run_at=NOW + 5), schedule, NOW) is None
    assert missed_run(_row(schedule), schedule, NOW) is None
    assert missed_run(None, schedule, NOW) is None
    # Beyond the grace the run is skipped; the next planned one will come.
    assert missed_run(_row(schedule, next_run_at=NOW - 3601), schedule, NOW) is None
    # It started before the daemon went down: a crash mid-run is not a miss.
    started = _row(schedule, next_run_at=planned, last_started_at=planned + 1)
    assert missed_run(started, schedule, NOW) is None
    # A plan made for another cron or time zone says nothing about this one.
    moved = schedule.model_copy(update={"timezone": "Europe/Berlin"})
    assert missed_run(_row(schedule, next_run_at=planned), moved, NOW) is None


def _cron_at(moment: float) -> str:
    """A 6-field cron (seconds first) firing once, at `moment` (UTC), this year."""
    at = datetime.fromtimestamp(moment, UTC)
    return f"{at.second} {at.minute} {at.hour} {at.day} {at.month} *"


def _write_schedule(dep: Deployment, name: str, text: str) -> None:
    folder = dep.config_dir / "schedules"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.toml").write_text(text)


def _entry(dep: Deployment) -> dict[str, Any]:
    (entry,) = json.loads(dep.logship("status", "--json").stdout)["connectors"]
    return entry


def _complete_backups(dep: Deployment) -> list[BackupRecord]:
    base = dep.incoming / dep.connector / "base"
    return [BackupRecord.from_json(p.read_bytes()) for p in sorted(base.glob("*/backup.json"))]


def _planned_at(dep: Deployment) -> float | None:
    at = _entry(dep)["next_job_at"]
    return None if at is None else datetime.fromisoformat(at).timestamp()


def test_a_backup_missed_while_the_daemon_was_down_runs_once_on_restart(
    deployment: Deployment,
) -> None:
    dep = deployment
    due = float(int(time.time()) + 20)
    _write_schedule(
        dep,
        "nightly",
        f'action = "base-backup"\nconnectors = ["main"]\ncron = "{_cron_at(due)}"\n'
        'misfire_grace = "10m"\ndrill = false\n',
    )
    dep.start_daemon()
    wait_for(lambda: _planned_at(dep) == due, 30, "the daemon to plan the backup")
    assert dep.stop_daemon() == 0
    wait_for(lambda: time.time() > due + 1, 40, "the planned time to pass")
    assert _complete_backups(dep) == []  # nobody ran it

    dep.start_daemon()
    wait_for(lambda: _entry(dep)["last_job_at"], 120, "the missed backup to be caught up")
    entry = _entry(dep)
    assert (entry["last_job"], entry["last_job_error"]) == ("base-backup", None)
    (backup,) = _complete_backups(dep)
    assert backup.started_at > due  # taken after the restart, not at the planned time
    # Planned anew for next year: one catch-up, not a run for every missed second.
    assert (_planned_at(dep) or 0) > due + 300 * 86400
    catalog = Catalog(f"sqlite:///{dep.state_dir / 'catalog.db'}")
    try:
        assert [b.state for b in catalog.backups(dep.connector)] == ["done"]
    finally:
        catalog.close()
    assert dep.stop_daemon() == 0


def test_scheduled_backup_is_drilled_and_a_standby_restored_from_it_replays(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.primary.execute("create table t (id int); insert into t select generate_series(1, 500)")
    due = float(int(time.time()) + 12)
    _write_schedule(
        dep,
        "nightly",
        f'action = "base-backup"\nconnectors = ["main"]\ncron = "{_cron_at(due)}"\n',
    )
    dep.start_daemon()
    wait_for(lambda: _entry(dep)["drill_state"], 300, "the scheduled backup and its drill")
    entry = _entry(dep)
    assert entry["drill_state"] == "passed", entry
    assert entry["last_job"] == "base-backup" and entry["last_job_error"] is None
    assert entry["rebuild_rto_s"] > 0 and entry["last_base_backup_at"] is not None
    (backup,) = _complete_backups(dep)
    assert (dep.incoming / dep.connector / "drills" / f"{backup.backup_id}.json").exists()

    dep.logship("standby", "restore", dep.connector, "--backup", backup.backup_id)
    dep.primary.execute("insert into t select generate_series(501, 900)")
    dep.wait_replayed(dep.switch_wal())
    assert dep.standby.query("select count(*) from t") == [(900,)]
    assert dep.stop_daemon() == 0


def test_stopping_the_daemon_cuts_a_running_drill_without_a_verdict(
    deployment: Deployment,
) -> None:
    dep = deployment
    # A drill that would sit in its query for minutes: only the stop can end it soon.
    connector_file = dep.config_dir / "connectors" / f"{dep.connector}.toml"
    connector_file.write_text(
        connector_file.read_text() + '\n[drill]\nquery = "select pg_sleep(600)"\n'
    )
    due = float(int(time.time()) + 8)
    _write_schedule(
        dep,
        "nightly",
        f'action = "base-backup"\nconnectors = ["main"]\ncron = "{_cron_at(due)}"\n',
    )
    dep.start_daemon()
    scratch = dep.incoming / dep.connector / "drill"

    def drill_querying() -> bool:
        log = list(scratch.glob("run-*/postgresql.log"))
        return bool(log) and "ready to accept connections" in log[0].read_text()

    wait_for(drill_querying, 180, "the drill to reach its query")
    started = time.monotonic()
    assert dep.stop_daemon(timeout=120) == 0
    assert time.monotonic() - started < 60
    catalog = Catalog(f"sqlite:///{dep.state_dir / 'catalog.db'}")
    try:
        assert catalog.last_drill(dep.connector) is None  # no verdict either way
        assert [b.state for b in catalog.backups(dep.connector)] == ["done"]
    finally:
        catalog.close()
    # The drill at the site noticed the cut link, stopped its server and tidied up.
    wait_for(lambda: not list(scratch.glob("run-*")), 60, "the drill's scratch folder to go")
    assert _entry(dep)["drill_state"] is None
