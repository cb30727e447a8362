"""`archive-wal`: PostgreSQL's archive_command, a durable copy into the spool.

A segment the read-ahead has already shipped is confirmed before this module is
even imported (logship.cli.entry, archive_confirm); this is the way for the rest.

Runs once per WAL segment inside PostgreSQL's serial archiver, so it imports only
the stdlib, and not `dataclasses` (see walnames). The spool file's mtime is the
segment's close time: the moment PostgreSQL handed the segment over. PostgreSQL's
`basic_archive` module writes into the same spool and gets the same meaning from
the mtime of its copy.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import NamedTuple

from logship.durable import (
    DIR_MODE,
    FILE_MODE,
    free_bytes,
    fsync_dir,
    read_chunks,
    sha256_of,
)
from logship.engines.postgresql import walnames
from logship.errors import OperationFailed, UsageError
from logship.temp_names import temp_beside
from logship.tombstones import SHIPPED_DIR, shipped_sha256

#: bytes per copy_file_range call: a whole default-sized segment at once
KERNEL_COPY_BYTES = 16 * 1024 * 1024


def tombstone_path(spool_dir: Path, name: str) -> Path:
    """Where the sha256 of a shipped (and removed) spool file is kept."""
    return spool_dir / SHIPPED_DIR / name


class ArchiveResult(NamedTuple):
    name: str
    already_archived: bool


def _same_content(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                return False
            if not ca:
                return True


def _check_repush(final: Path, source: Path) -> bool:
    """True when `name` was archived before with identical content; raise on different."""
    if final.exists():
        if _same_content(final, source):
            return True
        raise OperationFailed(
            f"{final.name} is already in the spool at {final} with different "
            "content; refusing to overwrite it (investigate before removing either copy)"
        )
    recorded = shipped_sha256(final.parent, final.name)
    if recorded is not None:
        if recorded == sha256_of(source):
            return True
        raise OperationFailed(
            f"{final.name} was already shipped with a different sha256 (recorded in "
            f"{tombstone_path(final.parent, final.name)}); refusing to archive different content"
        )
    return False


def archive_wal(spool_dir: Path, source: Path, *, now_ns: int | None = None) -> ArchiveResult:
    handed_over_ns = now_ns if now_ns is not None else time.time_ns()
    name = source.name
    if not walnames.is_archivable(name):
        raise UsageError(f"{name!r} is not a WAL segment, .history or .backup file name")
    if not spool_dir.is_dir():
        spool_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    final = spool_dir / name
    try:
        if _check_repush(final, source):
            return ArchiveResult(name, already_archived=True)
        tmp = temp_beside(final)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            with os.fdopen(fd, "wb") as out:
                copy_into(source, out.fileno())
                os.utime(out.fileno(), ns=(handed_over_ns, handed_over_ns))
                os.fsync(out.fileno())
            # link() never replaces an existing name, unlike rename(): a concurrent
            # push of the same segment cannot clobber the copy that won.
            try:
                os.link(tmp, final)
            except FileExistsError:
                if _check_repush(final, source):
                    return ArchiveResult(name, already_archived=True)
                raise
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(spool_dir)
    except FileNotFoundError as exc:
        raise OperationFailed(f"{exc.filename}: no such file") from None
    except PermissionError as exc:
        raise OperationFailed(
            f"{exc.filename}: permission denied (the spool must belong to the "
            "user PostgreSQL runs as)"
        ) from None
    except OSError as exc:
        # The temp is gone (see above) and exit 1 makes PostgreSQL try again later.
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OperationFailed(
                f"spool {spool_dir}: no space left for {name} ({_mib(free_bytes(spool_dir))} "
                "MiB free); PostgreSQL retries it, and its pg_wal grows until space is freed"
            ) from None
        raise OperationFailed(f"spool {spool_dir}: writing {name} failed: {exc}") from None
    return ArchiveResult(name, already_archived=False)


def copy_into(source: Path, out_fd: int) -> None:
    """Copy in the kernel (copy_file_range): no pass through this process's memory."""
    with open(source, "rb") as src:
        in_fd = src.fileno()
        try:
            while os.copy_file_range(in_fd, out_fd, KERNEL_COPY_BYTES):
                pass
            return
        except OSError as exc:
            # Across some file systems (or old kernels) it is not offered at all;
            # nothing was written then, so the plain copy starts from the beginning.
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            if os.lseek(out_fd, 0, os.SEEK_CUR) != 0:
                raise
    for chunk in read_chunks(source):
        os.write(out_fd, chunk)


def _mib(size: int | None) -> str:
    return "?" if size is None else f"{size / (1024 * 1024):.1f}"
