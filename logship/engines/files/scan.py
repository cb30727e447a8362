"""Walking the source tree without following links or trusting names.

Paths are bytes relative to the source root ("etc/app.conf" as b"etc/app.conf"):
a name may be any bytes but "/" and NUL, including newlines and invalid UTF-8,
and it is never decoded to be handed on, only to match exclude patterns.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from logship.engines.files.exclude import ExcludeRules

READ_CHUNK = 1 << 20


class EntryKind(StrEnum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(frozen=True)
class TreeEntry:
    """One path under the source as lstat saw it (a symlink is never followed)."""

    path: bytes  # relative to the source root, "/"-separated
    kind: EntryKind
    mode: int  # permission bits only (stat.S_IMODE)
    size: int  # bytes of a file; 0 for directories; len(target) for links
    mtime_ns: int
    link_target: bytes | None = None
    #: a file's status change time. Every write moves it and nothing can set it
    #: back, unlike mtime: a rewrite that keeps the size and restores the mtime
    #: (`cp -p`, `touch -r`, a deploy tool keeping times) still shows here. None
    #: for folders (theirs moves with every entry made inside them) and links,
    #: and for a row an older logship recorded.
    ctime_ns: int | None = None

    def same_metadata(self, other: TreeEntry) -> bool:
        """True when nothing lstat shows has changed (content is judged by sha256).

        A ctime is compared only when both sides know it.
        """
        if (self.kind, self.mode, self.size, self.mtime_ns, self.link_target) != (
            other.kind,
            other.mode,
            other.size,
            other.mtime_ns,
            other.link_target,
        ):
            return False
        return self.ctime_ns is None or other.ctime_ns is None or self.ctime_ns == other.ctime_ns


def file_entry(relative: bytes, st: os.stat_result, size: int) -> TreeEntry:
    """A regular file's entry from its (l/f)stat, with `size` bytes of content."""
    mode = stat.S_IMODE(st.st_mode)
    return TreeEntry(relative, EntryKind.FILE, mode, size, st.st_mtime_ns, ctime_ns=st.st_ctime_ns)


def entry_for(root: bytes, relative: bytes, st: os.stat_result) -> TreeEntry | None:
    """The entry for an lstat result; None for what never ships (sockets, fifos,
    devices)."""
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISREG(st.st_mode):
        return file_entry(relative, st, st.st_size)
    if stat.S_ISDIR(st.st_mode):
        return TreeEntry(relative, EntryKind.DIR, mode, 0, st.st_mtime_ns)
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(os.path.join(root, relative))
        return TreeEntry(relative, EntryKind.SYMLINK, mode, len(target), st.st_mtime_ns, target)
    return None


def lstat_entry(source: Path, relative: bytes) -> TreeEntry | None:
    """The current entry at `relative`, or None when it is gone (or never ships)."""
    root = os.fsencode(source)
    try:
        st = os.lstat(os.path.join(root, relative))
    except FileNotFoundError:
        return None
    return entry_for(root, relative, st)


def scan_tree(source: Path, rules: ExcludeRules, below: bytes = b"") -> Iterator[TreeEntry]:
    """Every entry that ships below `source` (or only below its folder `below`),
    parents before children; paths stay relative to `source`.

    Excluded directories are not entered. Entries that vanish while the walk runs
    are skipped: the watcher or the next scan sees their removal.
    """
    root = os.fsencode(source)
    pending: list[bytes] = [below]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(os.path.join(root, folder) if folder else root) as listing:
                children = sorted(listing, key=lambda item: item.name)
        except (FileNotFoundError, NotADirectoryError):
            continue
        subfolders = []
        for child in children:
            relative = folder + b"/" + child.name if folder else child.name
            try:
                st = child.stat(follow_symlinks=False)
                entry = entry_for(root, relative, st)
            except FileNotFoundError:
                continue
            if entry is None or rules.excludes(relative, is_dir=entry.kind is EntryKind.DIR):
                continue
            yield entry
            if entry.kind is EntryKind.DIR:
                subfolders.append(relative)
        pending.extend(reversed(subfolders))


def sha256_file(path: Path | bytes) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
