"""An idle primary never shows false apply lag (the heartbeat)."""

from __future__ import annotations

import json
import time

from logship.demo_sandbox.deployment import Deployment, wait_for

IDLE_SECONDS = 60


def _apply_lag(dep: Deployment) -> float | None:
    (entry,) = json.loads(dep.logship("status", "--json").stdout)["connectors"]
    return entry["apply_lag_s"]


def test_idle_primary_keeps_apply_lag_near_zero(deployment: Deployment) -> None:
    dep = deployment
    dep.start_daemon()
    dep.standby_up()
    dep.primary.execute("create table t as select 1 as n")
    dep.wait_replayed(dep.switch_wal())
    wait_for(lambda: _apply_lag(dep) is not None, 60, "apply lag measured")

    # No writes now but the heartbeat's. The standby's data is as fresh as the
    # last closed segment: apply lag stays bounded by archive_timeout (10 s here)
    # plus shipping and sampling, instead of growing with the idle time.
    worst = 0.0
    deadline = time.monotonic() + IDLE_SECONDS
    while time.monotonic() < deadline:
        lag = _apply_lag(dep)
        assert lag is not None
        worst = max(worst, lag)
        time.sleep(1.0)  # sampling cadence of the observation, not a wait for a condition
    assert worst < 25.0, f"apply lag reached {worst:.1f}s on an idle primary"
