"""Every config error: exit code 2, one line naming the file and the key, no traceback."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from logship.config.load import load_config

GOOD_MAIN = """
[logship]
state_dir = "state"

[sites.dr]
host = "dr.example.net"
user = "logship"
identity_file = "id_ed25519"
known_hosts = "known_hosts"
root = "/var/lib/logship/incoming"
"""

GOOD_CONNECTOR = """
kind = "postgresql"
site = "dr"
rpo = "60s"
[primary]
dsn = "host=/var/run/postgresql port=5432 dbname=postgres"
[standby]
dsn = "host=/var/run/postgresql port=5433 dbname=postgres"
data_dir = "/var/lib/postgresql/15/standby"
"""

GOOD_SCHEDULE = """
action = "base-backup"
connectors = ["orders"]
cron = "30 2 * * *"
timezone = "Europe/Berlin"
misfire_grace = "6h"
"""


def _write(tmp_path: Path, main: str, connector: str, schedule: str = GOOD_SCHEDULE) -> Path:
    (tmp_path / "connectors").mkdir(exist_ok=True)
    (tmp_path / "schedules").mkdir(exist_ok=True)
    (tmp_path / "logship.toml").write_text(main)
    (tmp_path / "connectors" / "orders.toml").write_text(connector)
    (tmp_path / "schedules" / "nightly.toml").write_text(schedule)
    return tmp_path / "logship.toml"


def test_good_config_loads_with_paths_resolved(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, GOOD_MAIN, GOOD_CONNECTOR))
    assert config.logship.state_dir == tmp_path / "state"
    assert config.sites["dr"].port == 22
    assert config.sites["dr"].identity_file == tmp_path / "id_ed25519"
    orders = config.connector("orders")
    assert orders.rpo == 60.0 and orders.compression == "zstd"
    nightly = config.schedules["nightly"]
    assert (nightly.action, nightly.connectors, nightly.timezone) == (
        "base-backup",
        ["orders"],
        "Europe/Berlin",
    )
    assert nightly.misfire_grace == 6 * 3600 and nightly.drill is True
    # The cron fields are read in the schedule's time zone.
    fire = nightly.trigger().get_next_fire_time(None, datetime(2026, 7, 1, tzinfo=UTC))
    assert fire == datetime(2026, 7, 1, 0, 30, tzinfo=UTC)  # 02:30 CEST
    assert config.catalog_url == f"sqlite:///{tmp_path / 'state' / 'catalog.db'}"


CASES = [
    # (what is broken, main, connector, schedule, file, key in the message)
    ("toml syntax", "[logship\n", GOOD_CONNECTOR, GOOD_SCHEDULE, "logship.toml", "not valid TOML"),
    ("no state_dir", "[logship]\n", GOOD_CONNECTOR, GOOD_SCHEDULE, "logship.toml", "state_dir"),
    (
        "unknown top-level key",
        GOOD_MAIN + "\n[extra]\nx = 1\n",
        GOOD_CONNECTOR,
        GOOD_SCHEDULE,
        "logship.toml",
        "'extra'",
    ),
    (
        "bad port",
        GOOD_MAIN.replace('user = "logship"', 'user = "logship"\nport = 70000'),
        GOOD_CONNECTOR,
        GOOD_SCHEDULE,
        "logship.toml",
        "sites.dr.port",
    ),
    (
        "relative site root",
        GOOD_MAIN.replace("/var/lib/logship/incoming", "incoming"),
        GOOD_CONNECTOR,
        GOOD_SCHEDULE,
        "logship.toml",
        "sites.dr.root",
    ),
    (
        "missing host",
        GOOD_MAIN.replace('host = "dr.example.net"\n', ""),
        GOOD_CONNECTOR,
        GOOD_SCHEDULE,
        "logship.toml",
        "sites.dr.host",
    ),
    (
        "typo in a site key",
        GOOD_MAIN.replace("known_hosts =", "known_host ="),
        GOOD_CONNECTOR,
        GOOD_SCHEDULE,
        "logship.toml",
        "sites.dr.known_host",
    ),
    (
        "bad duration",
        GOOD_MAIN,
        GOOD_CONNECTOR.replace('"60s"', '"soon"'),
        GOOD_SCHEDULE,
        "orders.toml",
        "'rpo'",
    ),
    (
        "unknown kind",
        GOOD_MAIN,
        GOOD_CONNECTOR.replace("postgresql", "oracle"),
        GOOD_SCHEDULE,
        "orders.toml",
        "'kind'",
    ),
    (
        "unknown site",
        GOOD_MAIN,
        GOOD_CONNECTOR.replace('site = "dr"', 'site = "nowhere"'),
        GOOD_SCHEDULE,
        "orders.toml",
        "'site'",
    ),
    (
        "missing dsn",
        GOOD_MAIN,
        GOOD_CONNECTOR.replace(
            '[primary]\ndsn = "host=/var/run/postgresql port=5432 dbname=postgres"', "[primary]"
        ),
        GOOD_SCHEDULE,
        "orders.toml",
        "primary.dsn",
    ),
    (
        "bad compression",
        GOOD_MAIN,
        GOOD_CONNECTOR.replace('rpo = "60s"', 'rpo = "60s"\ncompression = "rar"'),
        GOOD_SCHEDULE,
        "orders.toml",
        "'compression'",
    ),
    (
        "bad cron",
        GOOD_MAIN,
        GOOD_CONNECTOR,
        GOOD_SCHEDULE.replace("30 2 * * *", "every night"),
        "nightly.toml",
        "'cron'",
    ),
    (
        "webhook not http",
        GOOD_MAIN + '\n[alerts]\nwebhook = "file:///etc/passwd"\n',
        GOOD_CONNECTOR,
        GOOD_SCHEDULE,
        "logship.toml",
        "alerts.webhook",
    ),
    (
        "empty hook",
        GOOD_MAIN + "\n[alerts]\nhooks = [[]]\n",
        GOOD_CONNECTOR,
        GOOD_SCHEDULE,
        "logship.toml",
        "alerts.hooks",
    ),
    (
        "bad metrics listen",
        GOOD_MAIN + '\n[metrics]\nlisten = "9187"\n',
        GOOD_CONNECTOR,
        GOOD_SCHEDULE,
        "logship.toml",
        "metrics.listen",
    ),
    (
        "schedule for an unknown connector",
        GOOD_MAIN,
        GOOD_CONNECTOR,
        GOOD_SCHEDULE.replace('["orders"]', '["billing"]'),
        "nightly.toml",
        "'connectors'",
    ),
    (
        "schedule with an unknown action",
        GOOD_MAIN,
        GOOD_CONNECTOR,
        GOOD_SCHEDULE.replace('"base-backup"', '"vacuum"'),
        "nightly.toml",
        "'action'",
    ),
    (
        "schedule with an unknown time zone",
        GOOD_MAIN,
        GOOD_CONNECTOR,
        GOOD_SCHEDULE.replace("Europe/Berlin", "Mars/Olympus"),
        "nightly.toml",
        "'timezone'",
    ),
    (
        "deeply nested array",
        GOOD_MAIN + "\n[extra]\nx = " + "[" * 10_000 + "]" * 10_000 + "\n",
        GOOD_CONNECTOR,
        GOOD_SCHEDULE,
        "logship.toml",
        "nested too deeply",
    ),
    (
        "deeply nested inline table",
        GOOD_MAIN,
        GOOD_CONNECTOR + "x = " + "{a = " * 10_000 + "1" + "}" * 10_000 + "\n",
        GOOD_SCHEDULE,
        "orders.toml",
        "nested too deeply",
    ),
    (
        "connector name too long",
        GOOD_MAIN,
        'name = "' + "o" * 65 + '"\n' + GOOD_CONNECTOR,
        GOOD_SCHEDULE.replace('["orders"]', '["' + "o" * 65 + '"]'),
        "orders.toml",
        "'name'",
    ),
    (
        "schedule with 7 cron fields",
        GOOD_MAIN,
        GOOD_CONNECTOR,
        GOOD_SCHEDULE.replace("30 2 * * *", "0 30 2 * * * 2026"),
        "nightly.toml",
        "'cron'",
    ),
]


@pytest.mark.parametrize(
    ("main", "connector", "schedule", "where", "key"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_config_error_exit_2_names_file_and_key(
    tmp_path: Path, main: str, connector: str, schedule: str, where: str, key: str
) -> None:
    path = _write(tmp_path, main, connector, schedule)
    result = subprocess.run(
        [sys.executable, "-m", "logship", "--config", str(path), "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert where in lines[0] and key in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert len(lines[0]) < 400, lines[0]  # a name of any length is cut short


def test_missing_config_file_is_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "logship", "--config", str(tmp_path / "nope.toml"), "status"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "not found" in result.stderr


def test_archive_wait_may_be_zero_but_not_negative() -> None:
    from logship.engines.postgresql.engine import PostgresConnector

    base = {
        "name": "c",
        "kind": "postgresql",
        "site": "dr",
        "rpo": "60s",
        "primary": {"dsn": "host=x", "data_dir": "/pg"},
        "standby": {"dsn": "host=y", "data_dir": "/s"},
    }
    for raw, seconds in (("0s", 0.0), (0, 0.0), ("2s", 2.0)):
        base["primary"]["archive_wait"] = raw  # type: ignore[index]
        assert PostgresConnector.model_validate(base).primary.archive_wait == seconds
    base["primary"]["archive_wait"] = "-1s"  # type: ignore[index]
    with pytest.raises(ValueError):
        PostgresConnector.model_validate(base)
