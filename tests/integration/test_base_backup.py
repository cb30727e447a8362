"""base-backup over a real sshd and `standby restore` into a real standby.

The real tests take one backup of a real primary (module scope) and restore it as
the postgres OS user through the CLI, as production runs it. Pure helpers (tar
scanning, DSN parsing, quoting, choosing a backup) are tested directly.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from factories import postgres_connector
from restore_command_shell import expand_placeholders
from sshd_site import reachable_tmp

from logship.catalog.store import Catalog
from logship.config.load import load_config
from logship.demo_sandbox import OsUser, PgCluster, SshServer, free_port
from logship.demo_sandbox.osuser import is_root
from logship.engines.postgresql.base_backup import (
    TarScanner,
    backup_id_for,
    parse_progress,
    take_base_backup,
    wal_range,
)
from logship.engines.postgresql.standby_restore import (
    extract_verified,
    find_backup,
    prepare_data_dir,
    restore_command,
    restore_standby,
    standby_settings,
    write_standby_config,
)
from logship.engines.postgresql.tools import find_program, parse_dsn, quote_conf_string
from logship.errors import EXIT_REFUSED, ConfigError, OperationFailed, SafetyRefusal, UsageError
from logship.manifest import BACKUP_RECORD_NAME, BackupRecord
from logship.ship.localdir import LocalDirTransport
from logship.ship.sftp import SftpTransport

REPO = Path(__file__).resolve().parents[2]
CONNECTOR = "orders"
ROWS = 1234


def _owned_dir(path: Path, user: OsUser, mode: int = 0o755) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(mode)
    user.chown(path)
    return path


def _write_config(
    directory: Path,
    *,
    state_dir: Path,
    site_root: Path,
    primary_dsn: str,
    standby_dsn: str,
    data_dir: Path,
    sshd: SshServer | None = None,
    user: str = "postgres",
    compression: str = "zstd",
) -> Path:
    """logship.toml + connectors/orders.toml, readable by the postgres user."""
    (directory / "connectors").mkdir(parents=True, exist_ok=True)
    for path in (directory, directory / "connectors"):
        path.chmod(0o755)
    host, port = (sshd.host, sshd.port) if sshd else ("127.0.0.1", 22)
    identity = sshd.client_key if sshd else directory / "no-key"
    known_hosts = sshd.known_hosts if sshd else directory / "no-known-hosts"
    config = directory / "logship.toml"
    config.write_text(
        f"""[logship]
state_dir = "{state_dir}"

[sites.dr]
host = "{host}"
port = {port}
user = "{user}"
identity_file = "{identity}"
known_hosts = "{known_hosts}"
root = "{site_root}"
"""
    )
    (directory / "connectors" / f"{CONNECTOR}.toml").write_text(
        f"""kind = "postgresql"
site = "dr"
rpo = "60s"
compression = "{compression}"

[primary]
dsn = "{primary_dsn}"

