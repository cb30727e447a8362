"""The Prometheus endpoint: the monitor's latest sample, served over HTTP.

A custom collector renders whatever `observe` last stored, so one scrape always
shows one sample (never half of the previous one), and a figure that is None
simply has no sample: a made-up 0 would read as "caught up". The sample's own
time is exported too, so a stuck daemon shows as stale instead of as healthy.

Each sink owns its registry and server: nothing registers into prometheus-client's
process-wide default registry, so two sinks (or tests) never collide.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from logship.errors import ConfigError, OperationFailed
from logship.status.metrics_server import start_metrics_server
from logship.status.model import ConnectorStatus
from logship.status.state import State

LABELS = ("connector", "site", "kind")
#: a client must have sent its request within this long, or its connection is closed
IDLE_TIMEOUT_S = 10.0
#: connections served at once; beyond, a new one is closed as soon as accepted
MAX_CONNECTIONS = 32


@dataclass(frozen=True)
class _Figure:
    name: str
    help: str
    value: Callable[[ConnectorStatus], float | None]


def _timestamp(iso: str | None) -> float | None:
    return None if iso is None else datetime.fromisoformat(iso).timestamp()


FIGURES = (
    _Figure(
        "logship_rpo_exposure_seconds",
        "Committed data at risk: now minus the close time of the newest gap-free "
        "segment durable at the standby site.",
        lambda s: s.rpo_exposure_s,
    ),
    _Figure("logship_rpo_target_seconds", "The connector's RPO.", lambda s: s.rpo_target_s),
    _Figure(
        "logship_transport_lag_seconds",
        "Age of the oldest file closed at the primary and not yet durable at the site.",
        lambda s: s.transport_lag_s,
    ),
    _Figure(
        "logship_apply_lag_seconds",
        "How far the standby's data is behind the primary, in time.",
        lambda s: s.apply_lag_s,
    ),
    _Figure(
        "logship_pending_files",
        "Files closed at the primary and not yet durable at the site.",
        lambda s: s.pending_files,
    ),
    _Figure(
        "logship_pending_bytes",
        "Bytes closed at the primary and not yet durable at the site.",
        lambda s: s.pending_bytes,
    ),
    _Figure(
        "logship_last_base_backup_timestamp_seconds",
        "When the last base backup finished (Unix time).",
        lambda s: _timestamp(s.last_base_backup_at),
    ),
    _Figure(
        "logship_rebuild_rto_seconds",
        "Restore plus replay time of the newest restore drill that passed: the "
        "measured time to rebuild a standby from its newest backup.",
        lambda s: s.rebuild_rto_s,
    ),
    _Figure(
        "logship_drill_failed",
        "1 when the newest restore drill failed, 0 when it passed (absent before any).",
        lambda s: None if s.drill_state is None else float(s.drill_state == "failed"),
    ),
)


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ConfigError naming `metrics.listen`."""

    def bad(problem: str) -> ConfigError:
        return ConfigError(f"metrics.listen = {listen!r}: {problem}")

    host, sep, port_text = listen.rpartition(":")
    if not sep or not host:
        # An empty host would silently mean every interface: make exposure a choice.
        raise bad('expected "host:port", e.g. "127.0.0.1:9187" (all interfaces: "0.0.0.0:9187")')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise bad(f"{host!r} is not an IPv6 address") from None
    elif ":" in host:
        raise bad('write an IPv6 address in brackets, for example "[::1]:9187"')
    if not host or any(c.isspace() for c in host):
        raise bad(f"{host!r} is not a host name or address")
    # isascii: str.isdigit also accepts digits such as '²' that int() refuses.
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise bad(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


class _SampleCollector(Collector):
    """Renders the last stored sample; the scrape thread only ever reads it."""

    def __init__(self) -> None:
        # Replaced whole by `store`, never mutated: a reference swap is atomic, so
        # the HTTP thread needs no lock to see a consistent sample.
        self._sample: tuple[float, tuple[ConnectorStatus, ...]] | None = None

    def store(self, statuses: Sequence[ConnectorStatus], now: float) -> None:
        self._sample = (now, tuple(statuses))

    def collect(self) -> Iterator[Metric]:
        sample = self._sample
        if sample is None:
            return  # nothing measured yet: an empty scrape, not a page of zeros
        now, statuses = sample
        stamp = GaugeMetricFamily(
            "logship_sample_timestamp_seconds",
            "When these figures were computed (Unix time); compare with time() for staleness.",
        )
        stamp.add_metric([], now)
        yield stamp
        for figure in FIGURES:
            family = GaugeMetricFamily(figure.name, figure.help, labels=LABELS)
            for status in statuses:
                try:
                    value = figure.value(status)
                except (TypeError, ValueError):
                    value = None  # one odd figure leaves the rest of the scrape whole
                if value is not None:
                    family.add_metric(_labels(status), float(value))
            yield family
        state = GaugeMetricFamily(
            "logship_state",
            "1 for the connector's current state (ok, warn, breach, down), 0 for the others.",
            labels=(*LABELS, "state"),
        )
        for status in statuses:
            for candidate in State:
                state.add_metric(
                    [*_labels(status), str(candidate)], 1.0 if status.state is candidate else 0.0
                )
        yield state


def _labels(status: ConnectorStatus) -> list[str]:
    return [status.name, status.site, status.kind]


class PrometheusSink:
    """A `StatusSink` serving the monitor's figures at `listen` until `close()`."""

    def __init__(self, listen: str) -> None:
        host, port = parse_listen(listen)
        self._collector = _SampleCollector()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self._collector)
        try:
            self._server, self._thread = start_metrics_server(
                host,
                port,
                registry,
                timeout=IDLE_TIMEOUT_S,
                max_connections=MAX_CONNECTIONS,
            )
        except OSError as exc:  # in use, not an address of this host, unresolvable
            reason = exc.strerror or str(exc)
            raise OperationFailed(f"metrics.listen = {listen!r}: cannot listen: {reason}") from None
        self._closed = threading.Event()

    @property
    def address(self) -> tuple[str, int]:
        """Where the server listens (the bound address, as the OS reports it)."""
        bound: tuple[Any, ...] = self._server.server_address
        return str(bound[0]), int(bound[1])

    def observe(self, statuses: Sequence[ConnectorStatus], now: float) -> None:
        self._collector.store(statuses, now)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._server.shutdown()  # stops serve_forever and waits for it
        self._server.server_close()  # frees the port for the next daemon
        self._thread.join()
