"""Checks on the standby facts the site sends back: the site is not trusted.

A `standby status --json` answer becomes catalog rows, lag figures, spool pruning
and re-shipping on the primary. Every field is checked here, before any of that;
one bad field drops the whole answer (`BadAnswer` names the field), so no half
of a lie is acted on.

Stdlib only, no I/O.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from logship.engines.postgresql import walnames
from logship.errors import shown_text

#: the largest answer read from the site for one connector (a real one is < 2 KiB)
MAX_ANSWER_BYTES = 64 * 1024
#: free text from the site (errors) is cut to this many characters
MAX_TEXT = 1000
#: refused names at most in one answer: each may mean a re-ship on the shipping
#: thread, so a lying site can cost only this many per sample
MAX_REFUSED_PER_ANSWER = 4
#: names at most in the list itself; the site's logship sends at most 32
MAX_REFUSED_LISTED = 64
#: timestamps: not before the epoch, before 2200-01-01 (seconds)
MIN_TIME = 0.0
MAX_TIME = 7_258_118_400.0
MAX_CONNECTOR = 200
_LSN = re.compile(r"^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$")


class BadAnswer(ValueError):
    """The site's answer is malformed; the message names the field (escaped, cut)."""

    def __init__(self, field: str, why: str, value: object = None) -> None:
        shown = "" if value is None else f": {shown_text(repr(value), 80)}"
        super().__init__(f"{field}: {why}{shown}")
        self.field = field


def parse_answer(text: str | bytes) -> dict[str, Any]:
    """The JSON object of an answer, bounded in size and depth."""
    if len(text) > MAX_ANSWER_BYTES:
        raise BadAnswer("answer", f"larger than {MAX_ANSWER_BYTES} bytes ({len(text)})")
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise BadAnswer("answer", "JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadAnswer("answer", f"not JSON ({shown_text(str(exc), 120)})") from None
    if not isinstance(raw, dict):
        raise BadAnswer("answer", "not a JSON object")
    return raw


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number JSON allows")


def check_fields(raw: dict[str, Any], known: set[str]) -> tuple[dict[str, Any], int]:
    """The known fields, checked; and how many refused names beyond the per-answer
    cap were ignored. Unknown keys (a newer logship at the site) are skipped."""
    values = {key: value for key, value in raw.items() if key in known}
    out: dict[str, Any] = {}
    for key, value in values.items():
        out[key] = _CHECKS[key](key, value)
    refused = out.get("refused", ())
    ignored = max(0, len(refused) - MAX_REFUSED_PER_ANSWER)
    out["refused"] = tuple(refused[:MAX_REFUSED_PER_ANSWER])
    for required in ("connector", "measured_at", "reachable"):
        if required not in out:
            raise BadAnswer(required, "missing")
    return out, ignored


def _text(key: str, value: object, limit: int) -> str:
    if not isinstance(value, str):
        raise BadAnswer(key, "not a string", value)
    if len(value) > limit:
        raise BadAnswer(key, f"longer than {limit} characters")
    return value


def _connector(key: str, value: object) -> str:
    return _text(key, value, MAX_CONNECTOR)


def _free_text(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadAnswer(key, "not a string", value)
    # An error message is shown, never acted on: a long one is cut, not refused.
    return value[:MAX_TEXT]


def _flag(key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise BadAnswer(key, "not true or false", value)
    return value


def _maybe_flag(key: str, value: object) -> bool | None:
    return None if value is None else _flag(key, value)


def _time(key: str, value: object) -> float:
    # bool is an int to Python, never a time to JSON.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadAnswer(key, "not a number", value)
    # Compared before float(): a JSON integer of 400 digits overflows a float.
    if not MIN_TIME <= value <= MAX_TIME or not math.isfinite(value):
        raise BadAnswer(key, "not a plausible time", value)
    return float(value)


def _maybe_time(key: str, value: object) -> float | None:
    return None if value is None else _time(key, value)


def check_lsn(key: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _LSN.match(value):
        raise BadAnswer(key, "not an LSN (X/X, hexadecimal)", value)
    return value.upper()


def _wal_name(key: str, value: object, *, segment_only: bool = False) -> str:
    if not isinstance(value, str) or len(value) > 40:
        raise BadAnswer(key, "not a WAL file name", value)
    parsed = walnames.parse(value, allow_partial=not segment_only)
    if parsed is None or (segment_only and parsed.kind is not walnames.WalKind.SEGMENT):
        raise BadAnswer(
            key, "not a WAL segment name" if segment_only else "not a WAL file name", value
        )
    return value


def _maybe_wal(key: str, value: object) -> str | None:
    return None if value is None else _wal_name(key, value)


def _maybe_segment(key: str, value: object) -> str | None:
    return None if value is None else _wal_name(key, value, segment_only=True)


def _refused(key: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadAnswer(key, "not a list", value)
    if len(value) > MAX_REFUSED_LISTED:
        raise BadAnswer(key, f"more than {MAX_REFUSED_LISTED} names ({len(value)})")
    names: list[str] = []
    for item in value:
        name = _wal_name(key, item)
        if name not in names:
            names.append(name)
    return tuple(names)


_CHECKS = {
    "connector": _connector,
    "measured_at": _time,
    "reachable": _flag,
    "in_recovery": _maybe_flag,
    "replay_lsn": check_lsn,
    "heartbeat_at": _maybe_time,
    "replay_timestamp": _maybe_time,
    "last_restored": _maybe_wal,
    "restored_at": _maybe_time,
    "promoted": _flag,
    "error": _free_text,
    "redo_wal": _maybe_segment,
    "redo_error": _free_text,
    "data_dir_exists": _maybe_flag,
    "refused": _refused,
}
