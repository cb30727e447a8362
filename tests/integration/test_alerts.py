"""Alerts: one hook call per state change, reminders while a bad state lasts, hooks
that fail or hang; then the real path: cut the SSH link while pgbench runs."""

from __future__ import annotations

import base64
import http.server
import itertools
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from factories import connector_status

from logship.catalog.store import Catalog
from logship.config.load import load_config
from logship.config.model import AlertsSection
from logship.demo_sandbox import OsUser
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.status.alerts import AlertSink, redact_url
from logship.status.model import ConnectorStatus
from logship.status.monitor import StatusSink, build_sinks
from logship.status.state import State

T0 = 1_700_000_000.0
RPO = 60.0

# Appends one JSON line per call: its LOGSHIP_* environment, its stdin, and when.
RECORDING_HOOK = """\
import json, os, sys, time
record = {k: v for k, v in os.environ.items() if k.startswith("LOGSHIP_")}
record["stdin"] = json.loads(sys.stdin.read())
record["recorded_at"] = time.time()
with open(sys.argv[1], "a", encoding="utf-8") as out:
    out.write(json.dumps(record) + "\\n")
"""

# Starts a child, writes both PIDs, then hangs: a timeout must end both.
HANGING_HOOK = """\
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with open(sys.argv[1], "w", encoding="utf-8") as out:
    out.write(f"{child.pid} {os.getpid()}")
time.sleep(300)
"""


def make_status(
    state: State,
    *,
    name: str = "orders",
    exposure: float | None = 1.5,
    apply_lag: float | None = None,
) -> ConnectorStatus:
    return connector_status(
        name,
        state,
        rpo=RPO,
        exposure=exposure,
        transport_lag=0.25,
        apply_lag=apply_lag,
        last_shipped="000000010000000000000003",
    )


class Recorder:
    """A real hook script and the calls it has recorded."""

    def __init__(self, folder: Path) -> None:
        self.script = folder / "record_hook.py"
        self.script.write_text(RECORDING_HOOK)
        self.out = folder / "calls.jsonl"

    @property
    def argv(self) -> list[str]:
        return [sys.executable, str(self.script), str(self.out)]

    def calls(self) -> list[dict[str, Any]]:
        if not self.out.exists():
            return []
        return [json.loads(line) for line in self.out.read_text().splitlines()]

    def transitions(self) -> list[tuple[str, str, str]]:
        return [
            (c["LOGSHIP_PREVIOUS_STATE"], c["LOGSHIP_STATE"], c["LOGSHIP_EVENT"])
            for c in self.calls()
        ]


@pytest.fixture
def recorder(tmp_path: Path) -> Recorder:
    return Recorder(tmp_path)


@pytest.fixture
def sinks() -> Iterator[list[AlertSink]]:
    made: list[AlertSink] = []
    yield made
    for sink in made:
        sink.close(grace=1.0)


def new_sink(made: list[AlertSink], **settings: Any) -> AlertSink:
    sink = AlertSink(AlertsSection(**settings))
    made.append(sink)
    return sink


def feed(sink: AlertSink, *steps: tuple[float, State]) -> None:
    """Observe one status per step (offset from T0, state), then wait for the hooks."""
    for offset, state in steps:
        sink.observe([make_status(state)], T0 + offset)
    assert sink.wait_idle(30), "alerts not delivered within 30 s"


def alert_records(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        getattr(r, "logship_fields", {}) | {"level": r.levelname}
        for r in caplog.records
        if r.name == "logship.alerts" and r.getMessage() == "alert"
    ]


# -- once per transition, repeats, baseline -------------------------------------------


def test_one_call_per_transition_including_recovery(
    recorder: Recorder, sinks: list[AlertSink]
) -> None:
    sink = new_sink(sinks, hooks=[recorder.argv], repeat=3600)
    feed(sink, (0, State.OK), (1, State.OK), (2, State.OK))
    assert recorder.calls() == []  # an ok baseline is quiet
    feed(sink, (3, State.WARN), (4, State.WARN), (5, State.WARN))
    assert recorder.transitions() == [("ok", "warn", "transition")]
    feed(sink, (6, State.BREACH), (7, State.BREACH), (8, State.DOWN), (9, State.DOWN))
    feed(sink, (10, State.OK), (11, State.OK))
    assert recorder.transitions() == [
        ("ok", "warn", "transition"),
        ("warn", "breach", "transition"),
        ("breach", "down", "transition"),
        ("down", "ok", "transition"),
    ]


