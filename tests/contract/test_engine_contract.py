"""A new engine is one new package: a toy engine, registered from the tests,
goes through the config loader, `logship check`, the daemon's intake (spool,
catalog, shipping, what it keeps), its background jobs and schedules, and
`status`, with no line of logship outside its own module knowing its kind."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from toy_engine import ACTION, KIND, ToyConnector, ToyEngine

from logship.catalog.models import FileState
from logship.catalog.store import Catalog, NewFile
from logship.checks import CheckRunner, CheckStatus, run_setup_checks
from logship.cli.main import main
from logship.config.load import load_config
from logship.config.model import SiteConfig
from logship.daemon import Daemon
from logship.engines.registry import engine_for, engines, registered
from logship.errors import ConfigError
from logship.ship.localdir import LocalDirTransport
from logship.spool import kept_path

TOY = f"""kind = "{KIND}"
site = "dr"
rpo = "60s"
compression = "none"
notes = "notes"
"""
SCHEDULE = f"""action = "{ACTION}"
connectors = ["toy"]
cron = "* * * * * *"
"""


@pytest.fixture
def toy() -> Iterator[ToyEngine]:
    with registered(ToyEngine()) as engine:
        yield engine


def _write(root: Path, toy: str = TOY, *, schedule: str | None = None, site: str = "") -> Path:
    for folder in ("connectors", "schedules", "site"):
        (root / folder).mkdir(exist_ok=True)
    (root / "site").chmod(0o700)  # as `check` wants a site's root
    path = root / "logship.toml"
    path.write_text(
        f"""[logship]
state_dir = "state"
reconcile_interval = "1s"

