"""The engine protocol and the registry of engines.

An engine is one package under `logship.engines` whose `engine` module exposes
`ENGINE`; `engines()` discovers it. Discovery lives here, not in the package's
`__init__`, so that importing a per-segment module of an engine (archive-wal,
restore-wal) imports nothing else. An engine that lives elsewhere (a plugin, a
test's) joins with `register`.

An engine's CLI verbs are declared in its package's `verbs` module, which the
entry point reads without importing this module (see `logship.cli.main`).
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from logship.config.model import Config, ConnectorBase, SiteConfig

if TYPE_CHECKING:
    # Only for the annotations: this module is imported by configuration loading,
    # which must not pull in the catalog or the transports.
    from logship.catalog.store import Catalog
    from logship.checks import EngineChecks
    from logship.jobs import ActionOutcome, ActionRun
    from logship.ready_source import ReadySource
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

    def accepts(self, name: str) -> bool:
        """True for a spool file name this engine ships."""
        ...

    def ship_order(self, name: str) -> str:
        """Sort key as a string: files of one connector ship in this order."""
        ...

    def background_jobs(self, connector: ConnectorBase) -> list[BackgroundJob]:
        """Periodic work the daemon runs for this connector (e.g. a heartbeat)."""
        ...

    #: keys of a connector file of this kind that hold local paths: the loader
    #: resolves them relative to that file
    path_keys: frozenset[str]
    #: its connectors complete their part of a database's consistency points (their
    #: state, paired with the database's position, is written to the site)
    joins_consistency_points: bool

    #: its connectors may be written with `[sides.SITE]`: both sites' databases,
    #: either one the primary (found from the databases)
    two_sided: bool

    def orient_sides(self, table: dict[str, Any], primary: str, standby: str) -> dict[str, Any]:
        """A `[sides.*]` table in the one-way shape, `primary` being the primary now."""
        ...

    def find_primary(self, connector: ConnectorBase, here: str) -> str | None:
        """The side of a two-sided connector its databases say is the primary now,
        asked from site `here`; None when none of them can say."""
        ...

    def guard_standby_side(self, config: Config, connector: ConnectorBase) -> str | None:
        """At a site that is a two-sided connector's standby side: make sure its own
        database cannot act as a primary (an old primary after a failover is
        fenced); what was done, for the log, or None."""
        ...

    def site_problem(self, connector: ConnectorBase, site: SiteConfig) -> str | None:
        """Why `connector` cannot work with `site` (e.g. a restricted one), or None."""
        ...

    def spool_dir(self, config: Config, connector: ConnectorBase) -> Path | None:
        """Where the protected system hands over this connector's files, for the
        daemon to watch and ship from; None when they do not come through a spool."""
        ...

    def kept_after_shipping(self, connector: ConnectorBase) -> int:
        """Bytes of shipped files kept in the spool until the site has used them."""
        ...

    def ready_source(self, connector: ConnectorBase) -> ReadySource | None:
        """Where the protected system keeps this connector's files, marked ready,
        before it hands them over to the spool: the daemon ships them from there
        (read-ahead). None: they ship from the spool only."""
        ...

    def checks(self) -> EngineChecks:
        """Its part of `logship check` (imported when a check runs)."""
        ...

    def run_action(self, action: str, run: ActionRun) -> ActionOutcome:
        """Run one of `schedule_actions` for `run.connector`; LogshipError when it fails."""
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


class _Registered:
    """Engines that joined with `register`, next to the discovered ones."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engines: dict[str, Engine] = {}

    def add(self, engine: Engine) -> None:
        with self._lock:
            if engine.kind in self._engines or engine.kind in _discovered():
                raise ValueError(f"an engine of kind {engine.kind!r} is already registered")
            self._engines[engine.kind] = engine

    def remove(self, kind: str) -> None:
        with self._lock:
            self._engines.pop(kind, None)

    def all(self) -> dict[str, Engine]:
        with self._lock:
            return dict(self._engines)


_REGISTERED = _Registered()


def register(engine: Engine) -> Callable[[], None]:
    """Add an engine that is not a package under `logship.engines`; returns the
    call that removes it again. Discovery stays cached: this adds beside it."""
    _REGISTERED.add(engine)
    return functools.partial(_REGISTERED.remove, engine.kind)


@contextmanager
def registered(engine: Engine) -> Iterator[Engine]:
    """`register` for the length of a `with` block."""
    unregister = register(engine)
    try:
        yield engine
    finally:
        unregister()


def engines() -> dict[str, Engine]:
    return {**_discovered(), **_REGISTERED.all()}


@functools.cache
def _discovered() -> dict[str, Engine]:
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