[standby]
dsn = "{standby_dsn}"
data_dir = "{data_dir}"
"""
    )
    for path in (config, directory / "connectors" / f"{CONNECTOR}.toml"):
        path.chmod(0o644)
    return config


def _logship_as(user: OsUser, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as `user`, as production runs it at the standby site."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*user.command_prefix(), sys.executable, "-m", "logship", "--config", str(config), *args],
        cwd=config.parent,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        while chunk := src.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _tar_names(path: Path) -> list[str]:
    with open(path, "rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            return [member.name for member in tar]


# -- pure helpers ------------------------------------------------------------------------


def test_parse_progress_lines() -> None:
    assert parse_progress("39339/39339 kB (100%), 1/1 tablespace") == (
        39339 * 1024,
        39339 * 1024,
    )
    assert parse_progress("  12/345 kB (3%), 0/1 tablespace (data/base/1/1234)") == (
        12 * 1024,
        345 * 1024,
    )
    assert parse_progress("pg_basebackup: error: connection refused") is None


def test_backup_id_is_a_utc_timestamp() -> None:
    assert backup_id_for(1_795_707_000.0) == time.strftime(
        "%Y%m%dT%H%M%SZ", time.gmtime(1_795_707_000.0)
    )
    assert backup_id_for(0.0) == "19700101T000000Z"


def test_tar_scanner_finds_version_and_manifest_across_odd_chunks() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (
            ("backup_label", LABEL),
            ("PG_VERSION", b"15\n"),
            ("base/1/1259", os.urandom(70_000)),
            ("pg_wal/000000010000000000000002", b"\0" * (1024 * 1024)),
            ("backup_manifest", b'{"PostgreSQL-Backup-Manifest-Version": 1}'),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    data = buffer.getvalue()
    scanner = TarScanner()
    for start in range(0, len(data), 777):
        scanner.feed(data[start : start + 777])
    assert scanner.names == [
        "backup_label",
        "PG_VERSION",
        "base/1/1259",
        "pg_wal/000000010000000000000002",
        "backup_manifest",
    ]
    assert scanner.pg_version == "15"
    assert scanner.has_manifest
    assert scanner.captured["backup_label"] == LABEL
    assert scanner.captured["backup_manifest"] == b'{"PostgreSQL-Backup-Manifest-Version": 1}'
    assert scanner.wal_segment_size == 1024 * 1024
    assert "base/1/1259" not in scanner.captured


LABEL = b"""START WAL LOCATION: 0/5000028 (file 000000020000000000000005)
CHECKPOINT LOCATION: 0/5000060
BACKUP METHOD: streamed
BACKUP FROM: primary
START TIME: 2026-11-25 02:30:00 UTC
LABEL: logship 20261125T023000Z
START TIMELINE: 2
"""


def test_wal_range_from_label_and_manifest() -> None:
    def manifest(end: str) -> bytes:
        ranges = [{"Timeline": 2, "Start-LSN": "0/5000028", "End-LSN": end}]
        return json.dumps({"WAL-Ranges": ranges}).encode()

    seg = 16 * 1024 * 1024
    inside = wal_range(LABEL, manifest("0/6000100"), seg)
    assert (inside.timeline, inside.start_lsn, inside.stop_lsn) == (2, "0/5000028", "0/6000100")
    assert (inside.start_wal, inside.stop_wal) == (
        "000000020000000000000005",
        "000000020000000000000006",
    )
    # Ending exactly at a segment boundary: the last byte needed is in the segment before.
    assert wal_range(LABEL, manifest("0/7000000"), seg).stop_wal == "000000020000000000000006"
    with pytest.raises(ValueError):
        wal_range(b"LABEL: nothing\n", manifest("0/7000000"), seg)
    with pytest.raises(ValueError):
        wal_range(LABEL, b'{"WAL-Ranges": []}', seg)


def test_parse_dsn() -> None:
    socket = parse_dsn("host=/var/run/postgresql port=5433 dbname=postgres")
    assert (socket.socket_dirs, socket.tcp_hosts, socket.port) == (
        ("/var/run/postgresql",),
        (),
        5433,
    )
    tcp = parse_dsn("host=db.example.net,/tmp dbname=x")
    assert (tcp.tcp_hosts, tcp.socket_dirs, tcp.port) == (("db.example.net",), ("/tmp",), 5432)
    assert parse_dsn("host=name hostaddr=10.0.0.5 port=6000").tcp_hosts == ("10.0.0.5",)
    assert parse_dsn("postgresql://u@127.0.0.1:5999/db").port == 5999
    with pytest.raises(ConfigError, match="several ports"):
        parse_dsn("host=a,b port=1,2")
    with pytest.raises(ConfigError, match="not a valid libpq"):
        parse_dsn("garbage")


def _unquote_conf(literal: str) -> str:
    """PostgreSQL's reading of a single-quoted postgresql.conf string."""
    assert literal.startswith("'") and literal.endswith("'")
    body, out, i = literal[1:-1], [], 0
    while i < len(body):
        if body[i] == "\\" or (body[i] == "'" and body[i + 1] == "'"):
            out.append(body[i + 1])
            i += 2
        else:
            out.append(body[i])
            i += 1
    return "".join(out)


