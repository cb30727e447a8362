"""The metrics end of the chain: catalog -> per-connector status -> sinks.

The daemon samples once a second and hands the same statuses to every sink
(history, alerts, the Prometheus endpoint), so each figure is computed in one
place and every view agrees with `status --json`. Sinks never reach back into
shipping: they only observe.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Protocol

from logship import roles
from logship.catalog.store import Catalog
from logship.config.model import Config
from logship.engines.registry import engine_for
from logship.errors import shown_text
from logship.logs import event
from logship.status.model import ConnectorStatus, failed_status

log = logging.getLogger("logship.monitor")


class StatusSink(Protocol):
    def observe(self, statuses: Sequence[ConnectorStatus], now: float) -> None: ...

    def close(self) -> None: ...


def collect_statuses(
    config: Config,
    catalog: Catalog | None,
    names: Sequence[str],
    now: float,
    *,
    remember: bool = False,
) -> list[ConnectorStatus]:
    """Every connector's status, each from its engine. With `remember` (the daemon's
    monitor) an engine keeps in the catalog what makes the next computation cheaper,
    for this process and for `status` (see `Engine.status`)."""
    statuses = []
    for name in names:
        connector = config.connector(name)
        try:
            engine = engine_for(connector.kind)
            status = engine.status(connector, catalog, now, remember=remember)
            statuses.append(
                replace(
                    status,
                    role=roles.role_here(config, connector),
                    direction=roles.direction(connector),
                )
            )
        except Exception as exc:
            # One connector's rows (a bad figure stored by an older logship, a
            # catalog error) must not take every other connector's status with it.
            event(log, logging.ERROR, "status failed", connector=name, error=shown_text(str(exc)))
            statuses.append(
                failed_status(
                    name=name,
                    kind=connector.kind,
                    site=connector.site,
                    rpo_target_s=connector.rpo,
                    error=f"status could not be computed: {shown_text(str(exc))}",
                )
            )
    return statuses


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

    def sample(self) -> list[ConnectorStatus]:
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
        from logship.status.prometheus import PrometheusSink

        sinks.append(PrometheusSink(config.metrics.listen))
    if config.alerts.hooks or config.alerts.webhook:
        from logship.status.alerts import AlertSink

        sinks.append(AlertSink(config.alerts))
    from logship.status.history import HistorySink

    # Always on: `status --since` and the dashboard's sparkline read what it stores.
    sinks.append(HistorySink(catalog, config.history))
    return sinks
