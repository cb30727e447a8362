"""`restore-wal`: PostgreSQL's restore_command at the standby site.

PostgreSQL reads exit codes 1..125 as "this file is not (yet) available": in
standby mode it waits and asks again, at the end of archive recovery it stops
replaying. So "not found" may only ever mean not found: an I/O error must exit
above 125, which makes PostgreSQL stop instead of silently ending recovery early.
A checksum mismatch is refused as "not available" (and logged loudly), so the
standby keeps waiting for a good copy rather than going down or replaying it.

The refused copy and its record are then moved aside into `quarantine/`, under the
site's own authority: their names are free again, so the daemon's re-ship from its
spool is a new file, never a replacement (which a restricted site's key may not do),
and the bad copy stays there to be looked at.

Runs once per segment: stdlib only, plus zstandard for compressed files.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from logship.engines.postgresql import walnames
from logship.errors import LogshipError, UsageError
from logship.manifest import ZSTD_SUFFIX, ManifestRecord, SiteLayout
from logship.temp_names import temp_beside

EXIT_ABORT = 255  # PostgreSQL: treat as fatal, never as "file not found"
CHUNK = 1 << 20
#: a temp (logship.temp_names) is created new or not at all: never an existing
#: file truncated, never a link planted at its name followed
_NEW_TEMP = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class NotArrived(LogshipError):
    exit_code = 1


class Refused(LogshipError):
    """A corrupt file or record: never handed to PostgreSQL."""

    exit_code = 1


class RestoreIOError(LogshipError):
    exit_code = EXIT_ABORT


#: (path, its stat when opened): what this run read, so that only that is set aside
Seen = list[tuple[Path, os.stat_result]]


def _read_record(layout: SiteLayout, name: str, seen: Seen) -> ManifestRecord:
    path = Path(layout.record_path(name))
    try:
        with open(path, "rb") as fh:
            seen.append((path, os.fstat(fh.fileno())))
            data = fh.read()
    except FileNotFoundError:
        raise NotArrived(f"{name}: not arrived yet (no manifest record at {path})") from None
    except OSError as exc:
        raise RestoreIOError(f"{name}: cannot read manifest record {path}: {exc}") from None
    try:
        record = ManifestRecord.from_json(data)
    except (ValueError, TypeError) as exc:
        raise Refused(f"{name}: manifest record {path} is corrupt ({exc}); refusing") from None
    if record.name != name:
        raise Refused(f"{name}: manifest record {path} names {record.name!r}; refusing")
    return record


def decompressor(compression: str):  # type: ignore[no-untyped-def]
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj()
    if compression == "none":
        return None
    raise ValueError(f"unknown compression {compression!r}")


def _copy_verified(record: ManifestRecord, source: Path, tmp: Path, seen: Seen) -> None:
    """Decompress `source` into `tmp`, checking both checksums in the same pass."""
    stored_digest, raw_digest = hashlib.sha256(), hashlib.sha256()
    stored_size = raw_size = 0
    try:
        unpack = decompressor(record.compression)
    except ValueError as exc:
        raise Refused(f"{record.name}: {exc}") from None
    try:
        with open(source, "rb") as src, os.fdopen(os.open(tmp, _NEW_TEMP, 0o600), "wb") as out:
            seen.append((source, os.fstat(src.fileno())))
            while chunk := src.read(CHUNK):
                stored_digest.update(chunk)
                stored_size += len(chunk)
                raw = unpack.decompress(chunk) if unpack else chunk
                raw_digest.update(raw)
                raw_size += len(raw)
                out.write(raw)
    except FileNotFoundError:
        raise Refused(
            f"{record.name}: manifest lists {source} but the file is missing; refusing"
        ) from None
    except OSError as exc:
        raise RestoreIOError(f"{record.name}: I/O error reading {source}: {exc}") from None
    except Exception as exc:  # zstandard raises its own error type for corrupt frames
        raise Refused(f"{record.name}: {source} does not decompress ({exc}); refusing") from None
    if stored_size != record.stored_size or stored_digest.hexdigest() != record.stored_sha256:
        raise Refused(
            f"{record.name}: checksum mismatch for {source} (stored sha256 "
            f"{stored_digest.hexdigest()[:16]}…, manifest {record.stored_sha256[:16]}…); "
            "refusing the file, the standby keeps waiting for a good copy"
        )
    if raw_size != record.size or raw_digest.hexdigest() != record.sha256:
        raise Refused(
            f"{record.name}: content sha256 differs from the manifest after decompression; "
            "refusing the file"
        )


def _write_note(path: Path, payload: dict[str, object]) -> None:
    """A small private JSON file for the primary's daemon, replaced whole (best
    effort: these notes are never what keeps the standby safe)."""
    tmp = temp_beside(path)
    try:
        fd = os.open(tmp, _NEW_TEMP, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(json.dumps(payload))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


def _note_restored(layout: SiteLayout, name: str) -> None:
    """Tell the primary's daemon how far the standby got (not durable)."""
    _write_note(Path(layout.restored_marker), {"name": name, "at": time.time()})


