"""Parsers for what a rewind reads from a data directory, the other site and
PostgreSQL's tools: the real shapes, and hostile ones refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from logship.engines.postgresql.rewind_parse import (
    parse_controldata,
    parse_rewind_line,
    parse_waldump_checkpoints,
)
from logship.engines.postgresql.rewind_wal import find_divergence, timeline_of_segment
from logship.engines.postgresql.timeline_history import HistoryEntry as Entry
from logship.engines.postgresql.walnames import lsn_to_int

SEG = 16 * 1024 * 1024

CONTROLDATA = """\
pg_control version number:            1300
Database system identifier:           7716729191145881392
Database cluster state:               shut down
Latest checkpoint location:           0/3029C30
Latest checkpoint's REDO location:    0/3029C30
Latest checkpoint's TimeLineID:       1
Latest checkpoint's full_page_writes: on
Minimum recovery ending location:     0/0
wal_log_hints setting:                on
Bytes per WAL segment:                16777216
Data page checksum version:           0
"""


def test_controldata_fields() -> None:
    control = parse_controldata(CONTROLDATA)
    assert control.system_identifier == 7716729191145881392
    assert control.state == "shut down"
    assert control.checkpoint_lsn == lsn_to_int("0/3029C30")
    assert control.timeline == 1 and control.wal_log_hints and control.checksum_version == 0
    assert control.segment_size == SEG and control.min_recovery_lsn == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("Bytes per WAL segment:                16777216", ""), "lacks segment_size"),
        (("16777216", "16777215"), "power of two"),
        (("16777216", "512"), "power of two"),
        (("0/3029C30\nLatest checkpoint's REDO", "0/../../x\nLatest checkpoint's REDO"), "LSN"),
        (("wal_log_hints setting:                on", "wal_log_hints setting: yes"), "on or off"),
        (("shut down\n", "shut down; rm -rf /\n"), "cluster state"),
        (("TimeLineID:       1", "TimeLineID:       0"), "TimeLineID"),
        (("7716729191145881392", "99999999999999999999"), "system identifier"),
        (("Database cluster state", "Database cluster state: x\nDatabase cluster state"), "twice"),
    ],
)
def test_controldata_refuses_what_it_does_not_know(change: tuple[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_controldata(CONTROLDATA.replace(*change, 1))


def test_controldata_bounded() -> None:
    with pytest.raises(ValueError, match="too long"):
        parse_controldata(CONTROLDATA + "x" * 70_000)


WALDUMP = (
    "rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/02000060, "
    "prev 0/02000028, desc: CHECKPOINT_ONLINE redo 0/2000028; tli 1; prev tli 1; fpw true\n"
    "rmgr: XLOG        len (rec/tot):     49/   137, tx:          0, lsn: 0/020000D8, "
    "prev 0/02000060, desc: FPI_FOR_HINT , blkref #0: rel 1663/5/1259 blk 0 FPW\n"
    "rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/03029C30, "
    "prev 0/03029BF8, desc: CHECKPOINT_SHUTDOWN redo 0/3029C30; tli 2; prev tli 2; fpw true\n"
    "rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: ../03029C30, "
    "prev 0/03029BF8, desc: CHECKPOINT_SHUTDOWN redo 0/3029C30; tli 2; prev tli 2; fpw true\n"
    'pg_waldump: error: could not find file "000000010000000000000004"\n'
)


def test_waldump_checkpoints() -> None:
    found = parse_waldump_checkpoints(WALDUMP)
    assert [(c.lsn, c.redo_lsn, c.timeline) for c in found] == [
        (lsn_to_int("0/2000060"), lsn_to_int("0/2000028"), 1),
        (lsn_to_int("0/3029C30"), lsn_to_int("0/3029C30"), 2),
    ]


def test_rewind_progress_lines() -> None:
    need = parse_rewind_line(
        "pg_rewind: need to copy 51 MB (total source directory size is 220 MB)"
    )
    assert need.copy_total_bytes == 51 * 2**20 and need.source_total_bytes == 220 * 2**20
    assert parse_rewind_line("52416/52416 kB (100%) copied").copied_bytes == 52416 * 1024
    diverged = parse_rewind_line(
        "pg_rewind: servers diverged at WAL location 0/3018058 on timeline 1"
    )
    assert diverged.diverged_at == lsn_to_int("0/3018058")
    assert parse_rewind_line("pg_rewind: no rewind required").no_rewind_required
    error = parse_rewind_line('pg_rewind: error: could not open file "x": No such file')
    assert error.error == 'error: could not open file "x": No such file'
    assert parse_rewind_line("pg_rewind: need to copy 9" + "9" * 40 + " MB (total") == (
        parse_rewind_line("")
    )


def test_divergence_is_the_last_common_timeline() -> None:
    # The copy was promoted at 0/3018058 from timeline 1; the old primary stayed on 1.
    assert find_divergence(1, [], 2, [Entry(1, 0x3018058, "")]) == (0x3018058, 1)
    # Same timeline: nothing to rewind from.
    assert find_divergence(2, [Entry(1, 5, "")], 2, [Entry(1, 5, "")]) is None
    # Old on 3 (after an earlier switch at 0x100), the new one branched from 2 at 0x900.
    assert find_divergence(
        3,
        [Entry(1, 0x100, ""), Entry(2, 0x500, "")],
        4,
        [Entry(1, 0x100, ""), Entry(2, 0x900, "")],
    ) == (0x500, 2)
    assert find_divergence(1, [], 7, [Entry(5, 1, "")]) is None


def test_segment_timeline_follows_the_history() -> None:
    history = [Entry(1, 3 * SEG + 100, "")]
    # The segment holding the switch was copied onto timeline 2 and is read there.
    assert timeline_of_segment(2, SEG, 2, history) == 1
    assert timeline_of_segment(3, SEG, 2, history) == 2
    assert timeline_of_segment(4, SEG, 2, history) == 2


def test_only_whole_regular_segments_in_pg_wal_count(tmp_path: Path) -> None:
    from logship.engines.postgresql.rewind_wal import _WalView

    pg_wal = tmp_path / "pg_wal"
    pg_wal.mkdir()
    whole, short, linked = (
        "000000010000000000000001",
        "000000010000000000000002",
        "000000010000000000000003",
    )
    (pg_wal / whole).write_bytes(b"\0" * SEG)
    (pg_wal / short).write_bytes(b"\0" * 10)
    (tmp_path / "elsewhere").write_bytes(b"\0" * SEG)
    (pg_wal / linked).symlink_to(tmp_path / "elsewhere")

    def never(*_args: object) -> subprocess.CompletedProcess[str]:
        raise AssertionError("no restore_command is configured")

    view = _WalView(pg_wal, SEG, None, never)
    try:
        assert view.available(whole)
        assert not view.available(short) and not view.available(linked)
        assert not view.available("000000010000000000000004")
    finally:
        view.close()


def test_only_a_password_file_written_for_pg_rewind_is_handed_over(tmp_path: Path) -> None:
    import os

    from logship.engines.postgresql.rewind_run import _hand_passfile_to_owner
    from logship.engines.postgresql.secret import dsn_for_child

    if os.geteuid() != 0:
        pytest.skip("handing files to another user needs root")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    os.chown(data_dir, 65534, -1)
    mine = tmp_path / "mine" / ".pgpass"
    mine.parent.mkdir()
    mine.write_text("*:*:*:*:x\n")
    named = f"host=db passfile={mine}"
    with dsn_for_child(named) as child:
        _hand_passfile_to_owner(named, child.dsn, data_dir)
    assert mine.stat().st_uid == 0 and mine.parent.stat().st_uid == 0
    with_password = f"host=db passfile={mine} password=s3cret"
    with dsn_for_child(with_password) as child:
        _hand_passfile_to_owner(with_password, child.dsn, data_dir)
        written = Path(child.dsn.split("passfile=")[1].split()[0].strip("'"))
        assert written != mine and written.stat().st_uid == 65534
        assert written.parent.stat().st_uid == 65534
    assert mine.stat().st_uid == 0


def test_a_missing_data_dir_is_one_clear_reason(tmp_path: Path) -> None:
    from logship.engines.postgresql.rewind import rewind_safety

    safety = rewind_safety(tmp_path / "nowhere", None, "host=127.0.0.1 port=1")
    assert not safety.safe
    assert safety.reasons == [
        f"cannot reach the data dir {tmp_path / 'nowhere'}: No such file or directory"
    ]
