"""The small interface every transport to a site implements."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Protocol

from logship.errors import OperationFailed, SafetyRefusal


class RestrictedError(SafetyRefusal):
    """An operation a restricted shipping key cannot make at its site (see ship.gated)."""


class SiteRefused(OperationFailed):
    """A restricted site refused one request (a name already taken by other
    content, say); the link stands."""


#: what a command at the site may print on stdout before it is an error (a
#: hostile or broken site must not make the primary's memory grow without end)
OUTPUT_LIMIT = 1024 * 1024
#: stderr is only ever quoted (its last line): the rest is cut
ERROR_LIMIT = 64 * 1024
#: the largest file read back from the site whole (manifest records, markers)
READ_LIMIT = 1024 * 1024


class SiteOutputTooLarge(OperationFailed):
    """The site sent more than the caller allows: the read stops there."""


class Transport(Protocol):
    """Idempotent file operations at one site; paths are as seen at that site."""

    @property
    def is_alive(self) -> bool:
        """Whether the connection still stands: an operation that failed on a live
        connection is the site refusing it (full, read-only), not a lost link."""
        ...

    def put_atomic(self, path: PurePosixPath, chunks: Iterable[bytes]) -> int:
        """Write `path` complete or not at all (temp, fsync, rename, fsync dir).

        Returns the number of bytes written. Replaces an existing file, except at
        a restricted site (GatedTransport): there the final name is made with
        link(2), which never replaces; the same content again is a success,
        other content is refused (SiteRefused).
        """
        ...

    def append_durably(self, path: PurePosixPath, data: bytes) -> None:
        """Append to a private (0600) log file, created when missing; fsync it."""
        ...

    def read_bytes(self, path: PurePosixPath) -> bytes | None:
        """The file's content, or None when it does not exist; SiteOutputTooLarge
        beyond READ_LIMIT (only small records are read back whole)."""
        ...

    def stat_mode(self, path: PurePosixPath) -> int | None:
        """st_mode of `path`, or None when it does not exist."""
        ...

    def makedirs(self, path: PurePosixPath) -> None:
        """Create `path` and missing parents with mode 0700."""
        ...

    def listdir(self, path: PurePosixPath) -> list[str]:
        """Names in `path`; empty when it does not exist."""
        ...

    def remove(self, path: PurePosixPath) -> None:
        """Remove a file; no error when it is already gone. RestrictedError at a
        restricted site (as `rmdir`): retention runs there."""
        ...

    def rmdir(self, path: PurePosixPath) -> None:
        """Remove an empty directory; no error when it is already gone."""
        ...

    def free_bytes(self, path: PurePosixPath) -> int | None:
        """Bytes an unprivileged writer may still use on `path`'s file system (None:
        the site cannot tell)."""
        ...

    def run_command(
        self, argv: list[str], timeout: float, limit: int = OUTPUT_LIMIT
    ) -> tuple[int, bytes, bytes]:
        """Run a command at the site: (exit status, stdout, stderr). More than
        `limit` bytes on stdout is SiteOutputTooLarge; stderr is cut at ERROR_LIMIT."""
        ...

    def close(self) -> None: ...
