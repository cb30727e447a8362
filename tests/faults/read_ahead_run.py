"""Running a deployment in read-ahead mode for the fault tests: knowing when the
daemon's beat makes archive-wal wait for it, and what archive-wal copied."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

from site_checks import all_shipped
from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.read_ahead_beat import read_beat


def shipping(dep: Deployment, since: float) -> bool:
    """The beat of a daemon started at `since` says it ships: archive-wal waits for it.
    (A daemon killed moments ago left a beat that says so too, until it goes stale.)"""
    beat = read_beat(dep.spool_dir)
    return beat is not None and beat.at >= since and beat.worth_waiting(time.time())


def wait_shipping(dep: Deployment, since: float, timeout: float = 120) -> None:
    """Wait for `shipping`; on a timeout, say what the beat and the daemon said."""
    try:
        wait_for(lambda: shipping(dep, since), timeout, "the read-ahead beat of the new daemon")
    except TimeoutError as exc:
        beat = read_beat(dep.spool_dir)
        seen = None if beat is None else (beat.state, round(time.time() - beat.at, 1))
        log = dep.daemon_log.read_text(errors="replace")[-3000:]
        raise TimeoutError(f"{exc}; beat (state, age) {seen}; daemon log:\n{log}") from None


def start(dep: Deployment, env: dict[str, str] | None = None) -> float:
    """Start the daemon; returns when, for `shipping`."""
    since = time.time()
    dep.start_daemon(env=env)
    return since


def warm_up(dep: Deployment) -> None:
    """Start the daemon and wait until what PostgreSQL archived so far has shipped."""
    since = start(dep)
    dep.primary.query("create table warm (n int)")
    dep.switch_wal()
    wait_for(lambda: all_shipped(dep) and shipping(dep, since), 120, "the first segments shipped")


class Arrivals(FileSystemEventHandler):
    """The files that appear in a folder, each with when it was seen first."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def on_created(self, event: FileSystemEvent) -> None:
        self.seen.setdefault(Path(str(event.src_path)).name, time.time())

    def on_moved(self, event: FileSystemEvent) -> None:
        self.seen.setdefault(Path(str(event.dest_path)).name, time.time())

    @property
    def names(self) -> set[str]:
        return set(self.seen)


@contextlib.contextmanager
def arrivals(folder: Path) -> Iterator[Arrivals]:
    seen = Arrivals()
    observer = Observer()
    observer.schedule(seen, str(folder))
    observer.start()
    try:
        yield seen
    finally:
        observer.stop()
        observer.join()
