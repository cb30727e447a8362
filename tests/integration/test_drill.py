"""The restore drill: scratch restore of a shipped base backup, replay, query, cleanup.

The real tests run `logship drill` as the postgres OS user against a real primary
shipping over a real sshd (the `deployment` fixture). Pure pieces (choosing the
scratch folder, comparing segments, reading where replay ended) are tested directly.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
from pathlib import Path, PurePosixPath

import pytest
from factories import wal
from offline_config import write_offline_config
from restore_command_shell import expand_placeholders

from logship.cli.main import build_parser
from logship.config.load import load_config
from logship.demo_sandbox.deployment import Deployment, wait_for
from logship.demo_sandbox.osuser import is_root
from logship.engines.postgresql.drill import (
    LOCK_NAME,
    DrillResult,
    check_socket_path,
    drill_settings,
    last_replayed_segment,
    newest_segment,
    newest_shipped_segment,
    processes_in,
    remove_stale_runs,
    replay_reached,
    run_drill,
    scratch_lock,
    scratch_root,
    stop_scratch_server,
)
from logship.engines.postgresql.restore_wal import restore_wal
from logship.engines.postgresql.standby_restore import local_peer_hba, write_recovery_config
from logship.errors import ConfigError, OperationFailed, SafetyRefusal, UsageError
from logship.manifest import BackupRecord, SiteLayout
from logship.ship.localdir import LocalDirTransport
from logship.ship.shipper import ship_file
from logship.spool import SpoolEntry

LAYOUT = SiteLayout.for_connector(PurePosixPath("/srv/incoming"), "orders")
MIB16 = 16 * 1024 * 1024


# -- pure pieces -------------------------------------------------------------------------


def test_scratch_dir_defaults_under_the_site_and_refuses_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "standby" / "data"
    assert scratch_root(None, LAYOUT, data) == Path("/srv/incoming/orders/drill")
    assert scratch_root(tmp_path / "scratch", LAYOUT, data) == tmp_path / "scratch"
    assert scratch_root(tmp_path / "standby" / "data2", LAYOUT, data) == tmp_path / "standby/data2"
    for inside in (data, data / "drill", data / "base" / "x"):
        with pytest.raises(SafetyRefusal, match=r"inside the standby's data dir"):
            scratch_root(inside, LAYOUT, data)
    for above in (tmp_path / "standby", tmp_path, Path("/")):
        with pytest.raises(SafetyRefusal, match=r"holds the standby's data dir"):
            scratch_root(above, LAYOUT, data)
    # A symlink is no way around it.
    data.mkdir(parents=True)
    (tmp_path / "alias").symlink_to(data)
    with pytest.raises(SafetyRefusal):
        scratch_root(tmp_path / "alias" / "drill", LAYOUT, data)


def test_socket_path_length_is_checked(tmp_path: Path) -> None:
    check_socket_path(Path("/var/lib/logship/incoming/orders/drill/run-4194304"))
    with pytest.raises(ConfigError, match=r"\[drill\].scratch_dir"):
        check_socket_path(Path("/" + "d" * 90) / "run-4194304")


def test_newest_segment_ignores_other_wal_files() -> None:
    names = [
        wal(0x21),
        wal(0x1F),
        f"{wal(0x30)}.partial",
        f"{wal(0x31)}.00000028.backup",
        "00000009.history",
        ".tmp.x",
        "RECOVERYXLOG",
    ]
    assert newest_segment(names) == wal(0x21)
    # Segment numbers continue across timelines: position first, then the timeline.
    assert newest_segment([wal(0x22, 1), wal(0x21, 2)]) == wal(0x22, 1)
    assert newest_segment([wal(0x22, 1), wal(0x22, 2)]) == wal(0x22, 2)
    assert newest_segment([wal(0xFF), wal(0x100)]) == wal(0x100)  # 00..FF then log 1
    assert newest_segment(["00000002.history"]) is None


def test_newest_shipped_segment_reads_manifest_names(tmp_path: Path) -> None:
    assert newest_shipped_segment(tmp_path / "missing") is None
    for name in (wal(3), wal(5), "00000002.history", f"{wal(9)}.partial"):
        (tmp_path / f"{name}.json").write_text("{}")
    (tmp_path / f".tmp.{wal(12)}.json.1234").write_text("{}")  # an upload in flight
    assert newest_shipped_segment(tmp_path) == wal(5)


def test_replay_reached_compares_positions_not_timelines() -> None:
    assert replay_reached(wal(7), wal(7))
    assert replay_reached(wal(8, 2), wal(7, 1))
    assert replay_reached(wal(7, 1), wal(7, 2))  # same place in the stream
    assert not replay_reached(wal(6, 2), wal(7, 1))
    assert not replay_reached(wal(0xFF), wal(0x100))
    assert replay_reached(wal(1), None)  # nothing shipped yet: only the backup counts


def test_last_replayed_segment_from_the_timeline_history() -> None:
    # Ended mid-segment: that segment.
    assert last_replayed_segment("1\t0/7000060\tno recovery target specified\n", MIB16) == wal(7)
    # Ended on a boundary (the last segment closed with a WAL switch): the one before.
    assert last_replayed_segment("1\t0/8000000\tno recovery target specified\n", MIB16) == wal(7)
    history = (
        "1\t0/3000060\tno recovery target specified\n\n2\t1/2000028\tno recovery target specified\n"
    )
    assert last_replayed_segment(history, MIB16) == wal(0x102, 2)
    with pytest.raises(ValueError):
        last_replayed_segment("# nothing\n", MIB16)


def _unquote(literal: str) -> str:
    assert literal.startswith("'") and literal.endswith("'")
    return literal[1:-1].replace("''", "'").replace("\\\\", "\\")


def test_drill_settings_isolate_the_scratch_copy() -> None:
    run = Path("/srv/drill/run-77")
    settings = dict(
        drill_settings(run, run / "data", 5999, "/venv/bin/python", Path("/etc/l.toml"), "orders")
    )
    assert settings["listen_addresses"] == "''"
    assert settings["unix_socket_directories"] == "'/srv/drill/run-77'"
    assert settings["port"] == "5999"
    assert settings["hba_file"] == "'/srv/drill/run-77/data/pg_hba.conf'"
    assert settings["hot_standby"] == "off"
    assert settings["archive_mode"] == "off"
    assert settings["archive_cleanup_command"] == "''"
    assert settings["primary_conninfo"] == "''"
    assert settings["recovery_target_timeline"] == "'latest'"
    argv = shlex.split(
        expand_placeholders(_unquote(settings["restore_command"]), "00000002.history", "pg_wal/X")
    )
    assert argv[3:] == [
        "--config",
        "/etc/l.toml",
        "restore-wal",
        "--no-mark",
        "orders",
        "00000002.history",
        "pg_wal/X",
    ]
    parsed = build_parser().parse_args(argv[3:])
    assert parsed.no_mark and parsed.connector == "orders" and parsed.dest == "pg_wal/X"
    assert not build_parser().parse_args(["restore-wal", "orders", "a", "b"]).no_mark


def test_recovery_config_for_a_scratch_copy(tmp_path: Path) -> None:
    (tmp_path / "pg_hba.conf").write_text("host all all 0.0.0.0/0 md5\n")
    (tmp_path / "standby.signal").write_text("")
    (tmp_path / "postmaster.opts").write_text("x")
    write_recovery_config(
        tmp_path,
        [("hot_standby", "off")],
        header="# drill",
        signal_name="recovery.signal",
        hba=local_peer_hba("postgres", "scratch", replication=False),
        replace_hba=True,
        writer="logship drill",
    )
    hba = (tmp_path / "pg_hba.conf").read_text()
    assert "0.0.0.0" not in hba and "local   all           postgres   peer" in hba
    assert "replication" not in hba
    assert (tmp_path / "recovery.signal").exists()
    assert not (tmp_path / "standby.signal").exists()  # both would mean standby mode
    assert not (tmp_path / "postmaster.opts").exists()
    assert (tmp_path / "postgresql.auto.conf").read_text() == "# drill\nhot_standby = off\n"


def test_restore_wal_no_mark_leaves_restored_json_alone(tmp_path: Path) -> None:
    site = tmp_path / "incoming"
    layout = SiteLayout.for_connector(PurePosixPath(site), "main")
    transport = LocalDirTransport()
    transport.makedirs(layout.wal_dir)
    transport.makedirs(layout.manifest_dir)
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / wal(7)).write_bytes(b"w" * 8192)
    entry = SpoolEntry("main", tmp_path / "spool" / wal(7), 8192, 1.0)
    ship_file(transport, layout, entry, "zstd", lambda: 2.0)
    restore_wal(site, "main", wal(7), tmp_path / "dest", mark=False)
    assert (tmp_path / "dest").read_bytes() == b"w" * 8192
    assert not Path(layout.restored_marker).exists()
    restore_wal(site, "main", wal(7), tmp_path / "dest")
    assert json.loads(Path(layout.restored_marker).read_text())["name"] == wal(7)


def test_drill_result_json_round_trip() -> None:
    result = DrillResult(
        connector="orders",
        backup_id="20260101T000000Z",
        started_at=10.0,
        finished_at=20.0,
        passed=True,
        restore_s=3.0,
        replay_s=4.5,
        replayed_to_wal=wal(9),
        newest_shipped_wal=wal(9),
        query_result="415",
        start_wal=wal(3),
    )
    assert DrillResult.from_json(result.to_json()) == result
    assert result.rebuild_s == 7.5
    assert set(json.loads(result.to_json())) == {
        "connector",
        "backup_id",
        "started_at",
        "finished_at",
        "passed",
        "restore_s",
        "replay_s",
        "replayed_to_wal",
        "newest_shipped_wal",
        "query_result",
        "error",
        "start_wal",
    }
    newer = json.loads(result.to_json()) | {"added_later": 1}
    assert DrillResult.from_json(json.dumps(newer)) == result
    failed = DrillResult("orders", None, 1.0, 2.0, False, error="no base backup")
    assert DrillResult.from_json(failed.to_json()).rebuild_s is None
    for garbage in ("[]", "{", '{"connector": "x"}'):
        with pytest.raises(ValueError, match="not a drill result"):
            DrillResult.from_json(garbage)


def test_stale_pid_files_never_aim_at_strangers(tmp_path: Path) -> None:
    data = tmp_path / "run-1" / "data"
    data.mkdir(parents=True)
    assert stop_scratch_server(None, data)  # no postmaster.pid: nothing runs there
    # A pid file naming a live process that is not this folder's postmaster (ourselves).
    (data / "postmaster.pid").write_text(f"{os.getpid()}\n{data}\n")
    assert stop_scratch_server(None, data)  # and we are still here to assert it
    (tmp_path / "keep").mkdir()
    (tmp_path / LOCK_NAME).write_text("")
    remove_stale_runs(tmp_path, None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_NAME, "keep"]


def test_whatever_works_in_a_scratch_data_dir_is_stopped(tmp_path: Path) -> None:
    data = tmp_path / "run-2" / "data"
    data.mkdir(parents=True)
    # No postmaster.pid yet (as in the instant after pg_ctl forked): still found.
    child = subprocess.Popen(["sleep", "300"], cwd=data)
    try:
        assert processes_in(data) == [child.pid]
        assert stop_scratch_server(None, data)
        assert child.wait(timeout=10) == -signal.SIGKILL
        assert processes_in(data) == []
    finally:
        child.kill()
        child.wait()


def test_one_drill_at_a_time_per_scratch_folder(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    with scratch_lock(scratch):
        assert scratch.stat().st_mode & 0o777 == 0o700
        busy = pytest.raises(OperationFailed, match="another drill is running")
        with busy, scratch_lock(scratch):
            pass
    with scratch_lock(scratch):
        pass  # released with its holder


@pytest.mark.skipif(not is_root(), reason="checks the refusal to run as root")
def test_run_drill_refuses_root(tmp_path: Path) -> None:
    config = load_config(write_offline_config(tmp_path, {"orders": "60s"}))
    with pytest.raises(UsageError, match="not root"):
        run_drill(config, "orders", None)


# -- real primary, real sshd, real standby -----------------------------------------------


def _site(dep: Deployment) -> Path:
    return dep.incoming / dep.connector


def _shipped(dep: Deployment, name: str) -> bool:
    return (_site(dep) / "manifest" / f"{name}.json").exists()


def _close_segments(dep: Deployment, count: int, prefix: str) -> list[str]:
    """Write a table into each of `count` segments and close them; their names."""
    closed = []
    for i in range(count):
        dep.primary.execute(f"create table {prefix}{i} as select generate_series(1, 500) as n")
        ((segment,),) = dep.primary.query("select pg_walfile_name(pg_current_wal_lsn())")
        dep.switch_wal()
        closed.append(str(segment))
    return closed


def _wait_shipped(dep: Deployment, names: list[str]) -> None:
    def shipped() -> bool:
        daemon = dep.daemon
        if daemon is not None and daemon.poll() is not None:  # say so now, not in 60 s
            log = dep.daemon_log.read_text(errors="replace")[-2000:]
            raise AssertionError(f"logship run exited {daemon.returncode}:\n{log}")
        return all(_shipped(dep, n) for n in names)

    wait_for(shipped, 60, f"{names} shipped")


def _number(segment: str) -> int:
    """A 16 MiB segment's number in the WAL stream."""
    return int(segment[8:16], 16) * 256 + int(segment[16:24], 16)


