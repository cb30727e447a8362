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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from logship.config.model import ConnectorBase

if TYPE_CHECKING:
    from logship.catalog.store import Catalog
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
