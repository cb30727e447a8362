"""Ship one spool file: compress and hash in one pass, durable upload, then its record."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator

from logship.durable import sha256_of_chunks
from logship.errors import OperationFailed
from logship.faults import crash_point
from logship.manifest import ManifestRecord, SiteLayout
from logship.ready_source import read_held
from logship.ship.transport import SiteRefused, Transport
from logship.spool import SpoolEntry

ZSTD_LEVEL = 1  # WAL compresses ~6x even at level 1; higher levels cost throughput


class ShipConflict(OperationFailed):
    """The site already holds this name with different content."""


class _Hashing:
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self.digest = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.digest.update(chunk)
            self.size += len(chunk)
            yield chunk


def _zstd(chunks: Iterator[bytes]) -> Iterator[bytes]:
    import zstandard

    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    for chunk in chunks:
        if out := compressor.compress(chunk):
            yield out
    yield compressor.flush()


def ship_file(
    transport: Transport,
    layout: SiteLayout,
    entry: SpoolEntry,
    compression: str,
    clock: Callable[[], float],
    *,
    replace: bool = False,
) -> ManifestRecord:
    """Make `entry` durable at the site with its manifest record; idempotent.

    `replace` ships it even over a record already there: the site's copy was
    found corrupt, and `entry` was checked against what was shipped first.
    """
    existing = None if replace else transport.read_bytes(layout.record_path(entry.name))
    if existing is not None:
        record = ManifestRecord.from_json(existing)
        if record.sha256 == sha256_of_chunks(read_held(entry)):
            return record  # shipped before a crash or restart: nothing to redo
        raise ShipConflict(
            f"{entry.name} is already at the site with sha256 {record.sha256[:12]}…, "
            "different from the spool copy; not overwriting it"
        )
    raw = _Hashing(_read(entry))
    # Uncompressed, the stored bytes are the raw bytes: hash them once.
    stored = _Hashing(_zstd(iter(raw))) if compression == "zstd" else raw
    target = layout.stored_wal(entry.name, compression)
    transport.put_atomic(target, _crash_mid_upload(stored))
    crash_point("ship-before-record")
    record = ManifestRecord(
        name=entry.name,
        size=raw.size,
        sha256=raw.digest.hexdigest(),
        stored_name=target.name,
        stored_size=stored.size,
        stored_sha256=stored.digest.hexdigest(),
        compression=compression,
        closed_at=entry.closed_at,
        arrived_at=clock(),
    )
    # The record goes last: a record always describes a complete, durable file.
    try:
        transport.put_atomic(layout.record_path(entry.name), _crash_mid_record(record.to_json()))
    except SiteRefused:
        # A restricted site never replaces a record: when the site set a corrupt
        # copy aside and this re-ship put the same bytes back, its record stands.
        standing = _same_file_record(transport, layout, record)
        if standing is None:
            raise
        return standing
    return record


def _read(entry: SpoolEntry) -> Iterator[bytes]:
    """The chunks to upload (see logship.ready_source.read_held)."""
    yield from read_held(entry)
    if entry.held_by is not None:
        crash_point("readahead-read-done")


def _same_file_record(
    transport: Transport, layout: SiteLayout, record: ManifestRecord
) -> ManifestRecord | None:
    """The record at the site when it describes the same stored bytes as `record`."""
    data = transport.read_bytes(layout.record_path(record.name))
    try:
        standing = ManifestRecord.from_json(data) if data is not None else None
    except (ValueError, TypeError, KeyError):
        return None
    same = ("name", "size", "sha256", "stored_name", "stored_size", "stored_sha256")
    if standing is None or any(getattr(standing, k) != getattr(record, k) for k in same):
        return None
    return standing


def _crash_mid_upload(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The chunks, with a crash point once the temp holds some of them."""
    for index, chunk in enumerate(chunks):
        if index == 1:
            crash_point("ship-mid-upload")
        yield chunk
    crash_point("ship-mid-upload")  # a file of one chunk: all of it, not renamed


def _crash_mid_record(content: bytes) -> Iterator[bytes]:
    """The record's bytes, with a crash point while its temp is open at the site."""
    half = len(content) // 2
    yield content[:half]
    crash_point("ship-mid-record")
    yield content[half:]
