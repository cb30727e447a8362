"""Engines: one module per kind of protected thing, each exposing `ENGINE`.

A new engine is one new module in this package; `engines()` discovers it.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Protocol

from logship.config.model import ConnectorBase


class Engine(Protocol):
    kind: str
    #: validates a whole connector file of this kind
    config_model: type[ConnectorBase]

    def accepts(self, name: str) -> bool:
        """True for a spool file name this engine ships."""
        ...

    def ship_order(self, name: str) -> str:
        """Sort key as a string: files of one connector ship in this order."""
        ...


def engines() -> dict[str, Engine]:
    found: dict[str, Engine] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
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
