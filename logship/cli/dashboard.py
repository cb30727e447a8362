"""`logship dashboard [--interval N]`: a live view of lag and RPO, until q or Ctrl-C.

It reads the catalog and the lag samples the daemon stores there, never the
databases or the SSH link, so any number of open dashboards add no load on
either.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Sequence
from datetime import datetime
from types import FrameType, TracebackType
from typing import TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from logship import roles
from logship.catalog.store import Catalog
from logship.cli.status import open_catalog, selected_connectors
from logship.config.files import config_path
from logship.config.load import load_config
from logship.config.model import Config
from logship.errors import LogshipError, UsageError, first_line
from logship.status.history import events, hold_for
from logship.status.monitor import collect_statuses
from logship.ui.dashboard_view import DashboardData, DashboardView, Point

SPARK_WINDOW_S = 600.0
EVENTS_WINDOW_S = 3600.0
QUIT_KEYS = frozenset(b"qQ")
NO_CATALOG = "no catalog yet: start `logship run` at the primary site"


def snapshot(
    config: Config,
    catalog: Catalog | None,
    names: Sequence[str],
    now: float,
    *,
    title: str | None = None,
) -> DashboardView:
    """One frame's figures: the same statuses as `status`, plus the stored history."""
    statuses = collect_statuses(config, catalog, names, now)
    hold = hold_for(config.history.resolution)
    history: dict[str, list[Point]] = {name: [] for name in names}
    recent = []
    if catalog is not None:
        # From one `hold` earlier, so the sparkline's first slice has its point.
        for row in catalog.samples(None, now - SPARK_WINDOW_S - hold):
            if row.connector in history:
                history[row.connector].append((row.at, row.rpo_exposure_s))
        recent = [e for e in events(catalog, now - EVENTS_WINDOW_S) if e.connector in history]
        # The daemon stores a window's worst only once the window is over: the
        # figure measured just now is the sparkline's newest point.
        for status in statuses:
            history[status.name].append((now, status.rpo_exposure_s))
    return DashboardView(
        DashboardData(
            now=now,
            statuses=statuses,
            history=history,
            events=recent,
            spark_window_s=SPARK_WINDOW_S,
            events_window_s=EVENTS_WINDOW_S,
            hold_s=hold,
            title=title,
            note=NO_CATALOG if catalog is None else None,
        )
    )


class _Frames:
    """Builds one frame per refresh; opens the catalog once a daemon has created it."""

    def __init__(self, config: Config, names: list[str]) -> None:
        self._config = config
        self._names = names
        self._catalog: Catalog | None = None

    def render(self) -> RenderableType:
        stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        title = f"logship — {stamp} (q or Ctrl-C to quit)"
        try:
            if self._catalog is None:
                self._catalog = open_catalog(self._config)
            return snapshot(self._config, self._catalog, self._names, time.time(), title=title)
        except (LogshipError, SQLAlchemyError) as exc:
            # A busy or briefly unreachable catalog should not end a long-running view.
            reason = first_line(exc)
            return Group(
                Text(title, style="bold"),
                Text(f"catalog unavailable, retrying: {reason}", style="red"),
            )

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()


class Keys:
    """Single key presses from stdin, while it is a terminal.

    The terminal is put in cbreak mode (keys arrive unbuffered, unechoed; Ctrl-C
    still interrupts) and restored as it was on leaving, however the dashboard ends.
    """

    def __init__(self, stream: TextIO) -> None:
        self._fd: int | None = None
        self._saved: list[object] | None = None
        try:
            if stream.isatty():
                self._fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            pass  # no usable stdin (closed, replaced): the dashboard only ends on Ctrl-C

    def __enter__(self) -> Keys:
        if self._fd is not None:
            try:
                self._saved = termios.tcgetattr(self._fd)
                tty.setcbreak(self._fd, termios.TCSANOW)
            except termios.error:
                self._fd = None
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._saved is not None and self._fd is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)

    def wait(self, timeout: float, stop: StopRequest) -> bytes:
        """What was typed within `timeout` seconds (b"" for nothing, or when a stop
        was asked for meanwhile)."""
        watched = [stop.wake_fd] if self._fd is None else [self._fd, stop.wake_fd]
        ready, _, _ = select.select(watched, [], [], max(0.0, timeout))
        if stop.wake_fd in ready:
            stop.drain()
        if self._fd is None or self._fd not in ready:
            return b""
        typed = os.read(self._fd, 64)
        if not typed:
            # End of input (the terminal hung up): stop reading, or select would spin.
            self._fd = None
        return typed


class StopRequest:
    """Ctrl-C or `kill`, asked for: noted, and the wait for keys woken up.

    Not a KeyboardInterrupt raised wherever the signal lands: one raised inside
    the catalog's connection pool could leave its lock taken, and closing the
    catalog then never returned. The loop stops at its next check instead.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.requested = False
        self.wake_fd, self._write_fd = os.pipe()
        for fd in (self.wake_fd, self._write_fd):
            os.set_blocking(fd, False)
        self._previous: list[object] = []
        self._previous_wakeup = -1

    def __enter__(self) -> StopRequest:
        self._previous = [signal.signal(sig, self._note) for sig in self.SIGNALS]
        # Python writes each signal's number here: select() wakes at once.
        self._previous_wakeup = signal.set_wakeup_fd(self._write_fd)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(self._previous_wakeup)
        for sig, previous in zip(self.SIGNALS, self._previous, strict=True):
            signal.signal(sig, previous)  # type: ignore[arg-type]
        os.close(self.wake_fd)
        os.close(self._write_fd)

    def _note(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.wake_fd, 64):
                pass


def _loop(
    interval: float,
    frame: Callable[[], RenderableType],
    console: Console,
    keys: Keys,
    stop: StopRequest,
) -> None:
    """Redraw every `interval` seconds until q is pressed or a stop is asked for."""
    if console.is_terminal:
        # The alternate screen is redrawn whole each time, so a resize (or a view
        # taller than the terminal) never leaves stale lines behind.
        with Live(frame(), console=console, auto_refresh=False, screen=True) as live:
            due = time.monotonic() + interval
            while not QUIT_KEYS.intersection(keys.wait(due - time.monotonic(), stop)):
                if stop.requested:
                    return
                if time.monotonic() >= due:
                    live.update(frame(), refresh=True)
                    due = max(due + interval, time.monotonic())
    else:
        # Piped into a file or a pager, redrawing in place is impossible: append frames.
        while not stop.requested:
            console.print(frame())
            if QUIT_KEYS.intersection(keys.wait(interval, stop)):
                return


def run(args: argparse.Namespace) -> int:
    if not (math.isfinite(args.interval) and args.interval > 0):
        raise UsageError(f"--interval must be a positive number of seconds, not {args.interval}")
    config = roles.settled(
        load_config(config_path(args.config), this_site=args.this_site), record=False
    )
    frames = _Frames(config, selected_connectors(config, None))
    # Ctrl-C is one of the two ways a dashboard is meant to end, and `kill` too
    # must leave the terminal usable, not in cbreak mode on the alternate screen.
    try:
        with StopRequest() as stop, Keys(sys.stdin) as keys:
            _loop(args.interval, frames.render, Console(), keys, stop)
    finally:
        frames.close()
    return 0
