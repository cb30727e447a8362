"""Read-ahead on the real path: WAL ships from pg_wal as soon as PostgreSQL marks it
ready, archive-wal confirms it without a spool copy, the standby replays it."""

from __future__ import annotations

from pathlib import Path

import pytest
from site_checks import all_shipped, archived_through, check_site, log_events
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.durable import sha256_of
from logship.engines.postgresql import walnames
from logship.engines.postgresql.archive_wal import tombstone_path
from logship.read_ahead_beat import SHIPPING, STOPPED, read_beat
from logship.spool import kept_path


def shipped_from(dep: Deployment) -> dict[str, str]:
    """Each shipped file's source as the daemon logged it."""
    return {e["file"]: e["source"] for e in log_events(dep) if e.get("event") == "shipped"}


class _Arrivals(FileSystemEventHandler):
    """WAL file names that appear in a folder."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def on_created(self, event: FileSystemEvent) -> None:
        self.names.append(Path(str(event.src_path)).name)

    def on_moved(self, event: FileSystemEvent) -> None:
        self.names.append(Path(str(event.dest_path)).name)


@pytest.mark.e2e
def test_wal_ships_from_pg_wal_and_archive_wal_confirms_it(read_ahead: Deployment) -> None:
    dep = read_ahead
    dep.start_daemon()
    wait_for(
        lambda: (beat := read_beat(dep.spool_dir)) is not None and beat.state == SHIPPING,
        60,
        "the daemon's read-ahead beat",
    )
    spool_copies = _Arrivals()
    observer = Observer()
    observer.schedule(spool_copies, str(dep.spool_dir))
    observer.start()
    dep.primary.pgbench("-i", "-s", "2", "-q")
    switched = dep.switch_wal()
    wait_for(lambda: archived_through(dep, switched), 120, "the archiver through the switch")
    wait_for(lambda: all_shipped(dep), 120, "every archived segment shipped")
    observer.stop()
    observer.join()
    count = check_site(dep)
    assert count >= 2

    sources = shipped_from(dep)
    segments = [name for name in sources if walnames.is_archivable(name)]
    read_ahead_shipped = [name for name in segments if sources[name] == "read-ahead"]
    # Each segment's tombstone is the sha256 archive-wal compared its own hash with.
    assert all(tombstone_path(dep.spool_dir, name).exists() for name in segments)
    assert len(read_ahead_shipped) >= count // 2, sources
    # archive-wal made no spool copy of those: it confirmed them.
    copied = {name for name in spool_copies.names if walnames.is_archivable(name)}
    assert not copied & set(read_ahead_shipped), (copied, sources)
    # Each keeps a copy for a re-ship, as a spool copy would be kept.
    for name in read_ahead_shipped:
        kept = kept_path(dep.spool_dir, name)
        assert sha256_of(kept) == tombstone_path(dep.spool_dir, name).read_text().strip()

    dep.standby_up()
    dep.wait_replayed(dep.switch_wal())
    assert dep.stop_daemon() == 0
    beat = read_beat(dep.spool_dir)
    assert beat is not None and beat.state == STOPPED
