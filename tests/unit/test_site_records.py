"""Records and listings read back from the other site are bounded and checked: a
manifest's stored_name is never a path, nested or oversized JSON is a clear
error, never a crash or memory growth."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
from offline_config import write_offline_config

from logship.engines.files.digest import DigestFormatError, parse_line
from logship.engines.postgresql.drill import DrillResult
from logship.manifest import BackupRecord, ManifestRecord, SiteLayout

SEG = "000000010000000000000007"


def _record(**changes: object) -> dict[str, object]:
    record: dict[str, object] = {
        "name": SEG,
        "size": 5,
        "sha256": "0" * 64,
        "stored_name": SEG + ".zst",
        "stored_size": 5,
        "stored_sha256": "0" * 64,
        "compression": "zstd",
        "closed_at": 1.0,
        "arrived_at": 2.0,
        "format": 1,
    }
    record.update(changes)
    return record


@pytest.mark.parametrize(
    "stored_name",
    ["../../etc/passwd", "/etc/shadow", SEG + ".gz", "000000010000000000000008", SEG + "/x", ""],
)
def test_a_stored_name_other_than_the_name_or_its_zst_is_refused(stored_name: str) -> None:
    with pytest.raises(ValueError, match="stored_name"):
        ManifestRecord.from_json(json.dumps(_record(stored_name=stored_name)).encode())


def test_the_two_stored_forms_are_accepted() -> None:
    for stored in (SEG, SEG + ".zst"):
        assert ManifestRecord.from_json(json.dumps(_record(stored_name=stored)).encode())


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 20_000 + b"]" * 20_000,
        b"[]",
        b"\xff\xfe",
        json.dumps(_record(extra=1)).encode(),
        json.dumps(_record(size="big")).encode(),
        json.dumps(_record(name="../x")).encode(),
        b'{"format": 1, "size": NaN}',
        b" " * (1024 * 1024 + 1),
    ],
)
def test_a_malformed_record_is_a_value_error_never_a_crash(data: bytes) -> None:
    with pytest.raises(ValueError):
        ManifestRecord.from_json(data)
    with pytest.raises(ValueError):
        BackupRecord.from_json(data)


def test_nested_json_in_site_listings_and_results_is_a_clear_error() -> None:
    nested = b"[" * 20_000 + b"]" * 20_000
    with pytest.raises(DigestFormatError, match="nested too deeply"):
        parse_line(nested)
    with pytest.raises(ValueError, match="nested too deeply"):
        DrillResult.from_json(nested)


def test_restore_wal_refuses_a_record_whose_stored_name_climbs_out(tmp_path: Path) -> None:
    """The real restore-wal: a record (as a compromised primary could ship) naming
    a file outside the WAL folder whose checksum it knows."""
    config_path = write_offline_config(tmp_path, {"orders": "60s"})
    site_root = tmp_path / "site"
    config_path.write_text(config_path.read_text().replace("/srv/incoming", str(site_root)))
    layout = SiteLayout.for_connector(PurePosixPath(site_root), "orders")
    Path(layout.wal_dir).mkdir(parents=True)
    Path(layout.manifest_dir).mkdir(parents=True)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not WAL: a file the site user can read")
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    size = secret.stat().st_size
    relative = "../../../secret"
    assert (Path(layout.wal_dir) / relative).resolve() == secret.resolve()
    record = _record(
        stored_name=relative,
        compression="none",
        size=size,
        stored_size=size,
        sha256=digest,
        stored_sha256=digest,
    )
    Path(layout.record_path(SEG)).write_text(json.dumps(record))
    dest = tmp_path / "pg_wal_dest"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "logship",
            "--config",
            str(config_path),
            "restore-wal",
            "orders",
            SEG,
            str(dest),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0, "the file outside the WAL folder was restored"
    assert "stored_name" in done.stderr
    assert not dest.exists()
