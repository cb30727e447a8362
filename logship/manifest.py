"""The standby site's source of truth: where shipped files live and what they are.

Layout under `<site root>/<connector>/`:

    wal/<name>[.zst]          shipped WAL files, complete or absent
    manifest/<name>.json      one record per shipped file (written after the file)
    base/<backup id>/         base backups (base.tar.zst, backup_manifest, backup.json)
    drills/<backup id>.json   the last restore drill of each backup
    restored.json             the WAL file the standby last asked for and was handed
    refused/<name>.json       a file restore-wal refused as corrupt (the primary's
                              daemon ships it again from its spool)
    quarantine/<time>.<pid>.<file>   the refused copy and its record, set aside by
                              restore-wal so that a re-ship is a new file
    PROMOTED                  marker: this standby was promoted; ship nothing more

A record is written only after its file is durable, so a record always describes
a complete file. Stdlib only: `restore-wal` reads this once per segment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

from logship.engines.postgresql import walnames
from logship.jsonin import load_object

FORMAT = 1
ZSTD_SUFFIX = ".zst"
BACKUP_RECORD_NAME = "backup.json"
BACKUP_MANIFEST_NAME = "backup_manifest"


@dataclass(frozen=True)
class SiteLayout:
    """Paths for one connector at its site (POSIX paths as seen at that site)."""

    root: PurePosixPath

    @classmethod
    def for_connector(cls, site_root: PurePosixPath | str, connector: str) -> SiteLayout:
        return cls(PurePosixPath(site_root) / connector)

    @property
    def wal_dir(self) -> PurePosixPath:
        return self.root / "wal"

    @property
    def manifest_dir(self) -> PurePosixPath:
        return self.root / "manifest"

    @property
    def base_dir(self) -> PurePosixPath:
        return self.root / "base"

    @property
    def restored_marker(self) -> PurePosixPath:
        return self.root / "restored.json"

    @property
    def refused_dir(self) -> PurePosixPath:
        return self.root / "refused"

    def refused_note(self, name: str) -> PurePosixPath:
        return self.refused_dir / f"{name}.json"

    @property
    def quarantine_dir(self) -> PurePosixPath:
        return self.root / "quarantine"

    @property
    def promoted_marker(self) -> PurePosixPath:
        return self.root / "PROMOTED"

    def stored_wal(self, name: str, compression: str) -> PurePosixPath:
        return self.wal_dir / (name + ZSTD_SUFFIX if compression == "zstd" else name)

    def record_path(self, name: str) -> PurePosixPath:
        return self.manifest_dir / f"{name}.json"

    def backup_dir(self, backup_id: str) -> PurePosixPath:
        return self.base_dir / backup_id

    def backup_record(self, backup_id: str) -> PurePosixPath:
        return self.backup_dir(backup_id) / BACKUP_RECORD_NAME

    def backup_manifest(self, backup_id: str) -> PurePosixPath:
        return self.backup_dir(backup_id) / BACKUP_MANIFEST_NAME

    @property
    def drill_dir(self) -> PurePosixPath:
        """Where restore drills record their results (`<backup id>.json`)."""
        return self.root / "drills"

    @property
    def generations_log(self) -> PurePosixPath:
        """A files connector's sync generations, one JSON line each (append only)."""
        return self.root / "generations.jsonl"

    @property
    def consistency_dir(self) -> PurePosixPath:
        """A files connector's completed consistency points (`<point id>.json`)."""
        return self.root / "consistency"


@dataclass(frozen=True)
class ManifestRecord:
    name: str
    size: int
    sha256: str
    stored_name: str
    stored_size: int
    stored_sha256: str
    compression: str
    closed_at: float
    arrived_at: float
    format: int = FORMAT

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> ManifestRecord:
        """The record; ValueError when it is malformed in any way. Its names
        become paths at the site: only a WAL name, stored as itself or `.zst`."""
        raw = load_object(data, "manifest record")
        if raw.get("format") != FORMAT:
            raise ValueError(f"unsupported manifest record format {raw.get('format')!r}")
        try:
            record = cls(**raw)
        except TypeError as exc:
            raise ValueError(f"manifest record: {exc}") from None
        record._check()
        return record

    def _check(self) -> None:
        for key in ("name", "sha256", "stored_name", "stored_sha256", "compression"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"manifest record: {key} is not a string")
        for key in ("size", "stored_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"manifest record: {key} is not a size")
        for key in ("closed_at", "arrived_at"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"manifest record: {key} is not a time")
        if walnames.parse(self.name, allow_partial=True) is None:
            raise ValueError(f"manifest record: {self.name[:60]!r} is not a WAL file name")
        if self.stored_name not in (self.name, self.name + ZSTD_SUFFIX):
            raise ValueError(
                f"manifest record: stored_name {self.stored_name[:80]!r} is neither "
                f"{self.name} nor {self.name}{ZSTD_SUFFIX}"
            )


@dataclass(frozen=True)
class BackupRecord:
    backup_id: str
    connector: str
    started_at: float
    finished_at: float
    stored_name: str
    stored_size: int
    stored_sha256: str
    size: int
    compression: str
    pg_version: str | None
    #: where replay of this backup starts (backup_label's START WAL LOCATION) and the
    #: LSN it must reach to be consistent (backup_manifest's WAL-Ranges end)
    start_lsn: str | None = None
    stop_lsn: str | None = None
    timeline: int | None = None
    #: WAL files from start_wal to stop_wal make this backup consistent; every
    #: shipped segment from start_wal on is what replaying it needs
    start_wal: str | None = None
    stop_wal: str | None = None
    #: the server's backup_manifest, kept next to the tar (None: only inside it)
    manifest_name: str | None = None
    format: int = FORMAT

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> BackupRecord:
        raw = load_object(data, "backup record")
        if raw.get("format") != FORMAT:
            raise ValueError(f"unsupported backup record format {raw.get('format')!r}")
        try:
            return cls(**raw)
        except TypeError as exc:
            raise ValueError(f"backup record: {exc}") from None
