"""A site that answers `standby status` with lies or garbage, on the real path: a
real sshd whose `command` runs a script printing the hostile answer.

The answer is dropped whole and named in `status`; the link stays up; shipping
goes on; nothing of it prunes or re-ships the spool's kept copies at will."""

from __future__ import annotations

import json
import os
import shlex
import time
from typing import Any

import pytest
from site_checks import all_shipped, log_events, status_entry

from logship.demo_sandbox.deployment import Deployment, logship_command, wait_for
from logship.engines.postgresql import facts_check
from logship.spool import kept_path


class HostileSite:
    """The site's `command`: `standby status` prints `answer` when it exists (and
    counts each ask); everything else is the real logship."""

    def __init__(self, dep: Deployment) -> None:
        site_dir = dep.root / "standby-site"  # the site user writes here
        self.answer = dep.root / "hostile-answer"
        self.asked = site_dir / "standby-status-asked"
        wrapper = dep.root / "hostile-site"
        wrapper.write_text(
            "#!/bin/sh\n"
            f'case " $* " in *" standby status "*) echo >>{shlex.quote(str(self.asked))}; '
            f"if [ -f {shlex.quote(str(self.answer))} ]; then "
            f"cat {shlex.quote(str(self.answer))}; exit 0; fi;; esac\n"
            f'exec {shlex.join(logship_command())} "$@"\n'
        )
        wrapper.chmod(0o755)
        dep.site_command = [str(wrapper), "--config", str(dep.config_path)]
        dep.write_config()

    def say(self, text: str) -> None:
        tmp = self.answer.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, self.answer)

    def asks(self) -> int:
        try:
            return len(self.asked.read_text().splitlines())
        except FileNotFoundError:
            return 0

    def wait_asks(self, more: int) -> None:
        target = self.asks() + more
        wait_for(lambda: self.asks() >= target, 60, f"{more} more `standby status` asks")


def strict_status(dep: Deployment) -> dict[str, Any]:
    """`status --json`, parsed as strict JSON (no NaN, no Infinity)."""
    out = dep.logship("status", dep.connector, "--json")

    def refuse(constant: str) -> None:
        raise AssertionError(f"status --json printed {constant}, which is not JSON")

    (entry,) = json.loads(out.stdout, parse_constant=refuse)["connectors"]
    return entry  # type: ignore[no-any-return]


def answer(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "connector": "main",
        "measured_at": time.time(),
        "reachable": True,
        "in_recovery": True,
        "replay_lsn": "0/3000000",
        "heartbeat_at": time.time(),
        "refused": [],
    }
    base.update(changes)
    return base


def _no_link_flap(dep: Deployment) -> None:
    events = log_events(dep)
    assert not [e for e in events if e.get("event") == "link lost"], "the link flapped"
    assert "Traceback" not in dep.daemon_log.read_text()


@pytest.mark.e2e
def test_malformed_answers_are_dropped_named_and_never_flap_the_link(
    deployment: Deployment,
) -> None:
    dep = deployment
    site = HostileSite(dep)
    dep.start_daemon()
    site.wait_asks(1)
    # A real figure first, so a bad one would meet a stored one (the rate).
    site.say(json.dumps(answer()))
    site.wait_asks(2)
    escape = "\x1b]0;pwned\x07\x1b[2J"
    hostile = [
        # (the answer, what site_error must name)
        (json.dumps(answer(replay_lsn="zz" + escape)), "replay_lsn"),
        (json.dumps(answer(measured_at="soon")), "measured_at"),
        (json.dumps(answer(reachable="yes")), "reachable"),
        (json.dumps(answer(heartbeat_at=float("-inf"))), "-Infinity"),
        ("[" * 20_000 + "]" * 20_000, "nested too deeply"),
        ("x" * (facts_check.MAX_ANSWER_BYTES + 1), "larger than"),
    ]
    for text, named in hostile:
        site.say(text)

        def reported(named: str = named) -> bool:
            error = strict_status(dep)["site_error"] or ""
            return named in error and "malformed `standby status` answer" in error

        wait_for(reported, 60, f"site_error naming {named}")
        entry = strict_status(dep)
        assert entry["state"] != "down"
        assert entry["replay_backlog_bytes"] is None or entry["replay_backlog_bytes"] >= 0
        # Shown, never obeyed: the terminal escape arrives escaped, in text and JSON.
        table = dep.logship("status", dep.connector).stdout
        assert "\x1b" not in table and "\x07" not in table
        assert "\x1b" not in (entry["site_error"] or "")

    # Shipping went on all along, and a good answer clears the error.
    dep.primary.query("create table after_lies as select generate_series(1, 1000) as n")
    dep.switch_wal()
    wait_for(lambda: all_shipped(dep), 60, "the next segment shipped")
    site.say(json.dumps(answer()))
    wait_for(lambda: strict_status(dep)["site_error"] is None, 60, "the error cleared")
    _no_link_flap(dep)
    assert any(e.get("event") == "standby status unavailable" for e in log_events(dep))


def _kept_segments(dep: Deployment, site: HostileSite) -> list[str]:
    """Six segments shipped and kept in the spool (the standby restores none)."""
    site.say(json.dumps(answer(reachable=False, error="stopped", replay_lsn=None)))
    dep.start_daemon()
    names = []
    for n in range(6):
        dep.primary.query(f"create table t{n} as select generate_series(1, 100) as n")
        ((name,),) = dep.primary.query("select pg_walfile_name(pg_current_wal_lsn())")
        dep.switch_wal()
        names.append(str(name))
    for name in names:
        wait_for(kept_path(dep.spool_dir, name).exists, 60, f"{name} shipped and kept")
    return names


def _kept(dep: Deployment) -> list[str]:
    return sorted(p.name for p in (dep.spool_dir / ".kept").iterdir())


@pytest.mark.e2e
def test_a_refused_list_naming_every_kept_copy_does_not_flood_the_shipping_thread(
    deployment: Deployment,
) -> None:
    dep = deployment
    site = HostileSite(dep)
    names = _kept_segments(dep, site)
    site.say(json.dumps(answer(reachable=False, replay_lsn=None, refused=names)))
    site.wait_asks(6)
    reshipped = [e for e in log_events(dep) if e.get("event") == "re-shipped"]
    # At most the per-answer cap, each file once however often the site says so.
    assert 0 < len(reshipped) <= facts_check.MAX_REFUSED_PER_ANSWER
    assert len({e["file"] for e in reshipped}) == len(reshipped)
    assert any(e.get("event") == "refused names beyond the cap ignored" for e in log_events(dep))
    _no_link_flap(dep)
    assert status_entry(dep)["state"] != "down"


@pytest.mark.e2e
def test_a_lying_last_restored_prunes_no_kept_copy(deployment: Deployment) -> None:
    dep = deployment
    site = HostileSite(dep)
    _kept_segments(dep, site)
    kept_before = _kept(dep)
    # A restored name past anything ever shipped: it proves nothing restored.
    lie = answer(reachable=False, replay_lsn=None, last_restored="FFFFFFFFFFFFFFFFFFFFFFFF")
    site.say(json.dumps({**lie, "restored_at": time.time()}))
    site.wait_asks(3)
    assert _kept(dep) == kept_before
    assert any("never shipped" in str(e.get("event")) for e in log_events(dep))
    _no_link_flap(dep)
