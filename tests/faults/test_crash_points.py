"""kill -9 of the daemon at chosen points while PostgreSQL archives under load.

Each crash point (logship.faults) kills the daemon with SIGKILL once; it is
started again with the same environment and must then converge: every
segment PostgreSQL archived is at the site exactly once, bit-identical, with
no temp file left visible as a segment, and the standby replays to the
primary's last LSN.
"""

from __future__ import annotations

import hashlib
import json
import signal
from pathlib import Path

import pytest
import zstandard

from logship import walnames
from logship.archive import tombstone_path
from logship.faults import ENV
from logship.manifest import SiteLayout
from logship.sandbox.deployment import Deployment, wait_for

POINTS = [
    "ship-mid-upload",  # the segment's temp partly written at the site
    "ship-before-record",  # the segment renamed into place, no manifest record yet
    "ship-mid-record",  # the record's temp open at the site
    "ship-before-catalog",  # segment and record durable, the catalog not told
    "ship-before-retire",  # the catalog told, the spool copy not yet removed
]


def _site(dep: Deployment) -> SiteLayout:
    return SiteLayout.for_connector(dep.incoming.as_posix(), dep.connector)


def _archived(dep: Deployment) -> str:
    ((last,),) = dep.primary.query("select last_archived_wal from pg_stat_archiver")
    return str(last) if last else ""


def _all_shipped(dep: Deployment) -> bool:
    last = _archived(dep)
    spool = [p for p in dep.spool_dir.iterdir() if walnames.is_archivable(p.name)]
    return bool(last) and not spool and Path(_site(dep).record_path(last)).exists()


def _check_site(dep: Deployment) -> int:
    """Every archived segment at the site once, bit-identical; returns how many."""
    layout = _site(dep)
    wal_dir, manifest_dir = Path(layout.wal_dir), Path(layout.manifest_dir)
    stored = sorted(p.name for p in wal_dir.iterdir())
    records = {p.name[: -len(".json")] for p in manifest_dir.iterdir() if p.suffix == ".json"}
    # Nothing but complete segments under their final names: no temp, no duplicate.
    bases = [name.removesuffix(".zst") for name in stored]
    assert len(bases) == len(set(bases)), stored
    assert set(bases) == records, set(bases) ^ records
    assert not [p for p in manifest_dir.iterdir() if p.suffix != ".json"]
    segments = sorted(n for n in records if walnames.parse(n) and len(n) == 24)
    numbers = [int(n[8:16], 16) * 0x100 + int(n[16:], 16) for n in segments]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a gap"
    for name in records:
        record = json.loads((manifest_dir / f"{name}.json").read_text())
        data = (wal_dir / record["stored_name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["stored_sha256"]
        if record["compression"] == "zstd":
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        assert hashlib.sha256(data).hexdigest() == record["sha256"]
        # What PostgreSQL handed to archive-wal, as the spool recorded it.
        tombstone = tombstone_path(dep.spool_dir, name)
        assert tombstone.read_text().strip() == record["sha256"], name
    return len(records)


@pytest.mark.e2e
@pytest.mark.parametrize("point", POINTS)
def test_kill_9_at_a_crash_point_loses_nothing_and_duplicates_nothing(
    deployment: Deployment, point: str
) -> None:
    dep = deployment
    flag = dep.state_dir / "crashed"  # the daemon's user creates it
    crash = {ENV: f"{point}:{flag}"}
    daemon = dep.start_daemon(env=crash)
    dep.primary.pgbench("-i", "-s", "2", "-q")
    dep.switch_wal()
    wait_for(lambda: daemon.poll() is not None, 120, f"the daemon killed at {point}")
    assert flag.exists()
    # runuser reports its child's SIGKILL as 128 + 9.
    assert daemon.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL)
    dep.stop_daemon()

    dep.start_daemon(env=crash)  # the flag exists: it runs through the point now
    dep.primary.pgbench("-c", "2", "-T", "3", "-n")
    dep.switch_wal()
    wait_for(lambda: _all_shipped(dep), 120, "every archived segment shipped")
    assert _check_site(dep) >= 3

    dep.standby_up()
    dep.wait_replayed(dep.switch_wal())
    wait_for(lambda: _all_shipped(dep), 120, "the last segment shipped")
    _check_site(dep)
