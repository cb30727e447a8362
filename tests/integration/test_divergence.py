"""The reinstate loss report on a real failover: a primary stopped with `-m
immediate`, its streaming standby promoted (timeline 2), then the old primary
started again as a primary and given known transactions past the divergence point.

The divergence point from the new timeline's history file must be the standby's
switch point, the report must name exactly those transactions, and the WAL set
aside must still hold them for pg_waldump.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from sshd_site import reachable_tmp

from logship.demo_sandbox import OsUser, PgCluster, free_port
from logship.engines.postgresql import walnames
from logship.engines.postgresql.divergence import loss_report
from logship.engines.postgresql.timeline_history import (
    divergence_point,
    read_history_file,
    read_server_history,
)
from logship.engines.postgresql.wal_aside import REPORT_NAME, copy_aside
from logship.errors import OperationFailed, SafetyRefusal

pytestmark = pytest.mark.slow  # left out of the fast subset (README)

BEFORE_SWITCH = (101, 102)
AFTER_SWITCH = (103, 104, 105)
ROLLED_BACK = 999


@dataclass(frozen=True)
class Diverged:
    old: PgCluster
    new: PgCluster
    #: the standby's replay position when it was promoted
    switch_lsn: int
    #: value inserted -> xid, for the transactions committed past the point
    xids: dict[int, int]
    rolled_back_xid: int
    written_from: datetime
    written_to: datetime
    #: the old primary's last checkpoint (its shutdown) from pg_controldata
    last_checkpoint: int


def _lsn_of(cluster: PgCluster, sql: str) -> int:
    return walnames.lsn_to_int(cluster.query(sql)[0][0])


def _checkpoint_location(cluster: PgCluster) -> int:
    out = cluster.user.run(
        [str(cluster.bin_dir / "pg_controldata"), "-D", str(cluster.data_dir)],
        env={**os.environ, "LC_ALL": "C"},
    ).stdout
    for line in out.splitlines():
        if line.startswith("Latest checkpoint location:"):
            return walnames.lsn_to_int(line.split(":", 1)[1].strip())
    raise AssertionError(f"no checkpoint location in pg_controldata's output:\n{out}")


def _insert(cluster: PgCluster, value: int) -> int:
    return int(cluster.query("INSERT INTO lost VALUES (%s) RETURNING xmin::text", (value,))[0][0])


def _primary_and_streaming_standby(
    old: PgCluster, new: PgCluster, settings: dict[str, str]
) -> None:
    """`old` up with table `lost`, `new` a streaming standby of it (pg_basebackup -R)."""
    old.initdb()
    # No autovacuum: every commit past the point is one of the test's.
    old.configure({"autovacuum": "off", **settings})
    old.start()
    old.execute("CREATE TABLE lost (v int PRIMARY KEY)")
    parent = new.data_dir.parent
    parent.mkdir(mode=0o755)
    old.user.chown(parent)
    old.user.run(
        [
            str(old.bin_dir / "pg_basebackup"),
            *("-h", "127.0.0.1", "-p", str(old.port), "-U", old.user.name),
            *("-D", str(new.data_dir), "-R", "-X", "stream", "-c", "fast"),
        ],
        cwd=parent,
    )
    new.configure({"port": str(new.port), "unix_socket_directories": str(new.socket_dir)})
    new.start()


@pytest.fixture(scope="module")
def diverged() -> Iterator[Diverged]:
    user = OsUser.for_postgres()
    base = reachable_tmp("logship-divergence-")
    old = PgCluster(base / "old" / "data", free_port(), user)
    new = PgCluster(base / "new" / "data", free_port(), user)
    try:
        # Its own checkpoints would recycle the segment holding the divergence
        # point once pg_switch_wal() moved past it, unless kept.
        _primary_and_streaming_standby(old, new, {"wal_keep_size": "256MB"})
        old.execute("INSERT INTO lost VALUES (1)")  # replicated: not lost
        written = _lsn_of(old, "SELECT pg_current_wal_flush_lsn()::text")
        old.stop(mode="immediate")
        # All the standby received is replayed: its replay position is where the
        # promotion branches off.
        new.wait_until(
            f"SELECT pg_last_wal_replay_lsn() >= '{walnames.int_to_lsn(written)}' "
            "AND pg_last_wal_replay_lsn() = pg_last_wal_receive_lsn()"
        )
        switch_lsn = _lsn_of(new, "SELECT pg_last_wal_replay_lsn()::text")
        new.execute("SELECT pg_promote()")
        new.wait_until("SELECT NOT pg_is_in_recovery()")
        new.stop()

        old.start()  # as a primary again, on timeline 1
        written_from = old.query("SELECT clock_timestamp()")[0][0]
        xids = {value: _insert(old, value) for value in BEFORE_SWITCH}
        with old.connect() as conn:
            conn.autocommit = False
            rolled_back = int(
                conn.execute(
                    "INSERT INTO lost VALUES (%s) RETURNING xmin::text", (ROLLED_BACK,)
                ).fetchone()[0]  # type: ignore[index]
            )
            conn.rollback()
        old.execute("SELECT pg_switch_wal()")
        xids.update({value: _insert(old, value) for value in AFTER_SWITCH})
        written_to = old.query("SELECT clock_timestamp()")[0][0]
        old.stop()
        yield Diverged(
            old=old,
            new=new,
            switch_lsn=switch_lsn,
            xids=xids,
            rolled_back_xid=rolled_back,
            written_from=written_from,
            written_to=written_to,
            last_checkpoint=_checkpoint_location(old),
        )
    finally:
        new.destroy()
        old.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def scratch() -> Iterator[Path]:
    path = reachable_tmp("logship-divergence-scratch-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_divergence_point_is_the_standbys_switch_point(diverged: Diverged) -> None:
    timeline, history = read_history_file(diverged.new.data_dir / "pg_wal" / "00000002.history")
    assert timeline == 2
    assert [entry.parent_tli for entry in history] == [1]
    assert divergence_point(history, 2, 1) == diverged.switch_lsn


def test_the_history_read_over_sql_from_the_new_primary_is_the_files(
    diverged: Diverged,
) -> None:
    diverged.new.start()
    try:
        with diverged.new.connect() as conn:
            timeline, history = read_server_history(conn)
    finally:
        diverged.new.stop()
    assert timeline == 2
    assert history == read_history_file(diverged.new.data_dir / "pg_wal" / "00000002.history")[1]
    assert divergence_point(history, timeline, 1) == diverged.switch_lsn


def test_the_report_names_exactly_the_commits_past_the_point(diverged: Diverged) -> None:
    started = time.monotonic()
    report = loss_report(diverged.old.data_dir, diverged.old.bin_dir, 1, diverged.switch_lsn)
    elapsed = time.monotonic() - started
    assert report.complete and report.divergence_lsn == diverged.switch_lsn
    assert report.commits == len(diverged.xids)
    assert [t.xid for t in report.transactions] == list(diverged.xids.values())
    assert report.aborts == 1
    # The time window covers them, and each commit is inside it.
    assert report.first_commit_at is not None and report.last_commit_at is not None
    assert diverged.written_from <= report.first_commit_at <= report.last_commit_at
    assert report.last_commit_at <= diverged.written_to
    assert all(diverged.written_from <= t.at <= diverged.written_to for t in report.transactions)  # type: ignore[operator]
    # Valid WAL runs to the old primary's shutdown checkpoint, across the switch.
    assert diverged.last_checkpoint < report.end_lsn <= diverged.last_checkpoint + 8192
    assert report.wal_bytes == report.end_lsn - diverged.switch_lsn
    first = diverged.switch_lsn // report.segment_size
    last = (report.end_lsn - 1) // report.segment_size
    assert last > first  # pg_switch_wal() put the later commits in another segment
    assert report.segments == tuple(
        walnames.segment_name(1, n, report.segment_size) for n in range(first, last + 1)
    )
    assert "error in WAL record" in report.end_message  # torn or recycled: the normal end
    summary = "\n".join(report.summary_lines())
    assert f"{len(diverged.xids)} commits" in summary and "1 aborts" in summary
    assert elapsed < 30


def test_a_cap_lists_the_first_transactions_and_counts_them_all(diverged: Diverged) -> None:
    report = loss_report(diverged.old.data_dir, None, 1, diverged.switch_lsn, listed=2)
    assert report.commits == len(diverged.xids)
    assert [t.xid for t in report.transactions] == list(diverged.xids.values())[:2]
    assert report.to_json()["transactions_listed"] == 2
    assert report.last_commit_at is not None and report.last_commit_at <= diverged.written_to


def test_copy_aside_keeps_the_segments_and_the_report_privately(
    diverged: Diverged, scratch: Path
) -> None:
    report = loss_report(diverged.old.data_dir, None, 1, diverged.switch_lsn)
    dest = scratch / "reinstate" / "lost-wal"
    written = copy_aside(diverged.old.data_dir, report, dest)
    assert [p.name for p in written] == [*report.segments, REPORT_NAME]
    assert stat.S_IMODE(dest.lstat().st_mode) == 0o700
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in written)
    for path in written:
        assert stat.S_IMODE(path.lstat().st_mode) == 0o600
    for name in report.segments:
        source = diverged.old.data_dir / "pg_wal" / name
        assert (dest / name).read_bytes() == source.read_bytes()
    saved = json.loads((dest / REPORT_NAME).read_text())
    assert saved["commits"] == len(diverged.xids) and saved["complete"] is True
    assert saved["divergence_lsn"] == walnames.int_to_lsn(diverged.switch_lsn)
    assert [t["xid"] for t in saved["transactions"]] == list(diverged.xids.values())
    # pg_waldump still finds the lost commits in the copies alone.
    out = subprocess.run(
        [
            str(diverged.old.bin_dir / "pg_waldump"),
            *("-p", str(dest), "-t", "1", "-s", walnames.int_to_lsn(diverged.switch_lsn)),
            "--rmgr=Transaction",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "LC_ALL": "C"},
    )
    committed = {
        int(line.split("tx:")[1].split(",")[0])
        for line in out.stdout.splitlines()
        if "COMMIT" in line
    }
    assert committed == set(diverged.xids.values()), out.stderr


def _fake_data_dir(diverged: Diverged, scratch: Path, keep: list[str]) -> Path:
    """A data directory holding only copies of these segments of the old primary."""
    pg_wal = scratch / "data" / "pg_wal"
    pg_wal.mkdir(parents=True)
    shutil.copy(diverged.old.data_dir / "PG_VERSION", scratch / "data" / "PG_VERSION")
    for name in keep:
        shutil.copy(diverged.old.data_dir / "pg_wal" / name, pg_wal / name)
    return scratch / "data"


def test_a_removed_first_segment_leaves_an_incomplete_report(
    diverged: Diverged, scratch: Path
) -> None:
    full = loss_report(diverged.old.data_dir, None, 1, diverged.switch_lsn)
    data_dir = _fake_data_dir(diverged, scratch, list(full.segments[1:]))
    report = loss_report(data_dir, None, 1, diverged.switch_lsn)
    assert not report.complete
    assert report.read_from_lsn == walnames.WalName(
        full.segments[1], walnames.WalKind.SEGMENT
    ).segment_number(full.segment_size) * (full.segment_size)
    assert report.end_lsn == full.end_lsn and report.segments == full.segments[1:]
    # Only the commits after pg_switch_wal() are still there.
    assert [t.xid for t in report.transactions] == [diverged.xids[v] for v in AFTER_SWITCH]
    assert report.aborts == 0
    assert any("incomplete" in line for line in report.summary_lines())


def test_a_link_under_a_segment_name_is_refused(diverged: Diverged, scratch: Path) -> None:
    full = loss_report(diverged.old.data_dir, None, 1, diverged.switch_lsn)
    data_dir = _fake_data_dir(diverged, scratch, list(full.segments[1:]))
    first = full.segments[0]
    (data_dir / "pg_wal" / first).symlink_to(diverged.old.data_dir / "pg_wal" / first)
    with pytest.raises(SafetyRefusal, match="not a regular file"):
        loss_report(data_dir, None, 1, diverged.switch_lsn)


def test_copy_aside_opens_no_link_and_writes_into_no_link(
    diverged: Diverged, scratch: Path
) -> None:
    report = loss_report(diverged.old.data_dir, None, 1, diverged.switch_lsn)
    (scratch / "elsewhere").mkdir()
    (scratch / "aside").symlink_to(scratch / "elsewhere")
    with pytest.raises(SafetyRefusal, match="is not a folder"):
        copy_aside(diverged.old.data_dir, report, scratch / "aside")
    assert not any((scratch / "elsewhere").iterdir())
    # A segment swapped for a link after the report is not followed.
    data_dir = _fake_data_dir(diverged, scratch, list(report.segments[1:]))
    (data_dir / "pg_wal" / report.segments[0]).symlink_to(
        diverged.old.data_dir / "pg_wal" / report.segments[0]
    )
    with pytest.raises(OperationFailed, match="a link is not followed"):
        copy_aside(data_dir, report, scratch / "copy")
    assert not any((scratch / "copy").iterdir())  # no temp left behind either


def test_a_timeline_without_wal_in_pg_wal_is_refused(diverged: Diverged) -> None:
    with pytest.raises(OperationFailed, match="holds no WAL segment of timeline 3"):
        loss_report(diverged.old.data_dir, None, 3, diverged.switch_lsn)


def test_a_record_torn_at_the_end_ends_the_report_before_it(
    diverged: Diverged, scratch: Path
) -> None:
    full = loss_report(diverged.old.data_dir, None, 1, diverged.switch_lsn)
    last = full.transactions[-1]  # the commit of the last value written
    data_dir = _fake_data_dir(diverged, scratch, list(full.segments))
    name = walnames.segment_of_lsn(1, last.lsn, full.segment_size)
    offset = last.lsn % full.segment_size + 10  # inside the record, past its length
    with open(data_dir / "pg_wal" / name, "r+b") as segment:
        segment.seek(offset)
        segment.write(bytes(full.segment_size - offset))
    report = loss_report(data_dir, None, 1, diverged.switch_lsn)
    assert report.complete
    assert report.commits == len(diverged.xids) - 1
    assert [t.xid for t in report.transactions] == list(diverged.xids.values())[:-1]
    assert report.end_lsn == last.lsn  # where the torn record starts
    assert "error in WAL record" in report.end_message


def test_nothing_past_the_point_is_an_empty_report(diverged: Diverged) -> None:
    full = loss_report(diverged.old.data_dir, None, 1, diverged.switch_lsn)
    report = loss_report(diverged.old.data_dir, None, 1, full.end_lsn)
    assert (report.records, report.commits, report.aborts, report.wal_bytes) == (0, 0, 0, 0)
    assert report.segments == () and report.transactions == ()
    assert report.first_commit_at is None and report.end_lsn == full.end_lsn
    assert "0 commits" in "\n".join(report.summary_lines())


@dataclass(frozen=True)
class Crashed:
    old: PgCluster
    new: PgCluster
    switch_lsn: int
    xids: list[int]


@pytest.fixture(scope="module")
def crashed() -> Iterator[Crashed]:
    """The failover as it happens: the standby stops receiving, the primary goes on
    committing, then stops with `-m immediate` and is never started again."""
    user = OsUser.for_postgres()
    base = reachable_tmp("logship-divergence-crash-")
    old = PgCluster(base / "old" / "data", free_port(), user)
    new = PgCluster(base / "new" / "data", free_port(), user)
    try:
        _primary_and_streaming_standby(old, new, {})
        written = _lsn_of(old, "SELECT pg_current_wal_flush_lsn()::text")
        new.wait_until(
            f"SELECT pg_last_wal_replay_lsn() >= '{walnames.int_to_lsn(written)}' "
            "AND pg_last_wal_replay_lsn() = pg_last_wal_receive_lsn()"
        )
        # The link breaks: the standby stops receiving.
        new.execute("ALTER SYSTEM SET primary_conninfo = ''")
        new.execute("SELECT pg_reload_conf()")
        new.wait_until("SELECT count(*) = 0 FROM pg_stat_wal_receiver")
        switch_lsn = _lsn_of(new, "SELECT pg_last_wal_replay_lsn()::text")
        xids = [_insert(old, value) for value in (201, 202, 203, 204)]
        old.stop(mode="immediate")
        new.execute("SELECT pg_promote()")
        new.wait_until("SELECT NOT pg_is_in_recovery()")
        new.stop()
        yield Crashed(old=old, new=new, switch_lsn=switch_lsn, xids=xids)
    finally:
        new.destroy()
        old.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_a_crashed_primary_reports_the_commits_the_standby_never_received(
    crashed: Crashed, scratch: Path
) -> None:
    _, history = read_history_file(crashed.new.data_dir / "pg_wal" / "00000002.history")
    point = divergence_point(history, 2, 1)
    assert point == crashed.switch_lsn
    report = loss_report(crashed.old.data_dir, None, 1, point)
    assert report.complete and report.aborts == 0
    assert [t.xid for t in report.transactions] == crashed.xids
    written = copy_aside(crashed.old.data_dir, report, scratch / "aside")
    assert [p.name for p in written] == [*report.segments, REPORT_NAME]


def test_a_divergence_point_that_is_no_record_boundary_is_refused(diverged: Diverged) -> None:
    """A history file claiming a point the old primary's WAL never had (a hostile or
    mismatched file) must not yield a report, least of all "nothing lost"."""
    full = loss_report(diverged.old.data_dir, None, 1, diverged.switch_lsn)
    inside_a_commit = full.transactions[0].lsn + 8
    for point in (inside_a_commit, diverged.switch_lsn + 8, full.end_lsn + 8):
        with pytest.raises(SafetyRefusal, match="is not where a record begins or ends"):
            loss_report(diverged.old.data_dir, None, 1, point)
    with pytest.raises(SafetyRefusal, match="lies past the WAL of timeline 1"):
        loss_report(diverged.old.data_dir, None, 1, 0x7F << 32)


def test_a_primary_never_promoted_has_no_history_to_read(crashed: Crashed) -> None:
    crashed.old.start()  # still on timeline 1: the reports above are done with it
    try:
        with crashed.old.connect() as conn, pytest.raises(OperationFailed, match="timeline 1"):
            read_server_history(conn, where="the old primary")
    finally:
        crashed.old.stop()
