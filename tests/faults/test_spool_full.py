"""A full spool at the primary: archive-wal exits nonzero, so PostgreSQL tries
again later, with one clear line, and leaves nothing half-written."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from offline_config import write_offline_config

from logship.config.load import load_config
from logship.demo_sandbox.osuser import is_root

SEGMENT = "000000010000000000000001"


@pytest.fixture
def small_spool() -> Iterator[tuple[Path, Path]]:
    """A config whose spool is a 4 MiB tmpfs; yields (config, spool)."""
    root = Path(tempfile.mkdtemp(prefix="logship-spool-"))
    config = write_offline_config(root, {"orders": "60s"})
    spool = load_config(config).spool_dir("orders")
    spool.mkdir(parents=True, mode=0o700)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(spool)], check=True
    )
    try:
        yield config, spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)
        subprocess.run(["rm", "-rf", str(root)], check=False)


def _archive_wal(config: Path, segment: Path) -> subprocess.CompletedProcess[str]:
    argv = ["--config", str(config), "archive-wal", "orders", str(segment)]
    return subprocess.run(
        [sys.executable, "-m", "logship", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.skipif(not is_root(), reason="mounting a small spool needs root")
def test_a_full_spool_fails_the_archive_command_and_leaves_nothing(
    small_spool: tuple[Path, Path],
) -> None:
    config, spool = small_spool
    segment = config.parent / SEGMENT
    segment.write_bytes(os.urandom(16 * 1024 * 1024))
    result = _archive_wal(config, segment)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "no space left" in line and SEGMENT in line and "retries" in line
    assert "Traceback" not in result.stderr
    assert os.listdir(spool) == []  # no temp, no partial segment

    # Space again (a bigger spool): the same segment archives.
    subprocess.run(["mount", "-o", "remount,size=64m", str(spool)], check=True)
    again = _archive_wal(config, segment)
    assert again.returncode == 0, again.stderr
    assert (spool / SEGMENT).read_bytes() == segment.read_bytes()
