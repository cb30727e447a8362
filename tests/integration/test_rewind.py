"""pg_rewind of an old primary after a failover, on two real PostgreSQL clusters.

Each pair: a primary, a physical copy streaming from it, the primary stopped with
-m immediate, the copy promoted, the old primary started again for a few
transactions of its own (a real fork), then stopped.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sshd_site import reachable_tmp

from logship.demo_sandbox import OsUser, PgCluster, free_port
from logship.demo_sandbox.postgres import DEFAULT_BIN_DIR
from logship.engines.postgresql.rewind import (
    RewindProgress,
    request_checkpoint,
    rewind_safety,
    run_rewind,
)
from logship.engines.postgresql.rewind_target import read_controldata
from logship.errors import OperationFailed

pytestmark = pytest.mark.slow  # left out of the fast subset (README)

BIN = DEFAULT_BIN_DIR


def _du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True)
    return int(out.stdout.split()[0])


class Pair:
    def __init__(
        self,
        base: Path,
        user: OsUser,
        *,
        hints: bool,
        checksums: bool,
        archive: Path | None = None,
    ) -> None:
        self.base = base
        self.user = user
        self.old = PgCluster(base / "old" / "data", free_port(), user)
        self.new = PgCluster(base / "new" / "data", free_port(), user)
        self.old.initdb()
        if not checksums:
            user.run([str(BIN / "pg_checksums"), "--disable", "-D", str(self.old.data_dir)])
        settings = {
            "wal_log_hints": "on" if hints else "off",
            # The fork's WAL must stay in pg_wal for the rewind to read it...
            "wal_keep_size": "1GB",
            "hot_standby": "on",
        }
        if archive is not None:
            # ...unless it is archived, and recycled as PostgreSQL does by default.
            archive.mkdir(mode=0o755)
            user.chown(archive)
            settings.update(
                wal_keep_size="0", archive_mode="on", archive_command=f"cp %p {archive}/%f"
            )
        self.old.configure(settings)
        self.old.start()
        self.old.execute("CREATE TABLE ticks (id int PRIMARY KEY, site text)")

    def copy(self) -> None:
        (self.base / "new").mkdir(mode=0o755)
        self.user.chown(self.base / "new")
        self.user.run(
            [
                str(BIN / "pg_basebackup"),
                "-D",
                str(self.new.data_dir),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "-d",
                self.old.dsn(),
            ],
            cwd=self.base,
            timeout=600,
        )
        # Few restartpoints, and a long spread checkpoint after the promotion (about
        # 0.1 s a dirty buffer): a window in which the new primary has not yet
        # recorded its timeline in pg_control, as after a real failover under load.
        self.new.configure({"port": str(self.new.port), "checkpoint_timeout": "1h"})
        self.new.start()

    def fork(self, *, switch: bool = False) -> None:
        """Fail over to the copy, then give the old primary transactions of its own.

        `switch` ends the common WAL with a segment switch, so that the new
        timeline begins exactly at a segment boundary."""
        # About 560 pages that stay dirty at the copy until its first checkpoint.
        self.old.execute(
            "CREATE TABLE filler AS SELECT g, repeat('x', 500) AS x FROM generate_series(1, 8000) g"
        )
        self.old.execute("INSERT INTO ticks SELECT g, 'both' FROM generate_series(1, 100) g")
        if switch:
            self.old.query("SELECT pg_switch_wal()")
        lsn = self.old.query("SELECT pg_current_wal_lsn()::text")[0][0]
        self.new.wait_until(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'", timeout=120)
        self.old.stop(mode="immediate")
        self.new.query("SELECT pg_promote()")
        self.new.wait_until("SELECT NOT pg_is_in_recovery()")
        self.old.start()
        self.old.execute("INSERT INTO ticks SELECT g, 'old' FROM generate_series(101, 150) g")
        self.old.execute("UPDATE ticks SET site = 'old-too' WHERE id <= 10")
        self.old.stop()

    def destroy(self) -> None:
        for cluster in (self.new, self.old):
            cluster.destroy()
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def base() -> Iterator[Path]:
    path = reachable_tmp("logship-rewind-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def forked() -> Iterator[Pair]:
    """A pair with wal_log_hints on, forked; tests that use it leave it as found."""
    pair = Pair(
        reachable_tmp("logship-rewind-m-"), OsUser.for_postgres(), hints=True, checksums=False
    )
    try:
        pair.copy()
        pair.fork()
        yield pair
    finally:
        pair.destroy()


def test_rewind_of_a_forked_old_primary_copies_little_and_it_follows(
    base: Path, pg_user: OsUser
) -> None:
    pair = Pair(base, pg_user, hints=True, checksums=False)
    try:
        pair.old.pgbench("-i", "-s", "10", "-q")
        pair.copy()
        pair.fork()
        data_size = _du(pair.old.data_dir)
        clock = time.monotonic()
        safety = rewind_safety(pair.old.data_dir, BIN, pair.new.dsn())
        checked_in = time.monotonic() - clock
        assert safety.safe, safety.reasons
        # The promoted copy had not checkpointed yet: pg_rewind would have seen no fork.
        assert safety.facts.checkpoint_requested
        assert safety.facts.source_checkpoint_timeline == safety.facts.source_timeline == 2
        assert safety.facts.wal_needed and not safety.facts.wal_missing
        control_before = (pair.old.data_dir / "global" / "pg_control").read_bytes()

        dry = run_rewind(pair.old.data_dir, BIN, pair.new.dsn(), dry_run=True)
        assert dry.rewound and dry.diverged_at == safety.facts.divergence_lsn
        assert (pair.old.data_dir / "global" / "pg_control").read_bytes() == control_before

        seen: list[RewindProgress] = []
        outcome = run_rewind(
            pair.old.data_dir, BIN, pair.new.dsn(), dry_run=False, progress=seen.append
        )
        assert outcome.rewound and outcome.diverged_at == safety.facts.divergence_lsn
        assert outcome.rewound_from_checkpoint == safety.facts.last_common_checkpoint
        assert "backup_label" in outcome.left_files
        assert any(p.phase == "copy" for p in seen)
        # What is copied: the WAL from the last common checkpoint on (whole 16 MB
        # segments) and the blocks either side changed since it.
        assert outcome.bytes_copied < data_size // 3
        print(
            f"\nrewind: data dir {data_size / 2**20:.1f} MiB, copied "
            f"{outcome.bytes_copied / 2**20:.1f} MiB ({outcome.bytes_from}; planned "
            f"{(outcome.bytes_planned or 0) / 2**20:.0f} MiB of a "
            f"{(outcome.source_bytes or 0) / 2**20:.0f} MiB source) = "
            f"{100 * outcome.bytes_copied / data_size:.1f}% in "
            f"{outcome.seconds:.2f}s (dry run {dry.seconds:.2f}s; checks {checked_in:.2f}s, "
            f"{len(safety.facts.wal_needed)} WAL segments read)"
        )

        # pg_rewind copied the new primary's configuration, postgresql.auto.conf (with
        # the copy's primary_conninfo) included: this site's port and standby setup are
        # the caller's to write, after it, as here.
        with open(pair.old.data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as auto:
            auto.write(f"port = {pair.old.port}\nprimary_conninfo = '{pair.new.dsn()}'\n")
        (pair.old.data_dir / "standby.signal").touch()
        pair.user.chown(pair.old.data_dir / "standby.signal")
        pair.old.start()
        pair.new.execute("INSERT INTO ticks SELECT g, 'new' FROM generate_series(200, 210) g")
        try:
            pair.old.wait_until("SELECT count(*) = 11 FROM ticks WHERE site = 'new'", timeout=120)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; its log:\n{pair.old.log_text()[-3000:]}") from None
        rows = pair.old.query(
            "SELECT count(*), count(*) FILTER (WHERE site LIKE 'old%') FROM ticks"
        )
        assert rows == [(111, 0)]  # the old primary's own transactions are gone
        assert pair.old.query("SELECT pg_is_in_recovery()") == [(True,)]

        # And back: the rewound site is promoted in turn (timeline 3) while the other
        # one, now on timeline 2 with a history file of its own, writes on alone.
        lsn = pair.new.query("SELECT pg_current_wal_lsn()::text")[0][0]
        pair.old.wait_until(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'", timeout=120)
        pair.new.stop(mode="immediate")
        pair.old.query("SELECT pg_promote()")
        pair.old.wait_until("SELECT NOT pg_is_in_recovery()")
        pair.new.start()
        pair.new.execute("INSERT INTO ticks SELECT g, 'new-alone' FROM generate_series(300, 320) g")
        pair.new.stop()
        back = rewind_safety(pair.new.data_dir, BIN, pair.old.dsn())
        assert back.safe, back.reasons
        assert (back.facts.old_timeline, back.facts.source_timeline) == (2, 3)
        again = run_rewind(pair.new.data_dir, BIN, pair.old.dsn(), dry_run=False)
        assert again.rewound and again.diverged_at == back.facts.divergence_lsn
        with open(pair.new.data_dir / "postgresql.auto.conf", "a", encoding="utf-8") as auto:
            auto.write(f"port = {pair.new.port}\nprimary_conninfo = '{pair.old.dsn()}'\n")
        (pair.new.data_dir / "standby.signal").touch()
        pair.user.chown(pair.new.data_dir / "standby.signal")
        pair.new.start()
        pair.old.execute("INSERT INTO ticks VALUES (400, 'back')")
        pair.new.wait_until("SELECT count(*) = 1 FROM ticks WHERE site = 'back'", timeout=120)
        assert pair.new.query("SELECT count(*) FROM ticks WHERE site = 'new-alone'") == [(0,)]
    finally:
        pair.destroy()


def test_wal_log_hints_off_without_checksums_is_not_safe_and_a_changed_setting_is_named(
    base: Path, pg_user: OsUser
) -> None:
    pair = Pair(base, pg_user, hints=False, checksums=False)
    try:
        pair.copy()
        pair.fork()
        safety = rewind_safety(pair.old.data_dir, BIN, pair.new.dsn(), checkpoint=False)
        assert not safety.safe and not safety.facts.checkpoint_requested
        assert any("not checkpointed since its promotion" in r for r in safety.reasons)
        # The fork is known from the history file all the same: the WAL is checked too.
        assert safety.facts.wal_needed and safety.facts.last_common_checkpoint
        # A role with pg_rewind's grants but not pg_checkpoint cannot make it.
        pair.new.execute(
            "CREATE ROLE rewinder LOGIN;"
            "GRANT EXECUTE ON FUNCTION pg_ls_dir(text, boolean, boolean) TO rewinder;"
            "GRANT EXECUTE ON FUNCTION pg_stat_file(text, boolean) TO rewinder;"
            "GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO rewinder;"
            "GRANT EXECUTE ON FUNCTION pg_read_binary_file(text, bigint, bigint, boolean)"
            " TO rewinder;"
        )
        as_rewinder = pair.new.dsn().replace(f"user={pg_user.name}", "user=rewinder")
        refused = rewind_safety(pair.old.data_dir, BIN, as_rewinder)
        assert refused.facts.checkpoint_requested
        assert any("GRANT pg_checkpoint TO" in r for r in refused.reasons), refused.reasons
        assert any("wal_log_hints is off" in r for r in safety.reasons), safety.reasons
        print(f"\nhints off: {safety.reasons}")
        assert safety.facts.checksums is False and safety.facts.wal_log_hints_control is False

        # Turned on in the file after the stop: pg_control still says the server ran
        # without it, and that is what its WAL holds.
        pair.old.configure({"wal_log_hints": "on"})
        safety = rewind_safety(pair.old.data_dir, BIN, pair.new.dsn())
        assert not safety.safe
        assert safety.facts.wal_log_hints_config is True
        [changed] = [r for r in safety.reasons if "configuration now says on" in r]
        assert "but pg_control says the old primary last ran with it off" in changed
        print(f"\nhints changed: {changed}")
    finally:
        pair.destroy()


def test_a_source_role_without_the_grants_is_named_and_the_grants_suffice(forked: Pair) -> None:
    forked.new.execute("CREATE ROLE rewinder LOGIN")
    dsn = forked.new.dsn().replace(f"user={forked.user.name}", "user=rewinder")
    assert "rewinder" in dsn
    request_checkpoint(forked.new.dsn())  # the role has no pg_checkpoint
    safety = rewind_safety(forked.old.data_dir, BIN, dsn)
    assert not safety.safe
    [reason] = [r for r in safety.reasons if "rewinder" in r]
    print(f"\nmissing grants: {reason}")
    for function in (
        "pg_ls_dir(text, boolean, boolean)",
        "pg_stat_file(text, boolean)",
        "pg_read_binary_file(text, bigint, bigint, boolean)",
    ):
        assert function in reason
    forked.new.execute(
        "GRANT EXECUTE ON FUNCTION pg_ls_dir(text, boolean, boolean) TO rewinder;"
        "GRANT EXECUTE ON FUNCTION pg_stat_file(text, boolean) TO rewinder;"
        "GRANT EXECUTE ON FUNCTION pg_read_binary_file(text) TO rewinder;"
        "GRANT EXECUTE ON FUNCTION pg_read_binary_file(text, bigint, bigint, boolean) TO rewinder;"
    )
    safety = rewind_safety(forked.old.data_dir, BIN, dsn)
    assert safety.safe, safety.reasons

    # With a password: pg_rewind runs as the data dir's owner, and reads it from a
    # password file handed to that user, never from its command line.
    hba = forked.new.data_dir / "pg_hba.conf"
    hba.write_text("host all rewinder 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    forked.new.execute("ALTER ROLE rewinder PASSWORD 's3cret:pw'; SELECT pg_reload_conf()")
    forked.new.wait_until(
        "SELECT count(*) = 1 FROM pg_hba_file_rules WHERE 'rewinder' = ANY(user_name)"
    )
    with pytest.raises(OperationFailed, match="password") as failed:
        run_rewind(forked.old.data_dir, BIN, dsn, dry_run=True)
    print(f"\nwithout a password: {failed.value}")
    with_password = f"{dsn} password='s3cret:pw'"
    assert rewind_safety(forked.old.data_dir, BIN, with_password).safe
    dry = run_rewind(forked.old.data_dir, BIN, with_password, dry_run=True)
    assert dry.rewound and dry.bytes_planned is not None


def test_a_missing_wal_segment_is_named(forked: Pair) -> None:
    safety = rewind_safety(forked.old.data_dir, BIN, forked.new.dsn())
    assert safety.safe, safety.reasons
    needed = safety.facts.wal_needed
    # The segment holding the last checkpoint before the fork: pg_rewind starts there.
    first = needed[0]
    control = read_controldata(forked.old.data_dir, BIN)
    pg_wal = forked.old.data_dir / "pg_wal"
    aside = forked.base / first
    shutil.move(pg_wal / first, aside)
    try:
        started = time.monotonic()
        safety = rewind_safety(forked.old.data_dir, BIN, forked.new.dsn())
        assert not safety.safe
        assert safety.facts.wal_missing == [first]
        assert any(first in r and "missing" in r for r in safety.reasons), safety.reasons
        print(f"\nmissing WAL: {safety.reasons}")
        assert time.monotonic() - started < 60
    finally:
        shutil.move(aside, pg_wal / first)
    assert read_controldata(forked.old.data_dir, BIN) == control


def test_wal_log_hints_turned_off_after_the_stop_is_a_note_not_a_reason(forked: Pair) -> None:
    """pg_control says the old primary ran with it on, so its WAL has what pg_rewind
    needs; the setting now off is shown, for the next rewind would not be safe."""
    # Read from a configuration file outside the data dir, as Debian keeps it.
    elsewhere = forked.base / "etc" / "postgresql.conf"
    elsewhere.parent.mkdir(mode=0o755)
    conf = forked.old.data_dir / "postgresql.conf"
    elsewhere.write_text(conf.read_text() + "wal_log_hints = off\n")
    elsewhere.chmod(0o644)
    try:
        assert rewind_safety(forked.old.data_dir, BIN, forked.new.dsn()).notes == []
        safety = rewind_safety(forked.old.data_dir, BIN, forked.new.dsn(), config_file=elsewhere)
        assert safety.safe, safety.reasons
        assert safety.facts.wal_log_hints_control is True
        assert safety.facts.wal_log_hints_config is False
        assert safety.facts.block_tracking == "wal_log_hints (pg_control only)"
        assert any("configuration now says off" in n for n in safety.notes), safety.notes
        dry = run_rewind(
            forked.old.data_dir, BIN, forked.new.dsn(), dry_run=True, config_file=elsewhere
        )
        assert dry.rewound and dry.not_run is None
    finally:
        shutil.rmtree(elsewhere.parent)


def test_a_rewind_past_its_time_is_ended_with_its_children(forked: Pair) -> None:
    with pytest.raises(OperationFailed, match=r"killed after 0\.01s") as failed:
        run_rewind(forked.old.data_dir, BIN, forked.new.dsn(), dry_run=True, timeout=0.01)
    assert "was not changed" in str(failed.value)
    # Nothing of it is left running: no pg_rewind under this data dir.
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, check=True)
    assert not [
        ln for ln in ps.stdout.splitlines() if str(forked.old.data_dir) in ln and "pg_rewind" in ln
    ]


def test_a_segment_missing_from_pg_wal_but_fetched_by_restore_command_is_enough(
    forked: Pair,
) -> None:
    safety = rewind_safety(forked.old.data_dir, BIN, forked.new.dsn())
    first = safety.facts.wal_needed[0]
    archive = forked.base / "archive"
    archive.mkdir(mode=0o755)
    conf = forked.old.data_dir / "postgresql.conf"
    conf_before = conf.read_text()
    shutil.move(forked.old.data_dir / "pg_wal" / first, archive / first)
    try:
        forked.old.configure({"restore_command": f"cp {archive}/%f %p"})
        safety = rewind_safety(forked.old.data_dir, BIN, forked.new.dsn())
        assert safety.safe, safety.reasons
        assert safety.facts.wal_from_restore_command == [first]
        assert any("--restore-target-wal" in n for n in safety.notes)
        dry = run_rewind(
            forked.old.data_dir, BIN, forked.new.dsn(), dry_run=True, restore_target_wal=True
        )
        assert dry.rewound
    finally:
        shutil.move(archive / first, forked.old.data_dir / "pg_wal" / first)
        conf.write_text(conf_before)


def test_a_crashed_old_primary_is_rewound_after_crash_recovery_but_not_dry_run(
    forked: Pair,
) -> None:
    """Last user of the module's pair: it leaves the old primary rewound."""
    forked.old.start()
    safety = rewind_safety(forked.old.data_dir, BIN, forked.new.dsn())
    assert not safety.safe
    assert any("the old primary is running (postmaster pid" in r for r in safety.reasons), (
        safety.reasons
    )
    forked.old.stop(mode="immediate")
    safety = rewind_safety(forked.old.data_dir, BIN, forked.new.dsn())
    assert safety.safe, safety.reasons
    assert safety.facts.crash_recovery_first
    assert safety.facts.old_state == "in production"
    control = (forked.old.data_dir / "global" / "pg_control").read_bytes()
    dry = run_rewind(forked.old.data_dir, BIN, forked.new.dsn(), dry_run=True)
    assert dry.not_run is not None and "would run crash recovery" in dry.not_run
    assert (forked.old.data_dir / "global" / "pg_control").read_bytes() == control
    outcome = run_rewind(forked.old.data_dir, BIN, forked.new.dsn(), dry_run=False)
    assert outcome.rewound and outcome.bytes_copied > 0


