"""Retention at the site: what a connector's folder holds, and deleting from it.

Only `Transport` calls, so it works over SFTP and on a local directory alike. Each
deletion goes in the order that keeps the site consistent if it stops half way: a
backup's `backup.json` before its data (restore no longer offers it), a WAL file's
manifest record before the file (restore-wal only hands out what has a record).
"""

from __future__ import annotations

import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from logship.engines.postgresql import walnames
from logship.engines.postgresql.retention_plan import DEFAULT_SEGMENT_SIZE
from logship.engines.postgresql.walnames import WalKind
from logship.errors import first_line
from logship.manifest import ZSTD_SUFFIX, BackupRecord, ManifestRecord, SiteLayout
from logship.ship.transport import Transport
from logship.temp_names import is_temp_name

if TYPE_CHECKING:
    from logship.catalog.store import Catalog

#: backup folder names (UTC timestamp ids); temp names start with "." and never match
_BACKUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MIN_SEGMENT_SIZE = 1024 * 1024
_MAX_SEGMENT_SIZE = 1024 * 1024 * 1024


@dataclass(frozen=True)
class SiteContents:
    """What a connector's folder at the site holds, as retention sees it."""

    backups: tuple[BackupRecord, ...]
    incomplete: tuple[str, ...]
    #: backup id -> why its backup.json cannot be used (such backups are kept)
    unreadable: Mapping[str, str]
    #: manifest names (no `.zst`) found in wal/ or manifest/
    wal_names: tuple[str, ...]


def _read_backup(
    transport: Transport, layout: SiteLayout, connector: str, backup_id: str
) -> BackupRecord | str | None:
    """The backup's record; None when it has none; a problem (str) when unusable."""
    data = transport.read_bytes(layout.backup_record(backup_id))
    if data is None:
        return None
    try:
        record = BackupRecord.from_json(data)
    except (ValueError, TypeError) as exc:
        return f"{layout.backup_record(backup_id)}: {first_line(exc)}"
    if record.connector != connector or record.backup_id != backup_id:
        return (
            f"{layout.backup_record(backup_id)} describes backup {record.backup_id} of "
            f"connector {record.connector!r}"
        )
    return record


def _wal_names(transport: Transport, layout: SiteLayout) -> tuple[str, ...]:
    # Both folders: a crash between deleting a record and its file leaves a file
    # without a record, and such a file must still go.
    names = {
        stored.removesuffix(ZSTD_SUFFIX)
        for stored in transport.listdir(layout.wal_dir)
        if not is_temp_name(stored)
    }
    names.update(
        record.removesuffix(".json")
        for record in transport.listdir(layout.manifest_dir)
        if record.endswith(".json") and not is_temp_name(record)
    )
    return tuple(sorted(n for n in names if walnames.parse(n, allow_partial=True) is not None))


def scan_site(transport: Transport, layout: SiteLayout, connector: str) -> SiteContents:
    backups: list[BackupRecord] = []
    incomplete: list[str] = []
    unreadable: dict[str, str] = {}
    for name in sorted(transport.listdir(layout.base_dir)):
        if not _BACKUP_ID.match(name):
            continue
        mode = transport.stat_mode(layout.backup_dir(name))
        if mode is None or not stat.S_ISDIR(mode):
            continue
        found = _read_backup(transport, layout, connector, name)
        if found is None:
            incomplete.append(name)
        elif isinstance(found, str):
            unreadable[name] = found
        else:
            backups.append(found)
    return SiteContents(
        tuple(backups), tuple(incomplete), unreadable, _wal_names(transport, layout)
    )


def read_manifest(transport: Transport, layout: SiteLayout, name: str) -> ManifestRecord | None:
    data = transport.read_bytes(layout.record_path(name))
    if data is None:
        return None
    try:
        record = ManifestRecord.from_json(data)
    except (ValueError, TypeError):
        return None
    return record if record.name == name else None


def _is_segment_size(size: int) -> bool:
    return _MIN_SEGMENT_SIZE <= size <= _MAX_SEGMENT_SIZE and size & (size - 1) == 0


def site_segment_size(
    transport: Transport,
    layout: SiteLayout,
    wal_names: Sequence[str],
    catalog: Catalog | None,
    connector: str,
) -> int:
    """The cluster's WAL segment size: a shipped segment's recorded size, else the
    catalog's rows, else PostgreSQL's default."""
    segments = [n for n in wal_names if (p := walnames.parse(n)) and p.kind is WalKind.SEGMENT]
    if segments:
        record = read_manifest(transport, layout, segments[-1])
        if record is not None and _is_segment_size(record.size):
            return record.size
    if catalog is not None:
        from logship.engines.postgresql.lag import segment_size

        prefix = catalog.walk_checkpoint(connector)  # read off the rows already
        return prefix.segment_size if prefix is not None else segment_size(catalog.files(connector))
    return DEFAULT_SEGMENT_SIZE


def remove_backup(transport: Transport, layout: SiteLayout, backup_id: str) -> None:
    # The record first: from that moment restore no longer offers this backup.
    transport.remove(layout.backup_record(backup_id))
    remove_folder(transport, layout.backup_dir(backup_id))


def remove_folder(transport: Transport, directory: PurePosixPath) -> None:
    for name in transport.listdir(directory):
        transport.remove(directory / name)
    transport.rmdir(directory)


def _stored_names(name: str, record: ManifestRecord | None) -> list[str]:
    candidates = [name + ZSTD_SUFFIX, name]
    # A record's stored_name is only trusted when it is one of the two forms.
    if record is not None and record.stored_name in candidates:
        return [record.stored_name]
    return candidates


def remove_wal(transport: Transport, layout: SiteLayout, name: str) -> ManifestRecord | None:
    """Delete one WAL file and its record; returns the record when it could be read."""
    record = read_manifest(transport, layout, name)
    transport.remove(layout.record_path(name))
    for stored in _stored_names(name, record):
        transport.remove(layout.wal_dir / stored)
    return record