def test_hook_gets_the_facts_in_env_and_on_stdin(
    recorder: Recorder, sinks: list[AlertSink]
) -> None:
    sink = new_sink(sinks, hooks=[recorder.argv])
    sink.observe([make_status(State.OK)], T0)
    breach = make_status(State.BREACH, exposure=75.125, apply_lag=None)
    sink.observe([breach], T0 + 1)
    assert sink.wait_idle(30)
    (call,) = recorder.calls()
    assert {k: v for k, v in call.items() if k.startswith("LOGSHIP_")} == {
        "LOGSHIP_CONNECTOR": "orders",
        "LOGSHIP_STATE": "breach",
        "LOGSHIP_PREVIOUS_STATE": "ok",
        "LOGSHIP_RPO_EXPOSURE_S": "75.125",
        "LOGSHIP_RPO_TARGET_S": "60.0",
        "LOGSHIP_TRANSPORT_LAG_S": "0.25",
        "LOGSHIP_APPLY_LAG_S": "",  # not measured: empty, never a made-up 0
        "LOGSHIP_SITE": "dr",
        "LOGSHIP_EVENT": "transition",
        "LOGSHIP_DRILL_STATE": "",
        "LOGSHIP_DRILL_ERROR": "",
        "LOGSHIP_DRIFT_FILES": "",
        "LOGSHIP_SYNC_MODE": "",
        "LOGSHIP_STREAMING": "",
    }
    assert call["stdin"] == {
        **breach.to_json(),
        "previous_state": "ok",
        "event": "transition",
        "at": "2023-11-14T22:13:21Z",
    }


def test_repeats_every_interval_while_the_state_lasts(
    recorder: Recorder, sinks: list[AlertSink]
) -> None:
    sink = new_sink(sinks, hooks=[recorder.argv], repeat=60)
    feed(sink, (0, State.OK), (10, State.BREACH), (69, State.BREACH))
    assert recorder.transitions() == [("ok", "breach", "transition")]
    feed(sink, (70, State.BREACH), (71, State.BREACH), (129, State.BREACH))
    assert recorder.transitions()[1:] == [("breach", "breach", "repeat")]
    feed(sink, (130, State.BREACH))
    feed(sink, (131, State.OK), (500, State.OK))  # recovery fires; ok never repeats
    assert recorder.transitions() == [
        ("ok", "breach", "transition"),
        ("breach", "breach", "repeat"),
        ("breach", "breach", "repeat"),
        ("breach", "ok", "transition"),
    ]
    assert [c["stdin"]["event"] for c in recorder.calls()] == [
        "transition",
        "repeat",
        "repeat",
        "transition",
    ]


def test_a_new_state_restarts_the_repeat_clock(recorder: Recorder, sinks: list[AlertSink]) -> None:
    sink = new_sink(sinks, hooks=[recorder.argv], repeat=60)
    feed(sink, (0, State.OK), (10, State.WARN), (50, State.BREACH), (100, State.BREACH))
    assert recorder.transitions() == [
        ("ok", "warn", "transition"),
        ("warn", "breach", "transition"),
    ]
    feed(sink, (110, State.BREACH))
    assert recorder.transitions()[-1] == ("breach", "breach", "repeat")


def test_first_observation_sets_the_baseline(recorder: Recorder, sinks: list[AlertSink]) -> None:
    sink = new_sink(sinks, hooks=[recorder.argv], repeat=3600)
    # A daemon starting into trouble says so (no previous state); one starting
    # healthy stays quiet. Each connector has its own baseline.
    sink.observe([make_status(State.DOWN, name="orders"), make_status(State.OK, name="a")], T0)
    sink.observe([make_status(State.DOWN, name="orders"), make_status(State.OK, name="a")], T0 + 1)
    assert sink.wait_idle(30)
    (call,) = recorder.calls()
    assert (call["LOGSHIP_CONNECTOR"], call["LOGSHIP_PREVIOUS_STATE"]) == ("orders", "")
    assert call["LOGSHIP_STATE"] == "down"
    assert call["stdin"]["previous_state"] is None


