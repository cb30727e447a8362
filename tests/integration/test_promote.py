"""`promote`: the checked failover, on real clusters and a real sshd.

Unit tests at the top cover the pure rules (which DSN may prove the primary is
down, gaps, the loss window); the rest runs the real path.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import psycopg
import pytest
from site_probes import shipped, site_dir

from logship.catalog.store import Catalog
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.engines.postgresql.engine import PrimarySection
from logship.engines.postgresql.primary_check import primary_check_dsn
from logship.engines.postgresql.promote import LossReport
from logship.engines.postgresql.shipped_wal import ShippedWal
from logship.manifest import ManifestRecord

SEG = 16 * 1024 * 1024


# -- pure rules ---------------------------------------------------------------------------


def _record(name: str, closed_at: float = 100.0) -> ManifestRecord:
    return ManifestRecord(
        name=name,
        size=SEG if len(name) == 24 else 42,
        sha256="0" * 64,
        stored_name=name + ".zst",
        stored_size=1,
        stored_sha256="0" * 64,
        compression="zstd",
        closed_at=closed_at,
        arrived_at=closed_at + 1,
    )


def test_a_socket_or_loopback_primary_dsn_proves_nothing_at_the_standby_site() -> None:
    socket_only = PrimarySection(dsn="host=/var/run/postgresql port=5432")
    dsn, why = primary_check_dsn(socket_only, "[primary]")
    assert dsn is None and "Unix socket" in why and "check_dsn" in why
    loopback = PrimarySection(dsn="host=127.0.0.1 port=5432")
    assert primary_check_dsn(loopback, "[primary]")[0] is None
    remote = PrimarySection(dsn="host=db1.example.net port=5432")
    assert primary_check_dsn(remote, "[primary]")[0] == remote.dsn
    configured = PrimarySection(dsn="host=/run/pg", check_dsn="host=10.0.0.5 port=5432")
    assert primary_check_dsn(configured, "[primary]")[0] == "host=10.0.0.5 port=5432"


def test_gap_is_named_and_gaps_behind_replay_do_not_count() -> None:
    names = ["000000010000000000000003", "000000010000000000000004", "000000010000000000000006"]
    wal = ShippedWal.from_records([_record(n) for n in names])
    gap = wal.gap(replay_lsn=3 * SEG + 10, standby_timeline=1)
    assert gap is not None and gap.missing == "000000010000000000000005"
    # Replay already passed segment 5: nothing left to miss.
    assert wal.gap(replay_lsn=6 * SEG + 10, standby_timeline=1) is None
    # A hole between the replay position and the first shipped segment.
    later = ShippedWal.from_records([_record("000000010000000000000009")])
    gap = later.gap(replay_lsn=6 * SEG + 10, standby_timeline=1)
    assert gap is not None and gap.missing == "000000010000000000000007"
    # Exactly at a boundary (after a WAL switch) the segment starting there is next.
    gap = wal.gap(replay_lsn=0, standby_timeline=1)
    assert gap is not None and gap.missing == "000000010000000000000000"
    gap = later.gap(replay_lsn=8 * SEG, standby_timeline=1)
    assert gap is not None and gap.missing == "000000010000000000000008"
    assert later.gap(replay_lsn=9 * SEG, standby_timeline=1) is None
    assert wal.last_segment() is not None and wal.last_segment().name == names[-1]  # type: ignore[union-attr]
    assert wal.end_lsn(wal.last_segment()) == 7 * SEG  # type: ignore[arg-type]


def test_timeline_is_the_highest_shipped() -> None:
    wal = ShippedWal.from_records(
        [_record("000000010000000000000003"), _record("00000002.history")]
    )
    assert wal.timeline == 2 and wal.has_history(2)


def test_loss_window_starts_at_the_newest_replayed_fact() -> None:
    loss = LossReport(last_commit_at=90.0, heartbeat_at=95.0, last_close_at=99.0, window_end=110)
    assert loss.window_start == 95.0 and loss.bound_s == 15.0
    # The close time is a fallback only: a late archiver would overstate what is safe.
    assert LossReport(None, None, 99.0, 110.0).bound_s == 11.0
    assert LossReport(None, None, None, 110.0).bound_s is None


# -- real clusters ------------------------------------------------------------------------

e2e = pytest.mark.e2e


def _configure(dep: Deployment, *, rpo: str = "60s", check_dsn: bool = True) -> None:
    """Rewrite the deployment's config; `check_dsn` = the primary's TCP dsn."""
    dep.rpo = rpo
    dep.check_dsn = check_dsn
    dep.write_config()


def _marker(dep: Deployment) -> Path:
    return site_dir(dep) / "PROMOTED"


def _in_recovery(dep: Deployment) -> bool:
    return bool(dep.standby.query("select pg_is_in_recovery()")[0][0])


def _promote(dep: Deployment, *args: str):  # type: ignore[no-untyped-def]
    return dep.logship("promote", dep.connector, "--timeout", "120", *args, check=False)


def _ship_and_replay(dep: Deployment) -> str:
    """Close a segment, wait until it is shipped and replayed; returns its name."""
    ((segment,),) = dep.primary.query("select pg_walfile_name(pg_current_wal_lsn())")
    lsn = dep.switch_wal()
    wait_for(lambda: shipped(dep, segment), 60, f"{segment} shipped")
    dep.wait_replayed(lsn)
    return str(segment)


def _standby_ticks(dep: Deployment) -> int:
    try:
        return int(dep.standby.query("select count(*) from ticker")[0][0])
    except psycopg.errors.UndefinedTable:
        return 0  # the table itself has not been replayed yet


class Ticker(threading.Thread):
    """Inserts a timestamped row every 100 ms until stopped or the primary dies."""

    def __init__(self, dsn: str) -> None:
        super().__init__(daemon=True)
        self.dsn = dsn
        self.stop = threading.Event()
        self.rows = 0

    def run(self) -> None:
        try:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                while not self.stop.is_set():
                    conn.execute("insert into ticker (at) values (clock_timestamp())")
                    self.rows += 1
                    self.stop.wait(0.1)  # the workload's pace, not a wait for a condition
        except psycopg.Error:
            pass  # the primary went down under it: that is the drill


@e2e
def test_disaster_drill(deployment: Deployment) -> None:
    dep = deployment
    _configure(dep)
    dep.start_daemon()
    dep.standby_up()
    dep.primary.execute("create table ticker (id bigserial primary key, at timestamptz not null)")
    dep.primary.pgbench("-i", "-s", "2", "-q")
    ticker = Ticker(dep.primary.dsn())
    ticker.start()
    load = threading.Thread(target=dep.primary.pgbench, args=("-c", "2", "-T", "6", "-n"))
    load.start()
    # Let some ticker rows reach the standby by the ordinary path first.
    wait_for(lambda: _standby_ticks(dep) > 5, 120, "ticker rows replayed")
    load.join()
    # The disaster: the primary stops dead while the ticker writes, and its daemon goes too.
    dep.primary.stop(mode="immediate")
    ticker.stop.set()
    ticker.join(timeout=30)
    dep.stop_daemon()

    result = _promote(dep)
    print(result.stdout)  # the whole plan as the operator saw it, shown with -rP or on failure
    assert result.returncode == 0, result.stdout + result.stderr
    assert "you lose at most" in result.stdout
    assert not _in_recovery(dep)
    dep.standby.execute("create table written_after_promote as select 1 as x")

    marker = json.loads(_marker(dep).read_text())
    assert marker["state"] == "promoted" and marker["new_timeline"] > marker["old_timeline"]
    journal = [
        json.loads(line) for line in (site_dir(dep) / "journal.jsonl").read_text().splitlines()
    ]
    assert [e["event"] for e in journal] == ["promote"]
    assert journal[-1]["rto_s"] > 0 and journal[-1]["loss"]["bound_s"] is not None
    # On this single host the primary site's catalog is reachable: the event is there too.
    catalog = Catalog(f"sqlite:///{dep.state_dir / 'catalog.db'}")
    try:
        assert [e.kind for e in catalog.journal(0) if e.kind == "promote"] == ["promote"]
    finally:
        catalog.close()

    standby_rows = dep.standby.query(
        "select id, extract(epoch from at)::float8 from ticker order by id"
    )
    # The old primary comes back only so its rows can be read (no daemon ships them).
    dep.primary.start()
    primary_rows = dep.primary.query(
        "select id, extract(epoch from at)::float8 from ticker order by id"
    )
    assert standby_rows == primary_rows[: len(standby_rows)]
    lost = primary_rows[len(standby_rows) :]
    assert lost, "the unarchived tail of WAL should have been lost"
    start, end = journal[-1]["loss"]["window_start"], journal[-1]["loss"]["window_end"]
    # A row's timestamp is taken just before its commit, so a lost row may carry a
    # time a few ms before the newest replayed commit: that much slack, no more.
    assert lost[0][1] >= start - 0.1
    assert lost[-1][1] <= end


@e2e
def test_primary_alive_refuses_dry_run_changes_nothing_force_promotes(
    deployment: Deployment,
) -> None:
    dep = deployment
    _configure(dep, check_dsn=False)
    dep.start_daemon()
    dep.standby_up()
    _ship_and_replay(dep)

    # A loopback primary dsn reaches this host, not the primary: no proof either way.
    blind = _promote(dep, "--dry-run")
    assert blind.returncode == 3, blind.stdout + blind.stderr
    assert "cannot verify that the primary is down" in blind.stdout

    _configure(dep)
    dry = _promote(dep, "--dry-run")
    assert dry.returncode == 3, dry.stdout + dry.stderr
    assert "still answers" in dry.stdout and "switchover" in dry.stdout
    assert "[  would] fence" in dry.stdout  # the whole plan is shown
    assert not _marker(dep).exists() and _in_recovery(dep)

    refused = _promote(dep)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "still answers" in refused.stderr
    assert not _marker(dep).exists() and _in_recovery(dep)

    forced = _promote(dep, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "FORCED" in forced.stdout
    assert _marker(dep).exists() and not _in_recovery(dep)
    dep.standby.execute("create table written_after_promote as select 1 as x")
    again = _promote(dep, "--force")
    assert again.returncode == 3 and "PROMOTED" in again.stderr


@e2e
def test_a_gap_in_the_shipped_wal_is_refused_and_named(deployment: Deployment) -> None:
    dep = deployment
    _configure(dep)
    dep.start_daemon()
    dep.standby_up()
    _ship_and_replay(dep)
    # The standby must not replay past the hole before it is made: stop it first.
    dep.standby.stop()
    names = []
    for n in range(3):
        dep.primary.execute(f"create table gap_{n} as select 1 as x")
        ((segment,),) = dep.primary.query("select pg_walfile_name(pg_current_wal_lsn())")
        dep.switch_wal()
        wait_for(lambda s=segment: shipped(dep, s), 60, f"{segment} shipped")
        names.append(segment)
    dep.stop_daemon()
    missing = names[1]
    record = ManifestRecord.from_json((site_dir(dep) / "manifest" / f"{missing}.json").read_bytes())
    (site_dir(dep) / "manifest" / f"{missing}.json").unlink()
    (site_dir(dep) / "wal" / record.stored_name).unlink()
    dep.standby.start()
    dep.primary.stop(mode="immediate")

    result = _promote(dep)
    assert result.returncode == 3, result.stdout + result.stderr
    assert f"{missing} is missing" in result.stdout
    assert not _marker(dep).exists() and _in_recovery(dep)


@e2e
def test_loss_above_rpo_needs_accept_data_loss(deployment: Deployment) -> None:
    dep = deployment
    _configure(dep)
    dep.start_daemon()
    dep.standby_up()
    _ship_and_replay(dep)
    # Shipping stops; the primary goes on closing segments that never arrive.
    dep.stop_daemon()
    dep.primary.execute("create table never_shipped as select 1 as x")
    dep.switch_wal()
    dep.primary.stop(mode="immediate")
    _configure(dep, rpo="1s")

    refused = _promote(dep)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "--accept-data-loss" in refused.stdout
    assert not _marker(dep).exists() and _in_recovery(dep)

    accepted = _promote(dep, "--accept-data-loss")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert not _in_recovery(dep)
    assert dep.standby.query("select to_regclass('never_shipped') is null") == [(True,)]


@e2e
def test_a_returning_old_primary_daemon_never_ships_into_the_promoted_site(
    deployment: Deployment,
) -> None:
    dep = deployment
    _configure(dep)
    dep.start_daemon()
    dep.standby_up()
    _ship_and_replay(dep)
    dep.primary.stop(mode="immediate")
    dep.stop_daemon()
    assert _promote(dep).returncode == 0
    before = {d: sorted(p.name for p in (site_dir(dep) / d).iterdir()) for d in ("wal", "manifest")}

    # The old primary site comes back, daemon and all, and keeps archiving.
    dep.primary.start()
    dep.start_daemon()
    dep.primary.execute("create table after_return as select 1 as x")
    ((segment,),) = dep.primary.query("select pg_walfile_name(pg_current_wal_lsn())")
    dep.switch_wal()
    wait_for(lambda: (dep.spool_dir / segment).exists(), 60, f"{segment} archived to the spool")
    wait_for(
        lambda: "standby promoted: shipping stopped" in dep.daemon_log.read_text(),
        60,
        "the daemon says why it does not ship",
    )
    # The daemon has seen the segment (it is pending in its catalog) and holds it back.
    wait_for(
        lambda: json.loads(dep.logship("status", "--json").stdout)["connectors"][0][
            "pending_files"
        ],
        60,
        "the new segment queued",
    )
    after = {d: sorted(p.name for p in (site_dir(dep) / d).iterdir()) for d in ("wal", "manifest")}
    assert after == before
    assert (dep.spool_dir / segment).exists()
