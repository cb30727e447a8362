"""A byte flipped in a shipped segment at the site: restore-wal refuses it, the
standby never replays it, and the daemon ships it again from the spool's kept copy,
or says plainly that it cannot."""

from __future__ import annotations

from pathlib import Path

import pytest
from site_checks import check_site, log_events, site_layout, status_entry

from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.manifest import ManifestRecord
from logship.spool import kept_path


def _corrupt_next_segment(dep: Deployment) -> tuple[str, str]:
    """With the standby stopped, close a segment holding a new table and flip a byte of
    it at the site; returns (segment, the LSN past it)."""
    dep.start_daemon()
    dep.standby_up()
    dep.wait_replayed(dep.switch_wal())
    dep.standby.stop()
    dep.primary.execute("create table marker as select 42 as answer")
    ((segment,),) = dep.primary.query("select pg_walfile_name(pg_current_wal_lsn())")
    lsn = dep.switch_wal()
    layout = site_layout(dep)
    record_path = Path(layout.record_path(segment))
    wait_for(record_path.exists, 60, f"{segment} shipped")
    record = ManifestRecord.from_json(record_path.read_bytes())
    stored = Path(layout.wal_dir) / record.stored_name
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    # The spool keeps it once the catalog has it: a moment after the site does.
    kept = kept_path(dep.spool_dir, segment)
    wait_for(kept.exists, 30, "the shipped copy kept in the spool")
    return segment, lsn


def _never_replayed(dep: Deployment, lsn: str) -> None:
    assert dep.standby.query("select pg_is_in_recovery()") == [(True,)]
    assert dep.standby.query("select pg_last_wal_replay_lsn() < %s::pg_lsn", (lsn,)) == [(True,)]
    assert dep.standby.query("select to_regclass('marker') is null") == [(True,)]


@pytest.mark.e2e
def test_a_segment_refused_as_corrupt_is_shipped_again(deployment: Deployment) -> None:
    dep = deployment
    segment, lsn = _corrupt_next_segment(dep)
    dep.standby.start()
    dep.wait_replayed(lsn)
    assert dep.standby.query("select answer from marker") == [(42,)]

    # Started by hand this time, the standby logs to the sandbox's file. A flipped
    # byte fails the checksum or, inside a zstd frame, the decompression itself.
    assert f"{segment}: " in dep.standby.log_file.read_text(), "the bad copy came first"
    assert "refusing" in dep.standby.log_file.read_text()
    events = log_events(dep)
    assert any(e.get("event") == "re-shipped" and e.get("file") == segment for e in events)
    assert not Path(site_layout(dep).refused_note(segment)).exists()
    check_site(dep)  # bit-identical again
    # Restored by the standby, so no longer kept.
    wait_for(lambda: not kept_path(dep.spool_dir, segment).exists(), 30, "the kept copy pruned")
    assert status_entry(dep)["site_error"] is None


@pytest.mark.e2e
def test_a_corrupt_segment_with_no_good_copy_left_is_reported(deployment: Deployment) -> None:
    dep = deployment
    segment, lsn = _corrupt_next_segment(dep)
    kept_path(dep.spool_dir, segment).unlink()
    dep.standby.start()

    def reported() -> str | None:
        error = status_entry(dep)["site_error"]
        return error if error and segment in error else None

    error = wait_for(reported, 60, "the corrupt segment reported")
    assert "no good copy" in error and "base-backup" in error, error
    _never_replayed(dep, lsn)
    events = log_events(dep)
    assert any(e.get("event") == "corrupt at the site" for e in events)