def test_a_fork_at_a_segment_boundary(base: Path, pg_user: OsUser) -> None:
    pair = Pair(base, pg_user, hints=True, checksums=True)
    try:
        pair.copy()
        pair.fork(switch=True)
        safety = rewind_safety(pair.old.data_dir, BIN, pair.new.dsn())
        assert safety.safe, safety.reasons
        assert safety.facts.divergence_lsn is not None
        assert safety.facts.divergence_lsn.endswith("000000")  # a segment's first byte
        assert safety.facts.block_tracking == "data checksums"
        outcome = run_rewind(pair.old.data_dir, BIN, pair.new.dsn(), dry_run=False)
        assert outcome.rewound and outcome.diverged_at == safety.facts.divergence_lsn
    finally:
        pair.destroy()


def test_recycled_wal_is_named_and_then_fetched_from_the_archive(
    base: Path, pg_user: OsUser
) -> None:
    """As by default: the old primary's restart and stop recycle the segment of the
    last common checkpoint (repmgr#697); its archive still has it."""
    archive = base / "archive"
    pair = Pair(base, pg_user, hints=True, checksums=False, archive=archive)
    try:
        pair.copy()
        pair.fork()
        safety = rewind_safety(pair.old.data_dir, BIN, pair.new.dsn())
        assert not safety.safe and safety.facts.wal_missing, safety.reasons
        missing = safety.facts.wal_missing
        assert any(missing[0] in r for r in safety.reasons)
        print(f"\nrecycled WAL: {safety.reasons}")
        assert all((archive / name).exists() for name in missing)

        pair.old.configure({"restore_command": f"cp {archive}/%f %p"})
        safety = rewind_safety(pair.old.data_dir, BIN, pair.new.dsn())
        assert safety.safe, safety.reasons
        # The search for the last common checkpoint went on past what was missing.
        assert set(missing) <= set(safety.facts.wal_from_restore_command)
        assert not safety.facts.wal_missing
        outcome = run_rewind(
            pair.old.data_dir, BIN, pair.new.dsn(), dry_run=False, restore_target_wal=True
        )
        assert outcome.rewound and outcome.diverged_at == safety.facts.divergence_lsn
        print(
            f"\nrecycled WAL: {safety.facts.wal_from_restore_command} fetched by "
            f"restore_command; rewound in "
            f"{outcome.seconds:.2f}s, {outcome.bytes_copied / 2**20:.1f} MiB copied"
        )
    finally:
        pair.destroy()
