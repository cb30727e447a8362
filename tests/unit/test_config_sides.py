"""Connectors written with [sides.*]: the same files at both sites, oriented by
the site this runs at and the role its verb has (or the role found)."""

from __future__ import annotations

from pathlib import Path

import pytest

from logship.config.files import read_for_hot_path
from logship.config.load import load_config
from logship.errors import ConfigError
from logship.recorded_roles import record_primary, recorded_primary
from logship.roles import direction, role_here, shipping_here

MAIN = """[logship]
state_dir = "/var/lib/logship"

[sites.east]
host = "east.example.net"
user = "postgres"
identity_file = "/k"
known_hosts = "/kh"
root = "/srv/incoming-east"
state_dir = "/srv/state-east"

[sites.west]
host = "west.example.net"
user = "postgres"
identity_file = "/k"
known_hosts = "/kh"
root = "/srv/incoming-west"
state_dir = "/srv/state-west"
"""

SIDES = """kind = "postgresql"
rpo = "60s"

[sides.east]
dsn = "host=/run/pg port=5432 dbname=app"
data_dir = "/pg/east"
check_dsn = "host=east.example.net port=5432 dbname=app"

[sides.west]
dsn = "host=/run/pg port=5433 dbname=app"
data_dir = "/pg/west"
read_ahead = false
"""


def _write(tmp_path: Path, connector: str = SIDES, main: str = MAIN) -> Path:
    (tmp_path / "connectors").mkdir(exist_ok=True)
    (tmp_path / "logship.toml").write_text(main)
    (tmp_path / "connectors" / "app.toml").write_text(connector)
    return tmp_path / "logship.toml"


def test_a_verb_at_the_primary_side_ships_from_here(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path), this_site="east", role="primary")
    app = config.connectors["app"]
    assert (app.primary_side, app.site) == ("east", "west")
    assert app.primary.dsn == "host=/run/pg port=5432 dbname=app"
    assert app.primary.data_dir == Path("/pg/east")  # read-ahead on by default
    assert app.primary.check_dsn == "host=east.example.net port=5432 dbname=app"
    assert app.standby.data_dir == Path("/pg/west")
    assert config.logship.state_dir == Path("/srv/state-east")
    assert (role_here(config, app), direction(app)) == ("primary", "east -> west")


def test_the_same_files_at_the_other_site_and_the_other_way(tmp_path: Path) -> None:
    path = _write(tmp_path)
    config = load_config(path, this_site="east", role="standby")
    app = config.connectors["app"]
    assert (app.primary_side, app.site) == ("west", "east")
    assert app.primary.data_dir is None  # west says read_ahead = false
    assert app.standby.dsn == "host=/run/pg port=5432 dbname=app"
    assert role_here(config, app) == "standby"
    # At the standby side the daemon runs nothing for it.
    assert shipping_here(config).connectors == {}


def test_without_a_role_the_found_one_then_the_recorded_one_then_the_first(
    tmp_path: Path,
) -> None:
    path = _write(tmp_path)
    assert load_config(path, this_site="west").connectors["app"].primary_side == "east"
    found = load_config(path, this_site="west", primary_sides={"app": "west"})
    assert found.connectors["app"].primary_side == "west"
    state = tmp_path / "state"
    main = MAIN.replace('state_dir = "/srv/state-west"', f'state_dir = "{state}"')
    path = _write(tmp_path, main=main)
    record_primary(state, "app", "west")
    assert recorded_primary(state, "app", ["east", "west"]) == "west"
    assert load_config(path, this_site="west").connectors["app"].primary_side == "west"


def test_the_hot_path_reads_this_sites_root_and_state_dir(tmp_path: Path) -> None:
    path = _write(tmp_path)
    west = read_for_hot_path(path, "app", "west")
    assert (west.site_root, west.state_dir) == (Path("/srv/incoming-west"), Path("/srv/state-west"))
    with pytest.raises(ConfigError, match="which one is this site"):
        read_for_hot_path(path, "app", "north")


@pytest.mark.parametrize(
    ("connector", "message"),
    [
        (SIDES.replace("[sides.west]", "[sides.north]"), "no site 'north'"),
        (SIDES + '\n[sides.third]\ndsn = "x"\ndata_dir = "/x"\n', "exactly two sites"),
        ('site = "west"\n' + SIDES, "key 'site': not with"),
        (SIDES.replace('dsn = "host=/run/pg port=5433 dbname=app"\n', ""), "sides.west.dsn"),
    ],
)
def test_bad_sides_are_one_clear_line(tmp_path: Path, connector: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, connector), this_site="east", role="primary")


def test_a_verb_with_a_role_must_know_its_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOGSHIP_SITE", raising=False)
    with pytest.raises(ConfigError, match="which one is this site"):
        load_config(_write(tmp_path), role="primary")
    monkeypatch.setenv("LOGSHIP_SITE", "west")
    assert load_config(_write(tmp_path), role="primary").connectors["app"].primary_side == "west"
    with pytest.raises(ConfigError, match="no such site"):
        load_config(_write(tmp_path), this_site="north")


def test_a_recorded_role_that_is_not_a_side_is_ignored(tmp_path: Path) -> None:
    record_primary(tmp_path, "app", "north")
    assert recorded_primary(tmp_path, "app", ["east", "west"]) is None
    (tmp_path / "roles" / "big").write_bytes(b"east" + b" " * 400)
    assert recorded_primary(tmp_path, "big", ["east", "west"]) is None
