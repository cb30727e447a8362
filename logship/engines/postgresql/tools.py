"""Finding PostgreSQL's programs, reading libpq DSNs, quoting postgresql.conf values."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from logship.errors import ConfigError, OperationFailed

# Debian and Ubuntu install each major version side by side here.
DEBIAN_LIB_ROOT = Path("/usr/lib/postgresql")
DEFAULT_PORT = 5432
_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)?$")


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def read_pg_version(data_dir: Path) -> str | None:
    """The major version in `data_dir/PG_VERSION` ("15"), or None when absent."""
    try:
        text = (data_dir / "PG_VERSION").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    version = text.strip().splitlines()[0].strip() if text.strip() else ""
    # It becomes part of a path: digits and dots only.
    return version if _VERSION.match(version) else None


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        proc = subprocess.run(
            [pg_config, "--bindir"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = proc.stdout.strip()
    return Path(out) if proc.returncode == 0 and out else None


def find_program(
    name: str,
    *,
    bin_dir: Path | None = None,
    data_dir: Path | None = None,
    version: str | None = None,
    setting: str = "bin_dir",
) -> Path:
    """The PostgreSQL program `name` to run.

    A configured `bin_dir` wins and must contain it. Otherwise the major version of
    the cluster (`version`, else read from `data_dir/PG_VERSION`) picks Debian's
    `/usr/lib/postgresql/<ver>/bin` (a server's own tools must match its major
    version), then `pg_config --bindir`, then PATH. `setting` names the config key
    in messages (e.g. "[standby].bin_dir").
    """
    if bin_dir is not None:
        path = bin_dir / name
        if not _is_executable(path):
            raise ConfigError(
                f"{setting}: {path} does not exist or is not executable "
                f"(point {setting} at the directory holding PostgreSQL's {name})"
            )
        return path
    looked: list[str] = []
    if version is not None and not _VERSION.match(version):
        version = None  # it becomes part of a path: digits and dots only
    if version is None and data_dir is not None:
        version = read_pg_version(data_dir)
    if version is not None:
        candidate = DEBIAN_LIB_ROOT / version / "bin" / name
        if _is_executable(candidate):
            return candidate
        looked.append(str(candidate.parent))
    configured = _pg_config_bindir()
    if configured is not None:
        if _is_executable(configured / name):
            return configured / name
        looked.append(f"{configured} (pg_config --bindir)")
    on_path = shutil.which(name)
    if on_path is not None:
        return Path(on_path)
    looked.append("PATH")
    raise OperationFailed(
        f"PostgreSQL program {name} not found (looked in {', '.join(looked)}); "
        f"install PostgreSQL's client/server programs or set {setting}"
    )


@dataclass(frozen=True)
class DsnEndpoint:
    """Where a libpq DSN points: TCP hosts and/or socket directories, and one port."""

    tcp_hosts: tuple[str, ...]
    socket_dirs: tuple[str, ...]
    port: int


def parse_dsn(dsn: str, *, setting: str = "dsn") -> DsnEndpoint:
    """Split a libpq keyword (or URI) DSN into TCP hosts, socket dirs and its port.

    A host starting with "/" is a Unix socket directory, as in libpq. `hostaddr`,
    when given, is what libpq connects to, so it takes the place of TCP host names.
    No port means libpq's default, 5432.
    """
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        raise ConfigError(f"{setting}: not a valid libpq connection string: {exc}") from None

    def listed(key: str) -> list[str]:
        value = params.get(key)
        if value is None:
            return []
        return [item.strip() for item in str(value).split(",") if item.strip()]

    hosts = listed("host")
    socket_dirs = tuple(h for h in hosts if h.startswith("/"))
    tcp_hosts = tuple(listed("hostaddr")) or tuple(h for h in hosts if not h.startswith("/"))
    ports = set(listed("port"))
    if len(ports) > 1:
        raise ConfigError(
            f"{setting}: names several ports ({', '.join(sorted(ports))}); "
            "a server listens on one, so give exactly one port"
        )
    raw_port = ports.pop() if ports else str(DEFAULT_PORT)
    try:
        port = int(raw_port)
    except ValueError:
        raise ConfigError(f"{setting}: port {raw_port!r} is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{setting}: port {port} is out of range (1-65535)")
    return DsnEndpoint(tcp_hosts=tcp_hosts, socket_dirs=socket_dirs, port=port)


def quote_conf_string(value: str) -> str:
    """`value` as a single-quoted postgresql.conf string literal.

    The config lexer reads backslash escapes inside quotes, so backslashes are
    doubled as well as quotes; a newline cannot be written and is refused.
    """
    if "\n" in value or "\r" in value:
        raise ValueError(f"a postgresql.conf value cannot contain a newline: {value!r}")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
