"""Setting aside the WAL an old primary holds past the divergence point, with the
loss report, so that its lost commits can still be extracted by hand after a
rewind or a new base backup has thrown them away.

Copies are durable (temp, fsync, rename, fsync of the folder) and private (a 0700
folder, 0600 files). The sources are opened in pg_wal without following links,
under names that match the strict segment pattern.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from logship import jsonout
from logship.durable import DIR_MODE, fsync_dir, write_bytes_atomically, write_chunks_atomically
from logship.engines.postgresql import walnames
from logship.engines.postgresql.divergence import DivergenceReport
from logship.errors import OperationFailed, SafetyRefusal, shown_text

REPORT_NAME = "report.json"
COPY_CHUNK = 1 << 20


def copy_aside(data_dir: Path, report: DivergenceReport, dest_dir: Path) -> list[Path]:
    """Copy the segments of `report` from `data_dir`'s pg_wal into `dest_dir` (0700,
    made if missing), each file 0600 and durable, then `report.json`; the paths
    written, in that order."""
    _private_folder(dest_dir)
    pg_wal = data_dir / "pg_wal"
    written: list[Path] = []
    try:
        # pg_wal itself may be a link (initdb -X): PostgreSQL follows it too.
        wal_fd = os.open(pg_wal, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise OperationFailed(f"cannot open {pg_wal}: {exc.strerror or exc}") from None
    try:
        for name in report.segments:
            parsed = walnames.parse(name)
            if (
                parsed is None
                or parsed.kind is not walnames.WalKind.SEGMENT
                or parsed.timeline != report.timeline
            ):
                raise OperationFailed(
                    f"{shown_text(name, 80)!r} is not a WAL segment of timeline {report.timeline}"
                )
            target = dest_dir / name
            write_chunks_atomically(target, _segment_chunks(wal_fd, pg_wal, name, report))
            written.append(target)
    finally:
        os.close(wal_fd)
    target = dest_dir / REPORT_NAME
    text = jsonout.dumps(report.to_json(), indent=2, sort_keys=True) + "\n"
    write_bytes_atomically(target, text.encode())
    written.append(target)
    return written


def _segment_chunks(
    wal_fd: int, pg_wal: Path, name: str, report: DivergenceReport
) -> Iterator[bytes]:
    """The bytes of segment `name`, opened in pg_wal without following a link."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=wal_fd)
    except OSError as exc:
        raise OperationFailed(
            f"cannot open {pg_wal / name}: {exc.strerror or exc} (a link is not followed)"
        ) from None
    with os.fdopen(fd, "rb") as src:
        st = os.fstat(src.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size != report.segment_size:
            raise OperationFailed(
                f"{pg_wal / name} is not a regular file of {report.segment_size} bytes"
            )
        left = report.segment_size
        while left > 0 and (chunk := src.read(min(left, COPY_CHUNK))):
            left -= len(chunk)
            yield chunk
        if left:
            raise OperationFailed(f"{pg_wal / name} shrank while it was copied")


def _private_folder(dest_dir: Path) -> None:
    try:
        st = os.lstat(dest_dir)
    except FileNotFoundError:
        dest_dir.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        dest_dir.mkdir(mode=DIR_MODE)
        fsync_dir(dest_dir.parent)
        st = os.lstat(dest_dir)
    if not stat.S_ISDIR(st.st_mode):
        raise SafetyRefusal(
            f"{dest_dir} exists and is not a folder (a link?); name a folder for the WAL copy"
        )
    os.chmod(dest_dir, DIR_MODE)  # mkdir's mode went through the umask
