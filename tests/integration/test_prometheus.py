"""The Prometheus endpoint, scraped over real HTTP: by hand-made samples, then by the daemon."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.demo_sandbox.ports import free_port
from logship.errors import ConfigError, OperationFailed
from logship.status.model import ConnectorStatus
from logship.status.prometheus import PrometheusSink, parse_listen
from logship.status.state import State

pytestmark = pytest.mark.slow  # left out of the fast subset (README)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _status(name: str, state: State = State.OK, **figures: object) -> ConnectorStatus:
    values: dict[str, Any] = {
        "rpo_exposure_s": 4.5,
        "transport_lag_s": 0.0,
        "apply_lag_s": 1.25,
        "pending_files": 0,
        "pending_bytes": 0,
        "last_shipped": "000000010000000000000003",
        "last_applied": "000000010000000000000002",
        "last_base_backup_at": "2024-05-01T02:30:00Z",
    }
    values.update(figures)
    return ConnectorStatus(
        name=name, kind="postgresql", site="dr", state=state, rpo_target_s=60.0, **values
    )


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample with exactly these labels (site and kind added), or None when absent."""
    if name != "logship_sample_timestamp_seconds":
        labels = {"site": "dr", "kind": "postgresql", **labels}
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def sink() -> Iterator[PrometheusSink]:
    sink = PrometheusSink(f"127.0.0.1:{free_port()}")
    try:
        yield sink
    finally:
        sink.close()


def test_scrape_shows_the_figures_of_the_last_sample(sink: PrometheusSink) -> None:
    port = sink.address[1]
    sink.observe([_status("orders", pending_files=3, pending_bytes=48 << 20)], 1000.0)
    sink.observe([_status("orders", transport_lag_s=2.5, pending_files=1)], 2000.0)
    samples = scrape(port)
    assert value(samples, "logship_sample_timestamp_seconds") == 2000.0
    orders = {"connector": "orders"}
    assert value(samples, "logship_rpo_exposure_seconds", **orders) == 4.5
    assert value(samples, "logship_rpo_target_seconds", **orders) == 60.0
    assert value(samples, "logship_transport_lag_seconds", **orders) == 2.5
    assert value(samples, "logship_apply_lag_seconds", **orders) == 1.25
    assert value(samples, "logship_pending_files", **orders) == 1
    assert value(samples, "logship_pending_bytes", **orders) == 0
    backup = value(samples, "logship_last_base_backup_timestamp_seconds", **orders)
    assert backup == 1714530600.0  # 2024-05-01T02:30:00Z
    # No drill yet: neither drill figure is made up.
    assert value(samples, "logship_rebuild_rto_seconds", **orders) is None
    assert value(samples, "logship_drill_failed", **orders) is None


def test_drill_figures(sink: PrometheusSink) -> None:
    passed = replace(_status("a"), drill_state="passed", rebuild_rto_s=42.5)
    failed = replace(_status("b"), drill_state="failed", rebuild_rto_s=30.0)
    sink.observe([passed, failed], 1000.0)
    samples = scrape(sink.address[1])
    assert value(samples, "logship_rebuild_rto_seconds", connector="a") == 42.5
    assert value(samples, "logship_drill_failed", connector="a") == 0
    # The last drill that passed still measured a rebuild; the failure is beside it.
    assert value(samples, "logship_rebuild_rto_seconds", connector="b") == 30.0
    assert value(samples, "logship_drill_failed", connector="b") == 1


def test_none_figures_are_absent_not_zero(sink: PrometheusSink) -> None:
    unknown = dict.fromkeys(
        [
            "rpo_exposure_s",
            "transport_lag_s",
            "apply_lag_s",
            "pending_files",
            "pending_bytes",
            "last_base_backup_at",
        ]
    )
    sink.observe([_status("known"), _status("fresh", **unknown)], 1000.0)
    samples = scrape(sink.address[1])
    for name in (
        "logship_rpo_exposure_seconds",
        "logship_transport_lag_seconds",
        "logship_apply_lag_seconds",
        "logship_pending_files",
        "logship_pending_bytes",
        "logship_last_base_backup_timestamp_seconds",
    ):
        assert value(samples, name, connector="fresh") is None, name
        assert value(samples, name, connector="known") is not None, name
    # What is always known stays: the target and the state.
    assert value(samples, "logship_rpo_target_seconds", connector="fresh") == 60.0
    assert value(samples, "logship_state", connector="fresh", state="ok") == 1

    # A figure that becomes unknown later disappears from the next scrape.
    sink.observe([_status("known", rpo_exposure_s=None)], 1001.0)
    assert value(scrape(sink.address[1]), "logship_rpo_exposure_seconds", connector="known") is None


def test_state_is_one_gauge_per_state(sink: PrometheusSink) -> None:
    sink.observe([_status("a", State.BREACH), _status("b", State.DOWN)], 1000.0)
    samples = scrape(sink.address[1])
    for connector, current in (("a", "breach"), ("b", "down")):
        states = {
            state: value(samples, "logship_state", connector=connector, state=state)
            for state in ("ok", "warn", "breach", "down")
        }
        assert states == {s: (1.0 if s == current else 0.0) for s in states}


def test_nothing_is_exported_before_the_first_sample(sink: PrometheusSink) -> None:
    assert not [key for key in scrape(sink.address[1]) if key[0].startswith("logship_")]


