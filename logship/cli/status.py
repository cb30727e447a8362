"""`logship status [--json] [--since DURATION] [CONNECTOR]`: lag and RPO per connector.

Reads the catalog only (no SSH), so it answers instantly and works while the site
is unreachable. Before any daemon has run there is no catalog: every connector is
still listed, with nulls for what cannot be measured. `--since` adds what the
stored lag history says about that window (see logship.status.history).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from rich.console import Console
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from logship import jsonout, roles
from logship.catalog.opening import scrub, shown_url
from logship.catalog.store import Catalog
from logship.config.durations import parse_duration
from logship.config.files import config_path
from logship.config.load import load_config
from logship.config.model import Config
from logship.errors import OperationFailed, UsageError, shown_text
from logship.status.history import WindowSummary, window_summary
from logship.status.model import ConnectorStatus
from logship.status.monitor import collect_statuses
from logship.ui.status_table import build_since_table, build_status_table

WIDTH_WHEN_PIPED = 160


def _catalog_missing(url: str) -> bool:
    """True for an SQLite catalog whose file does not exist yet."""
    parsed = make_url(url)
    database = parsed.database or ""
    if not parsed.drivername.startswith("sqlite") or database in ("", ":memory:"):
        return False
    try:
        os.stat(database)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except PermissionError:
        raise OperationFailed(
            f"catalog {database}: permission denied (run as the user that runs logship)"
        ) from None
    return False


def open_catalog(config: Config) -> Catalog | None:
    """The catalog, or None when no daemon has created it yet.

    A missing SQLite file is not created here: `status` must not leave a root-owned
    catalog behind for the daemon to trip over.
    """
    url = config.catalog_url
    if _catalog_missing(url):
        return None
    try:
        return Catalog(url)
    except SQLAlchemyError as exc:
        shown = shown_url(url)
        reason = scrub(str(getattr(exc, "orig", None) or exc).splitlines()[0], url)
        raise OperationFailed(f"catalog {shown}: cannot open: {reason}") from None


def selected_connectors(config: Config, only: str | None) -> list[str]:
    if only is not None:
        config.connector(only)  # an unknown name is a usage error naming the known ones
        return [only]
    return sorted(config.connectors)


def since_window(value: str | None) -> float | None:
    """`--since` in seconds; a usage error naming the accepted forms when malformed."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise UsageError(f"--since: {exc}") from None


def _summary(
    catalog: Catalog | None, status: ConnectorStatus, *, since: float, now: float, config: Config
) -> WindowSummary:
    """The connector's window; its current status alone when its stored samples
    cannot be read (one connector's rows never cost another its figures)."""
    resolution = config.history.resolution
    try:
        return window_summary(catalog, status, since=since, now=now, resolution=resolution)
    except Exception as exc:
        print(
            f"status: {status.name}: lag history unreadable: {shown_text(str(exc))}",
            file=sys.stderr,
        )
        return window_summary(None, status, since=since, now=now, resolution=resolution)


def run(args: argparse.Namespace) -> int:
    config = roles.settled(
        load_config(config_path(args.config), this_site=args.this_site), record=False
    )
    names = selected_connectors(config, args.connector)
    window = since_window(getattr(args, "since", None))
    catalog = open_catalog(config)
    now = time.time()
    summaries: list[WindowSummary] | None = None
    try:
        statuses = collect_statuses(config, catalog, names, now)
        if window is not None:
            summaries = [
                _summary(catalog, status, since=now - window, now=now, config=config)
                for status in statuses
            ]
    finally:
        if catalog is not None:
            catalog.close()
    if args.json:
        # Plain stdout, never rich: scripts parse this.
        entries = [status.to_json() for status in statuses]
        for entry, summary in zip(entries, summaries or (), strict=False):
            entry["since"] = summary.to_json()
        document = {"connectors": entries}
        sys.stdout.write(jsonout.dumps(document, indent=2) + "\n")
    else:
        console = Console()
        if not console.is_terminal:
            # Piped or logged: a wide line beats a WAL name folded over three lines.
            console = Console(width=WIDTH_WHEN_PIPED)
        console.print(build_status_table(statuses))
        if summaries is not None:
            rows = list(zip(statuses, summaries, strict=True))
            console.print(build_since_table(rows, now=now, label=args.since))
    return 0
