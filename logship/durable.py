"""Local durable writes: temp name, fsync, atomic rename, fsync of the directory.

Stdlib only (used on the archive-wal hot path, which needs no hash: `hashlib`,
about 4 ms of a start, is imported where one is computed).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from logship.temp_names import temp_beside

FILE_MODE = 0o600
DIR_MODE = 0o700
COPY_CHUNK = 1 << 20


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_private_dir(directory: Path) -> None:
    """Create `directory` (and parents) with mode 0700 when it does not exist."""
    if not directory.is_dir():
        directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        fsync_dir(directory.parent)


def write_chunks_atomically(
    final: Path, chunks: Iterable[bytes], *, mtime_ns: int | None = None
) -> None:
    """Make `final` appear complete or not at all, and durable once this returns."""
    tmp = temp_beside(final)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        with os.fdopen(fd, "wb", closefd=True) as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            if mtime_ns is not None:
                os.utime(out.fileno(), ns=(mtime_ns, mtime_ns))
            os.fsync(out.fileno())
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def write_bytes_atomically(final: Path, data: bytes, *, mtime_ns: int | None = None) -> None:
    write_chunks_atomically(final, [data], mtime_ns=mtime_ns)


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on `path`'s file system (None:
    it cannot be asked)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def read_chunks(path: Path, chunk_size: int = COPY_CHUNK) -> Iterable[bytes]:
    with open(path, "rb") as src:
        while chunk := src.read(chunk_size):
            yield chunk


def sha256_of(path: Path) -> str:
    return sha256_of_chunks(read_chunks(path))


def sha256_of_chunks(chunks: Iterable[bytes]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()