def test_a_failed_drill_is_announced_once_even_while_lag_is_ok(
    recorder: Recorder, sinks: list[AlertSink]
) -> None:
    sink = new_sink(sinks, hooks=[recorder.argv], repeat=3600)
    ok = make_status(State.OK)
    first = replace(ok, drill_state="failed", drill_at="2026-11-25T02:40:00Z", drill_error="bad")
    second = replace(first, drill_at="2026-11-26T02:40:00Z")
    passed = replace(ok, drill_state="passed", drill_at="2026-11-27T02:40:00Z")
    for offset, status in enumerate([ok, first, first, first, passed, second, second]):
        sink.observe([status], T0 + offset)
    assert sink.wait_idle(30)
    calls = recorder.calls()
    assert [(c["LOGSHIP_EVENT"], c["stdin"]["drill_at"]) for c in calls] == [
        ("drill_failed", "2026-11-25T02:40:00Z"),
        ("drill_failed", "2026-11-26T02:40:00Z"),
    ]
    assert calls[0]["LOGSHIP_DRILL_ERROR"] == "bad" and calls[0]["LOGSHIP_STATE"] == "ok"


# -- hooks that fail, hang or are missing ---------------------------------------------


def test_failing_and_missing_hooks_are_logged_and_others_still_run(
    recorder: Recorder,
    sinks: list[AlertSink],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="logship.alerts")
    failing = [sys.executable, "-c", "import sys; sys.stderr.write('boom'); sys.exit(3)"]
    missing = [str(tmp_path / "no-such-hook"), "--token=s3cret"]
    sink = new_sink(sinks, hooks=[failing, missing, recorder.argv])
    feed(sink, (0, State.OK), (1, State.DOWN))  # no exception reaches the monitor
    assert recorder.transitions() == [("ok", "down", "transition")]
    failed, absent, good = alert_records(caplog)
    assert failed["exit_code"] == 3 and failed["stderr"] == "boom"
    assert failed["level"] == "WARNING"
    assert (failed["connector"], failed["state"], failed["previous"]) == ("orders", "down", "ok")
    assert absent["level"] == "ERROR" and "cannot run hook" in absent["error"]
    assert absent["hook"] == "no-such-hook"  # arguments (maybe tokens) stay out of logs
    assert "s3cret" not in caplog.text
    assert good["exit_code"] == 0 and good["level"] == "INFO"


