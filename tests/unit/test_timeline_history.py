"""Timeline history files come from the other site: valid ones parse as PostgreSQL
reads them, and every hostile or damaged one gives one OperationFailed line, never
another exception and never a wrong divergence point."""

from __future__ import annotations

import contextlib
import os
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logship.engines.postgresql.timeline_history import (
    MAX_HISTORY_BYTES,
    MAX_HISTORY_LINES,
    HistoryEntry,
    divergence_point,
    history_timeline,
    parse_history,
    parse_lsn,
    read_history_file,
)
from logship.errors import OperationFailed

# As PostgreSQL 15 writes them (writeTimeLineHistory): parent, switch point, reason.
TIMELINE_4 = (
    b"1\t0/30020C8\tno recovery target specified\n"
    b"\n"
    b'2\t0/5000000\tat restore point "before upgrade"\n'
    b"\n"
    b"3\t1/A0000028\tbefore 2026-12-08 00:50:01.001975+00\n"
)


def test_a_history_as_postgresql_writes_it() -> None:
    entries = parse_history(TIMELINE_4, 4)
    assert entries == [
        HistoryEntry(1, 0x30020C8, "no recovery target specified"),
        HistoryEntry(2, 0x5000000, 'at restore point "before upgrade"'),
        HistoryEntry(3, (1 << 32) | 0xA0000028, "before 2026-12-08 00:50:01.001975+00"),
    ]
    assert entries[2].switch_lsn_text == "1/A0000028"


def test_comments_blank_lines_spaces_and_no_reason_are_accepted_as_postgresql_does() -> None:
    data = b"# made by hand\n   \n\t# indented comment\n  1 0/30020C8\n2\t0/4000000\t\r\n"
    assert parse_history(data, 3) == [
        HistoryEntry(1, 0x30020C8, ""),
        HistoryEntry(2, 0x4000000, ""),
    ]


def test_a_reason_in_another_encoding_is_kept_for_display() -> None:
    entries = parse_history(b'1\t0/3000000\tat restore point "caf\xe9"\n', 2)
    assert entries[0].switch_lsn == 0x3000000
    assert entries[0].reason.startswith('at restore point "caf')


def test_the_divergence_point_is_where_the_old_timeline_was_left() -> None:
    entries = parse_history(TIMELINE_4, 4)
    assert divergence_point(entries, 4, 1) == 0x30020C8
    assert divergence_point(entries, 4, 2) == 0x5000000
    assert divergence_point(entries, 4, 3) == (1 << 32) | 0xA0000028


def test_no_divergence_point_for_a_timeline_that_is_not_an_ancestor() -> None:
    entries = parse_history(b"1\t0/3000000\tx\n3\t0/5000000\tx\n", 5)
    with pytest.raises(OperationFailed, match="timeline 2 of the old primary is not an ancestor"):
        divergence_point(entries, 5, 2)
    with pytest.raises(OperationFailed, match="not an ancestor"):
        divergence_point(entries, 5, 7)
    with pytest.raises(OperationFailed, match="the new primary's own"):
        divergence_point(entries, 5, 5)


HOSTILE = {
    "garbage": b"hello world\n",
    "binary": bytes(range(1, 256)),
    "no switch point": b"1\n",
    "no timeline": b"\t0/3000000\treason\n",
    "timeline of 11 digits": b"99999999999\t0/3000000\tx\n",
    "timeline past 32 bits": b"4294967296\t0/3000000\tx\n",
    "timeline 0": b"0\t0/3000000\tx\n",
    "signed timeline": b"+1\t0/3000000\tx\n",
    "LSN half of 9 digits": b"1\t0/123456789\tx\n",
    "LSN with underscore": b"1\t0/30_00\tx\n",
    "LSN not hex": b"1\t0/3G00000\tx\n",
    "LSN without slash": b"1\t3000000\tx\n",
    "LSN 0/0": b"1\t0/0\tx\n",
    "decreasing LSNs": b"1\t0/5000000\tx\n2\t0/3000000\tx\n",
    "equal LSNs": b"1\t0/5000000\tx\n2\t0/5000000\tx\n",
    "decreasing timelines": b"2\t0/3000000\tx\n1\t0/5000000\tx\n",
    "repeated timeline": b"1\t0/3000000\tx\n1\t0/5000000\tx\n",
    "timeline equal to the file's": b"1\t0/3000000\tx\n3\t0/5000000\tx\n",
    "timeline above the file's": b"7\t0/3000000\tx\n",
    "NUL byte": b"1\t0/3000000\tx\x00y\n",
    "NUL after a valid line": b"1\t0/3000000\tx\n\x00",
    "control character in the reason": b"1\t0/3000000\tx\x1b[2Jy\n",
    "only comments": b"# nothing here\n\n",
    "empty": b"",
    "over-long line": b"1\t0/3000000\t" + b"r" * 2000 + b"\n",
    "over-long file": b"# " + b"x" * (MAX_HISTORY_BYTES + 1),
    "too many lines": b"#\n" * (MAX_HISTORY_LINES + 1),
    "not UTF-8 outside the reason": b"1\xff\t0/3000000\tx\n",
}