def test_restore_command_survives_both_quotings() -> None:
    config = Path("/etc/it's a 50%p dir/logship.toml")
    python = "/opt/venv with space/bin/python"
    line = restore_command(python, config, CONNECTOR)
    literal = quote_conf_string(line)
    seen_by_postgres = _unquote_conf(literal)
    assert seen_by_postgres == line
    # PostgreSQL replaces %f/%p and turns %% into % left to right; then /bin/sh splits.
    expanded = expand_placeholders(seen_by_postgres, "000000010000000000000003", "pg_wal/X")
    assert shlex.split(expanded) == [
        python,
        "-m",
        "logship",
        "--config",
        str(config),
        "restore-wal",
        CONNECTOR,
        "000000010000000000000003",
        "pg_wal/X",
    ]


def test_standby_settings_neutralise_archiving() -> None:
    endpoint = parse_dsn("host=/run/pg port=5433")
    connector = postgres_connector()
    settings = dict(standby_settings(endpoint, "/usr/bin/python3", Path("/etc/l.toml"), connector))
    assert settings["port"] == "5433"
    assert settings["listen_addresses"] == "''"
    assert settings["unix_socket_directories"] == "'/run/pg'"
    assert settings["archive_mode"] == "off"
    assert settings["archive_command"] == "''"
    assert settings["archive_library"] == "''"
    assert settings["hot_standby"] == "on"
    assert settings["recovery_target_timeline"] == "'latest'"
    # Without streaming, no database connection crosses sites.
    assert settings["primary_conninfo"] == "''"
    assert settings["primary_slot_name"] == "''"
    tcp = dict(standby_settings(parse_dsn("host=127.0.0.1 port=6000"), "p", Path("/c"), connector))
    assert tcp["listen_addresses"] == "'127.0.0.1'"
    assert "unix_socket_directories" not in tcp


def test_write_standby_config_without_debian_conf_files(tmp_path: Path) -> None:
    (tmp_path / "postmaster.pid").write_text("123\n")
    (tmp_path / "postgresql.auto.conf").write_text("work_mem = '8MB'")  # no final newline
    write_standby_config(tmp_path, [("port", "5433"), ("hot_standby", "on")], "postgres", "ID")
    auto = (tmp_path / "postgresql.auto.conf").read_text()
    assert auto.startswith("work_mem = '8MB'\n# logship standby restore of backup ID")
    assert auto.endswith("port = 5433\nhot_standby = on\n")
    hba = (tmp_path / "pg_hba.conf").read_text()
    assert "local   all           postgres   peer" in hba
    assert "host" not in hba.replace("# ", "").split("\n", 2)[-1]
    assert (tmp_path / "postgresql.conf").exists()
    assert (tmp_path / "standby.signal").read_bytes() == b""
    assert not (tmp_path / "postmaster.pid").exists()
    assert (tmp_path / "standby.signal").stat().st_mode & 0o777 == 0o600


def test_find_backup_prefers_the_newest_complete_one(tmp_path: Path) -> None:
    def make(backup_id: str, complete: bool) -> None:
        (tmp_path / backup_id).mkdir()
        if complete:
            record = BackupRecord(
                backup_id, CONNECTOR, 1.0, 2.0, "base.tar.zst", 1, "x", 1, "zstd", "15"
            )
            (tmp_path / backup_id / BACKUP_RECORD_NAME).write_bytes(record.to_json())

    make("20260101T000000Z", True)
    make("20260102T000000Z", True)
    make("20260103T000000Z", False)  # shipped data but no record: incomplete
    (tmp_path / ".tmp.junk").mkdir()
    directory, record = find_backup(tmp_path, CONNECTOR, None)
    assert record.backup_id == "20260102T000000Z" == directory.name
    assert find_backup(tmp_path, CONNECTOR, "20260101T000000Z")[1].backup_id == "20260101T000000Z"
    assert find_backup(tmp_path, CONNECTOR, "latest")[1].backup_id == "20260102T000000Z"
    with pytest.raises(OperationFailed, match="no backup 20260103T000000Z"):
        find_backup(tmp_path, CONNECTOR, "20260103T000000Z")
    with pytest.raises(UsageError):
        find_backup(tmp_path, CONNECTOR, "../etc")
    with pytest.raises(OperationFailed, match="logship base-backup other"):
        find_backup(tmp_path / "missing", "other", None)


