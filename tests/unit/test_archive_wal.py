"""archive-wal: durable spool copy, close time, idempotent re-push, names."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from offline_config import write_offline_config

from logship.durable import sha256_of
from logship.engines.postgresql.archive_wal import archive_wal, shipped_sha256, tombstone_path
from logship.errors import OperationFailed, UsageError
from logship.spool import kept_path, prune_kept, retire

SEGMENT = "000000010000000000000003"


def _wal(tmp_path: Path, name: str = SEGMENT, content: bytes = b"x" * 1024) -> Path:
    src = tmp_path / "pg_wal" / name
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(content)
    return src


def test_copy_is_private_and_records_close_time(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    archive_wal(spool, _wal(tmp_path), now_ns=1_700_000_000_123_000_000)
    copy = spool / SEGMENT
    assert copy.read_bytes() == b"x" * 1024
    assert copy.stat().st_mode & 0o777 == 0o600
    assert spool.stat().st_mode & 0o777 == 0o700
    assert copy.stat().st_mtime_ns == 1_700_000_000_123_000_000
    assert [p.name for p in spool.iterdir()] == [SEGMENT]  # no temp file left


def test_same_content_again_is_ok_different_content_refused(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    archive_wal(spool, _wal(tmp_path))
    assert archive_wal(spool, _wal(tmp_path)).already_archived
    with pytest.raises(OperationFailed, match="different content"):
        archive_wal(spool, _wal(tmp_path, content=b"y" * 1024))
    assert (spool / SEGMENT).read_bytes() == b"x" * 1024


def test_repush_after_shipping_is_judged_by_the_tombstone(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    archive_wal(spool, _wal(tmp_path))
    import hashlib

    retire(spool, SEGMENT, hashlib.sha256(b"x" * 1024).hexdigest(), keep=False)
    assert not (spool / SEGMENT).exists()
    assert tombstone_path(spool, SEGMENT).exists()
    assert archive_wal(spool, _wal(tmp_path)).already_archived
    with pytest.raises(OperationFailed, match="different sha256"):
        archive_wal(spool, _wal(tmp_path, content=b"z" * 1024))
    assert not (spool / SEGMENT).exists()


@pytest.mark.parametrize(
    "name",
    ["00000002.history", "000000010000000000000003.00000028.backup", SEGMENT],
)
def test_accepted_names(tmp_path: Path, name: str) -> None:
    archive_wal(tmp_path / "spool", _wal(tmp_path, name))
    assert (tmp_path / "spool" / name).exists()


@pytest.mark.parametrize(
    "name", ["archive_status", "000000010000000000000003.partial", "../etc", "0000000100000000"]
)
def test_other_names_refused(tmp_path: Path, name: str) -> None:
    src = tmp_path / "file"
    src.write_bytes(b"1")
    with pytest.raises(UsageError):
        archive_wal(tmp_path / "spool", src.with_name(name) if "/" not in name else src)


def test_cli_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "connectors").mkdir()
    (tmp_path / "logship.toml").write_text(f'[logship]\nstate_dir = "{tmp_path / "state"}"\n')
    (tmp_path / "connectors" / "main.toml").write_text('kind = "postgresql"\nsite = "dr"\n')
    cmd = [sys.executable, "-m", "logship", "--config", str(tmp_path / "logship.toml")]
    env = {**os.environ}
    ok = subprocess.run([*cmd, "archive-wal", "main", str(_wal(tmp_path))], env=env, check=False)
    assert ok.returncode == 0
    assert (tmp_path / "state" / "spool" / "main" / SEGMENT).exists()
    other = _wal(tmp_path, content=b"other")
    bad = subprocess.run(
        [*cmd, "archive-wal", "main", str(other)], capture_output=True, text=True, check=False
    )
    assert bad.returncode == 1 and "different content" in bad.stderr
    assert "Traceback" not in bad.stderr
    unknown = subprocess.run(
        [*cmd, "archive-wal", "nope", str(other)], capture_output=True, text=True, check=False
    )
    assert unknown.returncode == 2 and "nope" in unknown.stderr


#: modules archive-wal, started once per segment, must not load: each costs
#: milliseconds of every call (dataclasses with inspect, hashlib) or far more
HEAVY_MODULES = ("dataclasses", "hashlib", "logging", "pydantic", "sqlalchemy", "paramiko")


def test_archive_wal_loads_no_heavy_module(tmp_path: Path) -> None:
    config = write_offline_config(tmp_path, {"main": "60s"}, make_state=False)
    argv = ["--config", str(config), "archive-wal", "main", str(_wal(tmp_path))]
    script = (
        "import sys\n"
        "from logship.cli.main import main\n"  # what `logship` runs, without its os._exit
        f"assert main({argv!r}) == 0\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]", run.stdout + run.stderr
    assert (tmp_path / "state" / "spool" / "main" / SEGMENT).exists()


def test_kept_copies_go_once_restored_or_over_the_limit(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    names = [f"0000000100000000000000{i:02X}" for i in range(1, 5)]
    for age, name in enumerate(reversed(names)):
        archive_wal(spool, _wal(tmp_path, name, content=name.encode() * 64))
        src = spool / name
        os.utime(src, (1000 - age, 1000 - age))  # the first name is the oldest
        retire(spool, name, sha256_of(src), keep=True)
        assert not src.exists() and kept_path(spool, name).exists()
        assert shipped_sha256(spool, name) == sha256_of(kept_path(spool, name))
    size = kept_path(spool, names[0]).stat().st_size
    # Restored up to the second: the first two go; a limit of one file drops the
    # older of the other two.
    assert prune_kept(spool, names[1], 10 * size) == 2
    assert prune_kept(spool, None, size) == 1
    assert [n for n in names if kept_path(spool, n).exists()] == [names[3]]
    assert prune_kept(spool, None, 0) == 1


def test_a_copy_across_file_systems_falls_back_to_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """copy_file_range refuses some pairs of file systems (EXDEV): same bytes anyway."""
    import errno

    def refuse(*args: object) -> int:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    spool = tmp_path / "spool"
    content = os.urandom(3 * 1024 * 1024 + 17)
    archive_wal(spool, _wal(tmp_path, content=content))
    assert (spool / SEGMENT).read_bytes() == content


def test_a_kept_copy_cut_off_half_made_is_swept_once_stale(tmp_path: Path) -> None:
    from logship.spool import KEPT_DIR, STALE_TEMP_S
    from logship.temp_names import temp_name

    kept = tmp_path / KEPT_DIR
    kept.mkdir()
    stale, fresh = kept / temp_name(), kept / temp_name()
    for path in (stale, fresh):
        path.write_bytes(b"half")
    old = time.time() - STALE_TEMP_S - 5
    os.utime(stale, (old, old))
    assert prune_kept(tmp_path, None, 1 << 30) == 1
    assert not stale.exists() and fresh.exists()  # one being written now stays