[sites.dr]
host = "127.0.0.1"
user = "logship"
identity_file = "id"
known_hosts = "known_hosts"
root = "{root / "site"}"
# logship does not run at this site: `check` warns, the toy does not mind
command = ["true"]
{site}"""
    )
    (root / "connectors" / "toy.toml").write_text(toy)
    if schedule is not None:
        (root / "schedules" / "sweep.toml").write_text(schedule)
    return path


def _local(site: SiteConfig) -> LocalDirTransport:
    return LocalDirTransport()


def _wait(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the registry -------------------------------------------------------------------------


def test_a_registered_engine_joins_the_discovered_ones_and_leaves_again() -> None:
    discovered = set(engines())
    assert {"postgresql", "files"} <= discovered
    with registered(ToyEngine()) as engine:
        assert engine_for(KIND) is engine
        assert set(engines()) == discovered | {KIND}
        with pytest.raises(ValueError, match="already registered"), registered(ToyEngine()):
            pass
    assert set(engines()) == discovered
    with pytest.raises(KeyError, match="unknown kind 'toy'"):
        engine_for(KIND)


# -- config -------------------------------------------------------------------------------


def test_a_toy_connector_loads_through_its_model(tmp_path: Path, toy: ToyEngine) -> None:
    config = load_config(_write(tmp_path, schedule=SCHEDULE))
    connector = config.connector("toy")
    assert isinstance(connector, ToyConnector)
    # Its engine's path key, resolved relative to the connector's file.
    assert connector.notes == tmp_path / "connectors" / "notes"
    assert config.schedules["sweep"].action == ACTION


@pytest.mark.parametrize(
    ("toy_file", "schedule", "site", "where", "problem"),
    [
        (TOY + "colour = 'red'\n", None, "", "toy.toml", "key 'colour': unknown key"),
        (TOY.replace('notes = "notes"\n', ""), None, "", "toy.toml", "key 'notes': missing"),
        (TOY, SCHEDULE.replace(ACTION, "verify"), "", "sweep.toml", "does not apply"),
        (TOY, SCHEDULE.replace(ACTION, "vacuum"), "", "sweep.toml", "unknown action"),
        (TOY, None, "restricted = true\n", "toy.toml", "a toy needs its own"),
    ],
    ids=["unknown key", "missing key", "another engine's action", "no engine's action", "site"],
)
def test_the_toy_decides_what_its_config_may_say(
    tmp_path: Path,
    toy: ToyEngine,
    toy_file: str,
    schedule: str | None,
    site: str,
    where: str,
    problem: str,
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_config(_write(tmp_path, toy_file, schedule=schedule, site=site))
    assert where in str(raised.value) and problem in str(raised.value), raised.value


def test_without_the_engine_the_kind_is_unknown(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key 'kind': unknown kind 'toy'"):
        load_config(_write(tmp_path))


# -- check --------------------------------------------------------------------------------


def test_check_runs_the_generic_checks_and_the_toys(tmp_path: Path, toy: ToyEngine) -> None:
    config = load_config(_write(tmp_path))
    runner = CheckRunner()
    run_setup_checks(config, ["toy"], runner, connect=_local)  # type: ignore[arg-type]
    results = [(result.name, result.status) for result in runner.results]
    assert results == [
        ("state-dir", CheckStatus.OK),
        ("spool toy", CheckStatus.OK),
        ("spool-files toy", CheckStatus.OK),
        ("ssh dr", CheckStatus.OK),
        ("site-root dr", CheckStatus.OK),
        # Not needed by the toy: a warning, in the toy's words.
        ("site-logship dr", CheckStatus.WARN),
        ("toy-site toy", CheckStatus.OK),
        ("not-promoted toy", CheckStatus.OK),
        ("incoming toy", CheckStatus.OK),
        ("toy-source toy", CheckStatus.OK),
    ], runner.results
    assert "the toy does not mind" in runner.results[5].detail
    assert runner.exit_code == 0


# -- the daemon ---------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [False, True], ids=["keeps nothing", "keeps shipped files"])
def test_the_daemon_takes_in_ships_and_schedules_a_toy(
    tmp_path: Path, toy: ToyEngine, keep: bool
) -> None:
    toy_file = TOY + ("keep_shipped = true\n" if keep else "")
    config = load_config(_write(tmp_path, toy_file, schedule=SCHEDULE))
    spool = config.spool_dir("toy")
    spool.mkdir(parents=True, mode=0o700)
    for name in ("10.toy", "2.toy", "x.toy"):
        (spool / name).write_bytes(name.encode() * 100)
    daemon = Daemon(config, connect=_local)
    failed: list[BaseException] = []

    def run() -> None:
        try:
            daemon.run()
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=run, name="daemon")
    thread.start()
    catalog = None
    try:
        _wait(lambda: config.logship.state_dir.joinpath("catalog.db").exists(), "the catalog")
        catalog = Catalog(config.catalog_url)

        def shipped(name: str) -> bool:
            row = catalog.file("toy", name)
            return row is not None and row.state == FileState.SHIPPED

        _wait(lambda: shipped("2.toy") and shipped("10.toy"), "both toy files shipped")
        _wait(lambda: bool(toy.actions), "the scheduled toy action")
        assert toy.ticks.acquire(timeout=30), "the toy's background job never ran"
        # The engine's order, not the names': 2 before 10.
        assert [row.name for row in catalog.files("toy")] == ["2.toy", "10.toy"]
        assert catalog.file("toy", "x.toy") is None  # not a name the toy accepts
        assert toy.actions[0] == (ACTION, "toy")
        # Shipped files leave the queue; what the engine keeps after shipping stays aside.
        left = lambda: sorted(p.name for p in spool.iterdir() if p.is_file())  # noqa: E731
        _wait(lambda: left() == ["x.toy"], "a retired spool")
        assert kept_path(spool, "2.toy").exists() is keep
        landed = {path.name for path in (tmp_path / "site" / "toy").rglob("*.toy")}
        assert landed == {"2.toy", "10.toy"}
        assert not failed
    finally:
        daemon.stop()
        thread.join(timeout=60)
        if catalog is not None:
            catalog.close()
    assert not thread.is_alive() and not failed, failed


# -- status -------------------------------------------------------------------------------


def test_status_shows_a_toy_connector(
    tmp_path: Path, toy: ToyEngine, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path)
    config = load_config(path)
    config.logship.state_dir.mkdir(mode=0o700)
    catalog = Catalog(config.catalog_url)
    try:
        now = time.time()
        for name in ("1.toy", "2.toy"):
            catalog.add_discovered(NewFile("toy", name, toy.ship_order(name), 100, now), now)
        catalog.mark_shipped(catalog.pending("toy")[0].id, "ab" * 32, 100, now)
    finally:
        catalog.close()
    capsys.readouterr()
    assert main(["--config", str(path), "status", "--json"]) == 0
    (entry,) = json.loads(capsys.readouterr().out)["connectors"]
    assert (entry["name"], entry["kind"], entry["site"]) == ("toy", KIND, "dr")
    assert (entry["state"], entry["rpo_target_s"]) == ("ok", 60)
    # The toy's own figures, from its own status.
    assert (entry["pending_files"], entry["last_shipped"]) == (1, "1.toy")
    assert main(["--config", str(path), "status"]) == 0
    table = capsys.readouterr().out
    assert "toy" in table and "a toy measures no lag" in table, table