def test_prepare_data_dir_refuses_live_or_non_empty(tmp_path: Path) -> None:
    fresh = tmp_path / "a" / "data"
    assert prepare_data_dir(fresh) is True
    assert fresh.stat().st_mode & 0o777 == 0o700
    assert prepare_data_dir(fresh) is False  # existing and empty is fine
    (fresh / "postmaster.pid").write_text("1\n")
    with pytest.raises(SafetyRefusal, match="stop it"):
        prepare_data_dir(fresh)
    (fresh / "postmaster.pid").unlink()
    (fresh / "PG_VERSION").write_text("15\n")
    with pytest.raises(SafetyRefusal, match="move it aside"):
        prepare_data_dir(fresh)


def test_find_program_prefers_configured_then_data_dir_version(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="bin_dir"):
        find_program("pg_ctl", bin_dir=tmp_path)
    version_bin = Path("/usr/lib/postgresql/15/bin")
    if not (version_bin / "pg_ctl").exists():
        pytest.skip("PostgreSQL 15 is not installed in /usr/lib/postgresql/15")
    assert find_program("pg_ctl", bin_dir=version_bin) == version_bin / "pg_ctl"
    (tmp_path / "PG_VERSION").write_text("15\n")
    assert find_program("pg_ctl", data_dir=tmp_path) == version_bin / "pg_ctl"
    assert find_program("pg_ctl", version="15") == version_bin / "pg_ctl"


@pytest.mark.skipif(not is_root(), reason="checks the refusal to run as root")
def test_restore_refuses_root(tmp_path: Path) -> None:
    config = _write_config(
        tmp_path,
        state_dir=tmp_path / "state",
        site_root=tmp_path / "incoming",
        primary_dsn="host=/nonexistent",
        standby_dsn="host=/nonexistent",
        data_dir=tmp_path / "data",
    )
    with pytest.raises(UsageError, match="not root"):
        restore_standby(load_config(config), CONNECTOR)
    assert not (tmp_path / "data").exists()


# -- real primary, real sshd -------------------------------------------------------------


@dataclass
class Site:
    base: Path
    user: OsUser
    primary: PgCluster
    sshd: SshServer
    incoming: Path
    config: Path


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    user = OsUser.for_postgres()
    if not user.can_reach(REPO / "logship" / "__init__.py"):
        pytest.skip(f"{REPO} is not reachable by OS user {user.name}, which runs logship here")
    base = reachable_tmp("logship-basebackup-")
    primary = PgCluster(base / "primary" / "data", free_port(), user)
    sshd = SshServer(base / "ssh", user)
    try:
        primary.initdb()
        primary.configure({"archive_mode": "on", "archive_command": "/bin/true"})
        primary.start()
        primary.execute(
            f"create table orders (id int primary key, note text);"
            f"insert into orders select g, 'order ' || g from generate_series(1, {ROWS}) g"
        )
        sshd.start()
        incoming = _owned_dir(base / "incoming", user, 0o700)
        config = _write_config(
            base / "conf",
            state_dir=base / "state",
            site_root=incoming,
            primary_dsn=primary.dsn(),
            standby_dsn="host=127.0.0.1 port=1 dbname=postgres",
            data_dir=base / "unused",
            sshd=sshd,
            user=user.name,
        )
        yield Site(base, user, primary, sshd, incoming, config)
    finally:
        sshd.stop()
        primary.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def backup(site: Site) -> BackupRecord:
    config = load_config(site.config)
    transport = SftpTransport(config.sites["dr"])
    seen: list[int] = []
    try:
        record = take_base_backup(
            config, CONNECTOR, transport, time.time, lambda p: seen.append(p.raw_bytes)
        )
    finally:
        transport.close()
    assert seen and seen[-1] == record.size
    return record


