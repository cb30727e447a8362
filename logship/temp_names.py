"""Temp names: what every file logship writes is called until its atomic rename.

One scheme for every writer, on the primary and at the site: a prefix, then 32
hex digits. The digits are random, or keyed with a secret of this process:

- unpredictable: a local user who can write in the folder cannot plant a link
  at the name a write is about to open;
- always created exclusively (O_CREAT | O_EXCL, SFTP's FXF_EXCL): a file or a
  link already at the name fails the open; it is never truncated or written
  through;
- keyed (`keyed_files_temp_name`): the same for the same path in one process, so
  a retry over SFTP, where the site cannot clean up after a cut upload, finds
  and removes its own leftover before it writes a new one; nobody else can
  compute it.

Two prefixes, one per kind of folder: TEMP_PREFIX in logship's own folders (the
spool, the site layout, pg_wal), FILES_TEMP_PREFIX in a files connector's folders, whose own
file names may be anything, `.tmp.*` among them.

Stdlib only, and nothing that costs a start its milliseconds: archive-wal and
restore-wal name their temps here.
"""

from __future__ import annotations

import os
import re
from pathlib import PurePath
from typing import TypeVar

TEMP_PREFIX = ".tmp."
FILES_TEMP_PREFIX = b".logship-tmp."
_TAIL_BYTES = 16
#: this process's key for keyed_files_temp_name: nobody else can compute its names
_PROCESS_KEY = os.urandom(32)
_SCHEME = re.compile(re.escape(TEMP_PREFIX) + f"[0-9a-f]{{{2 * _TAIL_BYTES}}}")

P = TypeVar("P", bound=PurePath)


def random_tail() -> str:
    return os.urandom(_TAIL_BYTES).hex()


def temp_name() -> str:
    """A new temp name for a file in one of logship's own folders."""
    return TEMP_PREFIX + random_tail()


def temp_beside(final: P) -> P:
    """A new temp for `final`, in its folder (rename(2) stays in one file system)."""
    return final.with_name(temp_name())


def is_temp_name(name: str) -> bool:
    """True for a temp in logship's own folders: this scheme's, or an older
    logship's (which put the final name and its pid in it)."""
    return name.startswith(TEMP_PREFIX)


def made_by_temp_name(name: str) -> bool:
    """True for a name `temp_name` makes (the others with the prefix are an
    older logship's leftovers, or not logship's at all)."""
    return _SCHEME.fullmatch(name) is not None


def files_temp_name() -> bytes:
    """A new temp name for a file in a files connector's folders."""
    return FILES_TEMP_PREFIX + random_tail().encode()


def keyed_files_temp_name(relative: bytes) -> bytes:
    """The temp for the file at `relative` (its whole path below the folder) in this process.

    The same on every try: see the module's docstring. Removed first, then
    created exclusively: a link planted in between makes the open fail, never
    a write through it.
    """
    import hmac  # hashlib with it: only the files connector needs them

    digest = hmac.new(_PROCESS_KEY, relative, "sha256").hexdigest()
    return FILES_TEMP_PREFIX + digest[: 2 * _TAIL_BYTES].encode()


def is_files_temp_name(path: bytes) -> bool:
    """True when the last component of `path` (bytes, "/"-separated) is a files connector's temp."""
    return path.rpartition(b"/")[2].startswith(FILES_TEMP_PREFIX)