def test_close_frees_the_port() -> None:
    port = free_port()
    PrometheusSink(f"127.0.0.1:{port}").close()
    again = PrometheusSink(f"127.0.0.1:{port}")  # a restarted daemon gets its port back
    again.close()
    again.close()  # closing twice is harmless


def _closed_within(conn: socket.socket, seconds: float) -> bool:
    """True when the server ends `conn` (EOF or reset) within `seconds`."""
    conn.settimeout(seconds)
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_connections_are_capped_and_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Connections that send nothing (a scanner, a slowloris) hold a thread each: they
    are capped, dropped after a timeout, and a scrape still answers meanwhile."""
    from logship.status import prometheus

    idle_timeout, cap = 4.0, 8
    monkeypatch.setattr(prometheus, "IDLE_TIMEOUT_S", idle_timeout, raising=False)
    monkeypatch.setattr(prometheus, "MAX_CONNECTIONS", cap, raising=False)
    sink = PrometheusSink(f"127.0.0.1:{free_port()}")
    held: list[socket.socket] = []
    try:
        address = sink.address
        sink.observe([_status("orders")], 1000.0)
        held += [socket.create_connection(address, timeout=10) for _ in range(cap - 1)]
        # One slot is left: a scrape gets it at once.
        assert value(scrape(address[1]), "logship_sample_timestamp_seconds") == 1000.0
        # Over the cap: closed straight away, long before the idle timeout.
        extra = [socket.create_connection(address, timeout=10) for _ in range(6)]
        held += extra
        closed_at_once = [_closed_within(conn, idle_timeout - 1.0) for conn in extra]
        assert closed_at_once.count(True) >= len(extra) - 1, closed_at_once
        # Every idle connection is dropped once the timeout has passed.
        assert all(_closed_within(conn, idle_timeout + 20) for conn in held)
        assert value(scrape(address[1]), "logship_sample_timestamp_seconds") == 1000.0
    finally:
        for conn in held:
            conn.close()
        sink.close()


@pytest.mark.parametrize(
    "listen",
    [
        "9187",
        ":9187",
        "127.0.0.1:",
        "127.0.0.1:http",
        "127.0.0.1:0",
        "127.0.0.1:70000",
        "::1:9187",
        "127.0.0.1:9²",
        "[nope]:9187",
    ],
)
def test_a_bad_listen_value_is_one_line_naming_the_key(listen: str) -> None:
    with pytest.raises(ConfigError) as raised:
        PrometheusSink(listen)
    message = str(raised.value)
    assert message.startswith(f"metrics.listen = {listen!r}: ")
    assert "\n" not in message


def test_ipv6_listen_values_are_parsed() -> None:
    assert parse_listen("[::1]:9187") == ("::1", 9187)
    assert parse_listen("localhost:9187") == ("localhost", 9187)


def test_a_port_in_use_is_one_line_naming_the_key() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OperationFailed) as raised:
            PrometheusSink(listen)
    message = str(raised.value)
    assert message.startswith(f"metrics.listen = {listen!r}: cannot listen")
    assert "\n" not in message


# -- the daemon's endpoint -----------------------------------------------------------


def _enable_metrics(deployment: Deployment, listen: str) -> None:
    with deployment.config_path.open("a") as config:
        config.write(f'\n[metrics]\nlisten = "{listen}"\n')


def test_daemon_exports_the_exposure_status_json_reports(deployment: Deployment) -> None:
    port = free_port()
    _enable_metrics(deployment, f"127.0.0.1:{port}")
    deployment.start_daemon()
    deployment.switch_wal()
    main = {"connector": deployment.connector}

    def exported() -> Samples | None:
        assert deployment.daemon is not None and deployment.daemon.poll() is None, (
            deployment.daemon_log.read_text()[-3000:]
        )
        try:
            samples = scrape(port)
        except OSError:
            return None  # not listening yet
        has = value(samples, "logship_rpo_exposure_seconds", **main) is not None
        return samples if has else None

    wait_for(exported, 60, "logship_rpo_exposure_seconds for the shipped segment")

    def agreeing() -> tuple[float, float, float] | None:
        samples = exported()
        before = time.time()
        result = deployment.logship("status", "--json", deployment.connector)
        after = time.time()
        assert samples is not None
        (entry,) = json.loads(result.stdout)["connectors"]
        sampled_at = value(samples, "logship_sample_timestamp_seconds")
        ours = value(samples, "logship_rpo_exposure_seconds", **main)
        theirs = entry["rpo_exposure_s"]
        assert sampled_at is not None and ours is not None and theirs is not None
        # Exposure is now minus one segment's close time: both views must name the same
        # close time. A segment shipped between the scrape and `status` (archive_timeout
        # closes one every few seconds here) moves it, so look again rather than fail.
        if not before - theirs - 1 <= sampled_at - ours <= after - theirs + 1:
            return None
        return ours, theirs, after - sampled_at

    ours, theirs, elapsed = wait_for(agreeing, 60, "scrape and status --json to agree")
    assert abs(theirs - ours) <= elapsed + 3
    assert deployment.stop_daemon() == 0
    with pytest.raises(OSError):
        scrape(port)  # the daemon's clean stop closed the endpoint


def test_daemon_refuses_a_bad_listen_value(deployment: Deployment) -> None:
    _enable_metrics(deployment, "localhost")
    result = deployment.logship("run", check=False, timeout=60)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    # Caught at config load: the file and the key are named.
    assert str(deployment.config_path) in line and "key 'metrics.listen'" in line
