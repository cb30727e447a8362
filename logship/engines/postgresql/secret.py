"""Keeping a DSN's password off a PostgreSQL program's command line.

A child's argv is world-readable (`ps`, /proc/<pid>/cmdline), so a `password=` in
the DSN handed to pg_basebackup would show to every local user. The password goes
into a 0600 libpq password file in a 0700 private folder instead, named by the
DSN's `passfile` keyword (which beats PGPASSFILE and ~/.pgpass), and the folder is
removed when the program has ended.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from logship.errors import ConfigError

PASSFILE_NAME = "pgpass"


@dataclass(frozen=True)
class ChildDsn:
    """What to hand a child: a DSN without the password, and extra environment."""

    dsn: str
    env: dict[str, str] = field(default_factory=dict)


def _pgpass_field(value: str) -> str:
    # libpq's password file: ':' separates fields, '\' escapes.
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _split_password(dsn: str, setting: str) -> tuple[dict[str, object], str | None]:
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        raise ConfigError(f"{setting}: not a valid libpq connection string: {exc}") from None
    password = params.pop("password", None)
    return params, None if password is None else str(password)


@contextlib.contextmanager
def dsn_for_child(dsn: str, *, setting: str = "dsn") -> Iterator[ChildDsn]:
    """`dsn` as a child process may see it on its command line.

    Without a password the DSN is handed on unchanged. With one, the password is
    written to a private password file that lives as long as this context; a
    password libpq's file cannot hold (a line break) goes in PGPASSWORD instead,
    which only the same user (and root) can read in /proc/<pid>/environ.
    """
    params, password = _split_password(dsn, setting)
    if password is None:
        yield ChildDsn(dsn)
        return
    from psycopg.conninfo import make_conninfo

    if "\n" in password or "\r" in password:
        params.pop("passfile", None)
        yield ChildDsn(make_conninfo("", **params), {"PGPASSWORD": password})  # type: ignore[arg-type]
        return
    folder = Path(tempfile.mkdtemp(prefix="logship-pgpass-"))  # mkdtemp: 0700, unpredictable
    try:
        passfile = folder / PASSFILE_NAME
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            # Wildcards: the file is this one child's and holds this one password.
            out.write(f"*:*:*:*:{_pgpass_field(password)}\n")
        params["passfile"] = str(passfile)
        yield ChildDsn(make_conninfo("", **params))  # type: ignore[arg-type]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