def _gone(pid: int) -> bool:
    """No such process, or only a zombie left for its parent to reap."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_a_hanging_hook_is_killed_at_timeout_without_blocking_the_monitor(
    recorder: Recorder,
    sinks: list[AlertSink],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="logship.alerts")
    script = tmp_path / "hang.py"
    script.write_text(HANGING_HOOK)
    pids_file = tmp_path / "pids"
    hanging = [sys.executable, str(script), str(pids_file)]
    sink = new_sink(sinks, hooks=[hanging, recorder.argv], timeout=1.0)
    started = time.monotonic()
    sink.observe([make_status(State.OK)], T0)
    sink.observe([make_status(State.BREACH)], T0 + 1)
    sink.observe([make_status(State.OK)], T0 + 2)
    assert time.monotonic() - started < 0.5  # delivery happens off the monitor's thread
    assert sink.wait_idle(30)
    # Both alerts went out, in order, each after its hanging hook was killed.
    assert recorder.transitions() == [
        ("ok", "breach", "transition"),
        ("breach", "ok", "transition"),
    ]
    failures = [r for r in alert_records(caplog) if "error" in r]
    assert [(r["error"], r["level"]) for r in failures] == [("timed out after 1s", "ERROR")] * 2
    child, hook = (int(p) for p in pids_file.read_text().split())
    wait_for(lambda: _gone(child) and _gone(hook), 10, "hung hook and its child to be killed")


def test_close_ends_a_running_hook(
    sinks: list[AlertSink], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="logship.alerts")
    script = tmp_path / "hang.py"
    script.write_text(HANGING_HOOK)
    pids_file = tmp_path / "pids"
    sink = new_sink(sinks, hooks=[[sys.executable, str(script), str(pids_file)]], timeout=300)
    sink.observe([make_status(State.DOWN)], T0)
    wait_for(lambda: pids_file.exists() and pids_file.read_text(), 30, "hook started")
    started = time.monotonic()
    sink.close(grace=0.5)
    assert time.monotonic() - started < 5
    child, hook = (int(p) for p in pids_file.read_text().split())
    wait_for(lambda: _gone(child) and _gone(hook), 10, "hook killed at close")
    sink.observe([make_status(State.OK)], T0 + 1)  # after close: ignored, no error


# -- webhook ---------------------------------------------------------------------------


class _Capture(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, str, str, bytes]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        headers = self.headers
        self.received.append((self.path, headers["Content-Type"], headers["Authorization"], body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook_server() -> Iterator[tuple[str, list[tuple[str, str, str, bytes]]]]:
    received: list[tuple[str, str, str, bytes]] = []
    handler = type("Handler", (_Capture,), {"received": received})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_webhook_gets_the_json_and_no_secret_reaches_the_log(
    webhook_server: tuple[str, list[tuple[str, str, str, bytes]]],
    sinks: list[AlertSink],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="logship.alerts")
    address, received = webhook_server
    url = f"http://alice:hunter2@{address}/hooks/logship?token=s3cret"
    sink = new_sink(sinks, webhook=url)
    feed(sink, (0, State.OK), (1, State.WARN))
    ((path, content_type, authorization, body),) = received
    assert path == "/hooks/logship?token=s3cret"
    assert authorization == "Basic " + base64.b64encode(b"alice:hunter2").decode()
    assert content_type == "application/json"
    payload = json.loads(body)
    assert (payload["name"], payload["state"], payload["previous_state"]) == (
        "orders",
        "warn",
        "ok",
    )
    assert payload["event"] == "transition"
    (logged,) = alert_records(caplog)
    assert logged["webhook"] == f"http://{address}/hooks/logship"
    assert logged["http_status"] == 204
    for secret in ("s3cret", "hunter2", "alice"):
        assert secret not in caplog.text


def test_webhook_failure_is_logged_not_raised(
    sinks: list[AlertSink], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="logship.alerts")
    # A port nothing listens on: bind one, note it, close it.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sink = new_sink(sinks, webhook=f"http://127.0.0.1:{port}/x?key=s3cret", timeout=5)
    feed(sink, (0, State.DOWN))
    (logged,) = alert_records(caplog)
    assert logged["level"] == "ERROR" and "refused" in logged["error"].lower()
    assert "s3cret" not in caplog.text


def test_redact_url_keeps_only_where_it_goes() -> None:
    assert redact_url("https://u:p@hooks.example.net:8443/a/b?t=1#f") == (
        "https://hooks.example.net:8443/a/b"
    )
    assert redact_url("http://[::1]:9000/x") == "http://[::1]:9000/x"


def test_only_http_webhooks_are_accepted() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="http"):
        AlertsSection(webhook="file:///etc/passwd")


def test_build_sinks_adds_alerts_only_when_configured(tmp_path: Path, recorder: Recorder) -> None:
    (tmp_path / "connectors").mkdir()
    main = f"""
[logship]
state_dir = "{tmp_path / "state"}"

[sites.dr]
host = "127.0.0.1"
user = "logship"
identity_file = "id"
known_hosts = "kh"
root = "/srv/incoming"
"""
    (tmp_path / "logship.toml").write_text(main)
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.db'}")
    try:
        assert _alert_sinks(build_sinks(load_config(tmp_path / "logship.toml"), catalog)) == []
        (tmp_path / "logship.toml").write_text(
            main + f'\n[alerts]\nhooks = [{json.dumps(recorder.argv)}]\nrepeat = "5m"\n'
        )
        assert len(_alert_sinks(build_sinks(load_config(tmp_path / "logship.toml"), catalog))) == 1
    finally:
        catalog.close()


def test_run_refuses_a_non_http_webhook_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "connectors").mkdir()
    (tmp_path / "logship.toml").write_text(
        f"""
[logship]
state_dir = "{tmp_path / "state"}"

[alerts]
webhook = "ftp://alice:hunter2@files.example.net/drop"
"""
    )
    result = subprocess.run(
        [sys.executable, "-m", "logship", "--config", str(tmp_path / "logship.toml"), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "alerts.webhook" in result.stderr
    assert "hunter2" not in result.stderr


def _alert_sinks(sinks: list[StatusSink]) -> list[AlertSink]:
    """The AlertSinks among `sinks` (closing every sink: only the types matter here)."""
    for sink in sinks:
        sink.close()
    return [sink for sink in sinks if isinstance(sink, AlertSink)]


# -- the real path: cut the link while pgbench runs ----------------------------------------


def _status(dep: Deployment) -> dict[str, Any]:
    (entry,) = json.loads(dep.logship("status", "--json").stdout)["connectors"]
    return entry


def _state_is(dep: Deployment, *states: str) -> dict[str, Any] | None:
    entry = _status(dep)
    return entry if entry["state"] in states else None


def _json_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("{")]


def _reachable_hook(dep: Deployment, user: OsUser) -> Recorder:
    """The recording hook where the daemon's user (postgres) can run and write it."""
    folder = dep.root / "alert-hook"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    user.chown(folder)
    hook = Recorder(folder)
    hook.script.chmod(0o644)
    return hook