def _drill(dep: Deployment, *args: str) -> tuple[int, DrillResult, str]:
    proc = dep.logship("drill", dep.connector, "--json", *args, check=False)
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout + proc.stderr
    return proc.returncode, DrillResult.from_json(proc.stdout), proc.stderr


def _backup(dep: Deployment) -> BackupRecord:
    (record_path,) = (_site(dep) / "base").glob("*/backup.json")
    return BackupRecord.from_json(record_path.read_bytes())


def _runs_left(dep: Deployment) -> list[str]:
    scratch = _site(dep) / "drill"
    return sorted(p.name for p in scratch.iterdir() if p.name != LOCK_NAME)


def _on_site(dep: Deployment, backup_id: str) -> DrillResult:
    path = _site(dep) / "drills" / f"{backup_id}.json"
    assert path.stat().st_mode & 0o777 == 0o600
    return DrillResult.from_json(path.read_bytes())


def _set_drill_query(dep: Deployment, query: str) -> None:
    connector = dep.config_dir / "connectors" / f"{dep.connector}.toml"
    connector.write_text(connector.read_text() + f'\n[drill]\nquery = "{query}"\n')


@pytest.mark.e2e
def test_drill_replays_to_the_newest_segment_and_leaves_the_standby_alone(
    deployment: Deployment,
) -> None:
    dep = deployment
    _set_drill_query(dep, "select count(*) || ' rows' from after_backup2")
    dep.start_daemon()
    dep.standby_up()
    closed = _close_segments(dep, 3, "after_backup")
    _wait_shipped(dep, closed)
    # Nothing arrives while the drill runs, so the real standby's progress note only
    # changes if the drill writes it.
    dep.stop_daemon()
    newest = newest_shipped_segment(_site(dep) / "manifest")
    assert newest is not None and newest >= closed[-1]
    marker = _site(dep) / "restored.json"
    wait_for(
        lambda: marker.exists() and json.loads(marker.read_text())["name"] == newest,
        60,
        f"the standby restored {newest}",
    )
    before = (marker.read_bytes(), marker.stat().st_mtime_ns)

    code, result, stderr = _drill(dep)

    assert code == 0, result.error or stderr
    assert result.passed and result.error is None
    assert result.backup_id == _backup(dep).backup_id
    assert result.restore_s is not None and result.restore_s > 0
    assert result.replay_s is not None and result.replay_s > 0
    assert result.replayed_to_wal == result.newest_shipped_wal == newest
    assert result.query_result == "500 rows"  # created after the backup: replayed WAL
    assert result.started_at < result.finished_at
    assert _runs_left(dep) == []
    assert _on_site(dep, result.backup_id) == result
    assert (marker.read_bytes(), marker.stat().st_mtime_ns) == before
    # The scratch copy's new timeline stayed in the scratch folder.
    assert not list((_site(dep) / "manifest").glob("*.history.json"))
    assert not list((_site(dep) / "wal").glob("*.history*"))

    # The real standby never noticed: it still replays what arrives next.
    assert dep.standby.query("select pg_is_in_recovery()") == [(True,)]
    dep.start_daemon()
    dep.primary.execute("create table after_drill as select 42 as answer")
    lsn = dep.switch_wal()
    dep.wait_replayed(lsn, timeout=60)
    assert dep.standby.query("select answer from after_drill") == [(42,)]
    assert marker.read_bytes() != before[0]

    # A human run names the same facts, on stdout, and exits 0.
    dep.stop_daemon()
    human = dep.logship("drill", dep.connector, "--backup", "latest")
    assert "passed" in human.stdout and result.backup_id in human.stdout
    assert "500 rows" in human.stdout and human.stderr == ""
    assert _runs_left(dep) == []


