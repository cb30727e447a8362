"""`standby restore`: turn a shipped base backup into a running, replaying standby.

Runs at the standby site as the OS user that runs the standby PostgreSQL, reading
`<site root>/<connector>/base/<id>/` locally. The tar is decompressed and extracted
in one pass while the stored bytes are hashed; nothing starts unless the hash
matches backup.json and pg_verifybackup agrees with the backup's own manifest.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from logship.config.model import Config
from logship.engines.postgresql.base_backup import postgres_connector
from logship.engines.postgresql.engine import PostgresConnector
from logship.engines.postgresql.streaming.settings import standby_stream_settings
from logship.engines.postgresql.tools import DsnEndpoint, find_program, parse_dsn, quote_conf_string
from logship.errors import OperationFailed, SafetyRefusal, UsageError
from logship.manifest import BACKUP_RECORD_NAME, BackupRecord, SiteLayout

LOG_NAME = "logship-standby.log"
LATEST = "latest"
READ_CHUNK = 1 << 20
START_TIMEOUT_S = 300
_BACKUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# Left by the primary's postmaster when a backup copies them; they would make
# pg_ctl believe a server is already running in the restored directory.
_STALE_FILES = ("postmaster.pid", "postmaster.opts")
_SIGNAL_FILES = ("standby.signal", "recovery.signal")


@dataclass(frozen=True)
class RestoreProgress:
    phase: str  # "extract", "verify", "configure", "start"
    done: int  # stored bytes read so far, for "extract"
    total: int | None


ProgressCallback = Callable[[RestoreProgress], None]


@dataclass(frozen=True)
class RestoredStandby:
    record: BackupRecord
    data_dir: Path
    log_file: Path
    port: int


# -- choosing the backup -----------------------------------------------------------------


def _unreadable(path: Path) -> OperationFailed:
    return OperationFailed(
        f"cannot read {path} (permission denied): run standby restore as the OS user "
        "that receives the shipped files (the site's SSH user) and runs the standby PostgreSQL"
    )


def _read_record(path: Path) -> BackupRecord | None:
    """The record at `path`; None when there is none (an incomplete backup)."""
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise _unreadable(path) from None
    try:
        return BackupRecord.from_json(data)
    except (ValueError, TypeError) as exc:
        raise OperationFailed(
            f"{path} is not a valid backup record ({exc}); choose another with --backup ID"
        ) from None


def find_backup(base_dir: Path, connector: str, backup_id: str | None) -> tuple[Path, BackupRecord]:
    """The directory and record of `backup_id`, or of the newest backup with a record
    (when `backup_id` is None or "latest")."""
    if backup_id == LATEST:
        backup_id = None
    if backup_id is not None:
        if not _BACKUP_ID.match(backup_id):
            raise UsageError(f"--backup {backup_id!r} is not a backup id (e.g. 20261125T153000Z)")
        candidates = [backup_id]
    else:
        try:
            names = os.listdir(base_dir)
        except FileNotFoundError:
            names = []
        except PermissionError:
            raise _unreadable(base_dir) from None
        # Ids are UTC timestamps, so the newest sorts last; temp names start with ".".
        candidates = sorted((n for n in names if _BACKUP_ID.match(n)), reverse=True)
    for name in candidates:
        record_path = base_dir / name / BACKUP_RECORD_NAME
        record = _read_record(record_path)
        if record is None:
            continue
        if record.connector != connector or record.backup_id != name:
            raise OperationFailed(
                f"{record_path} describes backup {record.backup_id} of connector "
                f"{record.connector!r}, not {name} of {connector!r}; refusing it"
            )
        return base_dir / name, record
    if backup_id is not None:
        raise OperationFailed(
            f"no backup {backup_id} with a {BACKUP_RECORD_NAME} under {base_dir} "
            "(an incomplete backup has none); run without --backup for the newest"
        )
    raise OperationFailed(
        f"no base backup with a {BACKUP_RECORD_NAME} under {base_dir}; take one at the "
        f"primary site with `logship base-backup {connector}`"
    )


# -- the data directory ------------------------------------------------------------------


def prepare_data_dir(data_dir: Path) -> bool:
    """Refuse a live or non-empty data dir; create it (0700). True when created here."""
    if (data_dir / "postmaster.pid").exists():
        raise SafetyRefusal(
            f"{data_dir} has a postmaster.pid: a PostgreSQL may be running there; stop it "
            f"(pg_ctl -D {data_dir} stop) and move the directory aside before restoring"
        )
    if data_dir.exists() or data_dir.is_symlink():
        if not data_dir.is_dir():
            raise SafetyRefusal(
                f"[standby].data_dir {data_dir} exists and is not a directory; move it aside"
            )
        try:
            not_empty = any(data_dir.iterdir())
        except PermissionError:
            raise OperationFailed(
                f"cannot read [standby].data_dir {data_dir} (permission denied): run as "
                "the OS user that owns it and runs the standby PostgreSQL"
            ) from None
        if not_empty:
            raise SafetyRefusal(
                f"[standby].data_dir {data_dir} is not empty; move it aside (for example "
                f"mv {data_dir} {data_dir}.old) or empty it, then run standby restore again"
            )
        if data_dir.stat().st_uid != os.geteuid():
            raise OperationFailed(
                f"[standby].data_dir {data_dir} is owned by uid {data_dir.stat().st_uid}, "
                "not by this user; PostgreSQL requires its owner to run it"
            )
        data_dir.chmod(0o700)
        return False
    try:
        data_dir.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise OperationFailed(f"cannot create [standby].data_dir {data_dir}: {exc}") from None
    data_dir.chmod(0o700)  # mkdir's mode is filtered by the umask
    return True


def _clear(data_dir: Path, remove_dir: bool) -> None:
    if remove_dir:
        shutil.rmtree(data_dir, ignore_errors=True)
        return
    for child in data_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


# -- extraction --------------------------------------------------------------------------


class _HashingReader:
    """A file as read by the decompressor, hashed and counted on the way."""

    def __init__(self, raw: IO[bytes], on_read: Callable[[int], None]) -> None:
        self._raw = raw
        self._on_read = on_read
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        self.digest.update(data)
        self.size += len(data)
        self._on_read(self.size)
        return data

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while self.read(READ_CHUNK):
            pass


def _member_path(data_dir: Path, name: str) -> Path:
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
        raise OperationFailed(f"backup member {name!r} would land outside the data dir; refusing")
    return data_dir.joinpath(*parts)


def _extract_member(tar: tarfile.TarFile, member: tarfile.TarInfo, data_dir: Path) -> None:
    target = _member_path(data_dir, member.name)
    if member.isdir():
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        target.chmod((member.mode & 0o750) | 0o700)
        return
    if not member.isreg():
        # pg_basebackup writes only files and directories to a single tar on stdout
        # (tablespace links are refused there), so anything else is not ours to trust.
        raise OperationFailed(f"backup member {member.name!r} is not a file or directory")
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    source = tar.extractfile(member)
    assert source is not None
    mode = (member.mode & 0o640) | 0o600
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(source, out, READ_CHUNK)
    os.utime(target, (member.mtime, member.mtime))


def _open_stream(reader: _HashingReader, compression: str) -> Any:
    if compression == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(
            reader, read_size=READ_CHUNK, read_across_frames=True, closefd=False
        )
    if compression == "none":
        return reader
    raise OperationFailed(f"unknown compression {compression!r} in the backup record")


def extract_verified(
    archive: Path,
    record: BackupRecord,
    data_dir: Path,
    on_read: Callable[[int], None] = lambda _done: None,
) -> None:
    """Extract `archive` into `data_dir`, checking its sha256 against `record`.

    The caller removes what was extracted when this raises.
    """
    try:
        raw = open(archive, "rb")  # noqa: SIM115 - closed in the finally below
    except OSError as exc:
        raise OperationFailed(f"cannot open {archive}: {exc}") from None
    try:
        reader = _HashingReader(raw, on_read)
        failure: Exception | None = None
        try:
            stream = _open_stream(reader, record.compression)
            with tarfile.open(fileobj=stream, mode="r|", bufsize=READ_CHUNK) as tar:
                for member in tar:
                    _extract_member(tar, member, data_dir)
            # tarfile stops at the end-of-archive marker; the hash covers every byte.
            while stream.read(READ_CHUNK):
                pass
        except Exception as exc:  # zstandard and tarfile raise their own error types
            failure = exc
        try:
            reader.drain()
        except OSError as exc:
            raise OperationFailed(f"cannot read {archive}: {exc}") from None
        digest = reader.digest.hexdigest()
        if reader.size != record.stored_size or digest != record.stored_sha256:
            # A corrupt file is the root cause of any extraction error it produced.
            raise OperationFailed(
                f"{archive}: checksum mismatch (sha256 {digest[:16]}…, {reader.size} bytes; "
                f"backup.json says {record.stored_sha256[:16]}…, {record.stored_size} bytes): "
                "take a new base backup or pick another with --backup ID"
            )
        if isinstance(failure, OperationFailed):
            raise failure
        if failure is not None:
            message = f"extracting {archive} into {data_dir} failed: {failure}"
            raise OperationFailed(message) from failure
    finally:
        raw.close()


# -- configuration -----------------------------------------------------------------------


def restore_command(
    python: str,
    config_path: Path,
    connector: str,
    *,
    mark: bool = True,
    this_site: str | None = None,
) -> str:
    """The restore_command shell line, before quoting for postgresql.conf.

    PostgreSQL replaces %f, %p, %r and %% in it, so a literal % from a path is doubled.
    `mark=False` adds `--no-mark`: a scratch copy (the restore drill) must not move
    the real standby's progress note, restored.json. `this_site`: for a connector
    with [sides.*], the site whose folders it reads.
    """
    verb = ["restore-wal"] if mark else ["restore-wal", "--no-mark"]
    site = ["--this-site", this_site] if this_site else []
    prefix = shlex.join(
        [python, "-m", "logship", "--config", str(config_path), *site, *verb, connector]
    )
    return prefix.replace("%", "%%") + " %f %p"


def standby_settings(
    endpoint: DsnEndpoint,
    python: str,
    config_path: Path,
    connector: PostgresConnector,
    this_site: str | None = None,
) -> list[tuple[str, str]]:
    """(name, postgresql.conf literal) pairs appended to postgresql.auto.conf.
    `this_site`: the standby's site, for a connector with [sides.*]."""
    settings = [("port", str(endpoint.port))]
    # The standby listens where its DSN says clients reach it; without a TCP host in
    # the DSN it listens on sockets only (PostgreSQL's default socket dir if none given).
    settings.append(("listen_addresses", quote_conf_string(",".join(endpoint.tcp_hosts))))
    if endpoint.socket_dirs:
        settings.append(
            ("unix_socket_directories", quote_conf_string(",".join(endpoint.socket_dirs)))
        )
    settings += [
        (
            "restore_command",
            quote_conf_string(
                restore_command(python, config_path, connector.name, this_site=this_site)
            ),
        ),
        ("recovery_target_timeline", "'latest'"),
        ("hot_standby", "on"),
    ]
    if connector.sides is not None and this_site is not None:
        from logship.engines.postgresql.switchover_steps import archive_settings

        # Either side may be the primary: once promoted it archives through the
        # logship of its own site, into that site's spool.
        settings += archive_settings(python, config_path, connector.name, this_site)
    else:
        # The primary's archiving must not follow its data here: a promoted standby
        # would otherwise archive into the old primary's spool path.
        settings += [("archive_mode", "off"), ("archive_command", "''"), ("archive_library", "''")]
    return settings + standby_stream_settings(connector)


