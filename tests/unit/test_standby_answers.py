"""The standby facts the site sends back are checked field by field: a malformed
answer is dropped whole, named, and nothing of it reaches the primary's figures."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from logship import jsonout
from logship.engines.postgresql import facts_check
from logship.engines.postgresql.facts_check import BadAnswer
from logship.engines.postgresql.standby_status import StandbyFacts, ask_standby_status

SEG = "000000010000000000000003"


def good(**changes: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "connector": "main",
        "measured_at": 1_800_000_000.5,
        "reachable": True,
        "in_recovery": True,
        "replay_lsn": "0/3000148",
        "heartbeat_at": 1_799_999_999.0,
        "replay_timestamp": None,
        "last_restored": SEG,
        "restored_at": 1_799_999_990,
        "promoted": False,
        "error": None,
        "redo_wal": SEG,
        "redo_error": None,
        "data_dir_exists": True,
        "refused": [],
    }
    answer.update(changes)
    return answer


def test_a_good_answer_round_trips() -> None:
    facts = StandbyFacts.from_json(json.dumps(good()))
    assert facts.replay_lsn == "0/3000148"
    assert StandbyFacts.from_json(facts.to_json()) == facts


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("replay_lsn", "zz"),
        ("replay_lsn", "0/"),
        ("replay_lsn", "123456789/0"),
        ("replay_lsn", 5),
        ("measured_at", "soon"),
        ("measured_at", True),
        ("measured_at", -1),
        ("measured_at", 1e300),
        ("measured_at", 10**400),
        ("restored_at", -(10**400)),
        ("heartbeat_at", [1]),
        ("reachable", "yes"),
        ("reachable", 1),
        ("in_recovery", "no"),
        ("promoted", None),
        ("last_restored", "../../etc/passwd"),
        ("last_restored", 42),
        ("redo_wal", "00000002.history"),
        ("refused", "000000010000000000000001"),
        ("refused", ["../x"]),
        ("refused", [1]),
        ("refused", [SEG] * (facts_check.MAX_REFUSED_LISTED + 1)),
        ("error", {"a": 1}),
        ("connector", "x" * 1000),
        ("data_dir_exists", "true"),
    ],
)
def test_a_bad_field_drops_the_whole_answer_and_is_named(field: str, value: object) -> None:
    with pytest.raises(BadAnswer) as caught:
        StandbyFacts.from_json(json.dumps(good(**{field: value})))
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_refused(constant: str) -> None:
    text = json.dumps(good()).replace('"heartbeat_at": 1799999999.0', f'"heartbeat_at": {constant}')
    assert constant in text
    with pytest.raises(BadAnswer, match="answer: not JSON"):
        StandbyFacts.from_json(text)


def test_deep_nesting_and_size_are_clear_errors_not_crashes() -> None:
    with pytest.raises(BadAnswer, match="nested too deeply"):
        StandbyFacts.from_json("[" * 20_000 + "]" * 20_000)
    with pytest.raises(BadAnswer, match="larger than"):
        StandbyFacts.from_json(json.dumps(good(error="x" * facts_check.MAX_ANSWER_BYTES)))
    for text in ("", "[]", "null", "\xff", b"\xff\xfe"):
        with pytest.raises(BadAnswer):
            StandbyFacts.from_json(text)


def test_missing_required_fields_are_named() -> None:
    answer = good()
    del answer["reachable"]
    with pytest.raises(BadAnswer, match="reachable: missing"):
        StandbyFacts.from_json(json.dumps(answer))


def test_refused_names_beyond_the_cap_are_ignored_and_counted() -> None:
    names = [f"0000000100000000000000{n:02X}" for n in range(10)]
    facts, ignored = StandbyFacts.checked(json.dumps(good(refused=names + names[:3])))
    assert facts.refused == tuple(names[: facts_check.MAX_REFUSED_PER_ANSWER])
    assert ignored == 10 - facts_check.MAX_REFUSED_PER_ANSWER


def test_long_errors_are_cut_and_the_shown_value_is_escaped() -> None:
    facts = StandbyFacts.from_json(json.dumps(good(error="e" * 5000)))
    assert facts.error is not None and len(facts.error) == facts_check.MAX_TEXT
    with pytest.raises(BadAnswer) as caught:
        StandbyFacts.from_json(json.dumps(good(replay_lsn="\x1b]0;pwned\x07" + "A" * 500)))
    message = str(caught.value)
    assert "\x1b" not in message and "\x07" not in message
    assert len(message) < 200


def test_unknown_keys_from_a_newer_site_are_skipped() -> None:
    facts = StandbyFacts.from_json(json.dumps(good(new_figure={"deep": [1, 2]})))
    assert facts.connector == "main"


class _Site:
    def __init__(self, out: bytes, status: int = 0, err: bytes = b"") -> None:
        self.reply = (status, out, err)

    def run_command(
        self, argv: list[str], timeout: float, limit: int = 1 << 20
    ) -> tuple[int, bytes, bytes]:
        return self.reply


def test_a_malformed_answer_becomes_an_unreachable_fact_naming_the_field() -> None:
    site = _Site(json.dumps(good(replay_lsn="zz")).encode())
    answer = ask_standby_status(site, ["logship"], "main", lambda: 5.0, 1.0)  # type: ignore[arg-type]
    assert not answer.answered
    assert answer.bad is not None and "replay_lsn" in answer.bad
    assert answer.facts.reachable is False and answer.facts.replay_lsn is None
    assert answer.facts.error == answer.bad


def test_an_answer_for_another_connector_is_dropped() -> None:
    site = _Site(json.dumps(good(connector="other")).encode())
    answer = ask_standby_status(site, ["logship"], "main", lambda: 5.0, 1.0)  # type: ignore[arg-type]
    assert answer.bad is not None and "connector" in answer.bad


def test_the_sites_stderr_is_escaped() -> None:
    site = _Site(b"", status=1, err=b"boom \x1b[2J\x1b]0;x\x07")
    answer = ask_standby_status(site, ["logship"], "main", lambda: 5.0, 1.0)  # type: ignore[arg-type]
    assert answer.bad is None and answer.facts.error is not None
    assert "\x1b" not in answer.facts.error


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(field=st.sampled_from(sorted(facts_check._CHECKS)), value=_json_values)
def test_any_value_in_any_field_is_accepted_checked_or_named(field: str, value: object) -> None:
    """Whatever the site sends, the outcome is facts whose figures are usable, or
    BadAnswer: never another exception."""
    try:
        text = json.dumps(good(**{field: value}))
    except ValueError:
        return
    try:
        facts = StandbyFacts.from_json(text)
    except BadAnswer as exc:
        assert exc.field in (field, "answer")
        return
    for number in (facts.measured_at, facts.heartbeat_at, facts.replay_timestamp):
        assert number is None or (isinstance(number, float) and math.isfinite(number))
    assert isinstance(facts.reachable, bool)
    assert len(facts.refused) <= facts_check.MAX_REFUSED_PER_ANSWER
    json.loads(facts.to_json(), parse_constant=lambda c: pytest.fail(c))


def test_json_output_never_holds_nan_or_infinity() -> None:
    text = jsonout.dumps({"a": float("-inf"), "b": [float("nan"), 1.5], "c": (float("inf"),)})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {
        "a": None,
        "b": [None, 1.5],
        "c": [None],
    }
