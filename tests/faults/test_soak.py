"""Soak: pgbench for a long while (30 minutes by default) with a fault injected
every half minute, in turn from every kind the fault suite knows. Not in the default
run: `pytest -m soak -s` (LOGSHIP_SOAK_MINUTES to change the length).

At the end it reports faults injected per kind, segments shipped, segments lost
and corrupt (both must be 0), and the maximum RPO exposure seen, as one JSON line
and a table; LOGSHIP_SOAK_REPORT names a file to write the JSON to as well.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from link_site import behind_relay
from site_checks import all_shipped, audit_site, site_layout

from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.faults import ENV
from logship.manifest import ManifestRecord
from testkit.netns import SiteLink, why_unavailable
from testkit.relay import DelayRelay

FAULT_EVERY_S = 30.0
CRASH_POINTS = [
    "ship-mid-upload",
    "ship-before-record",
    "ship-mid-record",
    "ship-before-catalog",
    "ship-before-retire",
]

pytestmark = [
    pytest.mark.soak,
    pytest.mark.e2e,
    pytest.mark.skipif(why_unavailable() is not None, reason=str(why_unavailable())),
]


class Soak:
    def __init__(self, dep: Deployment, link: SiteLink, relay: DelayRelay) -> None:
        self.dep, self.link, self.relay = dep, link, relay
        self.injected: Counter[str] = Counter()
        self.max_exposure = 0.0
        self.states: Counter[str] = Counter()
        self.stop = threading.Event()
        self.rng = random.Random(20261126)

    # -- faults ---------------------------------------------------------------

    def kill_9(self) -> None:
        self.dep.stop_daemon(signal.SIGKILL)
        self.dep.start_daemon()

    def crash_point(self) -> None:
        point = CRASH_POINTS[self.injected["crash-point"] % len(CRASH_POINTS)]
        flag = self.dep.state_dir / f"crash-{time.monotonic_ns()}"
        self.dep.stop_daemon()
        daemon = self.dep.start_daemon(env={ENV: f"{point}:{flag}"})
        try:
            wait_for(lambda: daemon.poll() is not None, 120, f"the crash at {point}")
        finally:
            self.dep.stop_daemon()
            self.dep.start_daemon()

    def sshd_restart(self) -> None:
        self.dep.sshd.cut()
        self.stop.wait(3)
        self.dep.sshd.start()

    def link_reset(self) -> None:
        self.relay.cut()

    def link_stall(self) -> None:
        self.relay.stall()
        self.stop.wait(10)  # twice io_timeout
        self.relay.stall(False)

    def slow_link(self) -> None:
        self.link.shape(mbit=20)
        self.relay.delay_s = 0.05
        self.stop.wait(20)
        self.relay.delay_s = 0.0
        self.link.unshape()

    def corrupt(self) -> None:
        """A byte flipped in a segment the (stopped) standby has not read yet."""
        dep = self.dep
        layout = site_layout(dep)
        manifest = Path(layout.manifest_dir)
        before = {p.name for p in manifest.iterdir()}
        dep.standby.stop()
        try:
            fresh = wait_for(
                lambda: sorted({p.name for p in manifest.iterdir()} - before),
                120,
                "a segment shipped while the standby is down",
            )
            record = ManifestRecord.from_json((manifest / fresh[-1]).read_bytes())
            stored = Path(layout.wal_dir) / record.stored_name
            data = bytearray(stored.read_bytes())
            data[len(data) // 2] ^= 0xFF
            stored.write_bytes(bytes(data))
        finally:
            dep.standby.start()

    def faults(self) -> list[tuple[str, Callable[[], None]]]:
        return [
            ("kill-9", self.kill_9),
            ("crash-point", self.crash_point),
            ("sshd-restart", self.sshd_restart),
            ("link-reset", self.link_reset),
            ("link-stall", self.link_stall),
            ("slow-link", self.slow_link),
            ("corrupt", self.corrupt),
        ]

    # -- watching -------------------------------------------------------------

    def watch(self) -> None:
        while not self.stop.is_set():
            out = self.dep.logship("status", self.dep.connector, "--json", check=False)
            if out.returncode == 0:
                (entry,) = json.loads(out.stdout)["connectors"]
                self.states[entry["state"]] += 1
                exposure = entry.get("rpo_exposure_s")
                if exposure is not None:
                    self.max_exposure = max(self.max_exposure, float(exposure))
            self.stop.wait(2)

    def inject(self, until: float) -> None:
        kinds = self.faults()
        index = 0
        while not self.stop.wait(FAULT_EVERY_S * self.rng.uniform(0.8, 1.2)):
            if time.monotonic() >= until:
                return
            kind, fault = kinds[index % len(kinds)]
            fault()
            self.injected[kind] += 1
            index += 1


@pytest.fixture
def soak_site(deployment: Deployment) -> Iterator[tuple[Deployment, SiteLink, DelayRelay]]:
    dep = deployment
    dep.io_timeout = "5s"
    dep.rpo = "30s"
    with behind_relay(dep) as (link, relay):
        yield dep, link, relay


def test_soak(soak_site: tuple[Deployment, SiteLink, DelayRelay]) -> None:
    dep, link, relay = soak_site
    minutes = float(os.environ.get("LOGSHIP_SOAK_MINUTES", "30"))
    soak = Soak(dep, link, relay)
    dep.start_daemon()
    dep.standby_up()
    dep.primary.pgbench("-i", "-s", "10", "-q")
    started = time.monotonic()
    until = started + minutes * 60
    # A steady write load: -R caps it so a long run fits on a test disk.
    load = threading.Thread(
        target=dep.primary.pgbench,
        args=("-c", "4", "-R", "400", "-T", str(int(minutes * 60)), "-n"),
        kwargs={"timeout": minutes * 60 + 300},
    )
    watcher = threading.Thread(target=soak.watch, daemon=True)
    load.start()
    watcher.start()
    try:
        soak.inject(until)
        load.join()
    finally:
        relay.stall(False)
        link.unshape()
        dep.sshd.start()
        if dep.daemon is None or dep.daemon.poll() is not None:
            dep.stop_daemon()
            dep.start_daemon()
    lsn = dep.switch_wal()
    wait_for(lambda: all_shipped(dep), 600, "the backlog shipped")
    dep.wait_replayed(lsn, timeout=600)
    soak.stop.set()
    watcher.join(30)
    audit = audit_site(dep)
    report: dict[str, Any] = {
        "minutes": round((time.monotonic() - started) / 60, 1),
        "faults_injected": dict(soak.injected),
        "faults_total": sum(soak.injected.values()),
        "segments_shipped": audit.segments,
        "segments_lost": len(audit.missing),
        "segments_corrupt": len(audit.corrupt),
        "strays": len(audit.strays),
        "max_exposure_s": round(soak.max_exposure, 1),
        "states_sampled": dict(soak.states),
        "standby_replayed_to": lsn,
    }
    line = json.dumps({"soak": report})
    print(line)
    for key, value in report.items():
        print(f"{key:>20}  {value}")
    if path := os.environ.get("LOGSHIP_SOAK_REPORT"):
        Path(path).write_text(line + "\n")
    assert not audit.missing, audit.missing
    assert not audit.corrupt, audit.corrupt
    assert not audit.strays, audit.strays
