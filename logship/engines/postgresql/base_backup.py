"""Base backups: pg_basebackup's tar stream, compressed and hashed on the fly, shipped.

Nothing is staged on local disk. pg_basebackup writes one tar to stdout; each chunk
is compressed (zstd), hashed and handed to `Transport.put_atomic`, which makes
`<site root>/<connector>/base/<id>/base.tar.zst` appear complete or not at all.
`backup.json` is written after that file is durable, so a backup with a record is
always a complete one, and restore only ever considers backups that have one.

Why `-X fetch`: PostgreSQL 15 refuses `-X stream` when the tar goes to stdout
("cannot stream write-ahead logs in tar mode to stdout"): streaming needs a second
archive (pg_wal.tar) and stdout is one stream. `fetch` appends the WAL the backup
needs to the same tar at its end, and the server injects `backup_manifest` after it,
so the shipped file restores and verifies (pg_verifybackup) with no shipped WAL.
Its cost: WAL written during the backup must still be in the primary's pg_wal when
the backup ends; set `wal_keep_size` to cover a backup's duration on busy primaries.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from logship.catalog.opening import open_catalog
from logship.config.model import Config
from logship.engines.postgresql import walnames
from logship.engines.postgresql.backup_lock import backup_lock
from logship.engines.postgresql.engine import PostgresConnector
from logship.engines.postgresql.secret import dsn_for_child
from logship.engines.postgresql.tools import find_program
from logship.errors import OperationFailed, SafetyRefusal
from logship.manifest import BACKUP_MANIFEST_NAME, BackupRecord, SiteLayout
from logship.ship.transport import Transport

if TYPE_CHECKING:
    from logship.catalog.store import Catalog

READ_CHUNK = 1 << 20
#: pg_basebackup's stdout pipe: one read chunk (Linux allows up to 1 MiB unprivileged)
PIPE_SIZE = READ_CHUNK
STDERR_TAIL_LINES = 20
TAR_BLOCK = 512
# pg_basebackup --progress: "12345/67890 kB (18%), 0/1 tablespace"
_PROGRESS = re.compile(r"(\d+)/(\d+) kB \(\d+%\)")

Clock = Callable[[], float]


def stored_name_for(compression: str) -> str:
    return "base.tar.zst" if compression == "zstd" else "base.tar"


def backup_id_for(timestamp: float) -> str:
    """A UTC timestamp id such as 20261125T153000Z; ids sort by age."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(timestamp))


def postgres_connector(config: Config, name: str) -> PostgresConnector:
    return config.connector_of_kind(
        name, PostgresConnector, 'base backups are for kind = "postgresql" connectors'
    )


def pg_basebackup_command(program: Path, dsn: str, label: str) -> list[str]:
    return [
        str(program),
        "-d",
        dsn,
        "-D",
        "-",
        "-F",
        "t",
        "-X",
        "fetch",
        "--checkpoint=fast",
        "--progress",
        "--no-password",
        "--label",
        label,
    ]


def parse_progress(line: str) -> tuple[int, int] | None:
    """(done, total) in bytes from one pg_basebackup --progress line, else None."""
    match = _PROGRESS.search(line)
    if match is None:
        return None
    return int(match.group(1)) * 1024, int(match.group(2)) * 1024


class BackupInterrupted(OperationFailed):
    """The backup was asked to stop (SIGTERM, Ctrl-C) and tidied up after itself."""


@dataclass(frozen=True)
class BackupProgress:
    raw_bytes: int  # tar bytes read from pg_basebackup so far
    stored_bytes: int  # bytes shipped (after compression)
    total_bytes: int | None  # pg_basebackup's estimate of the whole backup, once known


ProgressCallback = Callable[[BackupProgress], None]


