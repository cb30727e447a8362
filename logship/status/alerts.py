"""Alerts: run hooks (and POST a webhook) when a connector's state changes.

A StatusSink fed by the daemon's Monitor once a second. Deciding *whether* to
alert happens in `observe` (cheap, on the monitor's thread); delivering happens
on one worker thread, in order, so a slow or hanging hook never delays the
samples and a recovery is never delivered before the failure it ends.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from logship import jsonout
from logship.config.model import AlertsSection
from logship.logs import event
from logship.status.figures import iso_utc
from logship.status.model import ConnectorStatus
from logship.status.state import State

log = logging.getLogger("logship.alerts")

Trigger = Literal["transition", "repeat", "drill_failed", "drift", "sync_mode"]

#: alerts waiting for delivery; beyond this the hooks cannot keep up and newer
#: alerts are dropped (and logged) rather than growing memory without bound
MAX_PENDING = 256
#: how much of a failing hook's stderr goes into the log line
STDERR_TAIL = 300
#: after a kill, how long to wait for the hook's pipes to close
_REAP_TIMEOUT = 2.0


@dataclass(frozen=True)
class Alert:
    """One state change (or reminder) of one connector, as hooks receive it."""

    status: ConnectorStatus
    previous: State | None  # None: the first observation since the daemon started
    trigger: Trigger
    at: float

    @property
    def connector(self) -> str:
        return self.status.name

    def payload(self) -> dict[str, Any]:
        """The JSON on a hook's stdin and in the webhook's body."""
        return {
            **self.status.to_json(),
            "previous_state": None if self.previous is None else str(self.previous),
            "event": self.trigger,
            "at": iso_utc(self.at),
        }

    def environment(self) -> dict[str, str]:
        status = self.status
        facts: dict[str, object] = {
            "LOGSHIP_CONNECTOR": status.name,
            "LOGSHIP_STATE": str(status.state),
            "LOGSHIP_PREVIOUS_STATE": None if self.previous is None else str(self.previous),
            "LOGSHIP_RPO_EXPOSURE_S": status.rpo_exposure_s,
            "LOGSHIP_RPO_TARGET_S": status.rpo_target_s,
            "LOGSHIP_TRANSPORT_LAG_S": status.transport_lag_s,
            "LOGSHIP_APPLY_LAG_S": status.apply_lag_s,
            "LOGSHIP_SITE": status.site,
            "LOGSHIP_EVENT": self.trigger,
            "LOGSHIP_DRILL_STATE": status.drill_state,
            "LOGSHIP_DRILL_ERROR": status.drill_error,
            "LOGSHIP_DRIFT_FILES": status.drift_files,
            "LOGSHIP_SYNC_MODE": status.sync_mode,
            "LOGSHIP_STREAMING": status.streaming,
        }
        # A hook tests "-n $VAR": an unmeasured figure is empty, never a made-up 0.
        return {key: "" if value is None else str(value) for key, value in facts.items()}


@dataclass
class _Tracked:
    state: State
    last_fired: float | None
    #: the finish time of the last failed drill announced
    drill_failed_at: str | None = None
    #: the finish time of the last verify with drift announced
    drift_at: str | None = None
    #: the synchronous mode last seen (announced when it changes)
    sync_mode: str | None = None


def redact_url(url: str) -> str:
    """The URL without userinfo, query or fragment: where tokens usually hide."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, _bare_netloc(parts), parts.path, "", ""))


