"""What every fault test checks at the end: the site holds each archived segment
once, bit-identical, under its final name, with no gap."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import zstandard

from logship.demo_sandbox.deployment import Deployment
from logship.engines.postgresql import walnames
from logship.engines.postgresql.archive_wal import SHIPPED_DIR, tombstone_path
from logship.manifest import SiteLayout
from logship.spool import kept_path


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


def archived_through(dep: Deployment, lsn: str) -> bool:
    """PostgreSQL's archiver has taken the segment that ends before `lsn`."""
    ((done,),) = dep.primary.query(
        "select coalesce(pg_walfile_name(%s::pg_lsn - 1) <= last_archived_wal, false) "
        "from pg_stat_archiver",
        (lsn,),
    )
    return bool(done)


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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _handed_over_sha256(dep: Deployment, name: str) -> str | None:
    """sha256 of `name` as it still is in pg_wal, or None once PostgreSQL recycled it.

    A segment marked .done is never written again under its name; recycling renames
    it first, so the same inode still under the same name after the read means the
    bytes read are the ones PostgreSQL archived."""
    path = dep.primary.data_dir / "pg_wal" / name
    try:
        before = os.stat(path)
        digest = _sha256_file(path)
        after = os.stat(path)
    except FileNotFoundError:
        return None
    return digest if (before.st_ino, before.st_dev) == (after.st_ino, after.st_dev) else None


def durable_at_site(dep: Deployment, name: str) -> str | None:
    """Why `name` is not durable at the site with the content PostgreSQL handed over;
    None when it is (its manifest record, the stored bytes matching it, and the
    record's sha256 equal to pg_wal's file while that is still there)."""
    layout = site_layout(dep)
    try:
        record = json.loads(Path(layout.record_path(name)).read_text())
        data = (Path(layout.wal_dir) / record["stored_name"]).read_bytes()
    except FileNotFoundError:
        return "not at the site"
    if hashlib.sha256(data).hexdigest() != record["stored_sha256"]:
        return "stored bytes differ from the record"
    if _content_sha256(record, data) != record["sha256"]:
        return "content differs from the record"
    handed = _handed_over_sha256(dep, name)
    if handed is not None and handed != record["sha256"]:
        return f"the site has sha256 {record['sha256'][:12]}, pg_wal {handed[:12]}"
    return None


def archived_names(dep: Deployment) -> set[str]:
    """What PostgreSQL counts as archived now: its .done marks and its last archived."""
    status = dep.primary.data_dir / "pg_wal" / "archive_status"
    names = {p.name.removesuffix(".done") for p in status.iterdir() if p.name.endswith(".done")}
    if last := last_archived(dep):
        names.add(last)
    return {n for n in names if walnames.is_archivable(n)}


class ArchiveGuard:
    """Checks, over and over on a thread, that every file PostgreSQL counts as archived
    is either in the spool (or kept there) or durable at the site with its content:
    nothing confirmed to the archiver may exist nowhere.

    A file once found durable at the site stays so (the site never rewrites one),
    so it is not hashed again; one in the spool is looked at each round."""

    def __init__(self, dep: Deployment, every_s: float = 0.3) -> None:
        self.dep = dep
        self.every_s = every_s
        self.violations: list[str] = []
        self.rounds = 0
        self.at_site: set[str] = set()
        self.seen: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="archive-guard", daemon=True)

    def __enter__(self) -> ArchiveGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
            except psycopg.OperationalError:
                pass  # the primary restarting: the next round looks again
            except Exception as exc:  # surfaced by assert_held, not lost with the thread
                self.violations.append(f"the check failed: {exc!r}")
            self._stop.wait(self.every_s)

    def check(self) -> None:
        """One round; violations are collected, not raised, to be asserted at the end."""
        spool = self.dep.spool_dir
        for name in sorted(archived_names(self.dep) - self.at_site):
            self.seen.add(name)
            # The spool first: a spool copy goes only once the file is at the site.
            if (spool / name).exists() or kept_path(spool, name).exists():
                continue
            why = durable_at_site(self.dep, name)
            if why is None:
                self.at_site.add(name)
            elif not any(v.startswith(f"{name}:") for v in self.violations):
                self.violations.append(f"{name}: archived, not in the spool, {why}")
        self.rounds += 1

    def ok(self) -> bool:
        """True, or AssertionError at once: wait_for predicates end with the cause."""
        assert not self.violations, self.violations
        return True

    def assert_held(self, min_rounds: int = 3) -> None:
        self._stop.set()
        self._thread.join(30)
        self.check()  # a last round on what is there now
        assert not self.violations, self.violations
        assert self.rounds >= min_rounds, f"only {self.rounds} rounds"
