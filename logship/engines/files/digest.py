"""One side of a tree as `verify` compares it: type, mode, size, sha256, link target.

The standby site lists its tree with `logship tree-digest`, one JSON object per
line. Paths and link targets travel as base64 of their bytes: a name may be any
bytes but "/" and NUL (newlines, invalid UTF-8), and none is ever decoded.
A listing ends with a `done` line, so a listing cut short (a broken link, a
killed process) is never read as "everything after this is missing".
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logship.engines.files.exclude import ExcludeRules
from logship.engines.files.scan import EntryKind, TreeEntry, scan_tree, sha256_file
from logship.errors import first_line
from logship.jsonin import load_object
from logship.temp_names import is_files_temp_name

#: one entry: a base64 path (at most PATH_MAX) and its figures
MAX_DIGEST_LINE = 64 * 1024


@dataclass(frozen=True)
class DigestEntry:
    """One path of a tree with the sha256 of a file's content."""

    path: bytes
    kind: EntryKind
    mode: int
    size: int
    sha256: str | None = None  # files only
    link_target: bytes | None = None  # symlinks only
    #: why a file's content could not be read (then sha256 is None)
    error: str | None = None
    #: as scanned, to notice a change made while verify ran; never sent or compared
    mtime_ns: int | None = None

    def to_line(self) -> str:
        return json.dumps(
            {
                "path": _b64(self.path),
                "kind": str(self.kind),
                "mode": self.mode,
                "size": self.size,
                "sha256": self.sha256,
                "link_target": None if self.link_target is None else _b64(self.link_target),
                "error": self.error,
            }
        )


class DigestFormatError(ValueError):
    pass


@dataclass(frozen=True)
class DigestEnd:
    """The last line of a complete listing (`count` entries), or why it stopped."""

    count: int | None
    error: str | None = None


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise DigestFormatError(f"{what} is not base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DigestFormatError(f"{what} is not valid base64") from None


def end_line(count: int | None, error: str | None = None) -> str:
    return json.dumps({"done": error is None, "count": count, "error": error})


def parse_line(line: bytes | str) -> DigestEntry | DigestEnd:
    """One line of `tree-digest` output; DigestFormatError when it is not one."""
    try:
        raw = load_object(line, "digest line", MAX_DIGEST_LINE)
    except ValueError as exc:
        raise DigestFormatError(str(exc)) from None
    if "done" in raw:
        count = raw.get("count")
        error = raw.get("error")
        if error is None and not isinstance(count, int):
            raise DigestFormatError("end line without a count")
        return DigestEnd(
            count if isinstance(count, int) else None, None if error is None else str(error)
        )
    try:
        kind = EntryKind(raw["kind"])
        mode, size = raw["mode"], raw["size"]
        if not isinstance(mode, int) or not isinstance(size, int):
            raise DigestFormatError("mode and size must be integers")
        link = raw.get("link_target")
        sha = raw.get("sha256")
        error = raw.get("error")
        return DigestEntry(
            path=_unb64(raw["path"], "path"),
            kind=kind,
            mode=mode,
            size=size,
            sha256=sha if isinstance(sha, str) else None,
            link_target=None if link is None else _unb64(link, "link_target"),
            error=error if isinstance(error, str) else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, DigestFormatError):
            raise
        raise DigestFormatError(f"bad entry: {first_line(exc)}") from None


def with_digest(root: Path, entry: TreeEntry) -> DigestEntry | None:
    """`entry` with its content's sha256; None when the file vanished meanwhile."""
    sha256 = error = None
    if entry.kind is EntryKind.FILE:
        try:
            # surrogateescape: the OS gets back exactly these bytes
            sha256 = sha256_file(root / os.fsdecode(entry.path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            # Not str(exc): it repeats the path, which may not even be valid text.
            error = exc.strerror or type(exc).__name__
    return DigestEntry(
        path=entry.path,
        kind=entry.kind,
        mode=entry.mode,
        size=entry.size,
        sha256=sha256,
        link_target=entry.link_target,
        error=error,
        mtime_ns=entry.mtime_ns,
    )


def digest_tree(root: Path, rules: ExcludeRules) -> Iterator[DigestEntry]:
    """Every entry below `root` with sha256 of files, parents before children.

    The files connector's temp files are skipped wherever they are, on both sides: at the
    site they are uploads in flight or leftovers it removes, and a source
    name with that prefix could not be told from them.
    """
    for entry in scan_tree(root, rules):
        # A temp folder's contents are in flight too.
        if any(is_files_temp_name(part) for part in entry.path.split(b"/")):
            continue
        digested = with_digest(root, entry)
        if digested is not None:
            yield digested
