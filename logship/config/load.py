"""Load and validate the whole configuration; one clear line per problem."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from logship.config.files import connector_name, read_all, resolve_path
from logship.config.model import (
    CONNECTOR_NAME_MAX,
    AlertsSection,
    Config,
    HistorySection,
    LogshipSection,
    MetricsSection,
    ScheduleConfig,
    SiteConfig,
)
from logship.config.this_site import this_site as this_site_of
from logship.engines.registry import engine_for
from logship.errors import ConfigError
from logship.recorded_roles import recorded_primary

# Keys of the main file holding local paths, resolved relative to it; a connector
# file's are its engine's `path_keys`.
_MAIN_PATH_KEYS = frozenset({"state_dir", "identity_file", "known_hosts"})


_OPTIONAL_SECTIONS: dict[str, type[BaseModel]] = {
    "metrics": MetricsSection,
    "alerts": AlertsSection,
    "history": HistorySection,
}


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    key = ".".join(str(part) for part in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "missing"
    elif key == "name" and err["type"] in ("string_too_long", "string_pattern_mismatch"):
        # Only connectors constrain their name (it names folders at both sites).
        msg = (
            f"a connector name is 1 to {CONNECTOR_NAME_MAX} characters: a letter or digit, "
            "then letters, digits, '_', '.' or '-' (set name = \"...\" or rename the file)"
        )
    return f"key '{key}': {msg}"


def _validate(model: type[BaseModel], data: dict[str, Any], where: Path, prefix: str = "") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        described = _describe(exc)
        if prefix:
            described = described.replace("key '", f"key '{prefix}", 1)
        raise ConfigError(f"{where}: {described}") from None


def _resolve_paths(table: dict[str, Any], base: Path, keys: frozenset[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            out[key] = _resolve_paths(value, base, keys)
        elif key in keys and isinstance(value, str):
            out[key] = resolve_path(value, base)
        else:
            out[key] = value
    return out


#: which side of a two-sided connector this verb runs at ("primary": archive-wal,
#: base-backup; "standby": restore-wal, promote, the site's commands); None: the
#: verb finds roles itself (run, status, check, switchover)
Role = Literal["primary", "standby"]


def load_config(
    path: Path,
    *,
    this_site: str | None = None,
    role: Role | None = None,
    primary_sides: Mapping[str, str] | None = None,
) -> Config:
    """The whole configuration. `this_site`: `--this-site` (else $LOGSHIP_SITE, else
    the hostname); `role`: see Role; `primary_sides`: connector -> the side found
    to be its primary (what `logship.roles.settled` finds)."""
    try:
        return _load_config(path, this_site, role, primary_sides or {})
    except RecursionError:
        # Parsed TOML just under the parser's limit can still be too deep for the
        # path resolution and validation that walk it.
        raise ConfigError(
            f"{path} (or a file in connectors/, schedules/): values nested too deeply "
            "(no setting needs more than a few levels)"
        ) from None


def _sides_table(
    table: dict[str, Any],
    cpath: Path,
    name: str,
    sites: dict[str, SiteConfig],
    here: str | None,
    role: Role | None,
    found: Mapping[str, str],
    state_dir: Path,
) -> dict[str, Any]:
    """Which side is the primary, for a connector written with `[sides.*]`."""
    sides = table["sides"]
    if not isinstance(sides, dict) or len(sides) != 2:
        raise ConfigError(f"{cpath}: key 'sides': name exactly two sites, [sides.A] and [sides.B]")
    taken = sorted({"site", "primary", "standby"} & set(table))
    if taken:
        raise ConfigError(
            f"{cpath}: key '{taken[0]}': not with [sides.*] (the sides describe both databases)"
        )
    names = list(sides)
    for side in names:
        if side not in sites:
            known = ", ".join(sorted(sites)) or "none defined"
            raise ConfigError(f"{cpath}: key 'sides.{side}': no site {side!r} (known: {known})")
    if role is not None:
        if here not in names:
            raise ConfigError(
                f"{cpath}: which site is this? {here!r} is not a side of connector {name!r}; "
                "pass --this-site NAME or set LOGSHIP_SITE"
                if here
                else f"{cpath}: connector {name!r} has sides {', '.join(names)}: which one is "
                "this site? pass --this-site NAME or set LOGSHIP_SITE"
            )
        other = names[1] if names[0] == here else names[0]
        primary = here if role == "primary" else other
    else:
        primary = found.get(name) or recorded_primary(state_dir, name, names) or names[0]
    standby = names[1] if names[0] == primary else names[0]
    return engine_for(table["kind"]).orient_sides(table, primary, standby)


def _load_config(
    path: Path, this_site: str | None, role: Role | None, found: Mapping[str, str]
) -> Config:
    raw = read_all(path)
    base = raw.base_dir
    main = _resolve_paths(raw.main, base, _MAIN_PATH_KEYS)
    unknown = set(main) - {"logship", "sites", *_OPTIONAL_SECTIONS}
    if unknown:
        raise ConfigError(f"{path}: key '{sorted(unknown)[0]}': unknown key")
    if "logship" not in main:
        raise ConfigError(f"{path}: key 'logship': missing (needs at least state_dir)")
    section = _validate(LogshipSection, main["logship"], path, "logship.")

    sites: dict[str, SiteConfig] = {}
    for name, table in (main.get("sites") or {}).items():
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: key 'sites.{name}': must be a table")
        sites[name] = _validate(SiteConfig, {"name": name, **table}, path, f"sites.{name}.")
    here = this_site_of({name: site.host for name, site in sites.items()}, this_site)
    if here is not None and here not in sites:
        known = ", ".join(sorted(sites)) or "none defined"
        raise ConfigError(
            f"this site {here!r} (--this-site, LOGSHIP_SITE): no such site in {path.name} "
            f"(known: {known})"
        )
    if here is not None and sites[here].state_dir is not None:
        section = section.model_copy(update={"state_dir": sites[here].state_dir})

    connectors: dict[str, Any] = {}
    for cpath, table in raw.connectors:
        name = connector_name(cpath, table)
        kind = table.get("kind")
        if not isinstance(kind, str):
            raise ConfigError(f"{cpath}: key 'kind': missing (for example kind = \"postgresql\")")
        try:
            engine = engine_for(kind)
        except KeyError as exc:
            raise ConfigError(f"{cpath}: key 'kind': {exc.args[0]}") from None
        if "primary_side" in table:
            raise ConfigError(
                f"{cpath}: key 'primary_side': found from the databases, never set by hand"
            )
        data = _resolve_paths({**table, "name": name}, cpath.parent, engine.path_keys)
        if "sides" in data:
            if not engine.two_sided:
                raise ConfigError(
                    f"{cpath}: key 'sides': a {kind} connector has no sides (use site)"
                )
            data = _sides_table(data, cpath, name, sites, here, role, found, section.state_dir)
        connector = _validate(engine.config_model, data, cpath)
        if connector.site not in sites:
            known = ", ".join(sorted(sites)) or "none defined"
            raise ConfigError(
                f"{cpath}: key 'site': no site {connector.site!r} in {path.name} (known: {known})"
            )
        if name in connectors:
            raise ConfigError(f"{cpath}: key 'name': connector {name!r} is defined twice")
        problem = engine.site_problem(connector, sites[connector.site])
        if problem is not None:
            raise ConfigError(f"{cpath}: key 'site': {problem}")
        connectors[name] = connector

    schedules: dict[str, ScheduleConfig] = {}
    for spath, table in raw.schedules:
        schedule = _validate(ScheduleConfig, {"name": spath.stem, **table}, spath)
        for name in schedule.connectors:
            connector = connectors.get(name)
            if connector is None:
                raise ConfigError(f"{spath}: key 'connectors': no connector named {name!r}")
            if schedule.action not in engine_for(connector.kind).schedule_actions:
                raise ConfigError(
                    f"{spath}: key 'action': {schedule.action!r} does not apply to connector "
                    f"{name!r} (kind {connector.kind!r})"
                )
        schedules[schedule.name] = schedule

    optional = {
        key: _validate(model, main.get(key) or {}, path, f"{key}.")
        for key, model in _OPTIONAL_SECTIONS.items()
    }
    return Config(
        path=path,
        logship=section,
        sites=sites,
        this_site=here,
        connectors=connectors,
        schedules=schedules,
        **optional,
    )
