"""Stale upload temps in a connector's folders, swept by the site itself.

An upload cut short (a killed daemon, a lost link) leaves its temp behind. The
primary used to remove such temps when it connected; a restricted site's key may
remove nothing, so the site sweeps them under its own authority: from
`retention --at-site`, `standby status` and each `site-receive` start. Only
temp names (logship.temp_names), only in logship's own folders (never the
drill's scratch or a data dir), only when untouched long enough: every writer
writes at least once per `io_timeout`, so a temp that old has no writer left.

The folders are reached by descriptor from the connector's folder, one
component at a time, never through a link: a folder swapped for a link cannot
lead an unlink elsewhere, and a link planted at a temp name is removed itself,
never what it points to.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from logship.manifest import SiteLayout
from logship.temp_names import is_temp_name, made_by_temp_name

#: a temp (or an incomplete backup folder) unchanged this long is abandoned
STALE_TEMP_S = 3600.0
#: folders under the connector's root that hold logship's own files
_FOLDERS = ("wal", "manifest", "refused", "drills", "consistency", "quarantine")
_BASE = "base"
_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_below(folder: int, name: str) -> int | None:
    """`name` in `folder` as a descriptor; None when it is missing or not a real folder."""
    try:
        return os.open(name, _FOLDER, dir_fd=folder)
    except OSError:
        return None  # not there (yet), a link or a file, or not ours to read


def _subfolders(folder: int) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return [e.name for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _folders(connector: int) -> Iterator[int]:
    """The connector's folder and logship's own folders in it, each a descriptor
    open while the caller looks at it (close the generator when stopping early)."""
    yield connector
    base = _open_below(connector, _BASE)
    below = [(connector, name) for name in _FOLDERS]
    try:
        if base is not None:
            below += [(base, name) for name in _subfolders(base)]
        for parent, name in below:
            fd = _open_below(parent, name)
            if fd is None:
                continue
            try:
                yield fd
            finally:
                os.close(fd)
    finally:
        if base is not None:
            os.close(base)


def _stale(name: str, info: os.stat_result, now: float, older_than: float) -> bool:
    """A temp this scheme names is stale after `older_than`; another name with the
    temp prefix (an older logship's, or one planted) only after STALE_TEMP_S too."""
    if stat.S_ISDIR(info.st_mode):
        return False
    grace = older_than if made_by_temp_name(name) else max(older_than, STALE_TEMP_S)
    return now - info.st_mtime >= grace


def sweep_connector_temps(
    connector: int, now: float, *, older_than: float = STALE_TEMP_S, dry_run: bool = False
) -> int:
    """Remove (with `dry_run`: count) the stale temps in the connector's folder,
    held as the descriptor `connector`, and in logship's own folders below it."""
    swept = 0
    with contextlib.closing(_folders(connector)) as folders:
        for folder in folders:
            try:
                with os.scandir(folder) as entries:
                    names = [e.name for e in entries if is_temp_name(e.name)]
            except OSError:
                continue  # not ours to read
            for name in names:
                try:
                    info = os.stat(name, dir_fd=folder, follow_symlinks=False)
                    if not _stale(name, info, now, older_than):
                        continue
                    if not dry_run:
                        os.unlink(name, dir_fd=folder)  # a planted link goes, not its target
                except OSError:
                    # Renamed into place or swept meanwhile, or not ours to remove:
                    # the sweep is tidying, never a reason for its caller to fail.
                    continue
                swept += 1
    return swept


def sweep_stale_temps(
    layout: SiteLayout, now: float, *, older_than: float = STALE_TEMP_S, dry_run: bool = False
) -> int:
    """sweep_connector_temps of `layout`'s connector folder (0 when it is not there)."""
    try:
        # The site root comes from the site's own config (it may be reached
        # through a link); below it, nothing is followed.
        site_root = os.open(layout.root.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        connector = _open_below(site_root, layout.root.name)
    finally:
        os.close(site_root)
    if connector is None:
        return 0
    try:
        return sweep_connector_temps(connector, now, older_than=older_than, dry_run=dry_run)
    finally:
        os.close(connector)


def last_change(folder: Path) -> float | None:
    """The newest mtime of `folder` and what it holds (not following links)."""
    try:
        newest = os.lstat(folder).st_mtime
        for entry in os.scandir(folder):
            newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except OSError:
        return None
    return newest
