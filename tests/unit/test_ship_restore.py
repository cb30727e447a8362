"""ship_file and restore-wal through a same-host transport: checksums, names, codes."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from factories import local_site

from logship.engines.postgresql.restore_wal import NotArrived, Refused, restore_wal
from logship.manifest import ManifestRecord
from logship.ship.shipper import ShipConflict, ship_file
from logship.spool import SpoolEntry

SEGMENT = "000000010000000000000007"


def _entry(tmp_path: Path, content: bytes, name: str = SEGMENT) -> SpoolEntry:
    spool = tmp_path / "spool"
    spool.mkdir(exist_ok=True)
    (spool / name).write_bytes(content)
    return SpoolEntry("main", spool / name, len(content), 1_700_000_000.0)


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_round_trip(tmp_path: Path, compression: str) -> None:
    content = (b"wal record " * 100_000)[: 1 << 20]
    transport, layout = local_site(tmp_path)
    record = ship_file(transport, layout, _entry(tmp_path, content), compression, time.time)
    assert record.size == len(content)
    if compression == "zstd":
        assert record.stored_size < record.size // 4
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    dest.parent.mkdir()
    restore_wal(tmp_path / "incoming", "main", SEGMENT, dest)
    assert dest.read_bytes() == content
    assert not [p for p in dest.parent.iterdir() if p.name != "RECOVERYXLOG"]
    restored = (tmp_path / "incoming" / "main" / "restored.json").read_text()
    assert SEGMENT in restored


def test_shipping_again_is_idempotent_and_different_content_conflicts(tmp_path: Path) -> None:
    transport, layout = local_site(tmp_path)
    first = ship_file(transport, layout, _entry(tmp_path, b"a" * 1000), "zstd", time.time)
    again = ship_file(transport, layout, _entry(tmp_path, b"a" * 1000), "zstd", time.time)
    assert again == first
    with pytest.raises(ShipConflict):
        ship_file(transport, layout, _entry(tmp_path, b"b" * 1000), "zstd", time.time)
    stored = Path(layout.record_path(SEGMENT)).read_bytes()
    assert ManifestRecord.from_json(stored).sha256 == first.sha256


def test_not_arrived(tmp_path: Path) -> None:
    local_site(tmp_path)
    with pytest.raises(NotArrived):
        restore_wal(tmp_path / "incoming", "main", SEGMENT, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


def test_corrupt_file_is_refused_and_never_written(tmp_path: Path) -> None:
    transport, layout = local_site(tmp_path)
    record = ship_file(transport, layout, _entry(tmp_path, os.urandom(4096)), "none", time.time)
    stored = Path(layout.wal_dir / record.stored_name)
    data = bytearray(stored.read_bytes())
    data[10] ^= 1
    stored.write_bytes(bytes(data))
    with pytest.raises(Refused, match="checksum mismatch"):
        restore_wal(tmp_path / "incoming", "main", SEGMENT, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert list(tmp_path.glob(".dest*")) == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "RECOVERYXLOG", "00000001.history/../x"])
def test_names_outside_the_wal_forms_are_rejected(tmp_path: Path, name: str) -> None:
    from logship.errors import UsageError

    with pytest.raises(UsageError):
        restore_wal(tmp_path / "incoming", "main", name, tmp_path / "dest")


def test_restore_wal_cli_exit_codes(tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "connectors").mkdir()
    (tmp_path / "logship.toml").write_text(
        f'[logship]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[sites.dr]\nroot = "{tmp_path / "incoming"}"\n'
    )
    (tmp_path / "connectors" / "main.toml").write_text('kind = "postgresql"\nsite = "dr"\n')
    cmd = [sys.executable, "-m", "logship", "--config", str(tmp_path / "logship.toml")]
    dest = str(tmp_path / "dest")
    missing = subprocess.run([*cmd, "restore-wal", "main", SEGMENT, dest], check=False)
    assert missing.returncode == 1
    transport, layout = local_site(tmp_path)
    ship_file(transport, layout, _entry(tmp_path, b"c" * 5000), "zstd", time.time)
    ok = subprocess.run([*cmd, "restore-wal", "main", SEGMENT, dest], check=False)
    assert ok.returncode == 0 and Path(dest).read_bytes() == b"c" * 5000
    # A record that cannot be read is an I/O error: never "not found" (1..125).
    other = "000000010000000000000008"
    Path(layout.record_path(other)).mkdir()
    broken = subprocess.run(
        [*cmd, "restore-wal", "main", other, dest], capture_output=True, text=True, check=False
    )
    assert broken.returncode > 125, broken.stderr
    assert other in broken.stderr


def test_links_planted_at_the_old_temp_names_are_never_written_through(tmp_path: Path) -> None:
    """restore-wal's temps (the segment's in pg_wal, the restored.json note's) had names
    anyone could compute from the pid; a link planted there pointed the write at
    any file the user could write. Now they are random and created exclusively."""
    transport, layout = local_site(tmp_path)
    ship_file(transport, layout, _entry(tmp_path, b"w" * 5000), "zstd", time.time)
    dest = tmp_path / "pg_wal" / "RECOVERYXLOG"
    dest.parent.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    note = Path(layout.restored_marker)
    for planted in (
        dest.with_name(f".{dest.name}.logship-{os.getpid()}"),
        note.with_name(f".tmp.{note.name}.{os.getpid()}"),
    ):
        planted.symlink_to(victim)
    restore_wal(tmp_path / "incoming", "main", SEGMENT, dest)
    assert victim.read_text() == "precious\n"
    assert dest.read_bytes() == b"w" * 5000
    assert SEGMENT in note.read_text()


#: restore-wal runs once per WAL file the standby replays: like archive-wal
#: (tests/test_archive_wal.py), it must not load what costs milliseconds per call
HEAVY_MODULES = ("logging", "pydantic", "sqlalchemy", "paramiko", "rich", "watchdog")


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_restore_wal_loads_no_heavy_module(tmp_path: Path, compression: str) -> None:
    import subprocess
    import sys

    (tmp_path / "connectors").mkdir()
    (tmp_path / "logship.toml").write_text(
        f'[logship]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[sites.dr]\nroot = "{tmp_path / "incoming"}"\n'
    )
    (tmp_path / "connectors" / "main.toml").write_text('kind = "postgresql"\nsite = "dr"\n')
    transport, layout = local_site(tmp_path)
    ship_file(transport, layout, _entry(tmp_path, b"w" * 5000), compression, time.time)
    dest = tmp_path / "dest"
    loaded = []
    for name in (SEGMENT, "000000010000000000000008"):  # restored, then not arrived
        argv = ["--config", str(tmp_path / "logship.toml"), "restore-wal", "main", name, str(dest)]
        script = (
            "import sys\n"
            "from logship.cli.main import main\n"
            f"print(main({argv!r}))\n"
            f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
        )
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        loaded.append(run.stdout.split())
    assert loaded == [["0", "[]"], ["1", "[]"]]
    assert dest.read_bytes() == b"w" * 5000