_MINIMAL_POSTGRESQL_CONF = """\
# Written by {writer}: the base backup had no postgresql.conf
# (Debian keeps it in /etc/postgresql). Standby settings are in postgresql.auto.conf.
# A hot standby needs max_connections, max_worker_processes, max_wal_senders,
# max_prepared_transactions and max_locks_per_transaction at least as high as on
# the primary: set them here if the primary raised them.
"""
STANDBY_WRITER = "logship standby restore"


def local_peer_hba(os_user: str, why: str, *, replication: bool = True) -> str:
    """pg_hba.conf text: peer for `os_user` over the Unix socket, nothing else."""
    # peer: only this OS user, under its own role name; nothing over the network.
    lines = [f"# {why}\n", "# Local connections for the OS user that runs this server only.\n"]
    lines.append(f"local   all           {os_user}   peer\n")
    if replication:
        lines.append(f"local   replication   {os_user}   peer\n")
    return "".join(lines)


def _write_new(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)


def write_recovery_config(
    data_dir: Path,
    settings: list[tuple[str, str]],
    *,
    header: str,
    signal_name: str,
    hba: str,
    replace_hba: bool = False,
    writer: str = STANDBY_WRITER,
) -> None:
    """Configure a restored (and verified) data dir to start in recovery.

    `settings` are appended to postgresql.auto.conf under `header` (later lines win);
    `hba` is written as pg_hba.conf when the backup has none, or always when
    `replace_hba`. `signal_name` is standby.signal (replay forever) or
    recovery.signal (replay what is there, then end recovery).
    """
    if not (data_dir / "postgresql.conf").exists():
        _write_new(data_dir / "postgresql.conf", _MINIMAL_POSTGRESQL_CONF.format(writer=writer))
    for name, text in (("pg_hba.conf", hba), ("pg_ident.conf", f"# Written by {writer}.\n")):
        if replace_hba:
            (data_dir / name).unlink(missing_ok=True)
        if not (data_dir / name).exists():
            _write_new(data_dir / name, text)
    auto = data_dir / "postgresql.auto.conf"
    existing = auto.read_bytes() if auto.exists() else b""
    block = "\n".join([header, *(f"{name} = {value}" for name, value in settings)]) + "\n"
    with open(auto, "a", encoding="utf-8") as out:
        if existing and not existing.endswith(b"\n"):
            out.write("\n")
        out.write(block)
    auto.chmod(0o600)
    # Both signal files present means standby mode; only the one asked for may be.
    for name in (*_STALE_FILES, *_SIGNAL_FILES):
        (data_dir / name).unlink(missing_ok=True)
    _write_new(data_dir / signal_name, "")


