"""docker-compose.yml and the example config at the repository root.

There is no Docker engine on the test machines, so the compose file is checked
statically: the services exist, everything it mounts or builds from is in the
repository, and it agrees with the example config it mounts.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from logship.config.files import read_for_hot_path
from logship.config.load import load_config

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services = compose.get("services")
    assert isinstance(services, dict), "docker-compose.yml has no services"
    return services


def _in_repo(raw: str, base: Path, what: str) -> Path:
    """`raw` (relative to `base`) must name something inside the repository."""
    assert not PurePosixPath(raw).is_absolute() and not raw.startswith("~"), (
        f"{what}: {raw!r} is a host path outside the repository"
    )
    path = (base / raw).resolve()
    assert path.is_relative_to(REPO), f"{what}: {raw!r} leaves the repository"
    assert path.exists(), f"{what}: {raw!r} does not exist ({path})"
    return path


def _is_host_path(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def _volume_sources(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, source) of every volume entry: short `src:dst[:mode]` or long syntax."""
    found = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            parts = entry.split(":")
            if len(parts) == 1:
                continue  # an anonymous volume: no source
            source = parts[0]
            found.append(("bind" if _is_host_path(source) else "volume", source))
        else:
            kind = entry.get("type", "volume")
            if entry.get("source"):
                found.append((kind, str(entry["source"])))
    return found


def _build_paths(service: dict[str, Any]) -> tuple[str, str] | None:
    build = service.get("build")
    if build is None:
        return None
    if isinstance(build, str):
        return build, "Dockerfile"
    return str(build.get("context", ".")), str(build.get("dockerfile", "Dockerfile"))


def test_services_exist(compose: dict[str, Any]) -> None:
    missing = {"primary", "standby", "logship"} - set(_services(compose))
    assert not missing, f"docker-compose.yml lacks services {sorted(missing)}"


def test_every_host_path_exists_in_the_repo(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    checked = 0
    for name, service in _services(compose).items():
        for kind, source in _volume_sources(service):
            if kind == "bind":
                _in_repo(source, REPO, f"services.{name}.volumes")
                checked += 1
            elif kind == "volume":
                assert source in declared, f"services.{name}.volumes: {source!r} not declared"
        if (paths := _build_paths(service)) is not None:
            context = _in_repo(paths[0], REPO, f"services.{name}.build.context")
            _in_repo(paths[1], context, f"services.{name}.build.dockerfile")
            checked += 1
        env_files = service.get("env_file") or []
        for entry in [env_files] if isinstance(env_files, str) else env_files:
            raw = entry if isinstance(entry, str) else entry["path"]
            _in_repo(raw, REPO, f"services.{name}.env_file")
            checked += 1
    for section in ("configs", "secrets"):
        for name, entry in (compose.get(section) or {}).items():
            if isinstance(entry, dict) and "file" in entry:
                _in_repo(entry["file"], REPO, f"{section}.{name}.file")
                checked += 1
    assert checked, "no host paths found: the parser missed the compose file's shape"


def test_dockerfile_copies_only_what_exists(compose: dict[str, Any]) -> None:
    dockerfiles = set()
    for service in _services(compose).values():
        if (paths := _build_paths(service)) is not None:
            context = (REPO / paths[0]).resolve()
            dockerfiles.add((context, (context / paths[1]).resolve()))
    assert dockerfiles
    for context, dockerfile in dockerfiles:
        copies = re.findall(r"^(?:COPY|ADD)\s+(?!--from)(.+)$", dockerfile.read_text(), re.M)
        assert copies, f"{dockerfile} copies nothing"
        for line in copies:
            *sources, _dest = [w for w in line.split() if not w.startswith("--")]
            for source in sources:
                _in_repo(source, context, f"{dockerfile.name} COPY")


def test_compose_agrees_with_the_example_config(compose: dict[str, Any]) -> None:
    config = load_config(REPO / "logship.toml")
    services = _services(compose)
    primary_command = " ".join(services["primary"]["command"])
    archived = re.findall(r"archive-wal (\S+) %p", primary_command)
    assert archived and all(name in config.connectors for name in archived)
    aliases = services["standby"]["networks"]["default"]["aliases"]
    assert {site.host for site in config.sites.values()} <= set(aliases)
    for name in ("primary", "standby", "logship"):
        mounts = {dst: src for src, dst, *_ in (v.split(":") for v in services[name]["volumes"])}
        env_config = services[name]["environment"]["LOGSHIP_CONFIG"]
        assert mounts.get(env_config) == "./logship.toml", name
        config_dir = str(PurePosixPath(env_config).parent)
        assert mounts.get(f"{config_dir}/connectors") == "./connectors", name
        assert mounts.get(f"{config_dir}/schedules") == "./schedules", name


def test_example_config_at_the_repo_root_loads() -> None:
    config = load_config(REPO / "logship.toml")
    assert set(config.sites) == {"dr"}
    orders = config.connector("orders")
    assert orders.kind == "postgresql" and orders.site == "dr"
    assert orders.rpo == 60.0 and orders.compression == "zstd"
    assert orders.standby.data_dir == Path("/var/lib/postgresql/15/standby")
    schedule = config.schedules["nightly-base-backup"]
    assert (schedule.action, schedule.connectors, schedule.cron) == (
        "base-backup",
        ["orders"],
        "30 2 * * *",
    )
    assert config.schedules["retention"].action == "retention"
    # What archive-wal and restore-wal read on their hot path agrees.
    hot = read_for_hot_path(REPO / "logship.toml", "orders", None)
    assert hot.spool_dir == config.spool_dir("orders")
    assert hot.site_root == Path(str(config.sites["dr"].root))