def _restore_config(site: Site, name: str) -> tuple[Path, Path, int]:
    """A config whose standby data dir is fresh; returns (config, data_dir, port)."""
    port = free_port()
    data_dir = _owned_dir(site.base / name, site.user) / "data"
    config = _write_config(
        site.base / f"conf-{name}",
        state_dir=site.base / "state",
        site_root=site.incoming,
        primary_dsn=site.primary.dsn(),
        standby_dsn=f"host=127.0.0.1 port={port} user={site.user.name} dbname=postgres",
        data_dir=data_dir,
        sshd=site.sshd,
        user=site.user.name,
    )
    return config, data_dir, port


@pytest.mark.e2e
def test_base_backup_ships_a_checked_tar_over_sftp(site: Site, backup: BackupRecord) -> None:
    backup_dir = site.incoming / CONNECTOR / "base" / backup.backup_id
    stored = backup_dir / "base.tar.zst"
    assert sorted(p.name for p in backup_dir.iterdir()) == [
        BACKUP_RECORD_NAME,
        "backup_manifest",
        "base.tar.zst",
    ]
    on_site = BackupRecord.from_json((backup_dir / BACKUP_RECORD_NAME).read_bytes())
    assert on_site == backup
    # The WAL range agrees with the primary's own account of the backup.
    manifest = json.loads((backup_dir / "backup_manifest").read_text())
    (wal_range,) = manifest["WAL-Ranges"]
    assert (backup.start_lsn, backup.stop_lsn) == (wal_range["Start-LSN"], wal_range["End-LSN"])
    assert backup.timeline == 1 and backup.start_wal is not None and backup.stop_wal is not None
    ((start_file, stop_file),) = site.primary.query(
        f"select pg_walfile_name('{backup.start_lsn}'), pg_walfile_name('{backup.stop_lsn}')"
    )
    assert backup.start_wal == start_file and backup.stop_wal <= stop_file
    assert backup.duration_s > 0
    assert stored.stat().st_size == backup.stored_size
    assert _sha256(stored) == backup.stored_sha256
    assert stored.stat().st_mode & 0o777 == 0o600
    assert backup.compression == "zstd" and backup.stored_size < backup.size
    assert backup.pg_version == "15"
    names = _tar_names(stored)
    assert "backup_manifest" in names and "PG_VERSION" in names
    assert any(n.startswith("pg_wal/0000") for n in names)  # -X fetch: WAL included
    catalog = Catalog(load_config(site.config).catalog_url)
    try:
        row = catalog.last_backup(CONNECTOR)
        assert row is not None
        assert (row.backup_id, row.state, row.stored_size, row.start_wal, row.stop_lsn) == (
            backup.backup_id,
            "done",
            backup.stored_size,
            backup.start_wal,
            backup.stop_lsn,
        )
    finally:
        catalog.close()


@pytest.mark.e2e
def test_standby_restore_comes_up_replaying(site: Site, backup: BackupRecord) -> None:
    config, data_dir, port = _restore_config(site, "standby")
    standby = PgCluster(data_dir, port, site.user)
    try:
        result = _logship_as(site.user, config, "standby", "restore", CONNECTOR)
        assert result.returncode == 0, result.stderr
        assert backup.backup_id in result.stdout
        standby.wait_until("select pg_is_in_recovery()", timeout=60)
        assert standby.query("select count(*), max(note) from orders") == [(ROWS, "order 999")]
        assert standby.query("show archive_mode") == [("off",)]
        auto_conf = (data_dir / "postgresql.auto.conf").read_text()
        assert "archive_command = ''" in auto_conf and "archive_library = ''" in auto_conf
        ((command,),) = standby.query("show restore_command")
        assert f"restore-wal {CONNECTOR} %f %p" in command and str(config) in command
        assert (data_dir / "standby.signal").exists()
        assert data_dir.stat().st_mode & 0o777 == 0o700
        # restore-wal ran (nothing shipped: "not found") without breaking.
        log = (data_dir / "logship-standby.log").read_text(errors="replace")
        assert "No module named" not in log and "Traceback" not in log
    finally:
        standby.destroy()


