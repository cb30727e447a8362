"""Throwaway PostgreSQL clusters for tests and demos."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import make_conninfo

from logship.demo_sandbox.osuser import CommandError, OsUser, tail
from logship.engines.postgresql.tools import quote_conf_string

DEFAULT_BIN_DIR = Path("/usr/lib/postgresql/15/bin")

# GUC names are identifiers, possibly qualified ("auto_explain.log_min_duration").
_GUC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")

# pg_ctl status exits 3 for "no server running" and 4 for "no accessible data dir".
_PG_CTL_NOT_RUNNING = (3, 4)

T = TypeVar("T")


quote_conf_value = quote_conf_string


def _poll(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
) -> T:
    """Call ``check`` until it returns non-None, backing off between tries."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    last_error: BaseException | None = None
    while True:
        try:
            result = check()
        except psycopg.OperationalError as exc:
            # The server may be starting, restarting or promoting: keep trying.
            result, last_error = None, exc
        if result is not None:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            suffix = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout:g}s waiting for {what}{suffix}")
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.5)


class PgCluster:
    """A private PostgreSQL cluster owned by ``user``, listening on 127.0.0.1:``port``.

    Used as a context manager it is initialised (if needed) and started on entry and
    destroyed on exit; call :meth:`initdb` and :meth:`configure` first to customise it.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int,
        user: OsUser,
        bin_dir: Path = DEFAULT_BIN_DIR,
        socket_dir: Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.port = port
        self.user = user
        self.bin_dir = Path(bin_dir)
        self.socket_dir = (
            Path(socket_dir).absolute() if socket_dir else self.data_dir.parent / "sock"
        )
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        # Only what this object created is removed by destroy(); a caller's directories
        # (e.g. a shared temp dir) are left alone.
        self._created_dirs: list[Path] = []

    # -- helpers -----------------------------------------------------------------------

    def _bin(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.exists():
            raise RuntimeError(
                f"PostgreSQL program not found: {path} "
                "(install it with 'apt-get install postgresql-15')"
            )
        return str(path)

    def _run(
        self,
        cmd: Sequence[str],
        *,
        timeout: float = 120.0,
        env: Mapping[str, str] | None = None,
        with_log: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        try:
            # The user's cwd must be reachable by it: pg tools warn or fail otherwise.
            return self.user.run(cmd, cwd=self.data_dir.parent, env=env, timeout=timeout)
        except CommandError as exc:
            if not with_log:
                raise
            log = self.log_text()
            detail = f"server log {self.log_file} (last lines):\n{tail(log)}" if log else ""
            raise CommandError(exc.cmd, exc.returncode, exc.stderr, detail=detail) from exc

    def _make_dir(self, path: Path, mode: int) -> None:
        """Create ``path`` and missing parents, giving what we create to the user."""
        missing = [p for p in (path, *path.parents) if not p.exists()]
        for directory in reversed(missing):
            directory.mkdir(mode=mode)
            # mkdir's mode is filtered by the umask; the modes here are requirements.
            directory.chmod(mode)
            self.user.chown(directory)
            self._created_dirs.append(directory)

    def _ensure_runtime_paths(self) -> None:
        self._make_dir(self.socket_dir, 0o755)
        # pg_ctl opens the log as the user, who may not be able to write the parent
        # (a root-owned temp dir), so the file is created here and handed over.
        if not self.log_file.exists():
            self.log_file.touch(mode=0o644)
            self.user.chown(self.log_file)

    def _pg_env(self, dbname: str = "postgres") -> dict[str, str]:
        env = dict(os.environ)
        # Client tools must reach this cluster whatever PG* the caller has set.
        for key in [k for k in env if k.startswith("PG")]:
            del env[key]
        env.update(
            PGHOST="127.0.0.1",
            PGPORT=str(self.port),
            PGUSER=self.user.name,
            PGDATABASE=dbname,
        )
        return env

    # -- lifecycle ---------------------------------------------------------------------

    def initdb(self) -> None:
        """Create the cluster (trust auth, UTF8, C locale, checksums) and set defaults."""
        parent = self.data_dir.parent
        self._make_dir(parent, 0o755)
        if not self.user.can_reach(parent):
            raise RuntimeError(
                f"{parent} is not reachable by OS user {self.user.name!r}: every ancestor "
                "must be searchable by it (e.g. use a 0755 directory under /tmp)"
            )
        self._make_dir(self.data_dir, 0o700)
        self._ensure_runtime_paths()
        self._run(
            [
                self._bin("initdb"),
                "-D",
                str(self.data_dir),
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--data-checksums",
                "-U",
                self.user.name,
                "--no-instructions",
            ]
        )
        self.configure(
            {
                "port": str(self.port),
                "listen_addresses": "127.0.0.1",
                "unix_socket_directories": str(self.socket_dir),
                "wal_level": "replica",
                "max_wal_senders": "4",
                "fsync": "on",
                "logging_collector": "off",
            }
        )

    def configure(self, settings: Mapping[str, str]) -> None:
        """Append ``key = 'value'`` lines to postgresql.conf; later lines win."""
        lines = []
        for key, value in settings.items():
            if not _GUC_NAME.match(key):
                raise ValueError(f"not a valid PostgreSQL setting name: {key!r}")
            lines.append(f"{key} = {quote_conf_value(str(value))}\n")
        # Appending keeps the file's owner (the cluster user) even when we are root.
        with open(self.data_dir / "postgresql.conf", "a", encoding="utf-8") as conf:
            conf.writelines(lines)

    def start(self, timeout: float = 60) -> None:
        """Start the server and wait until it accepts connections."""
        self._ensure_runtime_paths()
        self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(int(timeout)),
                "-l",
                str(self.log_file),
                "start",
            ],
            timeout=timeout + 30,
            with_log=True,
        )

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server; doing nothing if it is not running."""
        if not self.is_running():
            return
        try:
            self._run(
                [
                    self._bin("pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "stop",
                ],
                timeout=timeout + 30,
                with_log=True,
            )
        except CommandError:
            # It may have gone away between the check and the stop.
            if self.is_running():
                raise

    def is_running(self) -> bool:
        if not (self.data_dir / "PG_VERSION").exists():
            return False
        cmd = [
            *self.user.command_prefix(),
            self._bin("pg_ctl"),
            "-D",
            str(self.data_dir),
            "status",
        ]
        proc = subprocess.run(
            cmd,
            cwd=self.data_dir.parent,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if proc.returncode == 0:
            return True
        if proc.returncode in _PG_CTL_NOT_RUNNING:
            return False
        raise CommandError(cmd, proc.returncode, proc.stderr)

    def destroy(self) -> None:
        """Stop the server and remove its data directory, log and what we created."""
        try:
            self.stop()
        except CommandError:
            # Removing the data directory under a live server would leave it running
            # and writing to unlinked files, so insist on it being gone.
            self.stop(mode="immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.log_file.unlink(missing_ok=True)
        for directory in reversed(self._created_dirs):
            if directory == self.socket_dir:
                shutil.rmtree(directory, ignore_errors=True)
            else:
                # Not empty means it holds something that is not ours.
                with contextlib.suppress(OSError):
                    directory.rmdir()
        self._created_dirs.clear()

    def __enter__(self) -> PgCluster:
        if not (self.data_dir / "PG_VERSION").exists():
            self.initdb()
        if not self.is_running():
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    # -- clients -----------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres") -> str:
        """libpq keyword DSN over TCP as the cluster's superuser."""
        return make_conninfo(
            "", host="127.0.0.1", port=str(self.port), user=self.user.name, dbname=dbname
        )

    def socket_dsn(self, dbname: str = "postgres") -> str:
        """libpq keyword DSN over the Unix socket directory."""
        return make_conninfo(
            "", host=str(self.socket_dir), port=str(self.port), user=self.user.name, dbname=dbname
        )

    def connect(
        self, dbname: str = "postgres", *, connect_timeout: int = 10
    ) -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit psycopg connection; the caller closes it."""
        return psycopg.connect(self.dsn(dbname), autocommit=True, connect_timeout=connect_timeout)

    def query(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        """Run one statement and return its rows (empty if it returns none)."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description is not None else []

    def execute(self, sql: str) -> None:
        """Run SQL that returns nothing of interest (DDL, DML, several statements)."""
        with self.connect() as conn:
            conn.execute(sql)

    def wait_until(self, predicate_sql: str, timeout: float = 30) -> None:
        """Poll until ``predicate_sql`` returns a true first column, or TimeoutError."""

        def check() -> bool | None:
            rows = self.query(predicate_sql)
            return True if rows and rows[0] and rows[0][0] else None

        _poll(check, timeout, f"{predicate_sql!r} on port {self.port}")

    def pgbench(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run pgbench as the cluster user against this cluster (database postgres).

        Connection settings go through PG* variables so that ``args`` may still name
        another database as pgbench's trailing positional argument.
        """
        return self._run([self._bin("pgbench"), *args], env=self._pg_env(), timeout=timeout)

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def __repr__(self) -> str:
        return f"PgCluster(data_dir={str(self.data_dir)!r}, port={self.port})"
