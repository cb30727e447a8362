"""The metrics end of the chain: catalog -> per-connector status -> sinks.

The daemon samples once a second and hands the same statuses to every sink
(history, alerts, the Prometheus endpoint), so each figure is computed in one
place and every view agrees with `status --json`. Sinks never reach back into
shipping: they only observe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from logship import consistency, lag
from logship.catalog.store import Catalog
from logship.config.model import Config
from logship.engines.files import rows as tree_rows
from logship.engines.files.status import PointFacts, files_status
from logship.engines.registry import engine_for
from logship.errors import shown_text
from logship.logs import event

log = logging.getLogger("logship.monitor")


class StatusSink(Protocol):
    def observe(self, statuses: Sequence[lag.ConnectorStatus], now: float) -> None: ...

    def close(self) -> None: ...


def collect_statuses(
    config: Config,
    catalog: Catalog | None,
    names: Sequence[str],
    now: float,
    *,
    remember: bool = False,
) -> list[lag.ConnectorStatus]:
    """Every connector's status. With `remember` (the daemon's monitor) how far each
    connector's files are durable is kept in the catalog, so that the next walk,
    this process's or `status`'s, reads only the rows after it."""
    statuses = []
    for name in names:
        connector = config.connector(name)
        try:
            statuses.append(_status_of(connector, catalog, now, remember))
        except Exception as exc:
            # One connector's rows (a bad figure stored by an older logship, a
            # catalog error) must not take every other connector's status with it.
            event(log, logging.ERROR, "status failed", connector=name, error=shown_text(str(exc)))
            statuses.append(
                lag.failed_status(
                    name=name,
                    kind=connector.kind,
                    site=connector.site,
                    rpo_target_s=connector.rpo,
                    error=f"status could not be computed: {shown_text(str(exc))}",
                )
            )
    return statuses


def _status_of(
    connector: Any, catalog: Catalog | None, now: float, remember: bool
) -> lag.ConnectorStatus:
    name = connector.name
    if not engine_for(connector.kind).uses_spool:
        return _tree_status(connector, catalog, now)
    site_status = progress = backup = primary = None
    queue = None
    jobs = lag.JobFacts()
    if catalog is not None:
        queue = _queue_facts(catalog, name, remember)
        site_status = catalog.site_status(connector.site, name)
        progress = catalog.standby_progress(name)
        backup = catalog.last_backup(name)
        primary = catalog.primary_facts(name)
        jobs = _job_facts(catalog, name)
    return lag.connector_status(
        name=name,
        kind=connector.kind,
        site=connector.site,
        rpo_target_s=connector.rpo,
        now=now,
        queue=queue,
        site_status=site_status,
        progress=progress,
        last_base_backup_at=backup.finished_at if backup is not None else None,
        primary=primary,
        jobs=jobs,
    )


def _queue_facts(catalog: Catalog, name: str, remember: bool) -> lag.QueueFacts:
    start = catalog.walk_checkpoint(name)
    rows = catalog.files(name, after=start.order_key if start is not None else None)
    facts = lag.queue_facts(
        rows, start, catalog.newest_applied(name) if start is not None else None
    )
    if remember and facts.prefix is not None and facts.prefix != start:
        catalog.save_walk_checkpoint(name, facts.prefix)
    return facts


def _tree_status(connector: Any, catalog: Catalog | None, now: float) -> lag.ConnectorStatus:
    """A connector that mirrors a tree: no spool, no WAL, no standby database."""
    return files_status(
        name=connector.name,
        kind=connector.kind,
        site=connector.site,
        rpo_target_s=connector.rpo,
        now=now,
        tree=tree_rows.summary(catalog, connector.name) if catalog is not None else None,
        site_status=catalog.site_status(connector.site, connector.name)
        if catalog is not None
        else None,
        jobs=_job_facts(catalog, connector.name) if catalog is not None else None,
        points=_point_facts(catalog, connector.name) if catalog is not None else None,
    )


def _point_facts(catalog: Catalog, connector: str) -> PointFacts:
    newest = consistency.newest_complete(catalog, connector)
    return PointFacts(
        generation=consistency.current_generation(catalog, connector),
        newest_complete=(
            (newest.point_id, newest.complete_at)
            if newest is not None and newest.complete_at is not None
            else None
        ),
        open=len(consistency.open_parts(catalog, connector)),
    )


def _job_facts(catalog: Catalog, connector: str) -> lag.JobFacts:
    from logship.engines.files.verify_rows import last_verify

    rows = catalog.schedules(connector)  # soonest planned first
    planned = [(row.job, row.next_run_at) for row in rows if row.next_run_at is not None]
    finished = [
        (row.job, row.last_finished_at, row.last_error)
        for row in rows
        if row.last_finished_at is not None
    ]
    return lag.JobFacts(
        next_job=planned[0] if planned else None,
        last_job=max(finished, key=lambda job: job[1], default=None),
        last_drill=catalog.last_drill(connector),
        last_passed_drill=catalog.last_drill(connector, passed=True),
        last_verify=last_verify(catalog, connector),
    )


class Monitor:
    def __init__(
        self,
        config: Config,
        catalog: Catalog,
        sinks: Sequence[StatusSink],
        clock: Callable[[], float],
    ) -> None:
        self._config = config
        self._catalog = catalog
        self._sinks = list(sinks)
        self._clock = clock
        self._names = sorted(config.connectors)

    def sample(self) -> list[lag.ConnectorStatus]:
        now = self._clock()
        statuses = collect_statuses(self._config, self._catalog, self._names, now, remember=True)
        for sink in self._sinks:
            try:
                sink.observe(statuses, now)
            except Exception as exc:  # one broken sink must not silence the others
                event(
                    log,
                    logging.ERROR,
                    "status sink failed",
                    sink=type(sink).__name__,
                    error=str(exc),
                )
        return statuses

    def close(self) -> None:
        for sink in self._sinks:
            sink.close()


def build_sinks(config: Config, catalog: Catalog) -> list[StatusSink]:
    """The sinks the configuration asks for."""
    sinks: list[StatusSink] = []
    if config.metrics.listen:
        # Imported here so a daemon without [metrics] never loads prometheus-client.
        from logship.prometheus import PrometheusSink

        sinks.append(PrometheusSink(config.metrics.listen))
    if config.alerts.hooks or config.alerts.webhook:
        from logship.alerts import AlertSink

        sinks.append(AlertSink(config.alerts))
    from logship.history import HistorySink

    # Always on: `status --since` and the dashboard's sparkline read what it stores.
    sinks.append(HistorySink(catalog, config.history))
    return sinks