def _bare_netloc(parts: SplitResult) -> str:
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6 literal
    return host if parts.port is None else f"{host}:{parts.port}"


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """`https://user:pass@host/...` as the URL without them plus a Basic auth header
    (urllib would take the userinfo for part of the host name)."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, {}
    user = unquote(parts.username)
    password = unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return parts._replace(netloc=_bare_netloc(parts)).geturl(), {"Authorization": f"Basic {token}"}


#: what a hook gets of the daemon's environment, besides its LOGSHIP_* facts: enough
#: to find programs and speak the locale, nothing that may hold a secret
HOOK_ENV_KEYS = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR")


def hook_environment(alert_env: dict[str, str]) -> dict[str, str]:
    """The environment of a hook: a few of the daemon's variables and the alert's."""
    inherited = {
        key: value
        for key, value in os.environ.items()
        if key in HOOK_ENV_KEYS or key.startswith("LC_")
    }
    inherited.setdefault("PATH", os.defpath)
    return {**inherited, **alert_env}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuses every redirect: urllib would follow a POST's 302 as a GET to wherever
    it points, Authorization header included, and the alert's body is lost anyway."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


_WEBHOOK_OPENER = urllib.request.build_opener(_NoRedirect)


def _hook_name(argv: Sequence[str]) -> str:
    # Only the program: later arguments may carry a token.
    return os.path.basename(argv[0])


class AlertSink:
    """Fires once per state change per connector, then every `repeat` while not ok."""

    def __init__(self, config: AlertsSection, *, max_pending: int = MAX_PENDING) -> None:
        # The config model has already refused non-http(s) webhooks and empty hooks.
        self._config = config
        self._tracked: dict[str, _Tracked] = {}
        self._pending: queue.Queue[Alert | None] = queue.Queue(maxsize=max_pending)
        self._outstanding = 0  # alerts queued or being delivered
        self._idle = threading.Condition()
        self._closed = False
        # Set when close() stops waiting: what is still queued is dropped, not run.
        self._abandon = threading.Event()
        self._running_lock = threading.Lock()
        self._running: subprocess.Popen[bytes] | None = None
        self._worker = threading.Thread(target=self._deliver_all, name="alerts", daemon=True)
        self._worker.start()

    # -- deciding (monitor thread) ------------------------------------------------

    def observe(self, statuses: Sequence[ConnectorStatus], now: float) -> None:
        if self._closed:
            return
        for status in statuses:
            try:
                self._observe_one(status, now)
            except Exception as exc:  # one connector's alert, never every other's
                event(
                    log,
                    logging.ERROR,
                    "alert decision failed",
                    connector=status.name,
                    error=str(exc),
                )

    def _observe_one(self, status: ConnectorStatus, now: float) -> None:
        alert = self._decide(status, now)
        if alert is not None:
            self._enqueue(alert)
        drill_alert = self._decide_drill(status, now)
        if drill_alert is not None:
            self._enqueue(drill_alert)
        drift_alert = self._decide_drift(status, now)
        if drift_alert is not None:
            self._enqueue(drift_alert)
        sync_alert = self._decide_sync_mode(status, now)
        if sync_alert is not None:
            self._enqueue(sync_alert)

    def _decide_sync_mode(self, status: ConnectorStatus, now: float) -> Alert | None:
        """Each change of the synchronous mode in force is announced, whatever the
        lag says: a primary dropped to async no longer waits for its standby."""
        tracked = self._tracked[status.name]  # _decide has filled it in
        if status.sync_mode is None or status.sync_mode == tracked.sync_mode:
            return None
        previous, tracked.sync_mode = tracked.sync_mode, status.sync_mode
        # The first mode seen after a start is the baseline, as for the state.
        return None if previous is None else Alert(status, status.state, "sync_mode", now)

    def _decide_drift(self, status: ConnectorStatus, now: float) -> Alert | None:
        """A verify that found drift is announced once per run: the site's copy of the
        tree is not what a failover would need, whatever the lag says."""
        tracked = self._tracked[status.name]  # _decide has filled it in
        if not status.drift_files or status.verified_at == tracked.drift_at:
            return None
        tracked.drift_at = status.verified_at
        return Alert(status, status.state, "drift", now)

    def _decide_drill(self, status: ConnectorStatus, now: float) -> Alert | None:
        """A failed restore drill is announced once, whatever the lag state is: the
        standby may be current while its rebuild path is broken."""
        tracked = self._tracked[status.name]  # _decide has filled it in
        if status.drill_state != "failed" or status.drill_at == tracked.drill_failed_at:
            return None
        tracked.drill_failed_at = status.drill_at
        return Alert(status, status.state, "drill_failed", now)

    def _decide(self, status: ConnectorStatus, now: float) -> Alert | None:
        tracked = self._tracked.get(status.name)
        if tracked is None:
            # After a restart nobody knows what was last announced: a bad state is
            # announced again, a good one is the quiet baseline.
            fire = status.state is not State.OK
            self._tracked[status.name] = _Tracked(status.state, now if fire else None)
            return Alert(status, None, "transition", now) if fire else None
        if status.state is not tracked.state:
            previous = tracked.state
            tracked.state = status.state
            tracked.last_fired = now
            return Alert(status, previous, "transition", now)
        if (
            status.state is not State.OK
            and tracked.last_fired is not None
            and now - tracked.last_fired >= self._config.repeat
        ):
            tracked.last_fired = now
            return Alert(status, status.state, "repeat", now)
        return None

    def _enqueue(self, alert: Alert) -> None:
        with self._idle:
            self._outstanding += 1
        try:
            self._pending.put_nowait(alert)
        except queue.Full:
            self._done()
            event(
                log,
                logging.ERROR,
                "alert dropped: hooks are not keeping up",
                connector=alert.connector,
                state=str(alert.status.state),
                previous=_state_or_none(alert.previous),
                trigger=alert.trigger,
            )

    # -- delivering (worker thread) -----------------------------------------------

    def _deliver_all(self) -> None:
        while (alert := self._pending.get()) is not None:
            try:
                if self._abandon.is_set():
                    self._log(alert, logging.WARNING, error="dropped at shutdown")
                else:
                    self._deliver(alert)
            except Exception as exc:  # the worker must outlive any one alert
                event(log, logging.ERROR, "alert delivery failed", error=str(exc))
            finally:
                self._done()

    def _done(self) -> None:
        with self._idle:
            self._outstanding -= 1
            self._idle.notify_all()

    def _deliver(self, alert: Alert) -> None:
        body = jsonout.dumps(alert.payload()).encode()
        # Not the daemon's whole environment: it may hold credentials (PGPASSWORD,
        # a cloud key) that a hook, often a third party's script, has no need of.
        env = hook_environment(alert.environment())
        for argv in self._config.hooks:
            self._run_hook(alert, list(argv), body, env)
        if self._config.webhook is not None:
            self._post(alert, self._config.webhook, body)

    def _log(self, alert: Alert, level: int, **fields: object) -> None:
        event(
            log,
            level,
            "alert",
            connector=alert.connector,
            state=str(alert.status.state),
            previous=_state_or_none(alert.previous),
            trigger=alert.trigger,
            **fields,
        )

    def _run_hook(self, alert: Alert, argv: list[str], body: bytes, env: dict[str, str]) -> None:
        name = _hook_name(argv)
        timeout = self._config.timeout
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                # Its own process group, so a timeout also ends whatever the hook
                # started (a shell's children would otherwise hold the pipes open).
                start_new_session=True,
            )
        except OSError as exc:
            self._log(alert, logging.ERROR, hook=name, error=f"cannot run hook: {exc}")
            return
        with self._running_lock:
            self._running = proc
        try:
            try:
                _, err = proc.communicate(body, timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                self._log(alert, logging.ERROR, hook=name, error=f"timed out after {timeout:g}s")
                return
        finally:
            with self._running_lock:
                self._running = None
        if proc.returncode == 0:
            self._log(alert, logging.INFO, hook=name, exit_code=0)
        else:
            tail = err.decode(errors="replace").strip()[-STDERR_TAIL:]
            self._log(
                alert, logging.WARNING, hook=name, exit_code=proc.returncode, stderr=tail or None
            )

    def _post(self, alert: Alert, url: str, body: bytes) -> None:
        shown = redact_url(url)
        target, headers = _split_credentials(url)
        headers["Content-Type"] = "application/json"
        request = urllib.request.Request(target, data=body, method="POST", headers=headers)
        try:
            with _WEBHOOK_OPENER.open(request, timeout=self._config.timeout) as response:
                code = response.status
        except urllib.error.HTTPError as exc:
            extra = {}
            if 300 <= exc.code < 400:
                extra["error"] = "redirect not followed: point alerts.webhook at the final URL"
            self._log(alert, logging.WARNING, webhook=shown, http_status=exc.code, **extra)
            return
        except (OSError, ValueError) as exc:  # URLError, timeouts, refused, bad URL
            # str(URLError) names the reason, not the URL, so no token leaks here.
            self._log(alert, logging.ERROR, webhook=shown, error=str(exc))
            return
        self._log(alert, logging.INFO, webhook=shown, http_status=code)

    # -- lifecycle ----------------------------------------------------------------

    def wait_idle(self, timeout: float) -> bool:
        """True once every alert decided so far has been delivered (or given up on)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._outstanding == 0, timeout)

    def close(self, grace: float = 5.0) -> None:
        """Let queued alerts go out for up to `grace` seconds, then end a running hook."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + grace
        told_to_stop = self._tell_worker_to_stop(grace)
        self._worker.join(max(0.0, deadline - time.monotonic()))
        if self._worker.is_alive():
            self._abandon.set()
            with self._running_lock:
                # Only signal here: reaping (communicate) belongs to the worker thread.
                if self._running is not None and self._running.returncode is None:
                    _signal_group(self._running)
            if not told_to_stop:
                # Abandoned alerts drain fast, which makes room for the stop marker.
                self._tell_worker_to_stop(_REAP_TIMEOUT)
            self._worker.join(_REAP_TIMEOUT)
        if self._worker.is_alive():
            event(log, logging.WARNING, "alert worker still busy at shutdown")

    def _tell_worker_to_stop(self, timeout: float) -> bool:
        try:
            self._pending.put(None, timeout=timeout)
        except queue.Full:
            return False
        return True


def _state_or_none(state: State | None) -> str | None:
    return None if state is None else str(state)


def _signal_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the hook's process group: the group we created for it, led by it."""
    # The group id outlives the leader while any member lives, so it cannot have
    # been reused for someone else's processes.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """End a timed-out hook and everything it started, and reap it."""
    _signal_group(proc)
    with contextlib.suppress(subprocess.TimeoutExpired, ValueError, OSError):
        proc.communicate(timeout=_REAP_TIMEOUT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_REAP_TIMEOUT)