def _exposure_past_rpo(dep: Deployment, rpo: float) -> dict[str, Any] | None:
    entry = _state_is(dep, "breach", "down")
    exposure = None if entry is None else entry["rpo_exposure_s"]
    return entry if exposure is not None and exposure > rpo else None


@pytest.mark.e2e
def test_cut_link_under_pgbench_alerts_once_per_transition(
    deployment: Deployment, pg_user: OsUser
) -> None:
    dep = deployment
    rpo = 10.0
    dep.rpo = "10s"
    dep.write_config()
    hook = _reachable_hook(dep, pg_user)
    with dep.config_path.open("a") as config:
        config.write(f'\n[alerts]\nhooks = [{json.dumps(hook.argv)}]\nrepeat = "1h"\n')
    # The sandbox's archive_timeout (10 s) equals this RPO, which `check` warns
    # about: a light load would swing between ok and warn all along. A DBA sets it
    # well below the RPO, so the only transitions left are the ones the cut causes.
    dep.primary.configure({"archive_timeout": "2s"})
    dep.primary.query("select pg_reload_conf()")

    dep.start_daemon()
    dep.standby_up()
    dep.primary.pgbench("-i", "-s", "2", "-q")
    load = threading.Thread(target=dep.primary.pgbench, args=("-c", "2", "-T", "40", "-n"))
    load.start()
    try:
        wait_for(lambda: _state_is(dep, "ok"), 60, "state ok under pgbench")

        cut_at = time.time()
        sessions = dep.sshd.cut()
        assert sessions, "the daemon had no live SSH session to cut"
        wait_for(lambda: all(_gone(pid) for pid in sessions), 10, "SSH sessions to end")
        # Hold the cut until the exposure has grown past the RPO: an outage
        # shorter than the monitor's one-second sample could go unseen.
        wait_for(lambda: _exposure_past_rpo(dep, rpo), rpo + 5, "exposure past the RPO")
        assert time.time() - cut_at <= rpo + 5 + 2  # +2: one `status` run's own time

        restored_at = time.time()
        dep.sshd.start()
        # Reconnect backoff is at most 30 s; the backlog then has to ship.
        wait_for(lambda: _state_is(dep, "ok"), 90, "state back to ok")
        wait_for(
            lambda: any(
                c["recorded_at"] > restored_at and c["LOGSHIP_STATE"] == "ok" for c in hook.calls()
            ),
            30,
            "the recovery alert",
        )
    finally:
        load.join(120)
    assert dep.stop_daemon() == 0  # every queued alert is delivered before a clean stop

    calls = hook.calls()
    seen = [
        (round(c["recorded_at"] - cut_at, 1), c["LOGSHIP_PREVIOUS_STATE"], c["LOGSHIP_STATE"])
        for c in calls
    ]
    # Exactly one call per transition: each call starts where the previous one
    # ended, so the same transition is never announced twice.
    assert [c["LOGSHIP_EVENT"] for c in calls] == ["transition"] * len(calls), seen
    for (_, _, before), (_, previous, state) in itertools.pairwise(seen):
        assert previous == before and previous != state, seen
    assert seen and seen[0][1] in ("", "ok"), seen
    for call in calls:
        assert call["stdin"]["previous_state"] == (call["LOGSHIP_PREVIOUS_STATE"] or None)
        assert call["stdin"]["state"] == call["LOGSHIP_STATE"]
    # One outage, one recovery: ok before the cut; after it, first breach or down,
    # then only bad states until the single return to ok.
    before_cut = [s for s in seen if s[0] < 0]
    assert not before_cut or before_cut[-1][2] == "ok", seen
    after_cut = [s for s in seen if s[0] >= 0]
    assert after_cut[0][1:] in (("ok", "down"), ("ok", "breach")), seen
    assert [s[2] for s in after_cut].count("ok") == 1 and after_cut[-1][2] == "ok", seen
    assert "down" in [s[2] for s in after_cut], seen  # the link itself is reported
    # The daemon logged every alert, each with the hook's exit code.
    logged = [
        line
        for line in map(json.loads, _json_lines(dep.daemon_log))
        if line.get("event") == "alert"
    ]
    assert [(line["previous"] or "", line["state"]) for line in logged] == [s[1:] for s in seen]
    assert all(line["exit_code"] == 0 for line in logged)


