"""The engine protocol and the registry of engines.

An engine is one package under `logship.engines` whose `engine` module exposes
`ENGINE`; `engines()` discovers it. Discovery lives here, not in the package's
`__init__`, so that importing a per-segment module of an engine (archive-wal,
restore-wal) imports nothing else.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from logship.config.model import ConnectorBase, SiteConfig

if TYPE_CHECKING:
    # Only for the annotations: this module is imported by configuration loading,
    # which must not pull in the catalog or the transports.
    from logship.catalog.store import Catalog
    from logship.config.model import Config
    from logship.ship.site_worker import ShipTarget
    from logship.ship.transport import Transport
    from logship.status.model import ConnectorStatus


@dataclass(frozen=True)
class BackgroundJob:
    """Something the daemon runs every `interval` seconds for a connector.

    `run` returns facts about the protected system (`PrimaryFacts` columns), which
    the daemon records in the catalog.
    """

    name: str
    connector: str
    interval: float
    run: Callable[[], Mapping[str, Any]]
    close: Callable[[], None]


class DaemonWorker(Protocol):
    """A thread of an engine's own that the daemon starts, wakes on stop and joins."""

    name: str

    def start(self) -> None: ...

    def wake(self) -> None: ...

    def join(self, timeout: float | None = None) -> None: ...

    def is_alive(self) -> bool: ...


@dataclass(frozen=True)
class WorkerContext:
    """What the daemon hands an engine to build its workers with."""

    config: Config
    catalog: Catalog
    connect: Callable[[SiteConfig], Transport]
    clock: Callable[[], float]
    stop: threading.Event


@dataclass(frozen=True)
class DaemonWorkers:
    """What one connector needs running in the daemon."""

    #: threads of the connector's own (a files connector's worker)
    threads: tuple[DaemonWorker, ...] = ()
    #: its spool ships on its site's shared shipping worker (`SiteWorker`)
    site_shipping: bool = False


class SiteSampler(Protocol):
    """An engine's look at its connectors' standbys from the primary, run by a site's
    shipping worker between rounds over that worker's connection."""

    def sample(self, transport: Transport) -> bool:
        """Ask when due, record an answer once it is in; True when one was recorded
        (the site answered). A failure of the link is raised."""
        ...

    def problems(self) -> list[str]:
        """What stands in the way at the site, as the last answers showed; shown
        as the site's error."""
        ...

    def drop(self) -> None:
        """The connection is gone: an answer still awaited is not wanted."""
        ...

    def close(self) -> None: ...


class Engine(Protocol):
    kind: str
    #: validates a whole connector file of this kind
    config_model: type[ConnectorBase]
    #: the `schedules/*.toml` actions that make sense for this kind
    schedule_actions: frozenset[str]
    #: True: files arrive in `state_dir/spool/<connector>` and ship from there
    uses_spool: bool

    def accepts(self, name: str) -> bool:
        """True for a spool file name this engine ships."""
        ...

    def ship_order(self, name: str) -> str:
        """Sort key as a string: files of one connector ship in this order."""
        ...

    def background_jobs(self, connector: ConnectorBase) -> list[BackgroundJob]:
        """Periodic work the daemon runs for this connector (e.g. a heartbeat)."""
        ...

    def status(
        self, connector: ConnectorBase, catalog: Catalog | None, now: float, *, remember: bool
    ) -> ConnectorStatus:
        """This connector's entry of `status --json`: the common figures and this
        engine's own, null where unknown. `catalog` is None before any daemon
        created it. With `remember` (the daemon's monitor) the engine may keep in
        the catalog what makes the next call cheaper."""
        ...

    def null_reasons(self, status: ConnectorStatus) -> list[str]:
        """Why each of this engine's figures that `status` shows as unknown is unknown
        (that there is no catalog yet is said for every engine)."""
        ...

    def daemon_workers(self, connector: ConnectorBase, context: WorkerContext) -> DaemonWorkers:
        """The workers the daemon runs for this connector."""
        ...

    def site_sampler(
        self,
        site: SiteConfig,
        targets: Sequence[ShipTarget],
        catalog: Catalog,
        clock: Callable[[], float],
        interval: float,
        wake: Callable[[], None],
    ) -> SiteSampler | None:
        """Its site-side sampling for `targets`, its connectors that one site's
        shipping worker ships, every `interval` (`wake` wakes that worker when an
        answer is in); None: nothing to sample."""
        ...


@functools.cache
def engines() -> dict[str, Engine]:
    import logship.engines as package

    found: dict[str, Engine] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}.engine")
        engine = getattr(module, "ENGINE", None)
        if engine is not None:
            found[engine.kind] = engine
    return found


def engine_for(kind: str) -> Engine:
    available = engines()
    try:
        return available[kind]
    except KeyError:
        raise KeyError(f"unknown kind {kind!r} (known: {', '.join(sorted(available))})") from None
