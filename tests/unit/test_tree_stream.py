"""The mirror's reading of tree-receive's answers (pure logic: a fake channel)."""

from __future__ import annotations

import json

import pytest

from logship.engines.files.stream import landed_line, reply_line
from logship.engines.files.stream_sender import BatchStream


class _Channel:
    """Hands out a fixed byte string in pieces of the given sizes, then EOF."""

    def __init__(self, data: bytes, pieces: list[int]) -> None:
        self._data = data
        self._pieces = pieces

    def recv(self, size: int) -> bytes:
        take = min(self._pieces.pop(0) if self._pieces else size, size)
        piece, self._data = self._data[:take], self._data[take:]
        return piece


def _stream(data: bytes, pieces: list[int]) -> BatchStream:
    return BatchStream(_Channel(data, pieces), ["logship", "tree-receive", "app"])  # type: ignore[arg-type]


@pytest.mark.parametrize("index", [0, 7, 511, 123456])
def test_the_landed_line_is_the_json_reply_byte_for_byte(index: int) -> None:
    assert landed_line(index) == reply_line({"i": index, "error": None})


@pytest.mark.parametrize("pieces", [[], [1] * 400, [5, 17, 3, 64, 1, 2, 1000]])
def test_answers_split_anywhere_are_read_whole_and_in_order(pieces: list[int]) -> None:
    answers = [None, "PermissionError: [Errno 13] Permission denied", None, None]
    data = b"".join(
        landed_line(i) if error is None else reply_line({"i": i, "error": error})
        for i, error in enumerate(answers)
    )
    data += reply_line({"done": 4}) + landed_line(0) + reply_line({"done": 1})
    stream = _stream(data, list(pieces))
    assert stream.collect(4) == answers
    assert stream.collect(1) == [None]


def test_an_answer_out_of_order_is_a_broken_stream() -> None:
    data = landed_line(1) + landed_line(0) + reply_line({"done": 2})
    with pytest.raises(OSError, match="for file 0"):
        _stream(data, []).collect(2)


def test_a_receiver_that_ends_mid_batch_is_an_error() -> None:
    data = landed_line(0) + b'{"i": 1, "err'
    stream = _stream(data, [])
    with pytest.raises(OSError, match="tree-receive said"):
        stream.collect(3)


def test_a_receiver_that_ends_between_lines_is_an_error() -> None:
    with pytest.raises(OSError, match="tree-receive ended"):
        _stream(landed_line(0), []).collect(2)


def test_a_line_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(OSError, match="tree-receive said"):
        _stream(json.dumps([1, 2]).encode() + b"\n", []).collect(1)