# -- what leaves the daemon with an alert -------------------------------------------------


class _Anything(http.server.BaseHTTPRequestHandler):
    """Records every request; answers a redirect when `location` is set."""

    received: list[tuple[str, str | None]]
    location: str | None = None

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.received.append((self.command, self.headers["Authorization"]))
        if self.location is not None:
            self.send_response(302)
            self.send_header("Location", self.location)
        else:
            self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_PUT = _any

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(host: str, **attrs: Any) -> tuple[http.server.HTTPServer, threading.Thread]:
    handler = type("Handler", (_Anything,), attrs)
    server = http.server.HTTPServer((host, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


def test_webhook_credentials_never_follow_a_redirect_to_another_host(
    sinks: list[AlertSink], caplog: pytest.LogCaptureFixture
) -> None:
    """A webhook that answers 302 to another host must not get the Basic auth there
    (urllib follows a POST's 302 as a GET and keeps the Authorization header)."""
    caplog.set_level(logging.INFO, logger="logship.alerts")
    elsewhere: list[tuple[str, str | None]] = []
    asked: list[tuple[str, str | None]] = []
    other, other_thread = _serve("127.0.0.2", received=elsewhere)
    try:
        location = f"http://127.0.0.2:{other.server_address[1]}/collect"
        first, first_thread = _serve("127.0.0.1", received=asked, location=location)
        try:
            url = f"http://alice:hunter2@127.0.0.1:{first.server_address[1]}/hook"
            sink = new_sink(sinks, webhook=url, timeout=5)
            feed(sink, (0, State.DOWN))
        finally:
            first.shutdown()
            first.server_close()
            first_thread.join(10)
    finally:
        other.shutdown()
        other.server_close()
        other_thread.join(10)
    assert [method for method, _ in asked] == ["POST"]
    assert elsewhere == []  # not followed at all: nothing, and no credentials, got there
    (logged,) = alert_records(caplog)
    assert logged["level"] == "WARNING" and logged["http_status"] == 302
    assert "hunter2" not in caplog.text


ENV_HOOK = """\
import json, os, sys
with open(sys.argv[1], "w", encoding="utf-8") as out:
    json.dump(dict(os.environ), out)
"""


def test_a_hook_gets_only_what_it_needs_of_the_daemons_environment(
    tmp_path: Path, sinks: list[AlertSink], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "daemon-only-secret")
    monkeypatch.setenv("PGPASSWORD", "daemon-only-secret")
    monkeypatch.setenv("LOGSHIP_CONFIG", "/etc/logship/logship.toml")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")
    script = tmp_path / "env_hook.py"
    script.write_text(ENV_HOOK)
    out = tmp_path / "env.json"
    sink = new_sink(sinks, hooks=[[sys.executable, str(script), str(out)]])
    feed(sink, (0, State.DOWN))
    env = json.loads(out.read_text())
    assert "daemon-only-secret" not in json.dumps(env)
    assert "LOGSHIP_CONFIG" not in env  # only the alert's own LOGSHIP_* variables
    assert env["LOGSHIP_STATE"] == "down" and env["LOGSHIP_CONNECTOR"] == "orders"
    assert env["PATH"] and env["LANG"] == "C.UTF-8" and env["TZ"] == "UTC"
    allowed = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR"}
    extra = {
        key
        for key in env
        if key not in allowed
        and not key.startswith(("LC_", "LOGSHIP_"))
        # the interpreter running the hook may add these itself
        and key not in {"PWD", "SHLVL", "_"}
    }
    assert extra == set()


def test_each_change_of_the_synchronous_mode_is_announced(
    recorder: Recorder, sinks: list[AlertSink]
) -> None:
    sink = new_sink(sinks, hooks=[recorder.argv], repeat=3600)
    ok = make_status(State.OK)
    modes = ["availability", "availability", "async", "async", None, "availability"]
    for offset, mode in enumerate(modes):
        sink.observe([replace(ok, sync_mode=mode, streaming="streaming")], T0 + offset)
    assert sink.wait_idle(30)
    calls = recorder.calls()
    assert [(c["LOGSHIP_EVENT"], c["LOGSHIP_SYNC_MODE"]) for c in calls] == [
        ("sync_mode", "async"),
        ("sync_mode", "availability"),
    ]
    assert calls[0]["stdin"]["sync_mode"] == "async"
