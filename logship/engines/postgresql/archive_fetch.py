"""WAL segments fetched back from a site's shipped archive over SFTP, verified.

A reinstate's pg_rewind reads the old primary's own WAL from before the fork;
when its checkpoints recycled that WAL, the copies it shipped are at the other
site. They come back here checked against their manifest record (both sha256
and sizes), written complete or not at all.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path, PurePosixPath

from logship.durable import write_chunks_atomically
from logship.engines.postgresql import walnames
from logship.engines.postgresql.restore_wal import decompressor
from logship.errors import OperationFailed
from logship.manifest import ManifestRecord, SiteLayout
from logship.ship.sftp import SftpTransport

CHUNK = 1 << 20
#: a stored segment is at most its raw size plus a little framing
MAX_STORED = 1 << 30


def fetch_segment(transport: SftpTransport, layout: SiteLayout, name: str, dest_dir: Path) -> Path:
    """`name` from the site into `dest_dir` (mode 0600), verified; its path."""
    parsed = walnames.parse(name)
    if parsed is None or parsed.kind is not walnames.WalKind.SEGMENT:
        raise OperationFailed(f"{name!r} is not a WAL segment name")
    data = transport.read_bytes(layout.record_path(name))
    if data is None:
        raise OperationFailed(f"{name}: not in the shipped archive at {layout.root}")
    try:
        record = ManifestRecord.from_json(data)
    except (ValueError, TypeError, KeyError) as exc:
        raise OperationFailed(
            f"{name}: its manifest record at the site is corrupt ({exc})"
        ) from None
    if record.name != name or not 0 <= record.stored_size <= MAX_STORED:
        raise OperationFailed(f"{name}: its manifest record at the site does not describe it")
    stored = PurePosixPath(layout.wal_dir) / record.stored_name
    if stored.parent != layout.wal_dir:
        raise OperationFailed(f"{name}: its record names a file outside the archive")
    stored_digest, raw_digest = hashlib.sha256(), hashlib.sha256()
    sizes = [0, 0]

    def chunks():  # type: ignore[no-untyped-def]
        try:
            unpack = decompressor(record.compression)
        except ValueError as exc:
            raise OperationFailed(f"{name}: {exc}") from None
        with transport.sftp.open(str(stored), "rb") as remote:
            remote.prefetch(record.stored_size)
            while chunk := remote.read(CHUNK):
                sizes[0] += len(chunk)
                if sizes[0] > record.stored_size:
                    raise OperationFailed(f"{name}: larger at the site than its record says")
                stored_digest.update(chunk)
                raw = unpack.decompress(chunk) if unpack else chunk
                sizes[1] += len(raw)
                raw_digest.update(raw)
                yield raw
        if (
            sizes != [record.stored_size, record.size]
            or stored_digest.hexdigest() != record.stored_sha256
            or raw_digest.hexdigest() != record.sha256
        ):
            raise OperationFailed(f"{name}: the copy at the site does not match its record")

    final = dest_dir / name
    write_chunks_atomically(final, chunks())
    os.chmod(final, 0o600)
    return final