@pytest.mark.e2e
def test_restore_refuses_a_non_empty_data_dir(site: Site, backup: BackupRecord) -> None:
    config, data_dir, _port = _restore_config(site, "occupied")
    _owned_dir(data_dir, site.user, 0o700)
    keep = data_dir / "PG_VERSION"
    keep.write_text("15\n")
    result = _logship_as(site.user, config, "standby", "restore", CONNECTOR)
    assert result.returncode == EXIT_REFUSED, result.stderr
    assert "not empty" in result.stderr and "move it aside" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in data_dir.iterdir()] == ["PG_VERSION"]


@pytest.mark.e2e
def test_restore_of_a_corrupt_backup_fails_and_leaves_nothing(
    site: Site, backup: BackupRecord
) -> None:
    # A private copy of the site, so the shared backup stays intact.
    root = _owned_dir(site.base / "corrupt-site", site.user)
    source = site.incoming / CONNECTOR / "base" / backup.backup_id
    copy = root / CONNECTOR / "base" / backup.backup_id
    shutil.copytree(source, copy)
    stored = copy / backup.stored_name
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    for path in (root / CONNECTOR, root / CONNECTOR / "base", copy, stored, copy / "backup.json"):
        site.user.chown(path)
    config, data_dir, _port = _restore_config(site, "corrupt")
    config.write_text(config.read_text().replace(str(site.incoming), str(root)))
    result = _logship_as(site.user, config, "standby", "restore", CONNECTOR)
    assert result.returncode == 1, result.stderr
    assert "checksum mismatch" in result.stderr and "removed" in result.stderr
    assert not data_dir.exists()


@pytest.mark.e2e
def test_failed_pg_basebackup_leaves_no_record(site: Site) -> None:
    root = _owned_dir(site.base / "fail-site", site.user)
    closed = free_port()
    config_path = _write_config(
        site.base / "conf-fail",
        state_dir=site.base / "state-fail",
        site_root=root,
        primary_dsn=f"host=127.0.0.1 port={closed} user={site.user.name} connect_timeout=5",
        standby_dsn="host=127.0.0.1 port=1",
        data_dir=site.base / "unused",
    )
    config = load_config(config_path)
    with pytest.raises(OperationFailed, match="pg_basebackup failed") as info:
        take_base_backup(config, CONNECTOR, LocalDirTransport(), time.time)
    # The error line itself, not only libpq's hint line after it.
    assert f"port {closed} failed" in str(info.value)
    base = root / CONNECTOR / "base"
    assert [p for p in base.rglob("*") if p.is_file()] == []
    catalog = Catalog(config.catalog_url)
    try:
        assert catalog.last_backup(CONNECTOR) is None
    finally:
        catalog.close()


@pytest.mark.e2e
def test_uncompressed_backup_round_trips(site: Site, tmp_path: Path) -> None:
    root = tmp_path / "site"
    config = load_config(
        _write_config(
            tmp_path / "conf",
            state_dir=tmp_path / "state",
            site_root=root,
            primary_dsn=site.primary.dsn(),
            standby_dsn="host=127.0.0.1 port=1",
            data_dir=tmp_path / "unused",
            compression="none",
        )
    )
    totals: list[int | None] = []
    record = take_base_backup(
        config, CONNECTOR, LocalDirTransport(), time.time, lambda p: totals.append(p.total_bytes)
    )
    assert (record.stored_name, record.compression) == ("base.tar", "none")
    assert record.stored_size == record.size
    assert any(total for total in totals)  # pg_basebackup's estimate was picked up
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    archive = root / CONNECTOR / "base" / record.backup_id / "base.tar"
    extract_verified(archive, record, data_dir)
    assert (data_dir / "PG_VERSION").read_text().strip() == "15"
    assert (data_dir / "backup_manifest").is_file()
    assert (data_dir / "global" / "pg_control").stat().st_mode & 0o077 == 0
