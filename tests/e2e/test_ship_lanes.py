"""A backlog ships across several SSH connections to the site, and each file still
lands once, whole, under its final name."""

from __future__ import annotations

from site_checks import all_shipped, check_site, log_events

from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.engines.postgresql import walnames


def test_a_backlog_ships_over_every_connection(deployment: Deployment) -> None:
    dep = deployment
    dep.connections = 3
    dep.compression = "none"
    dep.write_config()
    # The daemon is down while PostgreSQL archives: a backlog waits in the spool.
    dep.primary.pgbench("-i", "-s", "5", "-q")
    dep.switch_wal()

    def backlog() -> int:
        return sum(1 for p in dep.spool_dir.iterdir() if walnames.is_archivable(p.name))

    wait_for(lambda: backlog() >= 6, 120, "a backlog of segments in the spool")
    dep.start_daemon()
    wait_for(lambda: all_shipped(dep), 120, "the backlog shipped")
    assert check_site(dep) >= 6
    shipped = [event for event in log_events(dep) if event.get("event") == "shipped"]
    assert {event["connection"] for event in shipped} == {0, 1, 2}
