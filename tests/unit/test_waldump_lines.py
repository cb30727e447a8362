"""pg_waldump's lines and stop messages (as PostgreSQL 15 prints them) are read
strictly: records, commits and aborts are found, the end of valid WAL is where the
next record would start, and anything else is skipped without an exception."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logship.engines.postgresql.waldump import (
    WalScan,
    parse_record,
    parse_stop,
    parse_xact_end,
    record_end,
)

SEG = 16 * 1024 * 1024

COMMIT = (
    "rmgr: Transaction len (rec/tot):     34/    34, tx:        726, lsn: 0/03003E90, "
    "prev 0/03003DF8, desc: COMMIT 2026-12-08 00:50:01.001975 UTC"
)
COMMIT_SUBXACTS = (
    "rmgr: Transaction len (rec/tot):     46/    46, tx:        730, lsn: 0/03004200, "
    "prev 0/030041C0, desc: COMMIT 2026-12-08 00:50:23.969877 UTC; subxacts: 731"
)
COMMIT_INVALS = (
    "rmgr: Transaction len (rec/tot):    405/   405, tx:        734, lsn: 0/0301C770, "
    "prev 0/0301C728, desc: COMMIT 2026-12-08 00:50:23.980471 UTC; inval msgs: catcache 80 "
    "snapshot 2608 relcache 24576"
)
ABORT = (
    "rmgr: Transaction len (rec/tot):     34/    34, tx:        729, lsn: 0/03004158, "
    "prev 0/03004050, desc: ABORT 2026-12-08 00:50:23.966542 UTC"
)
PREPARE = (
    "rmgr: Transaction len (rec/tot):    242/   242, tx:        732, lsn: 0/03004270, "
    "prev 0/03004230, desc: PREPARE gid x: 2026-12-08 00:50:23.978013 UTC"
)
COMMIT_PREPARED = (
    "rmgr: Transaction len (rec/tot):     42/    42, tx:          0, lsn: 0/03004368, "
    "prev 0/03004270, desc: COMMIT_PREPARED 732: 2026-12-08 00:50:23.978603 UTC"
)
ABORT_PREPARED = (
    "rmgr: Transaction len (rec/tot):     42/    42, tx:          0, lsn: 0/030044D0, "
    "prev 0/030043D8, desc: ABORT_PREPARED 733: 2026-12-08 00:50:23.979287 UTC"
)
INSERT = (
    "rmgr: Heap        len (rec/tot):     59/    59, tx:        727, lsn: 0/03003EB8, "
    "prev 0/03003E90, desc: INSERT off 3 flags 0x00, blkref #0: rel 1663/5/16384 blk 0"
)
CHECKPOINT = (
    "rmgr: XLOG        len (rec/tot):    114/   114, tx:          0, lsn: 0/03003F88, "
    "prev 0/03003F60, desc: CHECKPOINT_SHUTDOWN redo 0/3003F88; tli 1; prev tli 1; fpw true"
)
FIRST_RECORD_NOTE = "first record is after 0/3004000, at 0/3004018, skipping over 24 bytes"


def test_a_record_line() -> None:
    record = parse_record(INSERT)
    assert record is not None
    assert (record.rmgr, record.total_length, record.xid, record.lsn) == (
        "Heap",
        59,
        727,
        0x3003EB8,
    )
    assert record.desc.startswith("INSERT off 3")


def test_commits_and_aborts() -> None:
    ends = {}
    for line in (COMMIT, COMMIT_SUBXACTS, COMMIT_INVALS, ABORT, COMMIT_PREPARED, ABORT_PREPARED):
        record = parse_record(line)
        assert record is not None
        ended = parse_xact_end(record)
        assert ended is not None
        ends[ended.xid] = ended
    assert {xid for xid, e in ends.items() if e.committed} == {726, 730, 734, 732}
    assert {xid for xid, e in ends.items() if not e.committed} == {729, 733}
    assert ends[726].at == datetime(2026, 12, 8, 0, 50, 1, 1975, tzinfo=UTC)
    assert ends[726].lsn == 0x3003E90
    # A prepared transaction's own xid is in the description, not the record's.
    assert ends[732].lsn == 0x3004368


@pytest.mark.parametrize("line", [PREPARE, INSERT, CHECKPOINT])
def test_other_records_are_no_transaction_end(line: str) -> None:
    record = parse_record(line)
    assert record is not None
    assert parse_xact_end(record) is None


def test_commit_in_another_resource_manager_is_no_commit() -> None:
    record = parse_record(INSERT.replace("desc: INSERT off 3", "desc: COMMIT 2026-12-08 00:50"))
    assert record is not None and parse_xact_end(record) is None


def test_a_commit_with_an_impossible_date_still_counts() -> None:
    record = parse_record(COMMIT.replace("2026-12-08", "2026-13-45"))
    assert record is not None
    ended = parse_xact_end(record)
    assert ended is not None and ended.committed and ended.at is None


def test_a_timestamp_in_another_zone_is_not_taken_for_utc() -> None:
    record = parse_record(COMMIT.replace(" UTC", " CET"))
    assert record is not None and parse_xact_end(record) is None


@pytest.mark.parametrize(
    "line",
    [
        "",
        FIRST_RECORD_NOTE,
        "garbage",
        COMMIT[:40],
        COMMIT.replace("tx:        726", "tx: 99999999999"),
        COMMIT.replace("tx:        726", "tx: 4294967296"),
        COMMIT.replace("34/    34", "34/    0"),
        COMMIT.replace("34/    34", "34/ 9999999999"),
        COMMIT.replace("lsn: 0/03003E90", "lsn: 0/103003E90"),
        COMMIT.replace("lsn: 0/03003E90", "lsn: 0/03003e9g"),
        COMMIT.replace("rmgr: Transaction", "rmgr: Trans\x00action"),
        " " + COMMIT,
    ],
)
def test_lines_that_are_no_record(line: str) -> None:
    assert parse_record(line) is None


def test_a_commit_of_xid_0_is_not_counted() -> None:
    record = parse_record(COMMIT.replace("tx:        726", "tx:          0"))
    assert record is not None and parse_xact_end(record) is None


@given(st.text(max_size=300))
@settings(max_examples=500, deadline=None)
def test_any_text_is_a_record_or_skipped(line: str) -> None:
    record = parse_record(line)
    if record is not None:
        parse_xact_end(record)


@given(st.integers(0, 80))
@settings(max_examples=100, deadline=None)
def test_cut_lines_never_raise(cut: int) -> None:
    for line in (COMMIT, COMMIT_PREPARED, COMMIT_INVALS):
        record = parse_record(line[: len(line) - cut])
        if record is not None:
            parse_xact_end(record)


@pytest.mark.parametrize(
    ("lsn", "length", "next_lsn"),
    [
        # pairs of consecutive records from a real pg_waldump run
        (0x3003E90, 34, 0x3003EB8),
        (0x3002140, 7349, 0x3003DF8),
        (0x3016DE0, 8241, 0x3018E30),  # crosses a page: a short page header
        (0x301C908, 114, 0x301C980),  # "invalid record length at 0/301C980"
        (0x3003F88, 114, 0x3004000),  # ends at a page's end
    ],
)
def test_record_end_is_where_the_next_record_starts(lsn: int, length: int, next_lsn: int) -> None:
    assert record_end(lsn, length, SEG) == next_lsn


def test_record_end_across_a_segment_boundary_skips_the_long_header() -> None:
    assert record_end(SEG - 16, 32, SEG) == SEG + 40 + 16


def test_stop_at_a_torn_record_is_the_end_of_wal() -> None:
    stop = parse_stop(
        "pg_waldump: error: error in WAL record at 0/301C908: invalid record length at "
        "0/301C980: wanted 24, got 0\n"
    )
    assert stop.end_of_wal and stop.next_lsn == 0x301C980 and stop.missing_segment is None


def test_stop_at_a_recycled_page_is_the_end_of_wal() -> None:
    stop = parse_stop(
        "pg_waldump: error: error in WAL record at 0/3003F88: unexpected pageaddr 0/1004000 "
        "in log segment 000000010000000000000003, offset 16384\n"
    )
    assert stop.end_of_wal and stop.next_lsn is None


def test_no_record_at_the_start_is_the_end_of_wal() -> None:
    stop = parse_stop("pg_waldump: error: could not find a valid record after 0/5000000\n")
    assert stop.end_of_wal


def test_a_missing_segment_is_named() -> None:
    stop = parse_stop(
        'pg_waldump: error: could not find file "000000010000000000000005": '
        "No such file or directory\n"
    )
    assert not stop.end_of_wal and stop.missing_segment == "000000010000000000000005"


@pytest.mark.parametrize(
    "stderr",
    [
        "",
        "Segmentation fault\n",
        'pg_waldump: error: could not open file "000000010000000000000003": Permission denied\n',
        'pg_waldump: error: could not find file "../../etc/passwd": No such file\n',
        "pg_waldump: error: error in WAL record at 0/1: \n" + "pg_waldump: error: later failure\n",
    ],
)
def test_other_stops_are_failures(stderr: str) -> None:
    stop = parse_stop(stderr)
    assert not stop.end_of_wal and stop.missing_segment is None


def test_a_scan_counts_every_commit_and_lists_the_first_ones() -> None:
    scan = WalScan(start=0x3000000, segment_size=SEG, cap=2)
    lines = [FIRST_RECORD_NOTE, INSERT, COMMIT, ABORT, COMMIT_SUBXACTS, COMMIT_INVALS, CHECKPOINT]
    for line in lines:
        scan.add_line(line)
    assert (scan.records, scan.commits, scan.aborts, scan.unparsed) == (6, 3, 1, 1)
    assert [t.xid for t in scan.listed] == [726, 730]
    assert scan.first_commit_at == datetime(2026, 12, 8, 0, 50, 1, 1975, tzinfo=UTC)
    assert scan.last_commit_at == datetime(2026, 12, 8, 0, 50, 23, 980471, tzinfo=UTC)
    assert scan.end == record_end(0x301C770, 405, SEG)


def test_a_scan_counts_no_record_before_its_start() -> None:
    scan = WalScan(start=0x3004000, segment_size=SEG, cap=10)
    scan.add_line(COMMIT)
    assert (scan.records, scan.commits, scan.end, scan.unparsed) == (0, 0, 0, 0)


@pytest.mark.parametrize(
    ("boundary", "seen"),
    [
        (0x3003E90, True),  # where the commit starts
        (0x3003EB8, True),  # where it ends
        (0x3003E98, False),  # inside it
        (0x3004000, False),  # a page start with no record right after its header
    ],
)
def test_a_scan_shows_whether_a_point_is_a_record_boundary(boundary: int, seen: bool) -> None:
    scan = WalScan(start=boundary, segment_size=SEG, cap=10, boundary=boundary)
    scan.add_line(COMMIT)
    assert scan.boundary_seen is seen
    # A record before the counted range is not counted, but shows the boundary.
    assert scan.records == (1 if boundary <= 0x3003E90 else 0)


def test_a_record_right_after_a_page_header_proves_the_page_start_a_boundary() -> None:
    at_page = COMMIT.replace("lsn: 0/03003E90", "lsn: 0/03004018")
    scan = WalScan(start=0x3004000, segment_size=SEG, cap=10, boundary=0x3004000)
    scan.add_line(at_page)
    assert scan.boundary_seen
    at_segment = COMMIT.replace("lsn: 0/03003E90", "lsn: 0/04000028")
    scan = WalScan(start=0x4000000, segment_size=SEG, cap=10, boundary=0x4000000)
    scan.add_line(at_segment)
    assert scan.boundary_seen
    later = COMMIT.replace("lsn: 0/03003E90", "lsn: 0/04000030")  # after a continuation
    scan = WalScan(start=0x4000000, segment_size=SEG, cap=10, boundary=0x4000000)
    scan.add_line(later)
    assert not scan.boundary_seen
