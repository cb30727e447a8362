"""The `logship` command's entry point.

`logship archive-wal CONNECTOR PATH` runs once per WAL segment inside PostgreSQL's
archiver, which waits for it. When the read-ahead already shipped the segment,
the call only has to confirm it (logship.engines.postgresql.archive_confirm), and
that is settled here, before the argument parser and the verbs' modules are
imported. Everything else, and any doubt, goes to logship.cli.main.
"""

from __future__ import annotations

import os
import sys


def _archive_wal_call(argv: list[str]) -> tuple[str | None, str, str] | None:
    """(--config or None, connector, path) for the plain archive-wal call."""
    config: str | None = None
    rest = list(argv)
    if len(rest) == 5 and rest[0] == "--config":
        config, rest = rest[1], rest[2:]
    elif len(rest) == 4 and rest[0].startswith("--config="):
        config, rest = rest[0].removeprefix("--config="), rest[1:]
    if len(rest) != 3 or rest[0] != "archive-wal":
        return None
    connector, path = rest[1], rest[2]
    if not connector or "/" in connector or connector.startswith(".") or "\0" in connector:
        return None
    return config, connector, path


def confirmed_without_copy(argv: list[str]) -> bool:
    """True when this is archive-wal and its segment is already durable at the site."""
    call = _archive_wal_call(argv)
    if call is None:
        return False
    config, connector, path = call
    from logship.config.state_dir_scan import config_file, state_dir
    from logship.engines.postgresql.archive_confirm import confirmed

    state = state_dir(config_file(config))
    if state is None:
        return False
    try:
        return confirmed(os.path.join(state, "spool", connector), path)
    except (OSError, ValueError):
        return False  # the full path looks again and says what is wrong


def run() -> None:
    """Never returns: the process exits with the verb's code."""
    if confirmed_without_copy(sys.argv[1:]):
        os._exit(0)
    from logship.cli.main import run as run_verb

    run_verb()
