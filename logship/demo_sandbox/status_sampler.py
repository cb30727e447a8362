"""`python -m logship.demo_sandbox.status_sampler --config PATH [--interval S]`:
what `logship status --json` prints, computed several times a second by one
long-lived process, one JSON line per reading.

The demo measures exposure under load from these readings. A fresh `logship
status` process per reading spends seconds starting up next to pgbench on a
small machine, which leaves a load of a few seconds with one reading or none.
The figures are the same: each line holds `collect_statuses`' entries as
`status --json` prints them, with the time they were computed for. The config is
read again each round, so a connector changed meanwhile is reported as it is now.

It runs as the OS user that runs logship (the catalog's owner), and ends when
its reader goes away (a write to a closed pipe), or on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from logship import jsonout
from logship.catalog.store import Catalog
from logship.cli.status import open_catalog
from logship.config.load import load_config
from logship.errors import first_line
from logship.status.monitor import collect_statuses

#: the streaming supervisor samples four times a second: so does this
DEFAULT_INTERVAL_S = 0.25


def reading(config_path: Path, catalog: Catalog | None) -> tuple[dict[str, Any], Catalog | None]:
    """One line's document, and the catalog to use next round (opened once it exists)."""
    now = time.time()
    try:
        config = load_config(config_path)
        if catalog is None:
            catalog = open_catalog(config)
        statuses = collect_statuses(config, catalog, sorted(config.connectors), now)
    except Exception as exc:  # a config being rewritten, a busy catalog: next round
        return {"at": now, "error": first_line(exc)}, catalog
    return {"at": now, "connectors": [status.to_json() for status in statuses]}, catalog


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="status_sampler")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S)
    args = parser.parse_args(argv)
    stopping = threading.Event()

    def stop(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    # Ctrl-C at the demo reaches its whole process group: this ends as on SIGTERM.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    catalog: Catalog | None = None
    try:
        while not stopping.is_set():
            began = time.monotonic()
            document, catalog = reading(args.config, catalog)
            try:
                sys.stdout.write(jsonout.dumps(document) + "\n")
                sys.stdout.flush()
            except BrokenPipeError:
                # The demo is gone: nobody reads these any more. Stdout goes to
                # /dev/null, or the flush at exit would fail once more.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                return 0
            stopping.wait(max(0.0, args.interval - (time.monotonic() - began)))
    finally:
        if catalog is not None:
            catalog.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