def _note_refused(layout: SiteLayout, name: str, reason: str, set_aside: list[str]) -> None:
    """Leave word for the primary's daemon, which ships the file again if it still
    has it."""
    note = Path(layout.refused_note(name))
    try:
        note.parent.mkdir(mode=0o700, exist_ok=True)
    except OSError:
        return
    _write_note(note, {"name": name, "at": time.time(), "reason": reason, "set_aside": set_aside})


def quarantine_refused(
    layout: SiteLayout, name: str, seen: Sequence[tuple[Path, os.stat_result]]
) -> list[str]:
    """Move the refused copy of `name` aside: its stored file, then its record (the
    record last, as shipping writes it last), each as `<UTC time>.<pid>.<file name>`
    in quarantine/. Returns the new names.

    Only WAL's own two stored names and its record are touched, and of those only
    the very files this run read (same inode), when it read them: a second reader
    (a drill) refusing the old copy must not move away a good one shipped meanwhile.
    """
    read = {path: (st.st_dev, st.st_ino) for path, st in seen}
    wal_dir = Path(layout.wal_dir)
    candidates = [wal_dir / (name + ZSTD_SUFFIX), wal_dir / name, Path(layout.record_path(name))]
    quarantine = Path(layout.quarantine_dir)
    stamp = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.{os.getpid()}"
    moved: list[str] = []
    for path in candidates:
        try:
            now = os.lstat(path)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(now.st_mode):
            continue  # not something shipping made
        if path in read and read[path] != (now.st_dev, now.st_ino):
            continue  # a new copy arrived since this run read the refused one
        quarantine.mkdir(mode=0o700, exist_ok=True)
        target = quarantine / f"{stamp}.{path.name}"
        os.rename(path, target)
        moved.append(target.name)
    return moved


def _set_aside(layout: SiteLayout, name: str, seen: Seen) -> tuple[list[str], str]:
    """quarantine_refused, never raising: (moved, a problem to add to the note)."""
    try:
        return quarantine_refused(layout, name, seen), ""
    except OSError as exc:
        return [], f" (could not move it aside into {layout.quarantine_dir}: {exc})"


def restore_wal(
    site_root: Path, connector: str, walname: str, dest: Path, *, mark: bool = True
) -> None:
    """Hand PostgreSQL the verified `walname` at `dest`.

    `mark=False` (`--no-mark`) skips the restored.json note: that note is the real
    standby's progress, and a scratch copy replaying the same WAL (the restore drill)
    must not move it. The file itself is checked exactly the same way.
    """
    parsed = walnames.parse(walname, allow_partial=True)
    if parsed is None:
        raise UsageError(
            f"{walname!r} is not a WAL segment, .history, .backup or .partial name; refusing"
        )
    layout = SiteLayout.for_connector(site_root.as_posix(), connector)
    tmp = temp_beside(dest)
    seen: Seen = []
    try:
        record = _read_record(layout, walname, seen)
        _copy_verified(record, Path(layout.wal_dir / record.stored_name), tmp, seen)
        os.replace(tmp, dest)
    except Refused as exc:
        tmp.unlink(missing_ok=True)
        # Aside first, then the note: the daemon acts on the note, and its re-ship
        # must find the names free.
        moved, problem = _set_aside(layout, walname, seen)
        _note_refused(layout, walname, str(exc) + problem, moved)
        if problem:
            raise Refused(f"{exc}{problem}") from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    Path(layout.refused_note(walname)).unlink(missing_ok=True)
    if mark and parsed.kind is walnames.WalKind.SEGMENT:
        _note_restored(layout, walname)
