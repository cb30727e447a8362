"""The files connector's scheduled action: verify the site's copy against the source."""

from __future__ import annotations

from logship.catalog.store import Catalog
from logship.config.model import Config
from logship.errors import OperationFailed
from logship.jobs import ActionOutcome, ActionRun, Clock
from logship.ship.transport import Transport


def run_action(action: str, run: ActionRun) -> ActionOutcome:
    if action == "verify":
        return _verify(run.config, run.connector, run.transport, run.catalog, run.clock)
    raise ValueError(f"unknown action {action!r}")


def _verify(
    config: Config, connector: str, transport: Transport, catalog: Catalog, clock: Clock
) -> ActionOutcome:
    from logship.engines.files.verify_run import run_verify

    report = run_verify(config, connector, catalog, clock, transport=transport)
    if not report.clean:
        # Drift is a failed job: the schedule's row and `status` show it as one.
        raise OperationFailed(f"verify found drift: {report.summary()}")
    return ActionOutcome(report.summary())
