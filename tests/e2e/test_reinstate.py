"""Failover, then reinstate: the old primary, diverged, is reported, rewound (or
rebuilt from a base backup when a rewind is not safe) and follows the new one;
fenced, it never takes writes started by hand. Real PostgreSQL, an sshd per site."""

from __future__ import annotations

import json

import psycopg
import pytest
from ticker import Ticker

from logship.demo_sandbox.deployment import wait_for
from logship.demo_sandbox.two_sites import TwoSiteDeployment

CONNECTOR = "main"
LOST = 5


def _caught_up(dep: TwoSiteDeployment) -> None:
    ((lsn,),) = dep.primary.query("select pg_switch_wal()::text")
    dep.standby.wait_until(f"select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn", timeout=120)


def _disaster(dep: TwoSiteDeployment, *, site_reachable: bool) -> None:
    """The primary's site goes while it writes and ships: its database, its daemon,
    and maybe its sshd."""
    dep.primary.pgbench("-T", "3", "-c", "2", "-n", "-R", "50")
    dep.primary.stop(mode="immediate")
    dep.stop_site_daemon("main")
    if not site_reachable:
        dep.sshd_main.stop()


def _promote(dep: TwoSiteDeployment) -> str:
    done = dep.at("dr", "promote", CONNECTOR, "--accept-data-loss")
    print(done.stdout)
    return done.stdout


def _standby_status(dep: TwoSiteDeployment, site: str) -> dict:
    (entry,) = json.loads(dep.at(site, "status", "--json", CONNECTOR).stdout)["connectors"]
    return entry


def _follows(dep: TwoSiteDeployment) -> None:
    """main replays what dr writes now, shipped dr -> main."""
    main, dr = dep.primary, dep.standby
    main.wait_until("select pg_is_in_recovery()", timeout=60)
    dr.execute("insert into ticks values (-100, now())")
    ((lsn,),) = dr.query("select pg_switch_wal()::text")
    main.wait_until(f"select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn", timeout=180)
    assert main.query("select count(*) from ticks where id = -100") == [(1,)]
    wait_for(lambda: _standby_status(dep, "dr")["direction"] == "dr -> main", 30, "direction")


def test_failover_then_reinstate_by_rewind_then_switchover_back(
    two_sites: TwoSiteDeployment,
) -> None:
    dep = two_sites
    main, dr = dep.primary, dep.standby
    _caught_up(dep)
    _disaster(dep, site_reachable=False)
    assert "not fenced: not reached" in _promote(dep)

    # The old primary, started by hand while its site was cut off, takes writes
    # the new primary never gets: a real divergence.
    main.start()
    lost_xids = []
    for n in range(LOST):
        with main.connect() as conn, conn.transaction():
            conn.execute("insert into ticks values (%s, now())", (-(n + 1),))
            ((xid,),) = conn.execute("select txid_current()").fetchall()
            lost_xids.append(int(xid))
    main.stop(mode="immediate")
    dep.sshd_main.start()
    dep.start_site_daemon("main")  # it fences the old primary at once
    wait_for(lambda: (main.data_dir / "logship.fence.json").exists(), 60, "the daemon's fence")

    # A dry run reports and changes nothing.
    control = (main.data_dir / "global" / "pg_control").read_bytes()
    dry = dep.at("main", "reinstate", CONNECTOR, "--dry-run")
    print(dry.stdout)
    assert "would" in dry.stdout and "pg_rewind is safe" in dry.stdout
    assert (main.data_dir / "global" / "pg_control").read_bytes() == control
    assert not (dep.site_state_dir("main") / "reinstate" / CONNECTOR).exists()

    done = dep.at("main", "reinstate", CONNECTOR, timeout=600)
    print(done.stdout)
    assert "pg_rewind copied" in done.stdout
    (aside,) = (dep.site_state_dir("main") / "reinstate" / CONNECTOR).iterdir()
    report = json.loads((aside / "report.json").read_text())
    listed = {int(t["xid"]) for t in report["transactions"]}
    assert set(lost_xids) <= listed, (lost_xids, listed)
    _follows(dep)
    assert main.query("select count(*) from ticks where id between -5 and -1") == [(0,)]

    # Back to the original site, with zero loss.
    ticker = Ticker([dr.dsn(), main.dsn()])
    ticker.start()
    ticker.wait_for_ticks(10)
    dep.at("main", "switchover", CONNECTOR, timeout=400)
    ticker.wait_for_ticks(20)
    ticker.stop()
    present = {row[0] for row in main.query("select id from ticks")}
    assert [t for t in ticker.committed if t not in present] == []


def test_without_checksums_or_hints_reinstate_rebuilds_from_a_base_backup(
    two_sites_without_hints: TwoSiteDeployment,
) -> None:
    dep = two_sites_without_hints
    main = dep.primary
    _caught_up(dep)
    # There and back first: main's own PROMOTED marker from its promotion must
    # not keep the new primary's base backup out later.
    dep.at("main", "switchover", CONNECTOR, timeout=400)
    dep.at("main", "switchover", CONNECTOR, timeout=400)
    assert (dep.site_incoming("main") / CONNECTOR / "PROMOTED").exists()
    _caught_up(dep)
    _disaster(dep, site_reachable=True)
    promoted = _promote(dep)
    assert "fence old primary: main: fenced" in promoted

    # Started by hand, the fenced old primary refuses writes and says why.
    main.start()
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        main.execute("insert into ticks values (-1, now())")
    assert "logship reinstate" in main.log_text()
    main.stop()

    done = dep.at("main", "reinstate", CONNECTOR, timeout=900)
    print(done.stdout)
    assert "not safe" in done.stdout and "wal_log_hints" in done.stdout
    assert "reinstated main by base backup" in done.stdout
    kept = list(main.data_dir.parent.glob(f"{main.data_dir.name}.before-reinstate-*"))
    assert len(kept) == 1
    _follows(dep)


def test_a_rewind_puts_back_every_segment_checkpoints_after_the_fork_recycled(
    two_sites: TwoSiteDeployment,
) -> None:
    dep = two_sites
    main = dep.primary
    _caught_up(dep)
    _disaster(dep, site_reachable=False)
    _promote(dep)

    # Started by hand, the old primary writes over several segments, archives
    # them (into its own spool: its daemon is gone) and checkpoints: every
    # segment back to the last checkpoint before the fork leaves its pg_wal.
    main.start()
    for n in range(4):
        main.execute(f"insert into ticks values ({-(n + 1)}, now())")
        ((last,),) = main.query("select pg_walfile_name(pg_switch_wal())")
    main.wait_until(f"select last_archived_wal >= '{last}' from pg_stat_archiver", timeout=180)
    main.execute("checkpoint")
    main.stop()
    dep.sshd_main.start()
    dep.start_site_daemon("main")
    wait_for(lambda: (main.data_dir / "logship.fence.json").exists(), 60, "the daemon's fence")

    done = dep.at("main", "reinstate", CONNECTOR, timeout=600)
    print(done.stdout)
    assert "put back into pg_wal" in done.stdout
    assert "pg_rewind copied" in done.stdout, done.stdout
    _follows(dep)
