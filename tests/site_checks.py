"""What every fault test checks at the end: the site holds each archived segment
once, bit-identical, under its final name, with no gap."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from logship.demo_sandbox.deployment import Deployment
from logship.engines.postgresql import walnames
from logship.engines.postgresql.archive_wal import SHIPPED_DIR, tombstone_path
from logship.manifest import SiteLayout


def status_entry(dep: Deployment) -> dict[str, Any]:
    """The connector's entry in `status --json`."""
    out = dep.logship("status", dep.connector, "--json", check=False)
    assert out.returncode == 0, out.stderr
    (entry,) = json.loads(out.stdout)["connectors"]
    return entry  # type: ignore[no-any-return]


def log_events(dep: Deployment) -> list[dict[str, Any]]:
    """The daemon's structured log lines so far."""
    lines = dep.daemon_log.read_text().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def site_layout(dep: Deployment) -> SiteLayout:
    return SiteLayout.for_connector(dep.incoming.as_posix(), dep.connector)


def last_archived(dep: Deployment) -> str:
    ((last,),) = dep.primary.query("select last_archived_wal from pg_stat_archiver")
    return str(last) if last else ""


def all_shipped(dep: Deployment) -> bool:
    """PostgreSQL's last archived segment is at the site and the spool is empty."""
    last = last_archived(dep)
    if not last or not dep.spool_dir.is_dir():
        return False
    spool = [p for p in dep.spool_dir.iterdir() if walnames.is_archivable(p.name)]
    return bool(last) and not spool and Path(site_layout(dep).record_path(last)).exists()


def check_site(dep: Deployment) -> int:
    """Every archived segment at the site once, bit-identical; returns how many."""
    layout = site_layout(dep)
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
    # Private at the site: every file 0600, every folder 0700.
    for folder, dirs, files in os.walk(Path(layout.root)):
        for name in dirs:
            assert stat.S_IMODE(os.lstat(os.path.join(folder, name)).st_mode) == 0o700, name
        for name in files:
            assert stat.S_IMODE(os.lstat(os.path.join(folder, name)).st_mode) == 0o600, name
    return len(records)


@dataclass
class SiteAudit:
    """What the site holds against what the primary archived, counted, not asserted."""

    segments: int = 0
    #: shipped by the primary (a spool tombstone) but absent at the site, or a gap
    missing: list[str] = field(default_factory=list)
    #: stored bytes or content that differ from the manifest or from what was archived
    corrupt: list[str] = field(default_factory=list)
    #: anything else in the WAL folder: temps, duplicates, files without a record
    strays: list[str] = field(default_factory=list)


def _content_sha256(record: dict[str, object], data: bytes) -> str:
    if record["compression"] == "zstd":
        data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return hashlib.sha256(data).hexdigest()


def audit_site(dep: Deployment) -> SiteAudit:
    layout = site_layout(dep)
    wal_dir, manifest_dir = Path(layout.wal_dir), Path(layout.manifest_dir)
    audit = SiteAudit()
    records = {p.name[: -len(".json")]: p for p in manifest_dir.iterdir() if p.suffix == ".json"}
    stored_names: set[str] = set()
    for name, path in sorted(records.items()):
        record = json.loads(path.read_text())
        stored = wal_dir / record["stored_name"]
        stored_names.add(stored.name)
        if not stored.exists():
            audit.missing.append(name)
            continue
        data = stored.read_bytes()
        tombstone = tombstone_path(dep.spool_dir, name)
        archived = tombstone.read_text().strip() if tombstone.exists() else record["sha256"]
        if (
            hashlib.sha256(data).hexdigest() != record["stored_sha256"]
            or _content_sha256(record, data) != record["sha256"]
            or archived != record["sha256"]
        ):
            audit.corrupt.append(name)
    audit.strays = sorted(p.name for p in wal_dir.iterdir() if p.name not in stored_names)
    shipped = {p.name for p in (dep.spool_dir / SHIPPED_DIR).iterdir()}
    audit.missing += sorted(shipped - set(records))
    segments = sorted(n for n in records if walnames.parse(n) and len(n) == 24)
    audit.segments = len(segments)
    numbers = [int(n[8:16], 16) * 0x100 + int(n[16:], 16) for n in segments]
    if numbers:
        have = set(numbers)
        audit.missing += [
            f"gap at {n:016X}" for n in range(numbers[0], numbers[-1] + 1) if n not in have
        ]
    return audit