def write_standby_config(
    data_dir: Path, settings: list[tuple[str, str]], os_user: str, backup_id: str
) -> None:
    """Configure a restored (and verified) data dir to start as a replaying standby."""
    write_recovery_config(
        data_dir,
        settings,
        header=f"# logship standby restore of backup {backup_id} (later lines win)",
        signal_name="standby.signal",
        hba=local_peer_hba(
            os_user, f"Written by {STANDBY_WRITER}: the base backup had no pg_hba.conf."
        ),
    )


# -- running PostgreSQL's tools ----------------------------------------------------------


def last_line(*texts: str) -> str:
    """The last non-blank line of the first text that has one."""
    for text in texts:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if lines:
            return lines[-1]
    return "(no output)"


def run_tool(
    cmd: list[str],
    cwd: Path,
    timeout: float | None,
    *,
    env: dict[str, str] | None = None,
    name: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a program to completion, its output captured; OperationFailed (naming it
    `name`, else `cmd[0]`) if it cannot."""
    shown = name or cmd[0]
    try:
        return subprocess.run(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise OperationFailed(f"{shown} did not finish within {timeout:g}s") from None
    except OSError as exc:
        raise OperationFailed(f"cannot run {shown}: {exc}") from None


def check_restore_command_runs(python: str) -> None:
    """logship must import in `python` without help from the current directory.

    PostgreSQL runs restore_command from the data dir, and a failing import exits 1,
    which it reads as "file not found": a broken restore_command would look like a
    standby that merely waits. So check it from "/", where no logship package lies.
    """
    proc = run_tool([python, "-m", "logship", "--help"], Path("/"), timeout=120)
    if proc.returncode != 0:
        raise OperationFailed(
            f"restore_command would not work: `{python} -m logship` fails "
            f"({last_line(proc.stderr, proc.stdout)}); install logship for that Python"
        )


def run_pg_verifybackup(program: Path, data_dir: Path, timeout: float | None = None) -> None:
    # Large backups take long to verify; pg_verifybackup does not wait on anything else,
    # so only a caller with a deadline of its own (the drill) bounds it.
    proc = run_tool([str(program), "--quiet", str(data_dir)], data_dir, timeout=timeout)
    if proc.returncode != 0:
        raise OperationFailed(
            f"pg_verifybackup rejected the restored {data_dir}: "
            f"{last_line(proc.stderr, proc.stdout)}"
        )


def start_server(
    program: Path,
    data_dir: Path,
    log_file: Path,
    *,
    timeout_s: int = START_TIMEOUT_S,
    options: str | None = None,
    what: str = "the standby",
) -> None:
    """pg_ctl start -w; `options` is pg_ctl's -o (a shell-quoted postgres argument line)."""
    cmd = [str(program), "-D", str(data_dir), "-l", str(log_file), "-w", "-t", str(timeout_s)]
    if options:
        cmd += ["-o", options]
    proc = run_tool([*cmd, "start"], data_dir, timeout=timeout_s + 60)
    if proc.returncode != 0:
        try:
            log_tail = last_line(log_file.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            log_tail = "(no log)"
        raise OperationFailed(
            f"pg_ctl could not start {what} in {data_dir}: "
            f"{last_line(proc.stderr, proc.stdout)}; server log {log_file} ends: {log_tail}"
        )


def start_standby(program: Path, data_dir: Path, log_file: Path) -> None:
    start_server(program, data_dir, log_file)


# -- steps shared with the restore drill -------------------------------------------------


def locate_backup(
    layout: SiteLayout, connector: str, backup_id: str | None
) -> tuple[Path, BackupRecord]:
    """The stored archive of the chosen backup (newest for None/"latest") and its record."""
    backup_dir, record = find_backup(Path(layout.base_dir), connector, backup_id)
    archive = backup_dir / record.stored_name
    if not archive.is_file():
        raise OperationFailed(f"{archive} is missing although {BACKUP_RECORD_NAME} lists it")
    return archive, record


def find_server_tools(
    bin_dir: Path | None, record: BackupRecord, setting: str, names: tuple[str, ...]
) -> dict[str, Path]:
    """PostgreSQL programs of the backup's major version, looked up before any work.

    Found before extracting, so a missing program fails in seconds, not after hours.
    """
    return {
        name: find_program(name, bin_dir=bin_dir, version=record.pg_version, setting=setting)
        for name in names
    }


def restore_verified(
    archive: Path,
    record: BackupRecord,
    data_dir: Path,
    pg_verifybackup: Path,
    report: ProgressCallback,
    *,
    check_deadline: Callable[[], float | None] = lambda: None,
) -> None:
    """Extract `archive` into the empty `data_dir` (sha256 checked on the way), then
    pg_verifybackup it. The caller removes the files when this raises.

    `check_deadline` is called as bytes are read and before pg_verifybackup; it raises
    when time is up and otherwise returns the seconds left (None: no limit).
    """

    def on_read(done: int) -> None:
        check_deadline()
        report(RestoreProgress("extract", done, record.stored_size))

    report(RestoreProgress("extract", 0, record.stored_size))
    extract_verified(archive, record, data_dir, on_read)
    report(RestoreProgress("verify", 0, None))
    run_pg_verifybackup(pg_verifybackup, data_dir, timeout=check_deadline())


# -- the whole restore -------------------------------------------------------------------


def restore_standby(
    config: Config,
    connector_name: str,
    backup_id: str | None = None,
    progress_callback: ProgressCallback | None = None,
    *,
    python: str = sys.executable,
) -> RestoredStandby:
    """Restore a shipped base backup into `[standby].data_dir`, configure it, start it.

    `python` is the interpreter the standby's restore_command runs logship with.
    """
    if os.geteuid() == 0:
        raise UsageError(
            "standby restore must run as the OS user that runs the standby PostgreSQL, "
            "not root (for example: runuser -u postgres -- logship standby restore ...)"
        )
    report = progress_callback or (lambda _progress: None)
    connector = postgres_connector(config, connector_name)
    site = config.site_of(connector)
    layout = SiteLayout.for_connector(site.root, connector.name)
    setting = f"connector {connector.name}: [standby]"
    endpoint = parse_dsn(connector.standby.dsn, setting=f"{setting}.dsn")
    archive, record = locate_backup(layout, connector.name, backup_id)
    check_restore_command_runs(python)
    tools = find_server_tools(
        connector.standby.bin_dir, record, f"{setting}.bin_dir", ("pg_verifybackup", "pg_ctl")
    )
    data_dir = connector.standby.data_dir.absolute()
    created = prepare_data_dir(data_dir)
    try:
        restore_verified(archive, record, data_dir, tools["pg_verifybackup"], report)
    except OperationFailed as exc:
        _clear(data_dir, remove_dir=created)
        # Nothing unverified is left behind to be started by hand.
        raise OperationFailed(f"{exc}; the extracted files were removed") from None
    except BaseException:
        _clear(data_dir, remove_dir=created)
        raise
    report(RestoreProgress("configure", 0, None))
    settings = standby_settings(
        endpoint, python, config.path.absolute(), connector, config.this_site
    )
    write_standby_config(data_dir, settings, pwd.getpwuid(os.geteuid()).pw_name, record.backup_id)
    # No fsync pass here: a restored pg_control says "in production", so PostgreSQL
    # syncs the whole data directory itself before it replays anything.
    report(RestoreProgress("start", 0, None))
    log_file = data_dir / LOG_NAME
    start_standby(tools["pg_ctl"], data_dir, log_file)
    return RestoredStandby(record=record, data_dir=data_dir, log_file=log_file, port=endpoint.port)
