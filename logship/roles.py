"""Roles of two-sided connectors (`[sides.*]`): found from the databases, each
engine asking its own (`Engine.find_primary`), never set by hand.

The role found last is recorded at this site (logship.recorded_roles) for the
verbs that do not ask; `run` orients its work by what is found and follows a change.
"""

from __future__ import annotations

from typing import Literal

from logship.config.load import load_config
from logship.config.model import Config
from logship.engines.registry import engine_for
from logship.recorded_roles import record_primary

Role = Literal["primary", "standby"]


def _two_sided(config: Config) -> dict[str, object]:
    return {
        name: connector
        for name, connector in config.connectors.items()
        if getattr(connector, "sides", None) is not None
    }


def found_primaries(config: Config) -> dict[str, str]:
    """connector -> the side its databases say is the primary (when one says)."""
    here = config.this_site
    found: dict[str, str] = {}
    if here is None:
        return found
    for name, connector in _two_sided(config).items():
        primary = engine_for(connector.kind).find_primary(connector, here)  # type: ignore[attr-defined]
        if primary is not None:
            found[name] = primary
    return found


def settled(config: Config, *, record: bool = True) -> Config:
    """`config` oriented as the databases say now; what they say is recorded at
    this site (unless `record` is false: a read-only look such as `status`)."""
    found = found_primaries(config)
    if record:
        for name, primary in found.items():
            record_primary(config.logship.state_dir, name, primary)
    if all(config.connectors[name].primary_side == side for name, side in found.items()):
        return config
    return load_config(config.path, this_site=config.this_site, primary_sides=found)


def role_here(config: Config, connector: object) -> Role | None:
    """This site's role for `connector` as `config` is oriented; None: one-way."""
    sides = getattr(connector, "sides", None)
    if sides is None or config.this_site not in sides:
        return None
    return "primary" if getattr(connector, "primary_side", None) == config.this_site else "standby"


def direction(connector: object) -> str:
    """`primary site -> standby site`; a one-way connector's primary has no site name."""
    primary = getattr(connector, "primary_side", None) or "primary"
    return f"{primary} -> {getattr(connector, 'site', '?')}"


def shipping_here(config: Config) -> Config:
    """What the daemon at this site runs: every one-way connector, and each
    two-sided one whose primary is here. At its standby side a connector gets
    nothing that writes (no shipping, heartbeat, backups or retention from here)."""
    kept = {
        name: connector
        for name, connector in config.connectors.items()
        if getattr(connector, "sides", None) is None or connector.primary_side == config.this_site
    }
    if len(kept) == len(config.connectors):
        return config
    schedules = {}
    for name, schedule in config.schedules.items():
        mine = [c for c in schedule.connectors if c in kept]
        if mine:
            schedules[name] = schedule.model_copy(update={"connectors": mine})
    return config.model_copy(update={"connectors": kept, "schedules": schedules})


def changed_since(config: Config) -> dict[str, str]:
    """The two-sided connectors whose primary the databases now say is another
    side than in `config` (a side nobody can ask changes nothing)."""
    return {
        name: primary
        for name, primary in found_primaries(config).items()
        if config.connectors[name].primary_side != primary
    }


def guard_standby_sides(config: Config) -> dict[str, str]:
    """connector -> what was done to keep this site's database from acting as a
    primary where the other side is the primary (see Engine.guard_standby_side)."""
    done: dict[str, str] = {}
    for name, connector in _two_sided(config).items():
        if role_here(config, connector) == "standby":
            what = engine_for(connector.kind).guard_standby_side(config, connector)  # type: ignore[attr-defined]
            if what:
                done[name] = what
    return done
