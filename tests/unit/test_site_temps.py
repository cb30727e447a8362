"""The site's one stale-temp sweep, walked by descriptor: links are never followed."""

from __future__ import annotations

import os
import time
from pathlib import Path, PurePosixPath

from logship.manifest import SiteLayout
from logship.site_temps import STALE_TEMP_S, sweep_stale_temps
from logship.temp_names import temp_name

HOUR = 3600.0


def _old(path: Path, age: float = 2 * HOUR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    then = time.time() - age
    os.utime(path, (then, then), follow_symlinks=False)
    return path


def test_a_folder_swapped_for_a_link_leads_no_unlink_outside(tmp_path: Path) -> None:
    layout = SiteLayout.for_connector(PurePosixPath(tmp_path / "site"), "orders")
    root = Path(layout.root)
    root.mkdir(parents=True)
    # Someone who can write in the connector's folder makes `wal` and a backup
    # folder links to folders elsewhere, holding files with temp names.
    elsewhere = tmp_path / "elsewhere"
    kept = [_old(elsewhere / ".tmp.precious"), _old(elsewhere / temp_name())]
    (root / "wal").symlink_to(elsewhere)
    (root / "base").mkdir()
    (root / "base" / "b1").symlink_to(elsewhere)
    swept = _old(root / "manifest" / temp_name())
    assert sweep_stale_temps(layout, time.time()) == 1
    assert not swept.exists()
    assert all(path.exists() for path in kept)


def test_a_temp_of_this_scheme_goes_after_the_callers_age_any_other_after_an_hour(
    tmp_path: Path,
) -> None:
    layout = SiteLayout.for_connector(PurePosixPath(tmp_path / "site"), "orders")
    wal = Path(layout.wal_dir)
    ours = _old(wal / temp_name(), age=700)
    older_logships = _old(wal / ".tmp.000000010000000000000001.zst.1234.ab12", age=700)
    assert sweep_stale_temps(layout, time.time(), older_than=600) == 1
    assert not ours.exists() and older_logships.exists()
    assert sweep_stale_temps(layout, time.time() + STALE_TEMP_S, older_than=600) == 1
    assert not older_logships.exists()


def test_a_missing_connector_folder_sweeps_nothing(tmp_path: Path) -> None:
    layout = SiteLayout.for_connector(PurePosixPath(tmp_path / "site"), "orders")
    assert sweep_stale_temps(layout, time.time()) == 0
