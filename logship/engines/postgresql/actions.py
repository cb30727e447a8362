"""PostgreSQL's scheduled actions: base-backup (with a drill after it), drill, retention.

Each runs on its own SSH connection to the connector's site (`ActionRun.transport`).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from logship.catalog.store import Catalog
from logship.config.model import Config
from logship.errors import OperationFailed, first_line
from logship.jobs import ActionOutcome, ActionRun, Clock
from logship.logs import event
from logship.ship.transport import Transport

if TYPE_CHECKING:
    from logship.engines.postgresql.drill import DrillResult

log = logging.getLogger("logship.jobs")

#: beyond the drill's own timeout: process start-up, extraction of a large tar
DRILL_SSH_MARGIN_S = 600.0


def run_action(action: str, run: ActionRun) -> ActionOutcome:
    config, connector, transport, catalog, clock = (
        run.config,
        run.connector,
        run.transport,
        run.catalog,
        run.clock,
    )
    if action == "base-backup":
        return _base_backup(
            config, connector, transport, catalog, clock, run.drill_after_backup, run.cancel
        )
    if action == "drill":
        result = remote_drill(config, connector, transport, catalog, None, clock, run.cancel)
        return ActionOutcome(_drill_summary(result))
    if action == "retention":
        return _retention(config, connector, transport, catalog, clock)
    raise ValueError(f"unknown action {action!r}")


def _base_backup(
    config: Config,
    connector: str,
    transport: Transport,
    catalog: Catalog,
    clock: Clock,
    drill_after: bool,
    cancel: threading.Event | None,
) -> ActionOutcome:
    from logship.engines.postgresql.base_backup import take_base_backup

    record = take_base_backup(config, connector, transport, clock, catalog=catalog, cancel=cancel)
    summary = f"backup {record.backup_id} ({record.size} bytes in {record.duration_s:.1f}s)"
    if drill_after:
        result = remote_drill(
            config, connector, transport, catalog, record.backup_id, clock, cancel
        )
        summary += f"; {_drill_summary(result)}"
    return ActionOutcome(summary)


def _drill_summary(result: DrillResult) -> str:
    return (
        f"drill of {result.backup_id} passed: restore {result.restore_s:.1f}s, "
        f"replay {result.replay_s:.1f}s to {result.replayed_to_wal}"
    )


def remote_drill(
    config: Config,
    connector_name: str,
    transport: Transport,
    catalog: Catalog,
    backup_id: str | None,
    clock: Clock,
    cancel: threading.Event | None = None,
) -> DrillResult:
    """Run `logship drill` at the connector's site over SSH and record the outcome.

    Raises OperationFailed when the drill fails; the catalog then holds the failure,
    which `status` shows and the alerts announce.
    """
    connector = config.connector(connector_name)
    site = config.site_of(connector)
    argv = [
        *site.command,
        "drill",
        connector.name,
        "--backup",
        backup_id or "latest",
        "--json",
        # Without a terminal sshd sends no hangup: a cut link must still end the drill.
        "--stop-when-stdin-closes",
    ]
    drill_id = catalog.start_drill(connector.name, backup_id, clock())
    result: DrillResult | None = None
    try:
        status, out, err = transport.run_command(
            argv, timeout=connector.drill.timeout + DRILL_SSH_MARGIN_S
        )
        result = _parse_drill(out)
        if result is None:
            lines = err.decode("utf-8", "replace").strip().splitlines()
            detail = f"exit {status}" + (f": {lines[-1]}" if lines else ", no output")
            raise OperationFailed(f"drill at site {site.name} gave no result: {detail}")
        if not result.passed:
            raise OperationFailed(f"drill of {result.backup_id} failed: {result.error}")
    except Exception as exc:
        # The daemon stopping cuts the drill's SSH link: no verdict on the backup.
        interrupted = cancel is not None and cancel.is_set()
        error = "interrupted: the daemon stopped" if interrupted else first_line(exc)
        catalog.finish_drill(
            drill_id,
            now=clock(),
            error=error,
            interrupted=interrupted,
            **_drill_facts(result, backup_id),
        )
        what = "drill interrupted" if interrupted else "drill failed"
        level = logging.WARNING if interrupted else logging.ERROR
        event(log, level, what, connector=connector.name, error=error)
        raise
    catalog.finish_drill(drill_id, now=clock(), error=None, **_drill_facts(result, backup_id))
    event(
        log,
        logging.INFO,
        "drill passed",
        connector=connector.name,
        backup=result.backup_id,
        restore_s=result.restore_s,
        replay_s=result.replay_s,
    )
    return result


def _parse_drill(out: bytes) -> DrillResult | None:
    from logship.engines.postgresql.drill import DrillResult

    for line in reversed(out.decode("utf-8", "replace").splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return DrillResult.from_json(line)
            except (ValueError, TypeError, KeyError):
                return None
    return None


def _drill_facts(result: DrillResult | None, backup_id: str | None) -> dict[str, object]:
    if result is None:
        return {"backup_id": backup_id}
    return {
        "backup_id": result.backup_id,
        "restore_s": result.restore_s,
        "replay_s": result.replay_s,
        "replayed_to_wal": result.replayed_to_wal,
    }


def _retention(
    config: Config, connector: str, transport: Transport, catalog: Catalog, clock: Clock
) -> ActionOutcome:
    from logship.engines.postgresql.retention import (
        fetch_standby_facts,
        forget_removed_at_site,
        run_retention,
    )

    site = config.site_of(config.connector(connector))
    if site.restricted:
        # The primary's key may delete nothing there: the site runs it (cron there);
        # here only what it removed is forgotten, so rows and tombstones do not pile up.
        wal, backups = forget_removed_at_site(config, connector, transport, catalog, clock)
        summary = (
            f"skipped: site {site.name} is restricted; retention runs at the standby site "
            f"(`logship retention --at-site`, from cron there); forgot {wal} WAL file(s) "
            f"and {backups} backup(s) it removed"
        )
        event(log, logging.WARNING, "retention skipped", connector=connector, reason=summary)
        return ActionOutcome(summary)
    standby = fetch_standby_facts(config, connector, transport)
    report = run_retention(
        config, connector, transport, catalog, standby=standby, dry_run=False, clock=clock
    )
    return ActionOutcome(report.summary())
