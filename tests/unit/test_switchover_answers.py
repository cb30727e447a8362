"""A switchover step's answer from the other site is checked field by field:
a hostile or broken answer is one clear error, never a wrong action."""

from __future__ import annotations

import pytest

from logship.engines.postgresql.switchover_remote import Answer, argv_for
from logship.errors import OperationFailed


def _answer(**fields: object) -> Answer:
    return Answer(dict(fields), "stop at dr")


def test_good_fields_come_back_as_they_are() -> None:
    answer = _answer(
        up=True,
        lsn="0/7000028",
        timeline=2,
        segment="000000010000000000000007",
        shipped=["000000010000000000000006", "000000010000000000000007"],
        system_identifier="7301234567890123456",
        first_commit_at=1765000000.5,
    )
    assert answer.flag("up") is True
    assert answer.lsn("lsn") == "0/7000028"
    assert answer.number("timeline", 1, 2**32 - 1) == 2
    assert answer.segment("segment") == "000000010000000000000007"
    assert len(answer.segments("shipped")) == 2
    assert answer.system_id("system_identifier") == "7301234567890123456"
    assert answer.moment("first_commit_at") == 1765000000.5


@pytest.mark.parametrize(
    ("field", "value", "read"),
    [
        ("up", "yes", lambda a: a.flag("up")),
        ("lsn", "0/7000028; rm -rf /", lambda a: a.lsn("lsn")),
        ("lsn", "123456789/0", lambda a: a.lsn("lsn")),
        ("lsn", None, lambda a: a.lsn("lsn")),
        ("timeline", 0, lambda a: a.number("timeline", 1, 2**32 - 1)),
        ("timeline", True, lambda a: a.number("timeline", 1, 2**32 - 1)),
        ("timeline", 2**40, lambda a: a.number("timeline", 1, 2**32 - 1)),
        ("segment", "../../etc/passwd", lambda a: a.segment("segment")),
        ("segment", "00000001000000000000000G", lambda a: a.segment("segment")),
        ("shipped", ["000000010000000000000007", "x/../y"], lambda a: a.segments("shipped")),
        ("shipped", "000000010000000000000007", lambda a: a.segments("shipped")),
        ("system_identifier", 7301234567890123456, lambda a: a.system_id("system_identifier")),
        ("first_commit_at", float("nan"), lambda a: a.moment("first_commit_at")),
        ("first_commit_at", "soon", lambda a: a.moment("first_commit_at")),
    ],
)
def test_a_hostile_field_is_one_clear_error(field: str, value: object, read) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OperationFailed, match=f"stop at dr: answer field '{field}'"):
        read(_answer(**{field: value}))


def test_text_is_cut_to_a_line() -> None:
    assert len(_answer(error="x" * 10_000).text("error")) == 300


def test_the_remote_command_carries_only_known_options() -> None:
    argv = argv_for("ship-final", "orders", {"since_lsn": "0/5000000", "dry_run": True})
    assert argv == [
        "switchover-step",
        "orders",
        "ship-final",
        "--since-lsn",
        "0/5000000",
        "--dry-run",
    ]
    with pytest.raises(KeyError):
        argv_for("facts", "orders", {"shell": "true"})