class TarScanner:
    """Follows a tar stream's member headers without buffering member data.

    Keeps the few small members logship needs, without a second pass: PG_VERSION
    (the major version restore must use), backup_label (where the backup starts),
    backup_manifest (kept next to the tar, and its WAL range). The size of any
    `pg_wal/` segment gives the cluster's WAL segment size.
    """

    #: member -> the largest size kept; a bigger one is passed over
    CAPTURE_LIMITS = {"PG_VERSION": 64, "backup_label": 1 << 16, "backup_manifest": 1 << 30}

    def __init__(self) -> None:
        self.names: list[str] = []
        self.captured: dict[str, bytes] = {}
        self.wal_segment_size: int | None = None
        self._header = bytearray()
        self._skip = 0  # member data plus padding still to pass over
        self._capture_name: str | None = None
        self._capture = bytearray()
        self._capture_left = 0
        self._ended = False

    @property
    def has_manifest(self) -> bool:
        return "backup_manifest" in self.names

    @property
    def pg_version(self) -> str | None:
        raw = self.captured.get("PG_VERSION")
        version = raw.decode("ascii", "replace").strip() if raw else ""
        return version or None

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._ended:
            if self._skip:
                step = min(self._skip, len(view))
                if self._capture_name is not None:
                    take = min(step, self._capture_left)
                    self._capture += view[:take]
                    self._capture_left -= take
                    if not self._capture_left:
                        self._finish_capture()
                self._skip -= step
                view = view[step:]
                continue
            need = TAR_BLOCK - len(self._header)
            self._header += view[:need]
            view = view[need:]
            if len(self._header) == TAR_BLOCK:
                self._on_header(bytes(self._header))
                self._header.clear()

    def _on_header(self, header: bytes) -> None:
        if not header.strip(b"\0"):
            self._ended = True  # end-of-archive marker
            return
        name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
            if prefix:
                name = f"{prefix}/{name}"
        size = _tar_number(header[124:136])
        name = name.removeprefix("./")
        self.names.append(name)
        self._skip = -(-size // TAR_BLOCK) * TAR_BLOCK
        wal = walnames.parse(name.removeprefix("pg_wal/")) if name.startswith("pg_wal/") else None
        if wal is not None and wal.kind is walnames.WalKind.SEGMENT:
            self.wal_segment_size = size
        limit = self.CAPTURE_LIMITS.get(name)
        if limit is not None and 0 < size <= limit:
            self._capture_name, self._capture_left = name, size
            self._capture = bytearray()

    def _finish_capture(self) -> None:
        assert self._capture_name is not None
        self.captured[self._capture_name] = bytes(self._capture)
        self._capture_name = None
        self._capture = bytearray()


@dataclass(frozen=True)
class WalRange:
    """Where a backup's replay starts and the point it must reach to be consistent."""

    timeline: int
    start_lsn: str
    stop_lsn: str
    start_wal: str
    stop_wal: str


_START_WAL = re.compile(
    r"^START WAL LOCATION: ([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)$", re.M
)
_START_TIMELINE = re.compile(r"^START TIMELINE: (\d+)$", re.M)


def label_start_wal(backup_label: bytes) -> str | None:
    """The WAL file a backup_label says replay starts in (None: no such line)."""
    start = _START_WAL.search(backup_label.decode("utf-8", "replace"))
    return start.group(2) if start else None


def wal_range(backup_label: bytes, manifest: bytes, segment_size: int) -> WalRange:
    """The backup's WAL range from its backup_label and backup_manifest.

    The label names the first WAL file replay needs; the manifest's WAL-Ranges
    end at the LSN where the restored copy becomes consistent.
    """
    label = backup_label.decode("utf-8", "replace")
    start = _START_WAL.search(label)
    timeline_match = _START_TIMELINE.search(label)
    if start is None:
        raise ValueError("backup_label has no START WAL LOCATION line")
    start_lsn, start_wal = start.group(1), start.group(2)
    timeline = int(timeline_match.group(1)) if timeline_match else int(start_wal[:8], 16)
    ranges = json.loads(manifest).get("WAL-Ranges") or []
    if not ranges:
        raise ValueError("backup_manifest has no WAL-Ranges")
    last = ranges[-1]
    stop_lsn = str(last["End-LSN"])
    stop_timeline = int(last["Timeline"])
    # The byte before End-LSN is the last one replay must read: at a segment
    # boundary that is still the previous segment.
    stop_wal = walnames.segment_of_lsn(
        stop_timeline, max(walnames.lsn_to_int(stop_lsn) - 1, 0), segment_size
    )
    return WalRange(timeline, start_lsn, stop_lsn, start_wal, stop_wal)


def _tar_number(field: bytes) -> int:
    # Sizes over 8 GiB use the base-256 form (high bit set), as PostgreSQL writes them.
    if field[0] & 0x80:
        return int.from_bytes(field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip()
    return int(digits, 8) if digits else 0


class _StderrWatcher(threading.Thread):
    """Reads pg_basebackup's stderr: progress totals, and the tail for error messages.

    A thread, because stdout is read in the caller's thread and a full stderr pipe
    would block pg_basebackup.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(name="pg_basebackup-stderr", daemon=True)
        self._stream = stream
        self._lock = threading.Lock()
        self._tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._total: int | None = None

    def run(self) -> None:
        pending = b""
        while chunk := self._stream.read1(65536):  # type: ignore[attr-defined]
            pending += chunk
            # On a terminal pg_basebackup ends progress lines with \r, else with \n.
            *lines, pending = re.split(rb"[\r\n]", pending)
            for raw in lines:
                self._line(raw.decode("utf-8", "replace").strip())
        self._line(pending.decode("utf-8", "replace").strip())

    def _line(self, line: str) -> None:
        if not line:
            return
        progress = parse_progress(line)
        with self._lock:
            if progress is not None:
                self._total = progress[1]
            self._tail.append(line)

    @property
    def total(self) -> int | None:
        with self._lock:
            return self._total

    def last_message(self) -> str:
        """pg_basebackup's last message with its detail lines, e.g. the connection error.

        libpq puts the hint on an indented line after the "error:" line, so the last
        line alone ("Is the server running...?") would hide the actual error.
        """
        with self._lock:
            lines = [line for line in self._tail if parse_progress(line) is None]
        if not lines:
            return "(no output)"
        start = len(lines) - 1
        for index in range(len(lines) - 1, -1, -1):
            if lines[index].startswith("pg_basebackup:"):
                start = index
                break
        message = " ".join(lines[start:]).removeprefix("pg_basebackup: ")
        return message if len(message) <= 400 else message[:399] + "…"


class _BaseBackupStream:
    """pg_basebackup as an iterable of stored (compressed) chunks, hashed on the way."""

    def __init__(
        self,
        command: list[str],
        compression: str,
        where: str,
        progress_callback: ProgressCallback | None,
        cancel: threading.Event | None,
        env: dict[str, str] | None = None,
    ) -> None:
        self._where = where
        self._cancel = cancel
        self._compression = compression
        self._progress_callback = progress_callback
        self.digest = hashlib.sha256()
        self.raw_size = 0
        self.stored_size = 0
        self.scanner = TarScanner()
        try:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **env} if env else None,
            )
        except OSError as exc:
            raise OperationFailed(f"{where}: cannot run {command[0]}: {exc}") from None
        # A 64 KiB pipe makes pg_basebackup wait while a chunk is compressed; with
        # room for a whole read chunk both sides run at once (measured in bench/:
        # about a fifth off a scale-100 backup). Not every kernel allows it.
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # type: ignore[union-attr]
        assert self._proc.stderr is not None
        self._stderr = _StderrWatcher(self._proc.stderr)
        self._stderr.start()

    def _stored(self, data: bytes) -> bytes:
        self.digest.update(data)
        self.stored_size += len(data)
        return data

    def _report(self) -> None:
        if self._progress_callback is not None:
            self._progress_callback(
                BackupProgress(self.raw_size, self.stored_size, self._stderr.total)
            )

    def chunks(self) -> Iterator[bytes]:
        compressor: Any = None
        if self._compression == "zstd":
            import zstandard

            from logship.ship.shipper import ZSTD_LEVEL

            compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        stdout = self._proc.stdout
        assert stdout is not None
        while data := stdout.read(READ_CHUNK):
            if self._cancel is not None and self._cancel.is_set():
                # Raised here, between two writes, so the transport removes its temp
                # file over a connection that is still in a sane state.
                raise BackupInterrupted(f"{self._where}: interrupted; nothing was kept at the site")
            self.raw_size += len(data)
            self.scanner.feed(data)
            out = compressor.compress(data) if compressor is not None else data
            if out:
                yield self._stored(out)
            self._report()
        if compressor is not None and (rest := compressor.flush()):
            yield self._stored(rest)
        # Raised from inside the iteration, so put_atomic sees the failure before it
        # would rename the temp file: a failed backup never appears at the site.
        returncode = self._proc.wait()
        self._stderr.join()
        if returncode != 0:
            raise OperationFailed(
                f"{self._where}: pg_basebackup failed (exit {returncode}): "
                f"{self._stderr.last_message()} (nothing was kept at the site)"
            )
        if not self.scanner.has_manifest:
            raise OperationFailed(
                f"{self._where}: pg_basebackup's tar has no backup_manifest, so the "
                "backup cannot be verified at restore; use pg_basebackup 13 or newer "
                "and do not pass --no-manifest"
            )
        self._report()

    def close(self) -> None:
        # After a transport error pg_basebackup is still running: stop it, it would
        # otherwise hold a replication connection and a backup in progress.
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()
        self._stderr.join(timeout=10)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyboardInterrupt | BackupInterrupted):
        return "interrupted"
    return str(exc) or type(exc).__name__


def _ship(
    stream: _BaseBackupStream,
    connector: PostgresConnector,
    layout: SiteLayout,
    transport: Transport,
    backup_id: str,
    started_at: float,
    clock: Clock,
) -> BackupRecord:
    stored_name = stored_name_for(connector.compression)
    backup_dir = layout.backup_dir(backup_id)
    written = transport.put_atomic(backup_dir / stored_name, stream.chunks())
    if written != stream.stored_size:
        raise OperationFailed(
            f"connector {connector.name}: the transport wrote {written} bytes of "
            f"{stream.stored_size} for {backup_dir / stored_name}; backup not recorded"
        )
    scanner = stream.scanner
    manifest = scanner.captured.get("backup_manifest")
    label = scanner.captured.get("backup_label")
    try:
        if manifest is None or label is None:
            raise ValueError("the tar has no readable backup_label or backup_manifest")
        wal = wal_range(label, manifest, scanner.wal_segment_size or walnames.DEFAULT_SEGMENT_SIZE)
    except (ValueError, KeyError, TypeError) as exc:
        raise OperationFailed(
            f"connector {connector.name}: cannot read backup {backup_id}'s WAL range ({exc}); "
            "backup not recorded"
        ) from None
    # Kept outside the tar as well: pg_verifybackup and a DBA can read it without
    # decompressing gigabytes, and it lists every file the backup must hold.
    transport.put_atomic(layout.backup_manifest(backup_id), [manifest])
    record = BackupRecord(
        backup_id=backup_id,
        connector=connector.name,
        started_at=started_at,
        finished_at=clock(),
        stored_name=stored_name,
        stored_size=stream.stored_size,
        stored_sha256=stream.digest.hexdigest(),
        size=stream.raw_size,
        compression=connector.compression,
        pg_version=scanner.pg_version,
        start_lsn=wal.start_lsn,
        stop_lsn=wal.stop_lsn,
        timeline=wal.timeline,
        start_wal=wal.start_wal,
        stop_wal=wal.stop_wal,
        manifest_name=BACKUP_MANIFEST_NAME,
    )
    # Last: a backup with a record is complete, and restore considers no other.
    transport.put_atomic(layout.backup_record(backup_id), [record.to_json()])
    return record


def take_base_backup(
    config: Config,
    connector_name: str,
    transport: Transport,
    clock: Clock = time.time,
    progress_callback: ProgressCallback | None = None,
    *,
    catalog: Catalog | None = None,
    cancel: threading.Event | None = None,
) -> BackupRecord:
    """Take a base backup of the connector's primary and ship it through `transport`.

    The start and the outcome are recorded in `catalog` (opened from the config when
    not given). Raises OperationFailed when pg_basebackup or the transfer fails; the
    site then holds no record for this backup, so it is never restored.
    """
    connector = postgres_connector(config, connector_name)
    site = config.site_of(connector)
    layout = SiteLayout.for_connector(site.root, connector.name)
    with backup_lock(config.logship.state_dir, connector.name):
        if transport.read_bytes(layout.promoted_marker) is not None:
            raise SafetyRefusal(
                f"connector {connector.name}: the standby at site {site.name} was promoted "
                f"({layout.promoted_marker} exists); not shipping a base backup into it. "
                "Re-seed the standby and remove the marker first"
            )
        started_at = clock()
        backup_id = backup_id_for(started_at)
        backup_dir = layout.backup_dir(backup_id)
        if transport.listdir(backup_dir):
            raise OperationFailed(
                f"connector {connector.name}: backup {backup_id} already exists at site "
                f"{site.name} ({backup_dir}); wait a second and run again"
            )
        program = find_program(
            "pg_basebackup",
            bin_dir=connector.primary.bin_dir,
            setting=f"connector {connector.name}: [primary].bin_dir",
        )
        transport.makedirs(backup_dir)
        # The password goes in a private passfile, never on pg_basebackup's command
        # line, which every local user can read; it is removed once the stream closes.
        with dsn_for_child(
            connector.primary.dsn, setting=f"connector {connector.name}: [primary].dsn"
        ) as child:
            # Started before the catalog is opened: pg_basebackup connects and waits
            # for its checkpoint meanwhile, and nothing reads its output until _ship.
            stream = _BaseBackupStream(
                pg_basebackup_command(program, child.dsn, f"logship {backup_id}"),
                connector.compression,
                f"connector {connector.name}",
                progress_callback,
                cancel,
                child.env,
            )
            try:
                own_catalog = catalog is None
                active = open_catalog(config) if catalog is None else catalog
                try:
                    record = _record_and_ship(
                        stream, connector, layout, transport, active, backup_id, started_at, clock
                    )
                    _record_consistency_point(config, connector, active, record)
                    return record
                finally:
                    if own_catalog:
                        active.close()
            finally:
                stream.close()


def _record_consistency_point(
    config: Config, connector: PostgresConnector, catalog: Catalog, record: BackupRecord
) -> None:
    """Pair the backup's stop LSN with the file state of the site's files connectors."""
    from logship import consistency

    files = consistency.files_connectors_for(config, connector.name)
    if not files or record.stop_lsn is None:
        return
    consistency.record_point(
        catalog,
        database=connector.name,
        files=files,
        lsn=record.stop_lsn,
        timeline=record.timeline,
        taken_at=record.finished_at,
        reason=f"base backup {record.backup_id}",
    )


def _record_and_ship(
    stream: _BaseBackupStream,
    connector: PostgresConnector,
    layout: SiteLayout,
    transport: Transport,
    catalog: Catalog,
    backup_id: str,
    started_at: float,
    clock: Clock,
) -> BackupRecord:
    # Holding the lock, no other backup of this connector runs: a row still
    # "running" belongs to a process that died (kill -9, power loss).
    catalog.fail_interrupted_backups(connector.name, clock())
    # Imported here: standby restore imports this module and needs no SQLAlchemy.
    from sqlalchemy.exc import IntegrityError

    try:
        catalog.start_backup(connector.name, backup_id, started_at)
    except IntegrityError:
        raise OperationFailed(
            f"connector {connector.name}: the catalog already has a backup named "
            f"{backup_id}; wait a second and run again"
        ) from None
    try:
        record = _ship(stream, connector, layout, transport, backup_id, started_at, clock)
    except BaseException as exc:
        catalog.finish_backup(connector.name, backup_id, now=clock(), error=_describe(exc))
        raise
    catalog.finish_backup(
        connector.name,
        backup_id,
        now=record.finished_at,
        size=record.size,
        stored_size=record.stored_size,
        start_lsn=record.start_lsn,
        stop_lsn=record.stop_lsn,
        start_wal=record.start_wal,
        stop_wal=record.stop_wal,
    )
    return record
