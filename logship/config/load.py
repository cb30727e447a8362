"""Load and validate the whole configuration; one clear line per problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from logship.engines.registry import engine_for
from logship.errors import ConfigError

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


def load_config(path: Path) -> Config:
    try:
        return _load_config(path)
    except RecursionError:
        # Parsed TOML just under the parser's limit can still be too deep for the
        # path resolution and validation that walk it.
        raise ConfigError(
            f"{path} (or a file in connectors/, schedules/): values nested too deeply "
            "(no setting needs more than a few levels)"
        ) from None


def _load_config(path: Path) -> Config:
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
        data = _resolve_paths({**table, "name": name}, cpath.parent, engine.path_keys)
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
        connectors=connectors,
        schedules=schedules,
        **optional,
    )
