"""Stale upload temps in a connector's folders, swept by the site itself.

An upload cut short (a killed daemon, a lost link) leaves its temp behind. The
primary used to remove such temps when it connected; a restricted site's key may
remove nothing, so the site sweeps them under its own authority, from
`retention --at-site` and `standby status`. Only names with the temp prefix, only
in logship's own folders (never the drill's scratch or a data dir), only when
untouched for `STALE_TEMP_S`: every writer writes at least once per `io_timeout`,
so a temp that old has no writer left.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

from logship.manifest import SiteLayout
from logship.ship.transport import TEMP_PREFIX

#: a temp (or an incomplete backup folder) unchanged this long is abandoned
STALE_TEMP_S = 3600.0
#: folders under the connector's root that hold logship's own files
_FOLDERS = ("wal", "manifest", "refused", "drills", "consistency", "quarantine")


def _folders(layout: SiteLayout) -> Iterator[Path]:
    root = Path(layout.root)
    yield root
    for name in _FOLDERS:
        yield root / name
    base = Path(layout.base_dir)
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield base / entry.name


def sweep_stale_temps(
    layout: SiteLayout, now: float, *, older_than: float = STALE_TEMP_S, dry_run: bool = False
) -> int:
    """Remove (with `dry_run`: count) temps unchanged for `older_than` seconds."""
    swept = 0
    for folder in _folders(layout):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue  # not there (yet), or not ours to read
        for entry in entries:
            if not entry.name.startswith(TEMP_PREFIX):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode) or now - info.st_mtime < older_than:
                    continue
                if not dry_run:
                    os.unlink(folder / entry.name)  # a planted link goes, not its target
            except OSError:
                # Renamed into place or swept meanwhile, or not ours to remove: the
                # sweep is tidying, never a reason for its caller to fail.
                continue
            swept += 1
    return swept


def last_change(folder: Path) -> float | None:
    """The newest mtime of `folder` and what it holds (not following links)."""
    try:
        newest = os.lstat(folder).st_mtime
        for entry in os.scandir(folder):
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except OSError:
        return None
    return newest