@pytest.mark.e2e
def test_drill_of_a_corrupt_backup_fails_loudly(deployment: Deployment) -> None:
    dep = deployment
    dep.logship("base-backup", dep.connector)
    record = _backup(dep)
    stored = _site(dep) / "base" / record.backup_id / record.stored_name
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))

    code, result, _stderr = _drill(dep, "--backup", record.backup_id)

    assert code == 1
    assert not result.passed and result.backup_id == record.backup_id
    assert result.error is not None and "checksum mismatch" in result.error
    assert result.restore_s is None and result.replay_s is None
    assert _runs_left(dep) == []
    assert _on_site(dep, record.backup_id) == result
    # Without --json: nothing on stdout, one line on stderr, exit 1.
    plain = dep.logship("drill", dep.connector, check=False)
    assert plain.returncode == 1 and plain.stdout == ""
    (line,) = plain.stderr.strip().splitlines()
    assert line.startswith("logship drill: ") and "checksum mismatch" in line
    assert _runs_left(dep) == []


@pytest.mark.e2e
def test_drill_fails_when_replay_stops_short_of_the_newest_segment(
    deployment: Deployment,
) -> None:
    dep = deployment
    dep.start_daemon()
    dep.logship("base-backup", dep.connector)
    record = _backup(dep)
    closed = _close_segments(dep, 3, "after_backup")
    assert record.stop_wal is not None and closed[0][8:] > record.stop_wal[8:]
    _wait_shipped(dep, closed)
    dep.stop_daemon()
    bad = json.loads((_site(dep) / "manifest" / f"{closed[1]}.json").read_text())
    stored = _site(dep) / "wal" / bad["stored_name"]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))

    code, result, _stderr = _drill(dep)

    assert code == 1 and not result.passed
    # Replay ended in the segment before the refused one, whatever lies between.
    assert result.replayed_to_wal is not None
    assert _number(result.replayed_to_wal) == _number(closed[1]) - 1
    assert result.newest_shipped_wal is not None and result.newest_shipped_wal >= closed[2]
    assert result.error is not None
    assert f"replay stopped at {result.replayed_to_wal}" in result.error
    assert f"the site has WAL up to {result.newest_shipped_wal}" in result.error
    assert "checksum mismatch" in result.error  # restore-wal's refusal, from the log
    assert result.restore_s is not None and result.replay_s is not None
    assert _runs_left(dep) == []
    assert _on_site(dep, record.backup_id) == result
