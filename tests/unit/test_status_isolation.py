"""One connector's bad rows never take another connector's status with them, and
`status --json` stays strict JSON whatever figure is stored."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from offline_config import write_offline_config

from logship.catalog.store import Catalog
from logship.config.load import load_config


def _stored(tmp_path: Path) -> Path:
    config_path = write_offline_config(tmp_path, {"orders": "60s", "billing": "5m", "audit": "5m"})
    catalog = Catalog(load_config(config_path).catalog_url)
    now = time.time()
    try:
        for name in ("orders", "billing", "audit"):
            catalog.record_primary_facts(name, {"measured_at": now, "current_lsn": "0/5000000"})
        # As an older logship stored them, straight from the site's answer.
        catalog.record_restored("orders", None, None, now, replay_lsn="zz", reachable=True)
        catalog.record_restored("billing", None, None, now, replay_lsn="0/4000000")
        catalog.record_restored("audit", None, None, now, heartbeat_at=float("-inf"))
    finally:
        catalog.close()
    return config_path


def test_status_lists_every_connector_when_one_cannot_be_computed(tmp_path: Path) -> None:
    config_path = _stored(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "logship", "--config", str(config_path), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr

    def refuse(constant: str) -> None:
        raise AssertionError(f"status --json printed {constant}")

    entries = {e["name"]: e for e in json.loads(done.stdout, parse_constant=refuse)["connectors"]}
    assert set(entries) == {"orders", "billing", "audit"}
    assert entries["orders"]["state"] == "down"
    assert "status could not be computed" in entries["orders"]["site_error"]
    assert entries["billing"]["replay_backlog_bytes"] == 0x1000000
    assert entries["audit"]["apply_lag_s"] is None  # infinite: unknown, never Infinity

    table = subprocess.run(
        [sys.executable, "-m", "logship", "--config", str(config_path), "status"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert table.returncode == 0, table.stderr
    assert "billing" in table.stdout and "status could not be computed" in table.stdout


def test_the_monitor_feeds_every_sink_when_one_connector_fails(tmp_path: Path) -> None:
    from logship.status.monitor import Monitor

    config_path = _stored(tmp_path)
    config = load_config(config_path)
    seen: list[list[str]] = []

    class Sink:
        def observe(self, statuses, now):  # type: ignore[no-untyped-def]
            seen.append([s.name for s in statuses])

        def close(self) -> None:
            pass

    catalog = Catalog(config.catalog_url)
    try:
        Monitor(config, catalog, [Sink()], time.time).sample()
    finally:
        catalog.close()
    assert seen == [["audit", "billing", "orders"]]
