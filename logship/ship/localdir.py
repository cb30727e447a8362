"""A transport into a directory on this host (same-host standby, tests)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from logship.durable import DIR_MODE, free_bytes, write_chunks_atomically
from logship.ship.transport import ERROR_LIMIT, OUTPUT_LIMIT, SiteOutputTooLarge


class LocalDirTransport:
    @property
    def is_alive(self) -> bool:
        return True  # a folder on this host: there is no connection to lose

    def put_atomic(self, path: PurePosixPath, chunks: Iterable[bytes]) -> int:
        written = 0

        def counted() -> Iterable[bytes]:
            nonlocal written
            for chunk in chunks:
                written += len(chunk)
                yield chunk

        write_chunks_atomically(Path(path), counted())
        return written

    def free_bytes(self, path: PurePosixPath) -> int | None:
        return free_bytes(Path(path))

    def append_durably(self, path: PurePosixPath, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)

    def read_bytes(self, path: PurePosixPath) -> bytes | None:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            return None

    def stat_mode(self, path: PurePosixPath) -> int | None:
        try:
            return os.stat(path).st_mode
        except FileNotFoundError:
            return None

    def makedirs(self, path: PurePosixPath) -> None:
        # One level at a time: os.makedirs gives the parents it makes the umask's
        # mode, not DIR_MODE.
        folder = Path(path)
        if folder.parent != folder and not folder.parent.is_dir():
            self.makedirs(PurePosixPath(folder.parent))
        try:
            os.mkdir(folder, DIR_MODE)
        except FileExistsError:
            if not folder.is_dir():
                raise

    def listdir(self, path: PurePosixPath) -> list[str]:
        try:
            return os.listdir(path)
        except FileNotFoundError:
            return []

    def remove(self, path: PurePosixPath) -> None:
        Path(path).unlink(missing_ok=True)

    def rmdir(self, path: PurePosixPath) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.rmdir(path)

    def run_command(
        self, argv: list[str], timeout: float, limit: int = OUTPUT_LIMIT
    ) -> tuple[int, bytes, bytes]:
        done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        if len(done.stdout) > limit:
            raise SiteOutputTooLarge(f"`{argv[0]}` printed more than {limit} bytes")
        return done.returncode, done.stdout, done.stderr[-ERROR_LIMIT:]

    def close(self) -> None:
        return None
