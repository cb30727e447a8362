"""A small engine that lives in the tests, not in `logship.engines`.

It ships numbered `.toy` files from its spool, keeps a path key, refuses a
restricted site, adds one line to `logship check` at the site and one for its
source, and has one scheduled action. Everything logship does with it, it does
through the engine protocol: that is what the contract suite proves.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Literal

from logship.catalog.models import FileState
from logship.catalog.store import Catalog
from logship.checks import CheckRunner, SiteCommandUse, ok
from logship.config.model import Config, ConnectorBase, SiteConfig
from logship.engines.registry import BackgroundJob, DaemonWorkers, WorkerContext
from logship.jobs import ActionOutcome, ActionRun
from logship.ready_source import ReadySource
from logship.status.model import ConnectorStatus
from logship.status.state import classify

KIND = "toy"
ACTION = "toy-sweep"


class ToyConnector(ConnectorBase):
    kind: Literal["toy"]
    #: a local path: the loader resolves it relative to the connector file
    notes: Path
    #: shipped files stay in the spool (a toy's "what it keeps after shipping")
    keep_shipped: bool = False
    #: seconds between two runs of its background job
    tick: float = 0.2


class ToyChecks:
    site_command = SiteCommandUse(needed=False, without_it="the toy does not mind")

    def site_checks(
        self,
        site: SiteConfig,
        connectors: Any,
        transport: Any,
        runner: CheckRunner,
        site_logship: str | None,
    ) -> None:
        for connector in connectors:
            runner.run(f"toy-site {connector.name}", lambda name: ok(name, f"at {site.name}"))

    def source_checks(self, config: Config, connector: ConnectorBase, runner: CheckRunner) -> None:
        assert isinstance(connector, ToyConnector)
        runner.run(f"toy-source {connector.name}", lambda name: ok(name, str(connector.notes)))


class ToyEngine:
    kind = KIND
    config_model: type[ConnectorBase] = ToyConnector
    schedule_actions = frozenset({ACTION})
    path_keys = frozenset({"notes"})
    joins_consistency_points = False

    def __init__(self) -> None:
        #: (action, connector) of each scheduled run, and the background job's ticks
        self.actions: list[tuple[str, str]] = []
        self.ticks = threading.Semaphore(0)

    def accepts(self, name: str) -> bool:
        return name.endswith(".toy") and name.removesuffix(".toy").isdigit()

    def ship_order(self, name: str) -> str:
        return f"{int(name.removesuffix('.toy')):012d}"

    def background_jobs(self, connector: ConnectorBase) -> list[BackgroundJob]:
        assert isinstance(connector, ToyConnector)

        def tick() -> dict[str, Any]:
            self.ticks.release()
            return {"measured_at": time.time()}  # the one fact every source has

        return [
            BackgroundJob(f"toy-{connector.name}", connector.name, connector.tick, tick, _nothing)
        ]

    def daemon_workers(self, connector: ConnectorBase, context: WorkerContext) -> DaemonWorkers:
        return DaemonWorkers(site_shipping=True)  # its spool ships on the site's worker

    def site_sampler(self, *args: Any) -> None:
        return None  # nothing to ask the site between rounds

    def site_problem(self, connector: ConnectorBase, site: SiteConfig) -> str | None:
        return f"site {site.name!r} is restricted; a toy needs its own" if site.restricted else None

    def spool_dir(self, config: Config, connector: ConnectorBase) -> Path | None:
        return config.spool_dir(connector.name)

    def kept_after_shipping(self, connector: ConnectorBase) -> int:
        assert isinstance(connector, ToyConnector)
        return 1024 * 1024 if connector.keep_shipped else 0

    def ready_source(self, connector: ConnectorBase) -> ReadySource | None:
        return None

    def checks(self) -> ToyChecks:
        return ToyChecks()

    def run_action(self, action: str, run: ActionRun) -> ActionOutcome:
        self.actions.append((action, run.connector))
        return ActionOutcome(f"{action} of {run.connector}: swept")

    def status(
        self, connector: ConnectorBase, catalog: Catalog | None, now: float, *, remember: bool
    ) -> ConnectorStatus:
        """What is waiting and what shipped last; a toy measures no lag."""
        rows = catalog.files(connector.name) if catalog is not None else None
        shipped = [row.name for row in rows or () if row.state == FileState.SHIPPED]
        return ConnectorStatus(
            name=connector.name,
            kind=connector.kind,
            site=connector.site,
            state=classify(
                rpo_target_s=connector.rpo,
                rpo_exposure_s=None,
                transport_lag_s=None,
                site_reachable=None,
            ),
            rpo_target_s=float(connector.rpo),
            rpo_exposure_s=None,
            transport_lag_s=None,
            apply_lag_s=None,
            pending_files=None if rows is None else len(rows) - len(shipped),
            pending_bytes=None,
            last_shipped=shipped[-1] if shipped else None,
            last_applied=None,
            last_base_backup_at=None,
        )

    def null_reasons(self, status: ConnectorStatus) -> list[str]:
        return ["a toy measures no lag"]


def _nothing() -> None:
    return None