@pytest.mark.parametrize("data", list(HOSTILE.values()), ids=list(HOSTILE))
def test_hostile_history_is_refused_in_one_line(data: bytes) -> None:
    with pytest.raises(OperationFailed) as info:
        parse_history(data, 3, source="00000003.history")
    message = str(info.value)
    assert "\n" not in message and len(message) < 400
    assert "00000003.history" in message


@given(st.binary(max_size=600))
@settings(max_examples=400, deadline=None)
def test_any_bytes_parse_or_fail_cleanly(data: bytes) -> None:
    try:
        entries = parse_history(data, 5)
    except OperationFailed:
        return
    assert 1 <= len(entries) <= 4
    assert all(a.parent_tli < b.parent_tli for a, b in pairwise(entries))
    assert all(a.switch_lsn < b.switch_lsn for a, b in pairwise(entries))
    assert all(e.parent_tli < 5 and e.switch_lsn > 0 for e in entries)


@given(
    st.lists(
        st.tuples(
            st.integers(0, 5),
            st.text(alphabet="0123456789ABCDEF/\t #x", max_size=24),
        ),
        max_size=6,
    )
)
@settings(max_examples=300, deadline=None)
def test_near_valid_lines_parse_or_fail_cleanly(lines: list[tuple[int, str]]) -> None:
    data = "".join(f"{tli}{rest}\n" for tli, rest in lines).encode()
    with contextlib.suppress(OperationFailed):
        parse_history(data, 5)


def test_a_timeline_must_be_above_1_to_have_a_history() -> None:
    for timeline in (0, 1, 1 << 32):
        with pytest.raises(OperationFailed, match="cannot have a history file"):
            parse_history(b"1\t0/3000000\tx\n", timeline)


@pytest.mark.parametrize(
    "name",
    [
        "00000001.history",
        "0000000g.history",
        "00000002.history.tmp",
        "../00000002.history",
        "00000002",
        "000000020000000000000003",
    ],
)
def test_history_file_names_are_strict(name: str) -> None:
    with pytest.raises(OperationFailed):
        history_timeline(name)


def test_history_file_name_gives_its_timeline() -> None:
    assert history_timeline("0000000A.history") == 10


@pytest.mark.parametrize("text", ["0/30020C8", "1/A0000028", "FFFFFFFF/FFFFFFFF"])
def test_lsn_text(text: str) -> None:
    high, low = text.split("/")
    assert parse_lsn(text) == (int(high, 16) << 32) | int(low, 16)


@pytest.mark.parametrize("text", ["", "0/", "/1", " 0/1", "0/1 ", "-0/1", "0x0/1", "0/_1", "1/2/3"])
def test_lsn_text_is_strict(text: str) -> None:
    with pytest.raises(OperationFailed, match="is not an LSN"):
        parse_lsn(text)


def test_reading_a_history_file(tmp_path: Path) -> None:
    path = tmp_path / "00000004.history"
    path.write_bytes(TIMELINE_4)
    timeline, entries = read_history_file(path)
    assert timeline == 4 and len(entries) == 3


def test_a_history_file_behind_a_link_is_not_read(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(TIMELINE_4)
    (tmp_path / "00000004.history").symlink_to(real)
    with pytest.raises(OperationFailed, match="not a link"):
        read_history_file(tmp_path / "00000004.history")


def test_a_history_file_that_is_no_regular_file_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "00000004.history").mkdir()
    with pytest.raises(OperationFailed):
        read_history_file(tmp_path / "00000004.history")
    fifo = tmp_path / "00000005.history"
    os.mkfifo(fifo)
    with pytest.raises(OperationFailed, match="not a regular file"):
        read_history_file(fifo)


def test_a_huge_history_file_is_read_no_further_than_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "00000004.history"
    with open(path, "wb") as out:
        out.truncate(1 << 30)  # sparse: a gigabyte of NULs costs no disk
    with pytest.raises(OperationFailed, match="more than"):
        read_history_file(path)
