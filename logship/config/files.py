"""Finding and parsing the TOML files, without validation.

Stdlib only: `archive-wal` and `restore-wal` read their few keys through here
because PostgreSQL runs them once per segment (records: NamedTuples, see walnames).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, NamedTuple

from logship.config.state_dir_scan import CONFIG_ENV, config_file
from logship.config.this_site import this_site as this_site_of
from logship.errors import ConfigError


def config_path(explicit: str | None) -> Path:
    """`--config`, else $LOGSHIP_CONFIG, else ./logship.toml; always absolute."""
    return Path(config_file(explicit))


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found (pass --config or set {CONFIG_ENV})"
        ) from None
    except PermissionError:
        raise ConfigError(f"{path}: cannot read config file (permission denied)") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except RecursionError:
        # tomllib parses nested arrays and inline tables by recursion.
        raise ConfigError(
            f"{path}: arrays or inline tables nested too deeply (no setting needs more "
            "than a few levels)"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not valid TOML: byte {exc.start} is not UTF-8 (TOML files are UTF-8)"
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None


def resolve_path(raw: str, base: Path) -> Path:
    """`~` expands; a relative path is relative to the file that names it."""
    path = Path(raw).expanduser()
    return path if path.is_absolute() else (base / path)


class RawConfig(NamedTuple):
    path: Path
    main: dict[str, Any]
    connectors: list[tuple[Path, dict[str, Any]]]
    schedules: list[tuple[Path, dict[str, Any]]]

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def _read_dir(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    if not directory.is_dir():
        return []
    return [(p, read_toml(p)) for p in sorted(directory.glob("*.toml"))]


def read_all(path: Path) -> RawConfig:
    return RawConfig(
        path=path,
        main=read_toml(path),
        connectors=_read_dir(path.parent / "connectors"),
        schedules=_read_dir(path.parent / "schedules"),
    )


def connector_name(path: Path, table: dict[str, Any]) -> str:
    name = table.get("name", path.stem)
    return name if isinstance(name, str) else path.stem


def spool_dir(state_dir: Path, connector: str) -> Path:
    return state_dir / "spool" / connector


class HotPathConfig(NamedTuple):
    """The few facts archive-wal and restore-wal need, read without pydantic."""

    connector: str
    state_dir: Path
    site_root: Path | None

    @property
    def spool_dir(self) -> Path:
        return spool_dir(self.state_dir, self.connector)


def read_for_hot_path(path: Path, connector: str, this_site: str | None) -> HotPathConfig:
    """`this_site`: `--this-site`; for a connector with `[sides.*]` the site this
    runs at decides the state_dir and the root (both sides use the same files)."""
    main = read_toml(path)
    section = main.get("logship")
    if not isinstance(section, dict) or not isinstance(section.get("state_dir"), str):
        raise ConfigError(f"{path}: key 'logship.state_dir': missing (a directory path)")
    state_dir = resolve_path(section["state_dir"], path.parent)
    sites = main.get("sites", {})
    if not isinstance(sites, dict):
        sites = {}
    for cpath in sorted((path.parent / "connectors").glob("*.toml")):
        table = read_toml(cpath)
        if connector_name(cpath, table) != connector:
            continue
        site_name = table.get("site", "")
        if isinstance(table.get("sides"), dict):
            hosts = {
                name: str(site.get("host", ""))
                for name, site in sites.items()
                if isinstance(site, dict)
            }
            site_name = this_site_of(hosts, this_site)
            if site_name not in table["sides"]:
                raise ConfigError(
                    f"{cpath}: connector {connector!r} has sides {', '.join(table['sides'])}: "
                    "which one is this site? pass --this-site NAME or set LOGSHIP_SITE"
                )
        site = sites.get(site_name, {}) if isinstance(site_name, str) else {}
        site_root: Path | None = None
        if isinstance(site, dict) and isinstance(site.get("root"), str):
            site_root = Path(site["root"])
        if isinstance(table.get("sides"), dict) and isinstance(site.get("state_dir"), str):
            state_dir = resolve_path(site["state_dir"], path.parent)
        return HotPathConfig(connector=connector, state_dir=state_dir, site_root=site_root)
    raise ConfigError(
        f"{path.parent / 'connectors'}: no connector named {connector!r} "
        "(check the name in archive_command / restore_command)"
    )
