"""`logship dashboard [--interval N]`: the status table, refreshed until Ctrl-C."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from datetime import datetime
from typing import NoReturn

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from logship.catalog.store import Catalog
from logship.cli.status import open_catalog, selected_connectors
from logship.config.files import config_path
from logship.config.load import load_config
from logship.config.model import Config
from logship.errors import LogshipError, UsageError
from logship.monitor import collect_statuses
from logship.ui.status_table import build_status_table


class _Frames:
    """Builds one frame per refresh; opens the catalog once a daemon has created it."""

    def __init__(self, config: Config, names: list[str]) -> None:
        self._config = config
        self._names = names
        self._catalog: Catalog | None = None

    def render(self) -> RenderableType:
        stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        title = f"logship — {stamp} (Ctrl-C to quit)"
        try:
            if self._catalog is None:
                self._catalog = open_catalog(self._config)
            statuses = collect_statuses(self._config, self._catalog, self._names, time.time())
        except (LogshipError, SQLAlchemyError) as exc:
            # A busy or briefly unreachable catalog should not end a long-running view.
            reason = str(exc).splitlines()[0]
            return Text(f"{title}\ncatalog unavailable, retrying: {reason}", style="red")
        table = build_status_table(statuses, title=title)
        if self._catalog is None:
            note = Text("no catalog yet: start `logship run` at the primary site", style="dim")
            return Group(table, note)
        return table

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()


def _loop(interval: float, frame: Callable[[], RenderableType], console: Console) -> NoReturn:
    """Redraw every `interval` seconds; only KeyboardInterrupt ends it."""
    if console.is_terminal:
        with Live(frame(), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(frame(), refresh=True)
    else:
        # Piped into a file or a pager, redrawing in place is impossible: append frames.
        while True:
            console.print(frame())
            time.sleep(interval)


def run(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.interval) and args.interval > 0):
        raise UsageError(f"--interval must be a positive number of seconds, not {args.interval}")
    config = load_config(config_path(args.config))
    frames = _Frames(config, selected_connectors(config, None))
    try:
        _loop(args.interval, frames.render, Console())
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a dashboard is meant to end
    finally:
        frames.close()
