"""A planned switchover and back, with pgbench and a ticker writing across it:
zero committed rows lost, shipping turned around, a base backup and a restore
drill in the new direction. Real PostgreSQL, a real sshd at each site."""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading

from ticker import Ticker

from logship.demo_sandbox.deployment import wait_for
from logship.demo_sandbox.postgres import PgCluster
from logship.demo_sandbox.two_sites import TwoSiteDeployment

CONNECTOR = "main"


def _status(dep: TwoSiteDeployment, site: str) -> dict:
    out = dep.at(site, "status", "--json", CONNECTOR).stdout
    (entry,) = json.loads(out)["connectors"]
    return entry


def _rows(cluster: PgCluster) -> tuple[list[tuple], int]:
    ticks = cluster.query("select id, at from ticks order by id")
    ((balance,),) = cluster.query("select coalesce(sum(abalance), 0) from pgbench_accounts")
    return ticks, int(balance)


def _in_step(new_primary: PgCluster, standby: PgCluster) -> None:
    """The standby replays everything the new primary has (shipped the new way)."""
    ((lsn,),) = new_primary.query("select pg_switch_wal()::text")
    standby.wait_until(f"select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn", timeout=120)


def _pgbench_while(cluster: PgCluster) -> threading.Thread:
    """pgbench against `cluster` until it stops taking writes (it errors out then)."""

    def bench() -> None:
        # Cut off by the switchover, as expected.
        with contextlib.suppress(RuntimeError, subprocess.SubprocessError):
            cluster.pgbench("-T", "30", "-c", "2", "-n", timeout=120)

    thread = threading.Thread(target=bench, daemon=True)
    thread.start()
    return thread


def _switch(dep: TwoSiteDeployment, at: str) -> float:
    done = dep.at(at, "switchover", CONNECTOR, timeout=400)
    print(done.stdout)
    match = re.search(r"write outage ([0-9.]+) s", done.stdout)
    assert match, done.stdout
    return float(match.group(1))


def _no_tick_lost(ticker: Ticker, new_primary: PgCluster) -> None:
    ticker.wait_for_ticks(20)
    ticker.stop()
    present = {row[0] for row in new_primary.query("select id from ticks")}
    lost = [tick for tick in ticker.committed if tick not in present]
    assert lost == [], f"committed ticks lost: {lost[:10]}"


def test_switchover_and_back_lose_nothing_and_turn_shipping_around(
    two_sites: TwoSiteDeployment,
) -> None:
    dep = two_sites
    main, dr = dep.primary, dep.standby
    _in_step(main, dr)
    assert _status(dep, "main")["role"] == "primary"
    assert _status(dep, "dr")["direction"] == "main -> dr"
    # The daemon at the standby's site runs, and writes nothing anywhere.
    assert [p for p in dep.site_incoming("main").rglob("*") if p.is_file()] == []

    # A dry run changes nothing and exits as the real run would.
    dry = dep.at("main", "switchover", CONNECTOR, "--dry-run")
    assert "every gate passed" in dry.stdout, dry.stdout
    assert not (main.data_dir / "standby.signal").exists()
    assert not (dep.site_incoming("dr") / CONNECTOR / "PROMOTED").exists()
    ((in_recovery,),) = main.query("select pg_is_in_recovery()")
    assert in_recovery is False

    ticker = Ticker([main.dsn(), dr.dsn()])
    ticker.start()
    ticker.wait_for_ticks(10)
    bench = _pgbench_while(main)
    outage = _switch(dep, "main")
    assert outage <= 30
    _no_tick_lost(ticker, dr)
    bench.join(timeout=120)

    # dr is the primary and ships to main, which follows it.
    ((in_recovery,),) = main.query("select pg_is_in_recovery()")
    assert in_recovery is True
    _in_step(dr, main)
    assert _rows(main) == _rows(dr)
    wait_for(lambda: _status(dep, "dr")["role"] == "primary", 30, "dr's status says primary")
    assert _status(dep, "dr")["direction"] == "dr -> main"
    assert _status(dep, "main")["role"] == "standby"
    checked = dep.at("main", "check", CONNECTOR, check=False)
    assert "standby here (main); shipping dr -> main" in checked.stdout, checked.stdout

    # A base backup and a restore drill work in the new direction.
    dep.at("dr", "base-backup", CONNECTOR)
    drill = dep.at("main", "drill", CONNECTOR, "--json", timeout=600)
    assert json.loads(drill.stdout)["passed"] is True, drill.stdout

    # And back, this time run at the standby's site: again nothing lost.
    ticker = Ticker([dr.dsn(), main.dsn()])
    ticker.start()
    ticker.wait_for_ticks(10)
    bench = _pgbench_while(dr)
    outage = _switch(dep, "main")
    assert outage <= 30
    _no_tick_lost(ticker, main)
    bench.join(timeout=120)
    _in_step(main, dr)
    assert _rows(main) == _rows(dr)
    wait_for(lambda: _status(dep, "main")["direction"] == "main -> dr", 30, "main ships again")


def test_a_failed_step_rolls_back_to_one_primary_and_says_so(
    two_sites: TwoSiteDeployment,
) -> None:
    dep = two_sites
    main, dr = dep.primary, dep.standby
    _in_step(main, dr)
    # A gate that fails refuses (exit 3) and changes nothing.
    main.execute("insert into ticks values (-1, now())")
    refused = dep.at("main", "switchover", CONNECTOR, "--max-behind", "1B", check=False)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "REFUSED" in refused.stdout and "nothing changed" in refused.stderr

    # The standby cannot replay past the final checkpoint: the switchover stops,
    # rolls back, and names the state.
    dr.execute("select pg_wal_replay_pause()")
    failed = dep.at("main", "switchover", CONNECTOR, "--timeout", "5", check=False)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "main is the primary again" in failed.stderr, failed.stderr
    ((in_recovery,),) = main.query("select pg_is_in_recovery()")
    assert in_recovery is False
    main.execute("insert into ticks values (-2, now())")
    ((in_recovery,),) = dr.query("select pg_is_in_recovery()")
    assert in_recovery is True
    assert not (dep.site_incoming("dr") / CONNECTOR / "PROMOTED").exists()

    # Replay resumed, it catches up on what the primary wrote since, and the
    # switchover then goes through.
    dr.execute("select pg_wal_replay_resume()")
    _in_step(main, dr)
    assert dr.query("select id from ticks where id < 0 order by id") == [(-2,), (-1,)]
    _switch(dep, "dr")
    ((in_recovery,),) = main.query("select pg_is_in_recovery()")
    assert in_recovery is True
