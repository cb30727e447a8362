"""The actions a `schedules/*.toml` job runs for one connector.

Each runs on its own SSH connection to the connector's site, so shipping goes on
while a backup streams or a drill replays. The outcome goes to the catalog, where
`status`, the dashboard and the alerts read it. Which actions exist, and what each
does, is the connector's engine's (`Engine.schedule_actions`, `Engine.run_action`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from logship.catalog.store import Catalog
from logship.config.model import Config
from logship.engines.registry import engine_for
from logship.ship.transport import Transport

Clock = Callable[[], float]


@dataclass(frozen=True)
class ActionOutcome:
    """What one action did for one connector, for the daemon's log line."""

    summary: str


@dataclass(frozen=True)
class ActionRun:
    """One run of a scheduled action, and everything it may use."""

    config: Config
    connector: str
    transport: Transport
    catalog: Catalog
    clock: Clock
    #: the schedule's `drill` key: prove each new base backup with a restore drill
    drill_after_backup: bool
    #: set when the daemon stops: a long action (a base backup) ends between two writes
    cancel: threading.Event | None = None


def run_action(
    action: str,
    config: Config,
    connector: str,
    transport: Transport,
    catalog: Catalog,
    clock: Clock,
    *,
    drill_after_backup: bool,
    cancel: threading.Event | None = None,
) -> ActionOutcome:
    """Run `action` for `connector`; raises LogshipError (one line) when it fails.

    `cancel` stops a base backup between two writes (the daemon is stopping).
    """
    engine = engine_for(config.connector(connector).kind)
    if action not in engine.schedule_actions:
        raise ValueError(f"unknown action {action!r}")
    run = ActionRun(config, connector, transport, catalog, clock, drill_after_backup, cancel)
    return engine.run_action(action, run)
